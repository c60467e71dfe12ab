"""Agreement and consensus of ultrasound cines (2D + t, no patient coordinates): frame by frame, in mm from the
scanner's calibration, checked against DeepMind's surface-distance in 2D."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from medannot.demo_data import cine_phantom, make_us_cine
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.dicomseg.validate import dciodvfy_path, validate_files
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.interpolation import load_cine
from medannot.review import segment_agreement
from medannot_testing import run_medannot

surface_distance = pytest.importorskip("surface_distance")

PIXEL_MM = 1.2  # the demo cine's calibration (SequenceOfUltrasoundRegions, PhysicalDeltaX/Y 0.12 cm)


def _pooled_deepmind(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float], tolerance: float
                     ) -> tuple[float, float]:
    """HD95 and NSD with DeepMind's 2D surfaces of each frame, pooled over the frames (both present in each)."""
    parts = [surface_distance.compute_surface_distances(a[f], b[f], spacing) for f in range(a.shape[0])
             if a[f].any() and b[f].any()]
    pooled = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    for distances, areas in (("distances_gt_to_pred", "surfel_areas_gt"),
                             ("distances_pred_to_gt", "surfel_areas_pred")):
        order = np.argsort(pooled[distances], kind="stable")
        pooled[distances], pooled[areas] = pooled[distances][order], pooled[areas][order]
    return (surface_distance.compute_robust_hausdorff(pooled, 95),
            surface_distance.compute_surface_dice_at_tolerance(pooled, tolerance))


@pytest.fixture(scope="module")
def cine_reads(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cine-review")
    cine_path = make_us_cine(root / "src" / "cine.dcm")
    source = load_source(root / "src")
    guideline_path = root / "echo-lv.yaml"
    guideline_path.write_bytes(resources.files("medannot.data").joinpath("echo-lv.yaml").read_bytes())
    guideline = load_guideline(guideline_path)
    _, truth = cine_phantom(*load_cine(cine_path).frames.shape)
    other = np.roll(truth, 2, axis=2)  # reader 2 draws everything 2 columns to the right
    other[-3:] = np.roll(truth[-3:], -1, axis=1)  # and the last frames 1 row up
    segs = []
    for index, labels in enumerate((truth, other)):
        result = export_segmentation(source, labels, None, guideline, ReaderInfo(f"Reader^{index}", f"r{index}"),
                                     root / f"r{index}", task_id="1")
        segs.append(Path(result.seg_path))
    return {"root": root, "src": root / "src", "segs": segs, "labels": (truth, other), "guideline": guideline_path}


def test_cine_agreement_in_mm_matches_deepmind_frame_by_frame(cine_reads: dict) -> None:
    result = run_medannot("review", "agreement", *map(str, cine_reads["segs"]), "--source", str(cine_reads["src"]),
                          "--json", "--tolerance-mm", "1.5")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["pairs"]
    truth, other = cine_reads["labels"]
    assert {row["segment"] for row in rows} == {"LV cavity", "LV wall"}
    for label, name in ((1, "LV cavity"), (2, "LV wall")):
        row = next(r for r in rows if r["segment"] == name)
        a, b = truth == label, other == label
        hd95, nsd = _pooled_deepmind(a, b, (PIXEL_MM, PIXEL_MM), 1.5)
        assert row["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
        assert row["hd95_mm"] == pytest.approx(hd95, abs=1e-4)  # SimpleITK maps are float32
        assert row["nsd"] == pytest.approx(nsd, abs=1e-6)
        assert row["volume_a_ml"] is None and row["volume_b_ml"] is None  # a cine has areas, not volumes


def test_a_contour_in_a_frame_the_other_read_lacks_makes_hd95_undefined_and_names_the_frame() -> None:
    yy, xx = np.mgrid[:40, :50]
    disc = (yy - 20) ** 2 + (xx - 25) ** 2 < 100
    a = np.stack([disc, disc])
    b = np.stack([disc, np.zeros_like(disc)])
    ag = segment_agreement(a, b, (1.0, 0.5, 0.5), 1.0, frames=True)
    assert ag.hd95_mm is None and "frames 2 " in (ag.note or "")
    assert ag.nsd == pytest.approx(2 / 3, abs=1e-9)  # the unmatched frame's contour is beyond any tolerance
    same = segment_agreement(a, a, (1.0, 0.5, 0.5), 1.0, frames=True)
    assert same.dice == 1.0 and same.hd95_mm == 0.0 and same.nsd == 1.0


def test_cine_consensus_is_a_valid_seg_on_the_cine(cine_reads: dict, tmp_path: Path) -> None:
    result = run_medannot("review", "consensus", *map(str, cine_reads["segs"]), "--method", "staple",
                          "--source", str(cine_reads["src"]), "--guideline", str(cine_reads["guideline"]),
                          "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    seg = next(tmp_path.glob("seg-*.dcm"))
    if dciodvfy_path() is not None:
        assert not [f for f in validate_files([seg]) if f.severity == "error"]


def test_cine_segs_without_their_source_are_refused_in_one_line(cine_reads: dict) -> None:
    result = run_medannot("review", "agreement", *map(str, cine_reads["segs"]))
    assert result.returncode == 1
    assert "--source" in result.stderr and "Traceback" not in result.stderr
