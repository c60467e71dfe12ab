"""Reader performance (issue #11, item 3): gold cases mixed unmarked into readers' queues and measured against
their reference, and the project's agreement report (`medannot admin report`): figures and their JSON twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from harness import SHAPE, db_url, medannot  # noqa: F401
from test_review_server import (ReviewLab, auth, claim_review, client_for, lab, read_and_submit,  # noqa: F401
                                reader_labels)

from medannot.demo_data import ct_geometry, ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.server.db import make_engine, session_factory, transaction
from medannot.server.projects import ProjectError, import_cases

surface_distance = pytest.importorskip("surface_distance")

GOLD_CASE = "case-x9"  # nothing in its name gives it away


def _add_gold_case(lab: ReviewLab, tmp_path: Path) -> Path:
    series = make_ct_series(lab.root / "series" / GOLD_CASE, SHAPE)
    lab.series[GOLD_CASE] = series
    _, truth = ct_phantom(SHAPE)
    reference = export_segmentation(load_source(series), truth, ct_geometry(SHAPE), load_guideline(lab.guideline),
                                    ReaderInfo("Expert^Gold", "gold"), tmp_path / "gold").seg_path
    manifest = lab.root / "gold.csv"
    manifest.write_text(f"case_id,source,gold\n{GOLD_CASE},{series},{reference}\n")
    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        import_cases(session, lab.project_id, manifest, actor="test")
    engine.dispose()
    return reference


def _independent(reader: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    spacing = tuple(float(s) for s in ct_geometry(SHAPE).spacing[::-1])
    distances = surface_distance.compute_surface_distances(truth, reader, spacing)
    dice = 2 * (reader & truth).sum() / (reader.sum() + truth.sum())
    return float(dice), float(surface_distance.compute_robust_hausdorff(distances, 95))


def test_gold_reads_are_measured_against_the_reference_and_the_reader_never_sees_it(lab: ReviewLab,  # noqa: F811
                                                                                     tmp_path: Path) -> None:
    _add_gold_case(lab, tmp_path)
    client = client_for(lab, tmp_path)
    grows = {"r1": 0, "r2": 1}
    seen = []
    for user, grow in grows.items():
        for _ in range(3):
            claim = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, user))
            assert "gold" not in claim.text.lower()  # unmarked
            seen.append(claim.json()["case_id"])
            from test_review_server import read_and_submit_task
            read_and_submit_task(client, lab, user, claim.json(), tmp_path, grow)
    assert seen.count(GOLD_CASE) == 2
    listed = client.get(f"/api/v1/projects/{lab.project_id}/tasks", headers=auth(client, "r1"))
    assert "gold" not in listed.text.lower() or listed.status_code != 200
    rev = auth(client, "rev")
    gold_round = None
    for _ in range(3):  # one round per case
        claimed = claim_review(client, lab, rev)
        assert claimed.status_code == 200, claimed.text
        if claimed.json()["case_id"] == GOLD_CASE:
            gold_round = claimed.json()
            break
        from test_review_server import decide  # a held review is handed back until decided
        assert decide(client, rev, claimed.json(), action="consensus").status_code == 201
    states = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()
    assert gold_round is not None, [(r["case_id"], r["status"], r["error"]) for r in states]
    _, truth = ct_phantom(SHAPE)
    readers = {str(r["submission_id"]): r["reader"] for r in gold_round["reads"]}
    gold_rows = [m for m in gold_round["metrics"] if m["b"] == "gold"]
    assert {readers.get(m["a"], m["a"]) for m in gold_rows if m["segment"] == "Liver"} == {"r1", "r2", "consensus"}
    for m in gold_rows:
        if m["segment"] != "Liver" or m["a"] == "consensus":
            continue
        dice, hd95 = _independent(reader_labels(grows[readers[m["a"]]]) == 1, truth == 1)
        assert m["dice"] == pytest.approx(dice, abs=1e-3) and m["hd95_mm"] == pytest.approx(hd95, abs=0.5)
    assert not any("gold" in text for text in gold_round["disagreement"] or [])  # thresholds are for readers

    out = tmp_path / "report"
    proc = medannot("admin", "report", lab.project_id, "--output", out, db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    stored = {(m["a"], m["segment"]): m for m in gold_rows}
    for user in ("r1", "r2"):
        sid = next(s for s, r in readers.items() if r == user)
        liver = report["per_reader"]["gold"][user]["Liver"]
        assert liver["dice"]["n"] == 1 and liver["dice"]["mean"] == pytest.approx(stored[(sid, "Liver")]["dice"])
    ba = report["bland_altman_volume_ml"]["Liver"]
    assert ba["n"] == 6  # 3 cases x 2 readers against their consensus
    differences = np.asarray(ba["differences"])
    assert ba["bias"] == pytest.approx(differences.mean())
    assert ba["loa_high"] == pytest.approx(differences.mean() + 1.96 * differences.std(ddof=1))
    assert "larger of the two directed 95th percentiles" in report["hd95_definition"]
    for figure in report["figures"]:
        data = (out / figure["file"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert {f["file"] for f in report["figures"]} >= {"agreement_per_structure.png", "per_reader_vs_consensus.png",
                                                     "per_reader_vs_gold.png", "bland_altman_Liver.png"}


def test_a_gold_reference_of_another_series_is_refused_naming_the_line(lab: ReviewLab, tmp_path: Path) -> None:  # noqa: F811
    other = make_ct_series(tmp_path / "other", SHAPE)
    _, truth = ct_phantom(SHAPE)
    foreign = export_segmentation(load_source(other), truth, ct_geometry(SHAPE), load_guideline(lab.guideline),
                                  ReaderInfo("Expert^Gold", "gold"), tmp_path / "foreign").seg_path
    series = make_ct_series(tmp_path / "mine", SHAPE)
    manifest = tmp_path / "bad-gold.csv"
    manifest.write_text(f"case_id,source,gold\nc1,{series},{foreign}\n")
    engine = make_engine(lab.db_url)
    with pytest.raises(ProjectError, match=r"bad-gold.csv:2: case 'c1': gold reference .* not the case's series"):
        with transaction(session_factory(engine)) as session:
            import_cases(session, lab.project_id, manifest, actor="test")
    engine.dispose()


def test_a_report_of_a_project_without_measured_rounds_is_refused_in_one_line(lab: ReviewLab) -> None:  # noqa: F811
    proc = medannot("admin", "report", lab.project_id, "--output", lab.root / "report", db=lab.db_url)
    assert proc.returncode == 1 and "no measured review round" in proc.stderr and "Traceback" not in proc.stderr
