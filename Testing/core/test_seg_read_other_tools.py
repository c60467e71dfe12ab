"""`medannot seg read` / `seg validate` on SEGs other tools wrote: highdicom (LABELMAP, BINARY, FRACTIONAL; per-frame
and TILED_FULL; with and without Frame of Reference) over real sources, and pydicom-data's liver.dcm (QIICR).

Each SEG is checked three ways: what the command prints, voxel for voxel against highdicom's own reading (and the
array it was written from), and dciodvfy, so an error `seg validate` reports is clearly ours."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from medannot_testing import run_medannot
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage

from medannot.demo_data import ct_phantom, make_ct_series

PYDICOM_DATA = Path(__import__("data_store").__file__).parent / "data"
LIVER_SEG = PYDICOM_DATA / "liver.dcm"  # written by QIICR's dcmqi (3D Slicer), one segment on 3 CT slices
US_NO_FOR = PYDICOM_DATA / "OBXXXX1A.dcm"  # ultrasound, no Frame of Reference
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
SUMMARY_KEYS = {"reader_name", "reader_id", "content_datetime", "task_id", "guideline", "source", "segments",
                "checklist"}
SEGMENT_KEYS = {"number", "label", "name", "algorithm_type", "algorithm_name", "confidence", "voxels", "tracking_uid"}
TYPES = ["BINARY", "FRACTIONAL", "LABELMAP"]


def medannot(*args: object) -> subprocess.CompletedProcess[str]:
    return run_medannot(*args)


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "Error - " in line]


def description(number: int, name: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="OtherTool", version="2.1", family=codes.cid7162.ArtificialIntelligence))


def highdicom_seg(sources: list[Dataset], labels: np.ndarray, segmentation_type: str, path: Path,
                  **options: object) -> Path:
    """Write ``labels`` (segment numbers 1 and 2, or a stack of two masks) as another tool would, with highdicom."""
    if segmentation_type == "FRACTIONAL":
        planes = labels if labels.ndim == 4 else np.stack([labels == 1, labels == 2], axis=-1)
        pixels = planes.astype(np.float32) * np.array([0.8, 0.6], dtype=np.float32)
    else:
        pixels = labels
    seg = hd.seg.Segmentation(
        sources, pixels, segmentation_type, [description(1, "Organ"), description(2, "Lesion")],
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Other Tool Inc", manufacturer_model_name="Segmenter", software_versions="2.1",
        device_serial_number="42", content_creator_name="Doe^Jane", **options)
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = ""  # General Image, type 2C without patient orientation: highdicom 0.28 omits it
    seg.save_as(path)
    return path


def expected_masks(labels: np.ndarray) -> np.ndarray:
    """(..., 2) masks of segments 1 and 2 as written (a stack of masks is already that)."""
    return labels.astype(bool) if labels.ndim == 4 else np.stack([labels == 1, labels == 2], axis=-1)


def read_nrrd(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


# ------------------------------------------------------------------ sources
@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> dict:
    shape = (12, 48, 40)
    folder = make_ct_series(tmp_path_factory.mktemp("other") / "ct", shape)
    datasets = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    _, labels = ct_phantom(shape)
    return {"folder": folder, "datasets": datasets, "labels": labels}


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def tiled_slide(path: Path, tile: int = 16) -> Dataset:
    """A VL Whole Slide Microscopy image (the only kind of source highdicom writes TILED_FULL SEGs for) whose total
    pixel matrix is pydicom's MR_small.dcm: no tiled image ships with pydicom or pydicom-data."""
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    grey = mr.pixel_array.astype(float)
    pixels = (255 * (grey - grey.min()) / np.ptp(grey)).astype(np.uint8)[:, :60]  # 60 columns: a partial tile
    rows, cols = pixels.shape
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, mr.get(keyword, ""))
    ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, hd.UID()
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = hd.UID(), hd.UID()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "SM", 1, 1, "Scanner"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixFocalPlanes = rows, cols, 1
    ds.Rows = ds.Columns = tile
    tile_rows, tile_cols = -(-rows // tile), -(-cols // tile)
    ds.NumberOfFrames = tile_rows * tile_cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ContainerIdentifier, ds.IssuerOfTheContainerIdentifierSequence = "SLIDE1", Sequence([])
    ds.ContainerTypeCodeSequence = Sequence([code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier, specimen.SpecimenUID = "S1", hd.UID()
    specimen.IssuerOfTheSpecimenIdentifierSequence, specimen.SpecimenPreparationSequence = Sequence([]), Sequence([])
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.0005, 0.0005], 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.VolumetricProperties, ds.BurnedInAnnotation, ds.LossyImageCompression = "VOLUME", "NO", "00"
    padded = np.zeros((tile_rows * tile, tile_cols * tile), np.uint8)
    padded[:rows, :cols] = pixels
    ds.PixelData = padded.reshape(tile_rows, tile, tile_cols, tile).transpose(0, 2, 1, 3).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


# ------------------------------------------------------------------ per-frame, Frame of Reference, multi-slice series
@pytest.mark.parametrize("segmentation_type", TYPES)
def test_other_tools_seg_reads_voxel_for_voxel_onto_the_source(ct_series, segmentation_type, tmp_path):
    seg_path = highdicom_seg(ct_series["datasets"], ct_series["labels"], segmentation_type, tmp_path / "seg.dcm")
    truth = ct_series["labels"]

    read = medannot("seg", "read", seg_path, "--source", ct_series["folder"], "--json", "--labels-out",
                    tmp_path / "labels.nrrd")
    assert read.returncode == 0, read.stderr
    summary = json.loads(read.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert summary["reader_name"] == "Doe^Jane"  # ContentCreatorName: the provenance a SEG without SR has
    assert [set(s) for s in summary["segments"]] == [SEGMENT_KEYS, SEGMENT_KEYS]
    assert [(s["number"], s["name"], s["algorithm_type"], s["algorithm_name"]) for s in summary["segments"]] == [
        (1, "Organ", "AUTOMATIC", "OtherTool"), (2, "Lesion", "AUTOMATIC", "OtherTool")]
    assert [s["voxels"] for s in summary["segments"]] == [int((truth == 1).sum()), int((truth == 2).sum())]
    labels, image = read_nrrd(tmp_path / "labels.nrrd")
    np.testing.assert_array_equal(labels, truth)
    uids = [str(d.SOPInstanceUID) for d in ct_series["datasets"]]
    by_highdicom = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True, skip_overlap_checks=True,
        rescale_fractional=False) if segmentation_type != "FRACTIONAL" else None
    if by_highdicom is not None:
        np.testing.assert_array_equal(labels, by_highdicom)
    np.testing.assert_allclose(image.GetOrigin(), ct_series["datasets"][0].ImagePositionPatient)

    valid = medannot("seg", "validate", seg_path)
    assert valid.returncode == 0 and "0 error(s)" in valid.stdout, valid.stdout
    assert dciodvfy_errors(seg_path) == []


@pytest.mark.parametrize("segmentation_type", TYPES)
def test_without_source_other_tools_seg_reads_onto_the_volume_its_frames_span(ct_series, segmentation_type,
                                                                              tmp_path):
    # highdicom is given the slices in reverse: ReferencedInstanceSequence order must not matter
    seg_path = highdicom_seg(ct_series["datasets"][::-1], ct_series["labels"][::-1], segmentation_type,
                             tmp_path / "seg.dcm")
    read = medannot("seg", "read", seg_path, "--labels-out", tmp_path / "labels.nrrd")
    assert read.returncode == 0, read.stderr
    assert "Doe^Jane" in read.stdout and "OtherTool" in read.stdout
    labels, image = read_nrrd(tmp_path / "labels.nrrd")
    truth = ct_series["labels"]
    segmented = np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1))
    first, last = int(segmented[0]), int(segmented[-1])
    np.testing.assert_array_equal(labels, truth[first:last + 1])
    np.testing.assert_allclose(image.GetOrigin(), ct_series["datasets"][first].ImagePositionPatient)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.5))


def test_frames_without_source_references_are_placed_on_the_source_by_their_positions(ct_series, tmp_path):
    seg_path = highdicom_seg(ct_series["datasets"], ct_series["labels"], "BINARY", tmp_path / "seg.dcm")
    seg = pydicom.dcmread(seg_path)
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence  # as tools that only fill ReferencedSeriesSequence write it
    seg.save_as(tmp_path / "no-derivation.dcm")
    proc = medannot("seg", "read", tmp_path / "no-derivation.dcm", "--source", ct_series["folder"], "--labels-out",
                    tmp_path / "labels.nrrd")
    assert proc.returncode == 0, proc.stderr
    labels, _ = read_nrrd(tmp_path / "labels.nrrd")
    np.testing.assert_array_equal(labels, ct_series["labels"])


def test_seg_read_refuses_a_source_series_the_seg_was_not_drawn_on(ct_series, tmp_path):
    seg_path = highdicom_seg(ct_series["datasets"], ct_series["labels"], "BINARY", tmp_path / "seg.dcm")
    other = make_ct_series(tmp_path / "other", (12, 48, 40))
    proc = medannot("seg", "read", seg_path, "--source", other, "--labels-out", tmp_path / "labels.nrrd")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "ReferencedSeriesSequence" in proc.stderr and str(other) in proc.stderr
    assert "give the series this SEG was drawn on" in proc.stderr and "internal error" not in proc.stderr
    assert not (tmp_path / "labels.nrrd").exists()
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in sorted(ct_series["folder"].iterdir())[:6]:
        shutil.copy(path, partial)
    proc = medannot("seg", "read", seg_path, "--source", partial)
    assert proc.returncode == 1 and "not in --source" in proc.stderr and "complete source series" in proc.stderr


def test_seg_read_refuses_the_sr_of_another_seg(ct_case, liver_guideline_path, tmp_path):
    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source

    guideline, source = load_guideline(liver_guideline_path), load_source(ct_case["folder"])
    reader = ReaderInfo(name="Roe^Rich", reader_id="rroe")
    first = export_segmentation(source, ct_case["labels"], ct_case["geometry"], guideline, reader, tmp_path / "a")
    second = export_segmentation(source, ct_case["labels"], ct_case["geometry"], guideline, reader, tmp_path / "b")
    proc = medannot("seg", "read", first.seg_path, "--sr", second.sr_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert str(second.sr_path) in proc.stderr and "does not reference this SEG" in proc.stderr
    assert medannot("seg", "read", first.seg_path, "--sr", first.sr_path).returncode == 0


# ------------------------------------------------------------------ overlapping segments
def test_labels_out_refuses_overlapping_segments_and_segments_out_keeps_every_voxel(ct_series, tmp_path):
    truth = ct_series["labels"]
    masks = np.stack([truth >= 1, (truth == 2) | np.roll(truth == 1, 5, axis=2)], axis=-1)
    seg_path = highdicom_seg(ct_series["datasets"], masks, "BINARY", tmp_path / "seg.dcm")
    both = int((masks[..., 0] & masks[..., 1]).sum())
    assert both > 0 and pydicom.dcmread(seg_path).SegmentsOverlap == "YES"

    refused = medannot("seg", "read", seg_path, "--source", ct_series["folder"], "--labels-out",
                       tmp_path / "labels.nrrd")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert f"segments 1 and 2 overlap in {both} voxels" in refused.stderr and "--segments-out" in refused.stderr
    assert not (tmp_path / "labels.nrrd").exists()

    kept = medannot("seg", "read", seg_path, "--source", ct_series["folder"], "--segments-out", tmp_path / "masks")
    assert kept.returncode == 0, kept.stderr
    highdicom_masks = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in ct_series["datasets"]], assert_missing_frames_are_empty=True)
    for number in (1, 2):
        mask, _ = read_nrrd(tmp_path / "masks" / f"segment-{number}.nrrd")
        np.testing.assert_array_equal(mask, masks[..., number - 1])
        np.testing.assert_array_equal(mask, highdicom_masks[..., number - 1])
        assert f"segment {number} (" in kept.stdout
    summary = json.loads(medannot("seg", "read", seg_path, "--json").stdout)
    assert [s["voxels"] for s in summary["segments"]] == [int(masks[..., 0].sum()), int(masks[..., 1].sum())]


# ------------------------------------------------------------------ TILED_FULL
@pytest.mark.parametrize("segmentation_type", TYPES)
def test_tiled_full_seg_reads_its_total_pixel_matrix(segmentation_type, tmp_path):
    slide = tiled_slide(tmp_path / "slide.dcm")
    truth = np.zeros((1, 64, 60), np.uint8)
    truth[0, 10:30, 5:40] = 1
    truth[0, 35:60, 20:55] = 2
    seg_path = highdicom_seg([slide], truth, segmentation_type, tmp_path / "seg.dcm", tile_pixel_array=True,
                             dimension_organization_type="TILED_FULL", omit_empty_frames=False)
    seg = pydicom.dcmread(seg_path)
    assert seg.DimensionOrganizationType == "TILED_FULL" and "PerFrameFunctionalGroupsSequence" not in seg

    read = medannot("seg", "read", seg_path, "--labels-out", tmp_path / "labels.nrrd")
    assert read.returncode == 0, read.stderr
    # a slide is no source MedAnnot segments onto (its grid is the total pixel matrix): said in one line
    on_slide = medannot("seg", "read", seg_path, "--source", tmp_path / "slide.dcm")
    assert on_slide.returncode == 1 and "VL Whole Slide Microscopy" in on_slide.stderr
    assert len(on_slide.stderr.strip().splitlines()) == 1
    labels, _ = read_nrrd(tmp_path / "labels.nrrd")
    np.testing.assert_array_equal(labels, truth)
    matrix = hd.seg.segread(seg_path).get_total_pixel_matrix(rescale_fractional=False)
    np.testing.assert_array_equal(labels[0] == 1, matrix[..., 0] >= (1 if segmentation_type != "FRACTIONAL"
                                                                      else 128))
    valid = medannot("seg", "validate", seg_path)
    assert valid.returncode == 0 and "0 error(s)" in valid.stdout, valid.stdout
    assert dciodvfy_errors(seg_path) == []


def test_validate_counts_the_tiles_a_tiled_full_seg_needs(tmp_path):
    slide = tiled_slide(tmp_path / "slide.dcm")
    truth = np.zeros((1, 64, 60), np.uint8)
    truth[0, 10:30, 5:40] = 1
    seg_path = highdicom_seg([slide], truth, "BINARY", tmp_path / "seg.dcm", tile_pixel_array=True,
                             dimension_organization_type="TILED_FULL", omit_empty_frames=False)
    seg = pydicom.dcmread(seg_path)
    seg.NumberOfFrames = int(seg.NumberOfFrames) - 1
    seg.save_as(tmp_path / "short.dcm")
    proc = medannot("seg", "validate", "--no-dciodvfy", tmp_path / "short.dcm")
    assert proc.returncode == 1 and "NumberOfFrames is 31 but a TILED_FULL BINARY SEG" in proc.stdout


# ------------------------------------------------------------------ single images, with and without Frame of Reference
@pytest.mark.parametrize("segmentation_type", TYPES)
@pytest.mark.parametrize("source_file", [CT_SMALL, US_NO_FOR], ids=["CT_small-with-FoR", "US-without-FoR"])
def test_seg_of_a_single_image_reads_with_and_without_source(source_file, segmentation_type, tmp_path):
    source = pydicom.dcmread(source_file)
    truth = np.zeros((1, int(source.Rows), int(source.Columns)), np.uint8)
    truth[0, 20:60, 30:90] = 1
    truth[0, 50:80, 60:120] = 2
    seg_path = highdicom_seg([source], truth, segmentation_type, tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path) == []
    for extra in ([], ["--source", source_file]):
        proc = medannot("seg", "read", seg_path, "--labels-out", tmp_path / "labels.nrrd", *extra)
        assert proc.returncode == 0, proc.stderr
        labels, _ = read_nrrd(tmp_path / "labels.nrrd")
        np.testing.assert_array_equal(labels, truth)
    valid = medannot("seg", "validate", seg_path)
    assert valid.returncode == 0 and "0 error(s)" in valid.stdout, valid.stdout


# ------------------------------------------------------------------ a real SEG of another tool
def test_pydicom_data_liver_seg_reads_as_highdicom_reads_it(tmp_path):
    read = medannot("seg", "read", LIVER_SEG, "--json", "--labels-out", tmp_path / "liver.nrrd")
    assert read.returncode == 0, read.stderr
    summary = json.loads(read.stdout)
    assert set(summary) == SUMMARY_KEYS
    (liver,) = summary["segments"]
    assert (liver["name"], liver["algorithm_type"], liver["algorithm_name"]) == ("Liver", "SEMIAUTOMATIC",
                                                                                 "SlicerEditor")
    volume = hd.seg.segread(LIVER_SEG).get_volume(combine_segments=True)
    labels, image = read_nrrd(tmp_path / "liver.nrrd")
    # highdicom stacks these slices from the top down; MedAnnot's grids run along row x column (feet to head)
    slice_axis = volume.affine[:3, 0]
    expected = volume.array[::-1] if slice_axis[2] < 0 else volume.array
    np.testing.assert_array_equal(labels, expected)
    assert liver["voxels"] == int(volume.array.sum()) == 107098
    lowest = volume.affine[:3, 3] + (volume.array.shape[0] - 1) * slice_axis if slice_axis[2] < 0 else \
        volume.affine[:3, 3]
    np.testing.assert_allclose(image.GetOrigin(), lowest)
    assert medannot("seg", "validate", LIVER_SEG).returncode == 0


# ------------------------------------------------------------------ files that are not a complete SEG
@pytest.fixture(scope="module")
def broken_files(ct_series, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    seg_path = highdicom_seg(ct_series["datasets"], ct_series["labels"], "BINARY", folder / "seg.dcm")
    data = seg_path.read_bytes()
    (folder / "cut-header.dcm").write_bytes(data[:3000])
    (folder / "cut-pixels.dcm").write_bytes(data[:-300])
    (folder / "text.dcm").write_text("not DICOM at all\n")
    return {"cut in the header": folder / "cut-header.dcm", "cut in the pixel data": folder / "cut-pixels.dcm",
            "not DICOM": folder / "text.dcm", "a CT image": CT_SMALL}


@pytest.mark.parametrize("kind", ["cut in the header", "cut in the pixel data", "not DICOM", "a CT image"])
def test_read_and_validate_say_in_one_line_what_is_wrong_with_a_file_that_is_not_a_complete_seg(broken_files,
                                                                                                 kind):
    path = broken_files[kind]
    read = medannot("seg", "read", path)
    assert read.returncode == 1 and read.stdout == ""
    assert len(read.stderr.strip().splitlines()) == 1 and str(path) in read.stderr
    assert "internal error" not in read.stderr and "Traceback" not in read.stderr
    expected = {"cut in the header": "truncated", "cut in the pixel data": "truncated", "not DICOM": "not a DICOM",
                "a CT image": "not a DICOM-SEG (Modality CT)"}[kind]
    assert expected in read.stderr

    valid = medannot("seg", "validate", path)
    assert valid.returncode == 1
    findings = [line for line in valid.stdout.splitlines() if line.startswith(str(path))]
    assert len(findings) == 1, valid.stdout
    assert "1 error(s)" in valid.stdout

