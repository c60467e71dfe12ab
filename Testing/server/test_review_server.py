"""The review stage on SQLite and PostgreSQL: blinding, reviewer claims, stored agreement and consensus,
decisions, electronic signatures."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from dataclasses import dataclass

from harness import GUIDELINE, PASSWORD, SHAPE, Lab, db_url, make_lab  # noqa: F401
from scipy import ndimage
from sqlalchemy import create_engine, text

from medannot.demo_data import ct_geometry, ct_phantom
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.server.app import create_app
from medannot.server.config import resolve_settings
from medannot.server.db import make_engine, session_factory, transaction
from medannot.server.models import utcnow
from medannot.server.projects import add_guideline_version

REVIEW_BLOCK = """review:
  senior_share: 0.2
  gold_standard_cases: []
  consensus: staple
  agreement:
    Liver: {dice_min: 0.99, hd95_max_mm: 5.0, nsd_tolerance_mm: 1.0, nsd_min: 0.5}
  adjudication: always
  signatures: [reviewed, approved]
"""


@dataclass
class ReviewLab(Lab):
    """A lab whose project's current guideline (``guideline``, the file readers export with) has a review block."""

    guideline: Path = GUIDELINE


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> ReviewLab:  # noqa: F811
    base = make_lab(db_url, tmp_path / "lab", cases=2, extra_users={"rev": "reviewer", "rev2": "reviewer",
                                                                    "r3": "annotator"})
    lab = ReviewLab(**vars(base))
    text_ = GUIDELINE.read_text().replace('version: "1.0.0"', 'version: "1.1.0"')
    text_ = re.sub(r"review:\n(  .*\n)+", REVIEW_BLOCK, text_, count=1)  # the whole bundled review block
    assert "consensus: staple" in text_
    lab.guideline = tmp_path / "lab" / "liver-review.yaml"
    lab.guideline.write_text(text_)
    engine = make_engine(db_url)
    with transaction(session_factory(engine)) as session:
        add_guideline_version(session, lab.project_id, lab.guideline, actor="test")
    engine.dispose()
    return lab


def new_version(lab: ReviewLab, version: str, changes: dict[str, str]) -> None:
    """Give the project a new guideline version: the review guideline with these text changes."""
    text_ = lab.guideline.read_text().replace('version: "1.1.0"', f'version: "{version}"')
    for old, new in changes.items():
        assert old in text_
        text_ = text_.replace(old, new)
    lab.guideline = lab.guideline.with_name(f"liver-{version}.yaml")
    lab.guideline.write_text(text_)
    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        add_guideline_version(session, lab.project_id, lab.guideline, actor="test")
    engine.dispose()


def client_for(lab: Lab, tmp_path: Path) -> TestClient:
    return TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data", 1800)))


def auth(client: TestClient, user: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def reader_labels(grow: int) -> np.ndarray:
    """The phantom's labels with the liver grown by ``grow`` voxels in-plane: readers who disagree by a rim."""
    _, labels = ct_phantom(SHAPE)
    if grow:
        plane = np.zeros((1, 3, 3), bool)
        plane[0, 1, :] = plane[0, :, 1] = True
        grown = ndimage.binary_dilation(labels > 0, plane, iterations=grow)
        labels[grown & (labels == 0)] = 1
    return labels


def read_and_submit(client: TestClient, lab: ReviewLab, user: str, tmp_path: Path, grow: int = 0) -> dict:
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, user)).json()
    return read_and_submit_task(client, lab, user, task, tmp_path, grow)


def read_and_submit_task(client: TestClient, lab: ReviewLab, user: str, task: dict, tmp_path: Path,
                         grow: int = 0) -> dict:
    headers = auth(client, user)
    out = tmp_path / "exports" / user / task["case_id"] / uuid.uuid4().hex[:6]
    result = export_segmentation(load_source(lab.series[task["case_id"]]), reader_labels(grow), ct_geometry(SHAPE),
                                 load_guideline(lab.guideline), ReaderInfo(f"{user}^Test", user), out)
    response = client.post(f"/api/v1/tasks/{task['task_id']}/submit",
                           headers={**headers, "X-Lease-Token": task["lease_token"],
                                    "Idempotency-Key": str(uuid.uuid4())},
                           files={"seg": result.seg_path.read_bytes(), "sr": result.sr_path.read_bytes()})
    assert response.status_code == 201, response.text
    return {**task, **response.json(), "seg_path": result.seg_path, "sr_path": result.sr_path}


def claim_review(client: TestClient, lab: Lab, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/projects/{lab.project_id}/reviews/claim", headers=headers)


def decide(client: TestClient, headers: dict[str, str], review: dict, key: str | None = None,  # type: ignore[no-untyped-def]
           **body: object):
    return client.post(f"/api/v1/reviews/{review['review_id']}/decide", json=body,
                       headers={**headers, "X-Lease-Token": review["lease_token"] or "",
                                "Idempotency-Key": key or str(uuid.uuid4())})


def test_a_reviewer_never_sees_a_read_before_all_reads_of_the_case_are_in(lab, tmp_path):
    client = client_for(lab, tmp_path)
    rev = auth(client, "rev")
    first = read_and_submit(client, lab, "r1", tmp_path)
    assert claim_review(client, lab, rev).status_code == 204
    assert client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json() == []
    hidden = client.get(f"/api/v1/submissions/{first['submission_id']}/seg", headers=rev)
    assert hidden.status_code == 403 and "all reads of its case are in" in hidden.json()["detail"]
    other_reader = client.get(f"/api/v1/submissions/{first['submission_id']}/seg", headers=auth(client, "r2"))
    assert other_reader.status_code == 403  # readers stay blind to each other, before and after
    assert client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=auth(client, "r1")).status_code == 403

    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    listed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()
    assert [(r["case_id"], r["status"], r["round"]) for r in listed] == [(first["case_id"], "open", 1)]
    shown = client.get(f"/api/v1/submissions/{first['submission_id']}/seg", headers=rev)
    assert shown.status_code == 200 and shown.content == first["seg_path"].read_bytes()
    still_hidden = client.get(f"/api/v1/submissions/{first['submission_id']}/seg", headers=auth(client, "r2"))
    assert still_hidden.status_code == 403


def test_stored_metrics_match_medannot_review_on_the_same_segs_and_the_consensus_is_a_seg_of_them(lab, tmp_path):
    from medannot.review.agreement import agreement_table
    from medannot.review.reads import load_reads

    client = client_for(lab, tmp_path)
    a = read_and_submit(client, lab, "r1", tmp_path)
    b = read_and_submit(client, lab, "r2", tmp_path, grow=2)
    rev = auth(client, "rev")
    review = claim_review(client, lab, rev).json()
    assert review["status"] == "leased" and review["consensus"] is not None
    assert any("Liver" in miss and "Dice" in miss for miss in review["disagreement"])  # dice_min 0.99 missed

    reads = load_reads([a["seg_path"], b["seg_path"]], load_source(lab.series[a["case_id"]]))
    ours = {(row.segment, row.a, row.b): row.agreement for segment, tolerance in (("Liver", 1.0), ("Lesion", 2.0))
            for row in agreement_table({str(a["submission_id"]): reads[0].masks,
                                        str(b["submission_id"]): reads[1].masks}, [segment], tolerance)}
    stored = {(m["segment"], m["a"], m["b"]): m for m in review["metrics"]}
    assert set(ours) <= set(stored)
    for key, expected in ours.items():
        got = stored[key]
        assert got["dice"] == pytest.approx(expected.dice, abs=1e-9)
        assert got["hd95_mm"] == pytest.approx(expected.hd95_mm, abs=1e-9)
        assert got["nsd"] == pytest.approx(expected.nsd, abs=1e-9)
        assert got["tolerance_mm"] == expected.tolerance_mm
        assert got["volume_b_ml"] - got["volume_a_ml"] == pytest.approx(got["volume_difference_ml"])
    liver = stored[("Liver", str(a["submission_id"]), str(b["submission_id"]))]
    assert liver["dice"] < 0.99 and liver["below_threshold"] is True
    assert {(m["a"], m["b"]) for m in review["metrics"] if m["b"] == "consensus"} == {
        (str(a["submission_id"]), "consensus"), (str(b["submission_id"]), "consensus")}

    import io

    from pydicom import dcmread

    seg = client.get(f"/api/v1/reviews/{review['review_id']}/consensus/seg", headers=rev)
    sr = client.get(f"/api/v1/reviews/{review['review_id']}/consensus/sr", headers=rev)
    assert seg.status_code == sr.status_code == 200
    ds = dcmread(io.BytesIO(seg.content), stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert ds.SegmentSequence[0].SegmentAlgorithmName == "STAPLE"
    for read in reads:  # the SR names every reader SEG the consensus was made from
        assert read.seg_uid.encode() in sr.content


def test_a_reviewer_cannot_claim_or_sign_a_case_they_read(lab, tmp_path):
    client = client_for(lab, tmp_path)
    a = read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r3", tmp_path, grow=1)
    engine = create_engine(lab.db_url)
    with engine.begin() as connection:  # r3 becomes a reviewer after reading case-001
        connection.execute(text("UPDATE users SET role = 'reviewer' WHERE username = 'r3'"))
    engine.dispose()
    r3 = auth(client, "r3")
    assert claim_review(client, lab, r3).status_code == 204
    own = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=r3,
                      json={"password": PASSWORD, "meaning": "approved"})
    assert own.status_code == 403 and "read this case yourself" in own.json()["detail"]
    assert claim_review(client, lab, auth(client, "rev")).json()["case_id"] == a["case_id"]


def test_decisions_are_audited_idempotent_and_refused_once_the_case_is_out_of_review(lab, tmp_path):
    client = client_for(lab, tmp_path)
    rev = auth(client, "rev")
    # a review that does not exist is refused as one whose token is wrong: review ids cannot be probed (#14 I3)
    missing = decide(client, rev, {"review_id": 999, "lease_token": "x"}, action="consensus")
    assert missing.status_code == 409 and "lease token is not" in missing.json()["detail"]
    a = read_and_submit(client, lab, "r1", tmp_path)
    b = read_and_submit(client, lab, "r2", tmp_path, grow=1)
    review = claim_review(client, lab, rev).json()
    stale = decide(client, rev, {**review, "lease_token": "forged"}, action="consensus")
    assert stale.status_code == 409 and "lease token" in stale.json()["detail"]
    not_a_read = decide(client, rev, review, action="accept", submission_id=12345)
    assert not_a_read.status_code == 422 and "not one of the reads" in not_a_read.json()["detail"]
    done = decide(client, rev, review, key="d-1", action="accept", submission_id=b["submission_id"])
    assert done.status_code == 201 and done.json()["replayed"] is False
    replay = decide(client, rev, review, key="d-1", action="accept", submission_id=b["submission_id"])
    assert replay.status_code == 201 and replay.json()["decision_id"] == done.json()["decision_id"]
    # the same key with another decision, or without the lease it was made with, is refused (#14 I1)
    other = decide(client, rev, review, key="d-1", action="accept", submission_id=a["submission_id"])
    assert other.status_code == 422 and "differs in submission" in other.json()["detail"]
    unleased = decide(client, rev, {**review, "lease_token": "forged"}, key="d-1", action="accept",
                      submission_id=b["submission_id"])
    assert unleased.status_code == 409 and "lease token is not" in unleased.json()["detail"]
    again = decide(client, rev, review, action="consensus")
    assert again.status_code == 409 and "not in review" in again.json()["detail"]
    assert client.get(f"/api/v1/reviews/{review['review_id']}", headers=rev).json()["status"] == "decided"

    # the second case: returned to r1 with a reason; r1 gets that slot back, its first result is kept
    c = read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path)
    second = claim_review(client, lab, rev).json()
    assert second["case_id"] == c["case_id"] != a["case_id"]
    no_reason = decide(client, rev, second, action="return", submission_id=c["submission_id"])
    assert no_reason.status_code == 422
    for bad in ("lesion\x00missed", "lesion\x1bmissed", "x" * 4001):
        assert decide(client, rev, second, action="return", submission_id=c["submission_id"],
                      reason=bad).status_code == 422
    back = decide(client, rev, second, action="return", submission_id=c["submission_id"], reason="lesion missed")
    assert back.status_code == 201
    again = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r1")).json()
    assert again["task_id"] == c["task_id"] and again["returned_reason"] == "lesion missed"
    released = client.post(f"/api/v1/tasks/{again['task_id']}/release",
                           headers={**auth(client, "r1"), "X-Lease-Token": again["lease_token"]})
    assert released.status_code == 204  # given back, the returned slot still waits for r1 alone
    assert client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r3")).status_code == 204
    again = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r1")).json()
    assert again["task_id"] == c["task_id"]
    assert client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r3")).status_code == 204
    kept = client.get(f"/api/v1/submissions/{c['submission_id']}/seg", headers=rev)
    assert kept.status_code == 200
    redo = client.post(f"/api/v1/tasks/{c['task_id']}/submit",
                       headers={**auth(client, "r1"), "X-Lease-Token": again["lease_token"], "Idempotency-Key": "redo"},
                       files={"seg": c["seg_path"].read_bytes(), "sr": c["seg_path"].read_bytes()})
    assert redo.status_code == 422  # (an SR is required: nothing stored)
    redone = read_and_submit_task(client, lab, "r1", again, tmp_path, grow=1)
    assert redone["replaces"] == c["submission_id"]
    rounds = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()
    assert [(r["case_id"], r["round"], r["status"]) for r in rounds][-2:] == [
        (c["case_id"], 1, "returned"), (c["case_id"], 2, "open")]
    audit = client.get("/api/v1/audit", headers=auth(client, "admin")).json()
    actions = [(r["action"], r["entity"], r["reason"]) for r in audit]
    assert ("review.decide", f"review:{review['review_id']}", None) in actions
    assert ("task.return", f"task:{c['task_id']}", "lesion missed") in actions


def test_signature_needs_the_password_and_fails_verification_once_the_bytes_change(lab, tmp_path):
    client = client_for(lab, tmp_path)
    a = read_and_submit(client, lab, "r1", tmp_path)
    r1 = auth(client, "r1")
    early = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=auth(client, "rev"),
                        json={"password": PASSWORD, "meaning": "reviewed"})
    assert early.status_code == 403 and "not in review" in early.json()["detail"]
    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    rev = auth(client, "rev")
    wrong = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=rev,
                        json={"password": "not my password at all", "meaning": "reviewed"})
    assert wrong.status_code == 403 and "password is wrong" in wrong.json()["detail"]
    audit = client.get("/api/v1/audit", headers=auth(client, "admin")).json()
    failed = [r for r in audit if r["action"] == "signature.failed"]
    assert len(failed) == 1 and failed[0]["user"] == "rev" and '"failed_logins": 1' in failed[0]["new_value"]
    own = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=r1,
                      json={"password": PASSWORD, "meaning": "approved"})
    assert own.status_code == 403  # a reader cannot approve their own read
    assert client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=r1,
                       json={"password": PASSWORD, "meaning": "authored"}).status_code == 201

    signed = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=rev,
                         json={"password": PASSWORD, "meaning": "approved", "printed_name": "Rev Iewer"})
    assert signed.status_code == 201, signed.text
    body = signed.json()
    seg_bytes = a["seg_path"].read_bytes()
    assert body["sha256"] == hashlib.sha256(seg_bytes).hexdigest()
    assert (body["user"], body["printed_name"], body["meaning"]) == ("rev", "Rev Iewer", "approved")
    assert body["signed_at"].endswith("Z")
    check = client.get(f"/api/v1/signatures/{body['signature_id']}/verify", headers=rev).json()
    assert check["valid"] is True

    # approval reissues the SR as VERIFIED by the signer at the signature's time, a new instance
    import io

    from pydicom import dcmread

    from medannot.dicomseg.validate import run_dciodvfy

    original = dcmread(a["sr_path"])
    verified_bytes = client.get(f"/api/v1/signatures/{body['signature_id']}/sr", headers=rev).content
    verified = dcmread(io.BytesIO(verified_bytes))
    observer = verified.VerifyingObserverSequence[0]
    assert verified.VerificationFlag == "VERIFIED" and str(observer.VerifyingObserverName) == "Rev^Iewer"
    assert observer.VerificationDateTime.startswith(body["signed_at"][:19].replace("-", "").replace("T", "")
                                                    .replace(":", ""))
    assert verified.SOPInstanceUID != original.SOPInstanceUID
    predecessor = verified.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == original.SOPInstanceUID
    (tmp_path / "verified-sr.dcm").write_bytes(verified_bytes)
    assert [f for f in run_dciodvfy(tmp_path / "verified-sr.dcm") if f.severity == "error"] == []
    reviewed_only = client.post(f"/api/v1/submissions/{a['submission_id']}/sign", headers=auth(client, "rev2"),
                                json={"password": PASSWORD, "meaning": "reviewed"}).json()
    assert client.get(f"/api/v1/signatures/{reviewed_only['signature_id']}/sr", headers=rev).status_code == 404
    changed = bytearray(seg_bytes)
    changed[-1] ^= 0xFF
    posted = client.post(f"/api/v1/signatures/{body['signature_id']}/verify", headers=rev,
                         files={"file": bytes(changed)}).json()
    assert posted["valid"] is False and "changed after signing" in posted["detail"]
    stored = tmp_path / "data" / "objects" / body["sha256"][:2] / body["sha256"]
    stored.write_bytes(bytes(changed))  # someone edits the stored file
    check = client.get(f"/api/v1/signatures/{body['signature_id']}/verify", headers=rev).json()
    assert check["valid"] is False and "changed after signing" in check["detail"]


def test_agreeing_reads_are_decided_by_consensus_without_a_reviewer_when_adjudication_is_on_disagreement(lab,
                                                                                                   tmp_path):
    new_version(lab, "1.2.0", {"adjudication: always": "adjudication: on_disagreement",
                               "dice_min: 0.99": "dice_min: 0.5"})
    client = client_for(lab, tmp_path)
    read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=1)  # Dice well above 0.5, HD95 below 5 mm
    rev = auth(client, "rev")
    listed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()
    assert [(r["status"], r["disagreement"], r["result"]["kind"]) for r in listed] == [("decided", [], "consensus")]
    assert claim_review(client, lab, rev).status_code == 204
    # the consensus still needs its signatures before the case is final
    assert (listed[0]["signatures_required"], listed[0]["final"]) == (["reviewed", "approved"], False)
    for meaning in ("reviewed", "approved"):
        signed = client.post(f"/api/v1/reviews/{listed[0]['review_id']}/consensus/sign", headers=rev,
                             json={"password": PASSWORD, "meaning": meaning})
        assert signed.status_code == 201, signed.text
    after = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()[0]
    assert (after["signatures"], after["final"]) == (["approved", "reviewed"], True)


def test_no_consensus_when_the_guideline_says_none(lab, tmp_path):
    new_version(lab, "1.3.0", {"consensus: staple": "consensus: none"})
    client = client_for(lab, tmp_path)
    a = read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    rev = auth(client, "rev")
    review = claim_review(client, lab, rev).json()
    assert review["consensus"] is None and all("consensus" not in (m["a"], m["b"]) for m in review["metrics"])
    refused = decide(client, rev, review, action="consensus")
    assert refused.status_code == 422 and "no consensus" in refused.json()["detail"]
    assert decide(client, rev, review, action="accept", submission_id=a["submission_id"]).status_code == 201
    listed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()[0]
    assert listed["result"] == {"kind": "submission", "submission_id": a["submission_id"],
                                "seg_sha256": a["seg_sha256"]}


def test_an_edited_segmentation_is_a_decision_that_references_what_it_was_edited_from(lab, tmp_path):
    client = client_for(lab, tmp_path)
    a = read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=2)
    rev = auth(client, "rev")
    review = claim_review(client, lab, rev).json()

    def export(replaces: Path | None) -> tuple[bytes, bytes]:
        out = tmp_path / "edit" / uuid.uuid4().hex[:6]
        made = export_segmentation(load_source(lab.series[a["case_id"]]), reader_labels(1), ct_geometry(SHAPE),
                                   load_guideline(lab.guideline), ReaderInfo("rev^Test", "rev"), out,
                                   replaces=replaces)
        return made.seg_path.read_bytes(), made.sr_path.read_bytes()

    def send(seg: bytes, sr: bytes):  # type: ignore[no-untyped-def]
        return client.post(f"/api/v1/reviews/{review['review_id']}/decide/edited", files={"seg": seg, "sr": sr},
                           headers={**rev, "X-Lease-Token": review["lease_token"],
                                    "Idempotency-Key": str(uuid.uuid4())})

    unanchored = send(*export(None))
    assert unanchored.status_code == 422 and "edited from" in unanchored.json()["detail"]
    seg, sr = export(a["seg_path"])
    done = send(seg, sr)
    assert done.status_code == 201, done.text
    detail = client.get(f"/api/v1/reviews/{review['review_id']}", headers=rev).json()
    reads = {r["submission_id"]: r for r in detail["reads"]}
    assert detail["status"] == "decided" and detail["edited"]["edited_from_uid"] == reads[a["submission_id"]]["seg_uid"]
    assert detail["result"]["kind"] == "edited"
    assert client.get(f"/api/v1/reviews/{review['review_id']}/edited/seg", headers=rev).content == seg

    def sign(headers: dict[str, str], meaning: str):  # type: ignore[no-untyped-def]
        return client.post(f"/api/v1/reviews/{review['review_id']}/edited/sign", headers=headers,
                           json={"password": PASSWORD, "meaning": meaning})

    assert sign(rev, "authored").status_code == 201
    assert sign(rev, "approved").status_code == 403  # its own drawing
    rev2 = auth(client, "rev2")
    assert sign(rev2, "reviewed").status_code == sign(rev2, "approved").status_code == 201
    listed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()[0]
    assert listed["final"] is True and listed["signatures"] == ["approved", "authored", "reviewed"]


def test_client_commands_list_claim_download_sign_and_decide_a_review(tmp_path):
    import json

    import requests
    from harness import ServerProcess, login, run_medannot

    lab = make_lab(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "lab", cases=1,
                   extra_users={"rev": "reviewer"})
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        subs = []
        for user in ("r1", "r2"):
            headers = login(server.url, user)
            task = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/claim", headers=headers,
                                 timeout=30).json()
            seg, sr = lab.export_for(task["case_id"], tmp_path / user, reader=user)
            sent = requests.post(f"{server.url}/api/v1/tasks/{task['task_id']}/submit", timeout=120,
                                 headers={**headers, "X-Lease-Token": task["lease_token"], "Idempotency-Key": user},
                                 files={"seg": seg.read_bytes(), "sr": sr.read_bytes()})
            assert sent.status_code == 201, sent.text
            subs.append(sent.json()["submission_id"])
        env = {"MEDANNOT_HOME": str(tmp_path / "home")}

        def cli(*args: object, stdin: str | None = None):  # type: ignore[no-untyped-def]
            return run_medannot("client", *args, stdin=stdin, env=env)

        assert cli("login", "--server", server.url, "--username", "rev", "--password-stdin",
                   stdin=PASSWORD + "\n").returncode == 0
        listed = cli("reviews", lab.project_id, "--json")
        assert listed.returncode == 0 and [r["status"] for r in json.loads(listed.stdout)] == ["open"]
        claimed = cli("review", "next", lab.project_id, "--download", tmp_path / "review")
        assert claimed.returncode == 0, claimed.stderr
        review = json.loads(claimed.stdout)
        assert sorted(review["files"]) == sorted([f"submission-{s}-{k}.dcm" for s in subs for k in ("seg", "sr")]
                                                 + ["consensus-seg.dcm", "consensus-sr.dcm"])
        assert {m["segment"] for m in review["metrics"]} == {"Liver", "Lesion"}
        wrong = cli("sign", subs[0], "--meaning", "reviewed", "--password-stdin", stdin="wrong password!!\n")
        assert wrong.returncode == 1 and "password is wrong" in wrong.stderr
        signed = cli("sign", subs[0], "--meaning", "reviewed", "--password-stdin", stdin=PASSWORD + "\n")
        assert signed.returncode == 0, signed.stderr
        assert json.loads(signed.stdout)["sha256"] == hashlib.sha256(
            (tmp_path / "review" / f"submission-{subs[0]}-seg.dcm").read_bytes()).hexdigest()
        both = cli("review", "decide", review["review_id"], "--lease-token", review["lease_token"], "--consensus",
                   "--accept", subs[0])
        assert both.returncode == 2 and "exactly one of" in both.stderr
        half = cli("review", "decide", review["review_id"], "--lease-token", review["lease_token"],
                   "--seg", tmp_path / "review" / "consensus-seg.dcm")
        assert half.returncode == 2 and "both --seg SEG and --sr SR" in half.stderr
        done = cli("review", "decide", review["review_id"], "--lease-token", review["lease_token"], "--consensus")
        assert done.returncode == 0 and json.loads(done.stdout)["action"] == "consensus"
        again = cli("review", "decide", review["review_id"], "--lease-token", review["lease_token"], "--consensus")
        assert again.returncode == 1 and "not in review" in again.stderr
        consensus = cli("sign", review["review_id"], "--review", "consensus", "--meaning", "reviewed",
                        "--password-stdin", stdin=PASSWORD + "\n")
        assert consensus.returncode == 0, consensus.stderr
        assert json.loads(consensus.stdout)["sha256"] == hashlib.sha256(
            (tmp_path / "review" / "consensus-seg.dcm").read_bytes()).hexdigest()
        not_admin = cli("review", "retry", review["review_id"])
        assert not_admin.returncode == 1 and "Traceback" not in not_admin.stderr
        env = {"MEDANNOT_HOME": str(tmp_path / "admin-home")}
        assert cli("login", "--server", server.url, "--username", "admin", "--password-stdin",
                   stdin=PASSWORD + "\n").returncode == 0
        not_failed = cli("review", "retry", review["review_id"])
        assert not_failed.returncode == 1 and "only a failed round" in not_failed.stderr
    finally:
        server.stop()


def test_a_round_that_cannot_be_measured_is_stored_as_failed_and_an_admin_can_retry_it(lab, tmp_path):
    import shutil

    client = client_for(lab, tmp_path)
    read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    rev = auth(client, "rev")
    listed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()
    assert listed[0]["status"] == "open"
    # a second case whose source disappears before its last read arrives
    c = read_and_submit(client, lab, "r1", tmp_path)
    series = lab.series[c["case_id"]]
    hidden = series.with_name(series.name + "-away")
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r2")).json()
    out = tmp_path / "late-export"
    made = export_segmentation(load_source(series), reader_labels(0), ct_geometry(SHAPE),
                               load_guideline(lab.guideline), ReaderInfo("r2^Test", "r2"), out)
    shutil.move(series, hidden)
    sent = client.post(f"/api/v1/tasks/{task['task_id']}/submit", files={"seg": made.seg_path.read_bytes(),
                                                                         "sr": made.sr_path.read_bytes()},
                       headers={**auth(client, "r2"), "X-Lease-Token": task["lease_token"], "Idempotency-Key": "k"})
    assert sent.status_code == 201  # the read is stored even though the review could not be measured
    failed = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()[1]
    assert failed["status"] == "failed" and failed["error"]
    admin = auth(client, "admin")
    assert client.post(f"/api/v1/reviews/{failed['review_id']}/retry", headers=rev).status_code == 403
    shutil.move(hidden, series)
    retried = client.post(f"/api/v1/reviews/{failed['review_id']}/retry", headers=admin)
    assert retried.status_code == 200 and retried.json()["status"] == "open"
    again = client.post(f"/api/v1/reviews/{failed['review_id']}/retry", headers=admin)
    assert again.status_code == 409


def test_an_expired_review_lease_goes_back_to_the_queue_and_its_token_is_refused(lab, tmp_path):
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    rev, rev2 = auth(client, "rev"), auth(client, "rev2")
    stale = claim_review(client, lab, rev).json()
    assert claim_review(client, lab, rev2).status_code == 204  # leased to rev
    # claiming again gives the same review with a new token (only digests are stored); the old one is dead
    first = claim_review(client, lab, rev).json()
    assert first["review_id"] == stale["review_id"] and first["lease_token"] != stale["lease_token"]
    assert decide(client, rev, stale, action="consensus").status_code == 409
    engine = create_engine(lab.db_url)  # the lease runs out (set in the database: no sleeping on a loaded machine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE reviews SET lease_expires_at = :t WHERE id = :i"),
                           {"t": utcnow() - timedelta(minutes=1),
                            "i": first["review_id"]})
    engine.dispose()
    taken = claim_review(client, lab, rev2).json()
    assert taken["review_id"] == first["review_id"] and taken["lease_token"] != first["lease_token"]
    late = decide(client, rev, first, action="consensus")
    assert late.status_code == 409 and "lease token" in late.json()["detail"]
    assert decide(client, rev2, taken, action="consensus").status_code == 201
    audit = client.get("/api/v1/audit", headers=auth(client, "admin")).json()
    assert any(r["action"] == "review.lease.expire" and r["entity"] == f"review:{first['review_id']}" for r in audit)


def test_parallel_reviewers_never_share_a_review(db_url, tmp_path):  # noqa: F811
    import threading

    import requests
    from harness import ServerProcess, login

    lab = make_lab(db_url, tmp_path / "lab", cases=3, extra_users={f"rv{i}": "reviewer" for i in range(6)})
    server = ServerProcess(db_url, tmp_path / "data").start()
    try:
        for user in ("r1", "r2"):
            headers = login(server.url, user)
            for _ in range(3):
                task = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/claim", headers=headers,
                                     timeout=30).json()
                seg, sr = lab.export_for(task["case_id"], tmp_path / user / task["case_id"], reader=user)
                sent = requests.post(f"{server.url}/api/v1/tasks/{task['task_id']}/submit", timeout=120,
                                     headers={**headers, "X-Lease-Token": task["lease_token"],
                                              "Idempotency-Key": f"{user}-{task['task_id']}"},
                                     files={"seg": seg.read_bytes(), "sr": sr.read_bytes()})
                assert sent.status_code == 201, sent.text
        tokens = {f"rv{i}": login(server.url, f"rv{i}") for i in range(6)}
        got: dict[str, int | None] = {}
        start = threading.Barrier(6)

        def claim(name: str) -> None:
            start.wait()
            response = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/reviews/claim",
                                     headers=tokens[name], timeout=60)
            got[name] = response.json()["review_id"] if response.status_code == 200 else None

        threads = [threading.Thread(target=claim, args=(name,)) for name in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = [r for r in got.values() if r is not None]
        assert len(claimed) == 3 and len(set(claimed)) == 3  # three reviews, three reviewers, three left empty
    finally:
        server.stop()
