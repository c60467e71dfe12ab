"""DICOM-SEG + SR export: round trips for CT and ultrasound cine, provenance, corrections."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation, read_segmentation
from medannot.dicomseg.validate import validate_files
from medannot.guideline import load_guideline
from medannot.imaging import load_source

READER = ReaderInfo(name="Doe^Jane", reader_id="jdoe", role="Radiologist", institution="General Hospital")


def export_ct(ct_case: dict, guideline_path: Path, out: Path, **kwargs: object):
    return export_segmentation(load_source(ct_case["folder"]), ct_case["labels"], ct_case["geometry"],
                               load_guideline(guideline_path), READER, out, **kwargs)


def test_ct_label_map_round_trips_voxel_for_voxel_with_geometry(ct_case, liver_guideline_path, tmp_path):
    result = export_ct(ct_case, liver_guideline_path, tmp_path)
    record = read_segmentation(result.seg_path)
    np.testing.assert_array_equal(record.labels, ct_case["labels"])
    assert record.geometry is not None and not ct_case["geometry"].mismatches(record.geometry)
    assert [s["voxels"] for s in record.summary["segments"]] == [
        int((ct_case["labels"] == 1).sum()), int((ct_case["labels"] == 2).sum())]


def test_export_writes_exactly_one_seg_and_one_sr(ct_case, liver_guideline_path, tmp_path):
    result = export_ct(ct_case, liver_guideline_path, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.seg_path.name, result.sr_path.name])
    assert pydicom.dcmread(result.seg_path).Modality == "SEG"
    assert pydicom.dcmread(result.sr_path).Modality == "SR"


def test_provenance_is_recorded_in_seg_and_sr(ct_case, liver_guideline_path, tmp_path):
    when = datetime(2026, 3, 4, 10, 20, 30, tzinfo=timezone.utc)
    g = load_guideline(liver_guideline_path)
    result = export_ct(
        ct_case, liver_guideline_path, tmp_path, task_id="task-42", content_datetime=when,
        segments={"Liver": SegmentProvenance(confidence=90),
                  2: SegmentProvenance("SEMIAUTOMATIC", "Fill between slices", "5.12", confidence=55,
                                       keyframes=(2, 6), interpolated_frames=(3, 4, 5))},
    )
    seg = pydicom.dcmread(result.seg_path)
    assert str(seg.ContentCreatorName) == "Doe^Jane"
    assert seg.ContentCreatorIdentificationCodeSequence[0].PersonIdentificationCodeSequence[0].CodeValue == "jdoe"
    assert seg.ContentDate == "20260304" and seg.ContentTime.startswith("102030")
    assert [s.SegmentAlgorithmType for s in seg.SegmentSequence] == ["MANUAL", "SEMIAUTOMATIC"]
    assert seg.SegmentSequence[1].SegmentAlgorithmName == "Fill between slices"
    assert all(str(s.ContentCreatorName) == "Doe^Jane" for s in seg.SegmentSequence)
    ours = [e for e in seg.ContributingEquipmentSequence if e.Manufacturer == "MedAnnot"]
    assert ours and ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ours[0].SoftwareVersions.startswith("medannot ")
    assert g.sha256 in seg.DerivationDescription and "task-42" in seg.ContentDescription

    summary = read_segmentation(result.seg_path).summary
    assert summary["reader_name"] == "Doe^Jane" and summary["reader_id"] == "jdoe"
    assert summary["task_id"] == "task-42"
    assert summary["guideline"] == {"id": "liver-ct", "version": "1.0.0", "sha256": g.sha256}
    assert summary["content_datetime"].startswith("2026-03-04T10:20:30")
    assert [s["confidence"] for s in summary["segments"]] == [90, 55]
    assert summary["segments"][1]["algorithm_name"] == "Fill between slices"
    tracking = [str(s.TrackingUID) for s in seg.SegmentSequence]
    assert [s["tracking_uid"] for s in summary["segments"]] == tracking

    sr = hd.sr.srread(result.sr_path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [str(grp.tracking_uid) for grp in groups] == tracking
    text = str(pydicom.dcmread(result.sr_path))
    assert "3,4,5" in text and "2,6" in text  # interpolated frames and keyframes listed in the SR


def test_us_cine_without_frame_of_reference_round_trips_and_references_source_frames(
        us_case, echo_guideline_path, tmp_path):
    source = load_source(us_case["path"])
    assert source.geometry is None and source.is_multiframe
    result = export_segmentation(source, us_case["labels"], None, load_guideline(echo_guideline_path), READER,
                                 tmp_path)
    seg = pydicom.dcmread(result.seg_path)
    assert "FrameOfReferenceUID" not in seg
    present = [(s, f) for s in (1, 2) for f in range(us_case["labels"].shape[0])
               if (us_case["labels"][f] == s).any()]
    assert int(seg.NumberOfFrames) == len(present)
    refs = [(int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
             int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber))
            for item in seg.PerFrameFunctionalGroupsSequence]
    assert refs == [(s, f + 1) for s, f in present]
    assert all(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
               == source.first.SOPInstanceUID for item in seg.PerFrameFunctionalGroupsSequence)
    record = read_segmentation(result.seg_path)
    np.testing.assert_array_equal(record.labels, us_case["labels"])
    assert not [f for f in validate_files([result.seg_path, result.sr_path]) if f.severity == "error"]


def test_fractional_probability_maps_round_trip_at_half(ct_case, liver_guideline_path, tmp_path):
    labels = ct_case["labels"]
    rng = np.random.default_rng(3)
    liver = np.clip((labels >= 1) * 0.8 + rng.uniform(0, 0.15, labels.shape), 0, 1).astype(np.float32)
    result = export_segmentation(load_source(ct_case["folder"]), None, ct_case["geometry"],
                                 load_guideline(liver_guideline_path), READER, tmp_path,
                                 probabilities={"Liver": liver})
    seg = pydicom.dcmread(result.seg_path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    record = read_segmentation(result.seg_path)
    np.testing.assert_array_equal(record.labels == 1, liver >= 0.5)


def test_fractional_us_cine_without_frame_of_reference(us_case, echo_guideline_path, tmp_path):
    cavity = (us_case["labels"] == 1).astype(np.float32) * 0.9
    wall = (us_case["labels"] == 2).astype(np.float32) * 0.7
    result = export_segmentation(load_source(us_case["path"]), None, None, load_guideline(echo_guideline_path),
                                 READER, tmp_path, probabilities={"LV cavity": cavity, "LV wall": wall})
    record = read_segmentation(result.seg_path)
    np.testing.assert_array_equal(record.labels, us_case["labels"])
    assert not [f for f in validate_files([result.seg_path, result.sr_path]) if f.severity == "error"]


def test_a_correction_is_a_new_instance_that_references_the_one_it_replaces(ct_case, liver_guideline_path,
                                                                           tmp_path):
    first = export_ct(ct_case, liver_guideline_path, tmp_path)
    corrected_labels = ct_case["labels"].copy()
    corrected_labels[corrected_labels == 2] = 1
    second = export_segmentation(load_source(ct_case["folder"]), corrected_labels, ct_case["geometry"],
                                 load_guideline(liver_guideline_path), READER, tmp_path, replaces=first.seg_path)
    assert first.seg_path.exists() and first.sr_path.exists()
    assert second.seg_sop_instance_uid != first.seg_sop_instance_uid
    new_sr = pydicom.dcmread(second.sr_path)
    predecessors = [i.ReferencedSOPInstanceUID for s in new_sr.PredecessorDocumentsSequence
                    for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
    assert predecessors == [first.sr_sop_instance_uid]
    assert first.seg_sop_instance_uid in pydicom.dcmread(second.seg_path).DerivationDescription


def _stored_frames(seg: pydicom.Dataset, plane_of: dict[tuple[str, int], int]) -> dict[tuple[int, int], np.ndarray]:
    """(segment number, source plane index) -> stored uint8 frame, in file order, from the SEG's own references."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = np.frombuffer(seg.PixelData, dtype=np.uint8, count=int(seg.NumberOfFrames) * seg.Rows * seg.Columns)
    frames = frames.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    stored = {}
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, frames):
        holder = item if "SegmentIdentificationSequence" in item else shared
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        key = (int(holder.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
               plane_of[(str(ref.ReferencedSOPInstanceUID), int(ref.get("ReferencedFrameNumber", 1)))])
        assert key not in stored
        stored[key] = frame
    return stored


def _probability_maps(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """One map per label: random fractions inside, exact rounding boundaries on one row, 0 outside."""
    rng = np.random.default_rng(seed)
    maps = []
    for label in (1, 2):
        p = np.where(labels == label, rng.uniform(1 / 255, 1.0, labels.shape), 0.0).astype(np.float32)
        plane = int(np.flatnonzero((labels == label).any(axis=(1, 2)))[0])
        p[plane, 0, :6] = np.array([0.5, 1.5, 127.5, 128.5, 254.5, 255], dtype=np.float32) / np.float32(255)
        maps.append(p)
    return maps


@pytest.mark.parametrize("case", ["ct", "enhanced ct", "us"])
def test_fractional_frames_store_round_p_times_255_only_where_the_segment_is(case, ct_case, us_case,
                                                                           enhanced_ct_path,
                                                                           liver_guideline_path,
                                                                           echo_guideline_path, tmp_path):
    if case == "ct":
        source, guideline, geometry = load_source(ct_case["folder"]), liver_guideline_path, ct_case["geometry"]
        labels, names = ct_case["labels"], ("Liver", "Lesion")
        plane_of = {(str(ds.SOPInstanceUID), 1): i for i, ds in enumerate(source.datasets)}
    elif case == "enhanced ct":
        source, guideline, labels = load_source(enhanced_ct_path), liver_guideline_path, ct_case["labels"]
        geometry, names = source.geometry, ("Liver", "Lesion")
        assert geometry is not None and source.is_multiframe
        plane_of = {(str(source.first.SOPInstanceUID), f + 1): f for f in range(labels.shape[0])}
    else:
        source, guideline, geometry = load_source(us_case["path"]), echo_guideline_path, None
        labels, names = us_case["labels"], ("LV cavity", "LV wall")
        plane_of = {(source.first.SOPInstanceUID, f + 1): f for f in range(labels.shape[0])}
    maps = _probability_maps(labels, seed=11)
    result = export_segmentation(source, None, geometry, load_guideline(guideline), READER, tmp_path,
                                 probabilities=dict(zip(names, maps)))
    seg = pydicom.dcmread(result.seg_path)
    assert (seg.SegmentationType, seg.BitsAllocated, seg.MaximumFractionalValue) == ("FRACTIONAL", 8, 255)

    stored = _stored_frames(seg, plane_of)
    expected = {(number, plane) for number, p in enumerate(maps, start=1)
                for plane in np.flatnonzero(p.max(axis=(1, 2)) > 0)}
    assert set(stored) == expected
    assert [number for number, _ in stored] == sorted(number for number, _ in stored)  # segment by segment
    if case == "us":
        assert list(stored) == sorted(stored)  # and in frame order (CT: in highdicom's order along the normal)
    for (number, plane), frame in stored.items():
        np.testing.assert_array_equal(frame, np.round(maps[number - 1][plane] * 255).astype(np.uint8),
                                      err_msg=f"segment {number}, plane {plane}")
    # Half-way values round to even, as highdicom rounds.
    first_row = stored[(1, int(np.flatnonzero(maps[0].max(axis=(1, 2)) > 0)[0]))][0, :6]
    assert first_row.tolist() == [0, 2, 128, 128, 254, 255]
    if case != "us":
        segment_overlap = hd.seg.segread(result.seg_path).SegmentsOverlap
        assert segment_overlap == "UNDEFINED"
    assert not [f for f in validate_files([result.seg_path, result.sr_path]) if f.severity == "error"]


def test_fractional_ct_plane_whose_probabilities_all_round_to_zero_gets_no_frame(ct_case, liver_guideline_path,
                                                                                tmp_path):
    source = load_source(ct_case["folder"])
    liver, lesion = _probability_maps(ct_case["labels"], seed=12)
    faint = int(np.flatnonzero(liver.max(axis=(1, 2)) > 0)[1])
    liver[faint] = np.where(liver[faint] > 0, np.float32(0.4 / 255), 0)
    lesion[faint] = 0
    result = export_segmentation(source, None, ct_case["geometry"], load_guideline(liver_guideline_path), READER,
                                 tmp_path, probabilities={"Liver": liver, "Lesion": lesion})
    seg = pydicom.dcmread(result.seg_path)
    stored = _stored_frames(seg, {(str(ds.SOPInstanceUID), 1): i for i, ds in enumerate(source.datasets)})
    assert (1, faint) not in stored and (1, faint - 1) in stored and (1, faint + 1) in stored
    for (number, plane), frame in stored.items():
        np.testing.assert_array_equal(frame, np.round((liver, lesion)[number - 1][plane] * 255).astype(np.uint8))
    # As highdicom numbers the planes of a float array: the faint plane keeps its number, it only has no frame.
    numbered = int(((liver.max(axis=(1, 2)) > 0) | (lesion.max(axis=(1, 2)) > 0)).sum())
    spatial = {int(item.FrameContentSequence[0].DimensionIndexValues[1])
               for item in seg.PerFrameFunctionalGroupsSequence}
    assert max(spatial) == numbered and len(spatial) == numbered - 1
    # highdicom's reader puts every frame back on its plane (the faint plane reads as 0, which it rounds to).
    read_back = hd.seg.segread(result.seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source.datasets], segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True, rescale_fractional=False)
    for index, p in enumerate((liver, lesion)):
        np.testing.assert_array_equal(read_back[..., index], np.round(p * 255).astype(np.uint8))


def test_export_of_acr_nema_dates_leaves_the_loaded_source_as_read(ct_case, liver_guideline_path, tmp_path):
    """The SEG gets DA dates; the source a caller (the Slicer worklist) keeps still holds what its files say."""
    folder = tmp_path / "ct"
    folder.mkdir()
    for path in sorted(Path(ct_case["folder"]).iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyDate = "2004.01.19"
        ds.save_as(folder / path.name)
    source = load_source(folder)
    result = export_segmentation(source, ct_case["labels"], ct_case["geometry"], load_guideline(liver_guideline_path),
                                 READER, tmp_path / "out")
    assert pydicom.dcmread(result.seg_path).StudyDate == "20040119"
    assert {str(ds.StudyDate) for ds in source.datasets} == {"2004.01.19"}


def test_seg_of_frames_stored_head_to_feet_reads_back_on_the_source_grid(ct_case, enhanced_ct_path,
                                                                        liver_guideline_path, tmp_path):
    """Frames against the slice normal: `seg read` without --source gives the grid load_source gives, so the
    label map it writes lies where the reader drew it (not mirrored or shifted along the slice axis)."""
    enhanced = pydicom.dcmread(enhanced_ct_path)
    order = np.arange(int(enhanced.NumberOfFrames))[::-1]
    enhanced.PerFrameFunctionalGroupsSequence = [enhanced.PerFrameFunctionalGroupsSequence[i] for i in order]
    enhanced.PixelData = enhanced.pixel_array[order].tobytes()
    path = tmp_path / "head-to-feet.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    source = load_source(path)
    labels = ct_case["labels"][::-1].copy()  # the drawing in frame order
    result = export_segmentation(source, labels, source.geometry, load_guideline(liver_guideline_path), READER,
                                 tmp_path / "out")
    record = read_segmentation(result.seg_path)
    np.testing.assert_array_equal(record.labels, labels)
    assert record.geometry is not None and source.geometry.mismatches(record.geometry) == []


@pytest.mark.parametrize(("kind", "stored", "plain"), [
    ("DA", b"20260304", True), ("DA", b"19970424 ", True), ("DA", b"", True), ("DA", b"2004.01.19", False),
    ("DA", b"20261399", False), ("DA", b"00000101", False), ("DA", b"2026030", False), ("DA", b"20260304\\20260305", False),
    ("TM", b"102030.5 ", True), ("TM", b"1020", True), ("TM", b"10", True), ("TM", b"235959.123456", True),
    ("TM", b"14:04:38", False), ("TM", b"24", False), ("TM", b"102060", False), ("TM", b"1020305", False),
])
def test_dates_and_times_read_as_stored_are_recognised_without_converting_them(kind, stored, plain):
    from pydicom.dataelem import RawDataElement

    from medannot.dicomseg._seg_builder import _as_dicom_date_or_time, _is_plain_date_or_time

    tag = 0x00080020 if kind == "DA" else 0x00080030
    raw = RawDataElement(tag, kind, len(stored), stored, 0, False, True)
    assert _is_plain_date_or_time(raw, kind) is plain
    if plain and stored:
        text = stored.decode().strip()
        assert _as_dicom_date_or_time(text, kind) == text  # what the full check would have kept as it is
