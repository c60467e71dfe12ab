"""Real DICOM that no one here wrote: every file of pydicom's test files and of the ``pydicom-data`` package.

Each image is exported as SEG + SR with one and with two segments, read back, validated, checked by independent
readers (dciodvfy with 0 errors, highdicom's reader, dcmqi where the SEG has a Frame of Reference) and, for cines,
interpolated. Every other file must be refused in one line that names it and says why; the expected reason of each
known refusal is listed below by file name. A file a future pydicom adds is held to the same rule: it works, or it
is refused in one line naming it.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.data
import pytest

from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation, read_segmentation
from medannot.dicomseg.validate import validate_files
from medannot.errors import SourceImageError
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.interpolation import interpolate_labels, load_cine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
import readers  # noqa: E402
from medannot_testing import require_tool  # noqa: E402

HERE = Path(__file__).resolve().parent
PYDICOM_FILES = Path(pydicom.data.__file__).resolve().parent / "test_files"

try:
    import data_store  # the pydicom-data package (a dev dependency)

    PYDICOM_DATA = Path(data_store.__file__).resolve().parent / "data"
except ImportError:  # pragma: no cover - the dev extra installs it
    PYDICOM_DATA = None

# Why each known file that is not a segmentable image is refused (a substring of the one-line message).
REFUSED = {
    # not images
    "reportsi.dcm": "is a Basic Text SR Storage object without pixels",
    "reportsi_with_empty_number_tags.dcm": "is a Basic Text SR Storage object without pixels",
    "test-SR.dcm": "is a Comprehensive SR Storage object without pixels",
    "rtplan.dcm": "is a RT Plan Storage object without pixels",
    "rtplan_truncated.dcm": "is a RT Plan Storage object without pixels",
    "waveform_ecg.dcm": "is a 12-lead ECG Waveform Storage object without pixels",
    "rtdose.dcm": "RT Dose grid", "rtdose_1frame.dcm": "RT Dose grid", "rtdose_expb.dcm": "RT Dose grid",
    "rtdose_expb_1frame.dcm": "RT Dose grid", "rtdose_rle.dcm": "RT Dose grid",
    "rtdose_rle_1frame.dcm": "RT Dose grid", "badVR.dcm": "NumberOfFrames (0028,0008) is '1A'",
    "liver.dcm": "is a Segmentation (SEG)", "liver_expb.dcm": "is a Segmentation (SEG)",
    "liver_1frame.dcm": "is a Segmentation (SEG)", "liver_expb_1frame.dcm": "is a Segmentation (SEG)",
    # damaged
    "MR_truncated.dcm": "the file is truncated",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "ends without its sequence delimiter",
    "693_J2KI.dcm": "has no FrameOfReferenceUID", "693_J2KR.dcm": "has no FrameOfReferenceUID",
    "693_UNCI.dcm": "has no FrameOfReferenceUID", "693_UNCR.dcm": "has no FrameOfReferenceUID",
    "bad_sequence.dcm": "has no FrameOfReferenceUID",
    "color-pl.dcm": "retired SOP Class", "color-px.dcm": "retired SOP Class",
    "JPEGLSNearLossless_08.dcm": "missing StudyInstanceUID", "JPEGLSNearLossless_16.dcm": "missing StudyInstanceUID",
    "SC_rgb_jls_lossy_line.dcm": "missing StudyInstanceUID", "SC_rgb_jls_lossy_sample.dcm": "missing StudyInstanceUID",
    # a single-frame SOP class holding two frames: no SEG can reference those frames conformantly
    **{name: "is a single-frame image" for name in (
        "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "SC_rgb_2frame.dcm", "SC_rgb_16bit_2frame.dcm",
        "SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_2frame.dcm", "SC_rgb_expb_16bit_2frame.dcm",
        "SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm",
        "SC_rgb_rle_32bit_2frame.dcm")},
    # files without the DICOM preamble and meta header, fragments and files of other formats
    **{name: "not a DICOM file" for name in (
        "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "no_meta.dcm", "rtstruct.dcm", "OT-PAL-8-face.dcm",
        "README.txt", "crayons.icc", "rtplan.dump", "rtstruct.dump", "test1.json", "test_PN.json", "zipMR.gz")},
    **{name: "missing StudyInstanceUID" for name in (
        "UN_sequence.dcm", "empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm",
        "no_meta_group_length.dcm", "priv_SQ.dcm")},
}

# Series folders of the pydicom wheel (one slice per file), exported as volumes; most are random picks of slices
# from several series, which must be refused as such.
SERIES = {
    "dicomdirtests/98892001/CT5N": None,
    "dicomdirtests/98892001/CT2N": "ImageOrientationPatient differs from the other slices",
    "dicomdirtests/77654033/CT2": "slice spacing varies from 1.250 to 202.500 mm",
    "dicomdirtests/98892003/MR700": "ImageOrientationPatient differs from the other slices",
    "dicomdirtests/98892003/MR1": "holds 3 series",
    "dicomdirtests/98892003/MR2": "holds 3 series",
}
REFUSED.update({folder.rsplit("/", 1)[-1]: reason for folder, reason in SERIES.items() if reason})


def _corpus() -> list:
    files = sorted(p for p in PYDICOM_FILES.iterdir() if p.is_file())
    if PYDICOM_DATA is not None:
        files += sorted(PYDICOM_DATA.glob("*.dcm"))
    params = [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in files]
    params += [pytest.param(PYDICOM_FILES / s, id=f"series:{s}") for s in SERIES]
    return params


def test_pydicom_data_is_installed():
    assert PYDICOM_DATA is not None and len(list(PYDICOM_DATA.glob("*.dcm"))) > 50, \
        "pydicom-data is a dev dependency: pip install -e '.[dev]'"


@pytest.fixture(scope="module")
def guideline():
    return load_guideline(HERE / "realdata-two-segments.yaml")


@dataclass
class Labels:
    labels: np.ndarray
    counts: dict[int, int]


def _labels(shape: tuple[int, int, int], segments: int) -> Labels:
    """A rectangle on every frame (label 1) and, with two segments, a second one on the first half of the frames."""
    n, r, c = shape
    labels = np.zeros(shape, np.uint8)
    labels[:, r // 4: r // 2 + 1, c // 4: c // 2 + 1] = 1
    if segments == 2:  # beside the first, at least one voxel even on a 3 x 3 image
        labels[: max(1, n // 2), r // 2 + 1: max(r // 2 + 2, 3 * r // 4 + 2),
               c // 2 + 1: max(c // 2 + 2, 3 * c // 4 + 2)] = 2
    return Labels(labels, {v: int(np.count_nonzero(labels == v)) for v in range(1, segments + 1)})


def _dciodvfy_errors(path: Path) -> list[str]:
    try:
        errors, _, _ = readers.run_dciodvfy(path)
    except readers.ToolMissing as exc:
        require_tool(str(exc))
    return errors


@pytest.mark.parametrize("path", _corpus())
def test_every_real_file_exports_reads_and_validates_or_is_refused_in_one_line(path: Path, guideline, tmp_path):
    expected_refusal = REFUSED.get(path.name)
    try:
        source = load_source(path)
    except SourceImageError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, message
        assert expected_refusal is not None, f"a real image was refused: {message}"
        assert expected_refusal in message, message
        return
    assert expected_refusal is None, f"{path.name} was expected to be refused ({expected_refusal}) but loaded"

    for segments in (1, 2):
        drawn = _labels(source.shape, segments)
        out = tmp_path / f"{segments}"
        result = export_segmentation(source, drawn.labels, source.geometry, guideline,
                                     ReaderInfo("Doe^Jane", "jdoe", role="Radiologist"), out,
                                     segments={"Region": SegmentProvenance(confidence=80)})
        # independent validator: 0 errors on both files, for every kind of source
        for written in (result.seg_path, result.sr_path):
            assert _dciodvfy_errors(written) == [], f"{path.name}, {segments} segment(s): {written.name}"
        # MedAnnot's own checks agree
        findings = [f for f in validate_files([result.seg_path, result.sr_path], use_dciodvfy=False)
                    if f.severity == "error"]
        assert findings == [], [str(f) for f in findings]
        # our reader gives back exactly what was drawn, on the source grid
        record = read_segmentation(result.seg_path, source=source)
        assert np.array_equal(record.labels, drawn.labels), f"{path.name}: labels differ after read-back"
        assert [s["voxels"] for s in record.summary["segments"]] == list(drawn.counts.values())
        # highdicom's reader, through its own source references, sees the same voxels
        assert _as_highdicom_reads(result.seg_path, source, segments) == \
            [drawn.labels == v for v in range(1, segments + 1)], f"{path.name}: highdicom reads other voxels"


def _as_highdicom_reads(seg_path: Path, source, segments: int) -> list:
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments == segments
    numbers = list(range(1, segments + 1))
    if source.is_multiframe:
        pixels = seg.get_pixels_by_source_frame(str(source.first.SOPInstanceUID),
                                                list(range(1, source.shape[0] + 1)), segment_numbers=numbers,
                                                assert_missing_frames_are_empty=True)
    else:
        pixels = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in source.datasets],
                                                   segment_numbers=numbers, assert_missing_frames_are_empty=True)
    return [_Mask(pixels[..., i] > 0) for i in range(segments)]


class _Mask:
    """A boolean array compared by value, so a list of masks compares with ``==`` and shows a short repr."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array, dtype=bool)

    def __eq__(self, other: object) -> bool:
        return np.array_equal(self.array, other.array if isinstance(other, _Mask) else np.asarray(other))

    def __repr__(self) -> str:
        return f"<mask {self.array.shape} with {int(self.array.sum())} voxels>"


def test_dcmqi_reads_segs_of_real_sources_with_a_frame_of_reference(guideline, tmp_path):
    """dcmqi (QuantitativeReporting's reader) only reads SEGs with a Frame of Reference: those, voxel for voxel."""
    sources = [PYDICOM_FILES / "CT_small.dcm", PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm",
               PYDICOM_FILES / "dicomdirtests/98892001/CT5N"]
    if PYDICOM_DATA is not None:
        sources += [PYDICOM_DATA / "MR-SIEMENS-DICOM-WithOverlays.dcm", PYDICOM_DATA / "eCT_Supplemental.dcm"]
    for path in sources:
        source = load_source(path)
        drawn = _labels(source.shape, 2)
        result = export_segmentation(source, drawn.labels, source.geometry, guideline,
                                     ReaderInfo("Doe^Jane", "jdoe"), tmp_path / path.name)
        try:
            counts = readers.dcmqi_read_seg(result.seg_path, tmp_path / f"dcmqi-{path.name}")
        except readers.ToolMissing as exc:
            require_tool(str(exc))
        assert counts == {1: drawn.counts[1], 2: drawn.counts[2]}, path.name


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "color3d_jpeg_baseline.dcm"])
def test_real_ultrasound_cines_interpolate_between_keyframes_and_export(name, guideline, tmp_path):
    path = PYDICOM_FILES / name if (PYDICOM_FILES / name).exists() else (PYDICOM_DATA or PYDICOM_FILES) / name
    cine = load_cine(path)
    source = load_source(path)
    n, rows, cols = source.shape
    keyframes = [0, n // 2, n - 1]
    drawn = np.zeros(source.shape, np.uint8)
    for k in keyframes:  # a disc that grows from the first keyframe to the last
        yy, xx = np.ogrid[:rows, :cols]
        radius = min(rows, cols) * (0.12 + 0.08 * k / (n - 1))
        drawn[k][(yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 <= radius ** 2] = 1
    result = interpolate_labels(drawn, keyframes, image=cine.frames, method="motion",
                                frame_times=cine.frame_times_ms)
    for k in keyframes:
        assert np.array_equal(result.labels[k], drawn[k])
    areas = [int(np.count_nonzero(result.labels[f] == 1)) for f in range(n)]
    assert all(a > 0 for a in areas), "every frame between keyframes holds the interpolated region"
    exported = export_segmentation(source, result.labels.astype(np.uint8), None, guideline,
                                   ReaderInfo("Doe^Jane", "jdoe"), tmp_path,
                                   segments={"Region": SegmentProvenance(algorithm_type="SEMIAUTOMATIC",
                                                                         algorithm_name="MedAnnot motion")})
    assert _dciodvfy_errors(exported.seg_path) == []
    assert np.array_equal(read_segmentation(exported.seg_path).labels, result.labels)


def test_refusals_name_the_attribute_for_damage_no_file_in_the_corpus_shows(tmp_path):
    """Variants of a real CT made as other tools damage files: each refused in one line naming what is wrong."""
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    cases = {}
    sm = copy.deepcopy(ct)
    sm.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    cases["sm.dcm"] = (sm, "VL Whole Slide Microscopy")
    short = copy.deepcopy(ct)
    short.PixelData = ct.PixelData[: len(ct.PixelData) // 2]
    cases["short.dcm"] = (short, "fewer than the")
    for name, (ds, reason) in cases.items():
        ds.save_as(tmp_path / name, enforce_file_format=True)
        with pytest.raises(SourceImageError) as info:
            load_source(tmp_path / name)
        assert reason in str(info.value) and name in str(info.value) and "\n" not in str(info.value)
    # cut off in the middle of the pixel data, as an interrupted copy leaves it
    data = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 1000])
    with pytest.raises(SourceImageError, match="cut.dcm: Pixel Data .* the file is truncated"):
        load_source(tmp_path / "cut.dcm")


def test_loose_files_from_other_tools_export_conformant_segs(guideline, tmp_path):
    """Empty SpecificCharacterSet, no PatientID, ACR-NEMA dates: the SEG is written and passes dciodvfy."""
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ct.SpecificCharacterSet = ""
    del ct.PatientID
    ct.StudyDate = "2001.01.30"
    ct.StudyTime = "11:22:33"
    ct.save_as(tmp_path / "loose.dcm", enforce_file_format=True)
    source = load_source(tmp_path / "loose.dcm")
    drawn = _labels(source.shape, 1)
    result = export_segmentation(source, drawn.labels, source.geometry, guideline, ReaderInfo("Doe^Jane", "jdoe"),
                                 tmp_path / "out")
    assert _dciodvfy_errors(result.seg_path) == []
    seg = pydicom.dcmread(result.seg_path)
    assert seg.PatientID == "" and seg.StudyDate == "20010130" and seg.StudyTime == "112233"
    assert "PatientID" not in pydicom.dcmread(tmp_path / "loose.dcm")  # the source is not changed


def test_one_slice_mr_takes_a_label_map_with_itks_slice_spacing(guideline, tmp_path):
    """SimpleITK gives a one-slice MR SpacingBetweenSlices as z spacing; MedAnnot must accept its label map."""
    import SimpleITK as sitk

    from medannot.imaging.geometry import Geometry

    mr = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    mr.SpacingBetweenSlices = 0.8
    mr.SliceThickness = 1.0
    mr.save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    image = sitk.ReadImage(str(tmp_path / "mr.dcm"))
    geometry = Geometry.from_sitk(image)
    source = load_source(tmp_path / "mr.dcm")
    drawn = _labels(source.shape, 1)
    result = export_segmentation(source, drawn.labels, geometry, guideline, ReaderInfo("Doe^Jane", "jdoe"),
                                 tmp_path / "out")
    record = read_segmentation(result.seg_path)
    assert np.array_equal(record.labels, drawn.labels)
    # MedAnnot's own read-back geometry is accepted too (the round trip)
    export_segmentation(source, record.labels, record.geometry, guideline, ReaderInfo("Doe^Jane", "jdoe"),
                        tmp_path / "again")


@pytest.mark.parametrize("sop_class, modality", [
    ("1.2.840.10008.5.1.4.1.1.1.1", "DX"),  # Digital X-Ray Image Storage - For Presentation
    ("1.2.840.10008.5.1.4.1.1.1.2", "MG"),  # Digital Mammography X-Ray Image Storage - For Presentation
    ("1.2.840.10008.5.1.4.1.1.1", "CR"),
])
def test_projection_radiographs_without_frame_of_reference_give_conformant_segs(sop_class, modality, guideline,
                                                                                 tmp_path):
    """No DX or MG file is in either corpus: a real CR of the pydicom wheel, relabelled as each class."""
    ds = pydicom.dcmread(PYDICOM_FILES / "dicomdirtests/77654033/CR1/6154")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    ds.save_as(tmp_path / "xray.dcm", enforce_file_format=True)
    source = load_source(tmp_path / "xray.dcm")
    assert not source.has_frame_of_reference
    for segments in (1, 2):
        drawn = _labels(source.shape, segments)
        result = export_segmentation(source, drawn.labels, None, guideline, ReaderInfo("Doe^Jane", "jdoe"),
                                     tmp_path / str(segments))
        assert _dciodvfy_errors(result.seg_path) == [] and _dciodvfy_errors(result.sr_path) == []
        assert _as_highdicom_reads(result.seg_path, source, segments) == \
            [drawn.labels == v for v in range(1, segments + 1)]


FRACTIONAL_SOURCES = ["CT_small.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm", "RG3_UNCR.dcm",
                      "eCT_Supplemental.dcm", "series:dicomdirtests/98892001/CT5N"]


@pytest.mark.parametrize("name", FRACTIONAL_SOURCES)
def test_fractional_segs_of_real_sources_pass_dciodvfy(name, guideline, tmp_path):
    if name.startswith("series:"):
        path = PYDICOM_FILES / name.split(":", 1)[1]
    else:
        path = PYDICOM_FILES / name if (PYDICOM_FILES / name).exists() else (PYDICOM_DATA or PYDICOM_FILES) / name
    source = load_source(path)
    drawn = _labels(source.shape, 2)
    maps = {v: (drawn.labels == v).astype(np.float32) * 0.8 for v in (1, 2)}
    result = export_segmentation(source, None, source.geometry, guideline, ReaderInfo("Doe^Jane", "jdoe"), tmp_path,
                                 probabilities=maps)
    assert _dciodvfy_errors(result.seg_path) == [] and _dciodvfy_errors(result.sr_path) == []
    assert pydicom.dcmread(result.seg_path).SegmentationType == "FRACTIONAL"


OTHER_TOOLS_SEGS = ["liver.dcm", "liver_expb.dcm", "liver_1frame.dcm", "liver_expb_1frame.dcm"]


def _find(name: str) -> Path:
    for folder in (PYDICOM_FILES, PYDICOM_DATA):
        if folder is not None and (folder / name).exists():
            return folder / name
    pytest.fail(f"{name} is in neither pydicom's test files nor pydicom-data")


@pytest.mark.parametrize("name", OTHER_TOOLS_SEGS)
def test_segs_other_tools_wrote_read_like_highdicom_and_validate_like_dciodvfy(name, tmp_path):
    path = _find(name)
    record = read_segmentation(path)
    seg = pydicom.dcmread(path)  # pydicom decodes big endian too, which highdicom refuses to parse
    frames = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1) or 1), -1)
    numbers = [int(i.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for i in seg.PerFrameFunctionalGroupsSequence][: len(frames)]
    expected = {int(item.SegmentNumber): int(frames[[f == int(item.SegmentNumber) for f in numbers]].sum())
                for item in seg.SegmentSequence}
    assert {s["number"]: s["voxels"] for s in record.summary["segments"]} == expected
    ours = [f for f in validate_files([path], use_dciodvfy=False) if f.severity == "error"]
    theirs = _dciodvfy_errors(path)
    assert ours == [] or theirs, f"MedAnnot reports errors dciodvfy does not: {[str(f) for f in ours]}"


@pytest.mark.parametrize("name", ["reportsi.dcm", "test-SR.dcm", "CT_small.dcm", "README.txt"])
def test_seg_read_of_what_is_not_a_seg_is_one_line(name):
    from medannot.errors import DicomSegError

    with pytest.raises(DicomSegError) as info:
        read_segmentation(PYDICOM_FILES / name)
    assert name in str(info.value) and "\n" not in str(info.value)
