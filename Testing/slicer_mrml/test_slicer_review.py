"""The MedAnnot module's review logic on real MRML against a real `medannot serve`: a reviewer claims a case whose
two reads are in, sees both readers' segmentations beside the consensus with the server's agreement table,
decides (accept, consensus, return, edit and submit) and signs.

Readers submit through the task server's API (SEG + SR exported by the core, as the worklist logic does); the
reviewer is the very class the module's widget runs (``MedAnnotLogic.review``).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_DIR = EXTENSION_DIR / "MedAnnot"
SERVER_TESTING_DIR = Path(__file__).resolve().parents[1] / "server"
for path in (MODULE_DIR, EXTENSION_DIR / "MedAnnotCine", SERVER_TESTING_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

try:
    import slicer_core  # noqa: F401
except ImportError:
    slicer_core = None
try:
    import harness
except ImportError:  # the server extra is not installed
    harness = None

needsMrmlAndServer = pytest.mark.skipif(
    slicer_core is None or harness is None,
    reason="needs the slicer-core wheel (real MRML) and the server extra: pip install slicer-core '.[server]'")

if slicer_core is not None and harness is not None:
    import requests
    import slicer
    from harness import GUIDELINE, PASSWORD, SHAPE, ServerProcess, make_lab
    from MedAnnotWorklistLib.logic import MedAnnotLogic
    from scipy import ndimage

    import MedAnnotLib
    from medannot.client import ServerRejectedError
    from medannot.demo_data import ct_geometry, ct_phantom
    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.errors import MedAnnotError
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source

REVIEW_BLOCK = """review:
  senior_share: 0.2
  gold_standard_cases: []
  consensus: staple
  agreement:
    Liver: {dice_min: 0.99, hd95_max_mm: 5.0, nsd_tolerance_mm: 1.0, nsd_min: 0.5}
  adjudication: always
  signatures: [reviewed, approved]
"""


@pytest.fixture
def lab(tmp_path):
    """admin, readers r1 and r2, reviewer rev; the liver project (2 reads per case) on a guideline with a review
    block; cases case-001 and case-002."""
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.projects import add_guideline_version

    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab", cases=2, extra_users={"rev": "reviewer"})
    text = GUIDELINE.read_text().replace('version: "1.0.0"', 'version: "1.1.0"')
    text = text.replace("review:\n  senior_share: 0.2\n  gold_standard_cases: []\n", REVIEW_BLOCK)
    assert "consensus: staple" in text
    lab.guideline = tmp_path / "lab" / "liver-review.yaml"
    lab.guideline.write_text(text)
    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        add_guideline_version(session, lab.project_id, lab.guideline, actor="test")
    engine.dispose()
    return lab


@pytest.fixture
def server(lab, tmp_path):
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def readerLabels(grow: int):
    """The phantom's labels with the liver grown by ``grow`` voxels in-plane: two readers who disagree by a rim."""
    _, labels = ct_phantom(SHAPE)
    if grow:
        plane = np.zeros((1, 3, 3), bool)
        plane[0, 1, :] = plane[0, :, 1] = True
        grown = ndimage.binary_dilation(labels > 0, plane, iterations=grow)
        labels[grown & (labels == 0)] = 1
    return labels


def readAndSubmit(lab, server, user: str, tmp_path: Path, grow: int = 0) -> dict:
    """A reader claims their next task and submits the phantom (grown by ``grow``) through the server's API."""
    headers = harness.login(server.url, user)
    task = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/claim", headers=headers, timeout=30).json()
    out = tmp_path / "exports" / user / uuid.uuid4().hex[:6]
    result = export_segmentation(load_source(lab.series[task["case_id"]]), readerLabels(grow), ct_geometry(SHAPE),
                                 load_guideline(lab.guideline), ReaderInfo(f"{user}^Test", user), out)
    response = requests.post(f"{server.url}/api/v1/tasks/{task['task_id']}/submit", timeout=60,
                             headers={**headers, "X-Lease-Token": task["lease_token"],
                                      "Idempotency-Key": str(uuid.uuid4())},
                             files={"seg": result.seg_path.read_bytes(), "sr": result.sr_path.read_bytes()})
    assert response.status_code == 201, response.text
    return {**task, **response.json(), "seg_path": result.seg_path}


def reviewerLogic(tmp_path: Path, server, dicom_database, lab) -> MedAnnotLogic:
    """The reviewer logged in, with both cases' series in the (stand-in) DICOM database, as after a PACS query."""
    for folder in lab.series.values():
        dicom_database.addFolder(folder)
    logic = MedAnnotLogic(outboxFolder=tmp_path / "outbox-rev", cacheFolder=tmp_path / "cases-rev")
    logic.login(server.url, "rev", PASSWORD)
    return logic


def serverReview(server, reviewId) -> dict:
    """The review as the server stores it, seen by the admin."""
    response = requests.get(f"{server.url}/api/v1/reviews/{reviewId}", headers=harness.login(server.url, "admin"),
                            timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def bothReadsIn(lab, server, tmp_path):
    first = readAndSubmit(lab, server, "r1", tmp_path)
    second = readAndSubmit(lab, server, "r2", tmp_path, grow=2)
    assert first["case_id"] == second["case_id"]
    return first, second


def segmentColors(node) -> dict[str, tuple]:
    segments = [node.GetSegmentation().GetNthSegment(i) for i in range(node.GetSegmentation().GetNumberOfSegments())]
    return {segment.GetName(): tuple(round(c, 3) for c in segment.GetColor()) for segment in segments}


# ---------------------------------------------------------------------------------------------- tests
@needsMrmlAndServer
def test_a_reviewer_sees_nothing_to_claim_until_all_reads_of_a_case_are_in(scene, lab, server, dicom_database,
                                                                           tmp_path):
    readAndSubmit(lab, server, "r1", tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)

    assert logic.review.reviews(lab.project_id) == []
    assert logic.review.nextReview(lab.project_id) is None
    assert logic.review.session is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not (tmp_path / "cases-rev").exists() or not any((tmp_path / "cases-rev").iterdir())


@needsMrmlAndServer
def test_a_claimed_review_loads_every_reader_beside_the_consensus_with_the_servers_agreement_table(
        scene, lab, server, dicom_database, tmp_path):
    first, second = bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)

    session = logic.review.nextReview(lab.project_id)

    assert session.caseId == first["case_id"]
    nodes = [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")]
    assert len(nodes) == 3 == len(session.readerNodes) + 1
    assert sorted(node.GetName() for node in nodes) == sorted(
        [f"r1 ({session.caseId})", f"r2 ({session.caseId})", f"Consensus ({session.caseId})"])
    assert session.readerNames == {first["submission_id"]: "r1", second["submission_id"]: "r2"}
    colors = [segmentColors(node) for node in nodes]
    for segment in ("Liver", "Lesion"):
        assert len({c[segment] for c in colors}) == 3, f"{segment} colours are not distinct per reader: {colors}"
    # each reader's node holds that reader's drawing on the case's grid
    geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)
    assert geometry.mismatches(load_source(lab.series[session.caseId]).geometry) == []
    guideline = load_guideline(lab.guideline)
    for submissionId, grow in ((first["submission_id"], 0), (second["submission_id"], 2)):
        drawn = MedAnnotLib.labelMapFromSegmentationNode(session.readerNodes[submissionId], session.volumeNode,
                                                         guideline)
        np.testing.assert_array_equal(drawn, readerLabels(grow))
    assert session.readerNodes[first["submission_id"]].GetAttribute("MedAnnot.reader") == "r1"

    stored = serverReview(server, session.reviewId)["metrics"]
    names = {str(first["submission_id"]): "r1", str(second["submission_id"]): "r2", "consensus": "consensus"}
    expected = [(m["segment"], names[m["a"]], names[m["b"]], m["dice"], m["hd95_mm"], m["nsd"]) for m in stored]
    assert [(r.segment, r.a, r.b, r.dice, r.hd95Mm, r.nsd) for r in session.agreement] == expected
    pairs = {(r.segment, r.a, r.b) for r in session.agreement}
    assert {("Liver", "r1", "r2"), ("Liver", "r1", "consensus"), ("Liver", "r2", "consensus")} <= pairs
    liver = next(r for r in session.agreement if (r.segment, r.a, r.b) == ("Liver", "r1", "r2"))
    assert liver.dice < 0.99 and liver.belowThreshold
    assert serverReview(server, session.reviewId)["status"] == "leased"
    with pytest.raises(MedAnnotError, match="is still open"):
        logic.review.nextReview(lab.project_id)


@needsMrmlAndServer
def test_accept_reaches_the_server_and_sign_refuses_a_wrong_password_then_stores_the_right_one(
        scene, lab, server, dicom_database, tmp_path):
    first, _ = bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)
    session = logic.review.nextReview(lab.project_id)

    with pytest.raises(MedAnnotError, match="not decided yet"):
        logic.review.sign(PASSWORD, "reviewed")
    logic.review.accept("r1")

    stored = serverReview(server, session.reviewId)
    assert stored["status"] == "decided"
    assert stored["result"]["kind"] == "submission" and stored["result"]["submission_id"] == first["submission_id"]
    assert [(d["action"], d["submission_id"], d["by"]) for d in stored["decisions"]] == [
        ("accept", first["submission_id"], "rev")]
    with pytest.raises(MedAnnotError, match="decided already"):
        logic.review.useConsensus()

    with pytest.raises(ServerRejectedError, match="the password is wrong .*nothing was signed"):
        logic.review.sign("not the password", "reviewed")
    assert serverReview(server, session.reviewId)["signatures"] == []

    signature = logic.review.sign(PASSWORD, "reviewed", printedName="Rev Iewer")
    assert signature["meaning"] == "reviewed"
    assert signature["sha256"] == stored["result"]["seg_sha256"]
    assert serverReview(server, session.reviewId)["signatures"] == ["reviewed"]
    assert PASSWORD not in repr(vars(logic.review)) + repr(vars(session))


@needsMrmlAndServer
def test_use_consensus_reaches_the_server_and_its_signature_is_on_the_consensus(scene, lab, server, dicom_database,
                                                                                tmp_path):
    bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)
    session = logic.review.nextReview(lab.project_id)

    logic.review.startDecision(logic.review.useConsensus, onDone=lambda answer: None, onFailed=pytest.fail)
    assert logic.network.wait(timeout=60) == 0

    stored = serverReview(server, session.reviewId)
    assert stored["status"] == "decided" and stored["result"]["kind"] == "consensus"
    signed = []
    logic.review.startSign(PASSWORD, "approved", onDone=signed.append, onFailed=pytest.fail)
    assert logic.network.wait(timeout=60) == 0
    assert signed[0]["sha256"] == stored["consensus"]["seg_sha256"]
    assert serverReview(server, session.reviewId)["signatures"] == ["approved"]

    logic.review.closeReview()
    assert logic.review.session is None and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


@needsMrmlAndServer
def test_return_sends_the_read_back_to_its_reader_with_the_reason(scene, lab, server, dicom_database, tmp_path):
    _, second = bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)
    session = logic.review.nextReview(lab.project_id)

    with pytest.raises(MedAnnotError, match="Say why"):
        logic.review.returnRead("r2", "  ")
    logic.review.returnRead("r2", "lesion missed")

    stored = serverReview(server, session.reviewId)
    assert [(d["action"], d["submission_id"], d["reason"]) for d in stored["decisions"]] == [
        ("return", second["submission_id"], "lesion missed")]
    again = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/claim", timeout=30,
                          headers=harness.login(server.url, "r2"))
    assert again.status_code == 200 and again.json()["case_id"] == session.caseId


@needsMrmlAndServer
def test_edit_and_submit_exports_the_edited_node_as_a_seg_referencing_what_it_was_edited_from(
        scene, lab, server, dicom_database, tmp_path):
    first, _ = bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)
    session = logic.review.nextReview(lab.project_id)
    edited = readerLabels(1)  # the reviewer settles between the two reads
    node = session.readerNodes[first["submission_id"]]
    MedAnnotLib.updateSegmentationFromLabelMap(node, edited, MedAnnotLib.geometryFromVolumeNode(session.volumeNode),
                                               session.guideline)

    logic.review.editAndSubmit("r1", readerName="Iewer^Rev", readerId="rev")

    stored = serverReview(server, session.reviewId)
    reads = {r["submission_id"]: r for r in stored["reads"]}
    assert stored["status"] == "decided" and stored["result"]["kind"] == "edited"
    assert stored["edited"]["edited_from_uid"] == reads[first["submission_id"]]["seg_uid"]
    sent = requests.get(f"{server.url}/api/v1/reviews/{session.reviewId}/edited/seg", timeout=30,
                        headers=harness.login(server.url, "admin"))
    from medannot.dicomseg import read_segmentation

    path = tmp_path / "edited-back.dcm"
    path.write_bytes(sent.content)
    np.testing.assert_array_equal(read_segmentation(path, source=load_source(lab.series[session.caseId])).labels,
                                  edited)
    assert logic.review.sign(PASSWORD, "authored")["meaning"] == "authored"


# ---------------------------------------------------------------------------------------------- Qt parts, as files
# The widget cannot run on the slicer-core wheel (no Qt): these check its review section as source and .ui.
def _widgetMethods() -> dict[str, str]:
    import ast

    tree = ast.parse((MODULE_DIR / "MedAnnot.py").read_text(encoding="utf-8"))
    widget = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MedAnnotWidget")
    return {node.name: ast.unparse(node) for node in widget.body if isinstance(node, ast.FunctionDef)}


def test_the_ui_has_a_collapsed_review_section_with_the_table_and_every_action():
    import xml.etree.ElementTree as ElementTree

    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnot.ui")
    section = next(w for w in ui.iter("widget") if w.get("name") == "reviewCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton"
    assert {p.get("name"): p.findtext("bool") for p in section.findall("property")}["collapsed"] == "true"
    inside = {w.get("name"): w.get("class") for w in section.iter("widget")}
    buttons = ("nextReviewButton", "acceptReadButton", "useConsensusButton", "editSubmitButton", "returnReadButton",
               "signButton", "closeReviewButton")
    assert {inside[name] for name in buttons} == {"QPushButton"}
    assert inside["agreementTableWidget"] == "QTableWidget"
    columns = [c.findtext("property/string") for c in section.iter("column")]
    assert columns == ["Segment", "A", "B", "Dice", "HD95 (mm)", "NSD"]
    meanings = [i.findtext("property/string") for w in section.iter("widget")
                if w.get("name") == "signMeaningComboBox" for i in w.findall("item")]
    assert meanings == ["reviewed", "approved"]


def test_the_review_handlers_wait_on_no_network_call_and_sign_asks_for_the_password_in_a_masked_dialog():
    methods = _widgetMethods()
    assert "self.logic.review.startNextReview(" in methods["onNextReviewButton"]
    for name, call in (("onAcceptReadButton", "accept"), ("onUseConsensusButton", "useConsensus"),
                       ("onReturnReadButton", "returnRead")):
        assert "self.logic.review.startDecision(" in methods[name] and f"self.logic.review.{call}" in methods[name]
    assert "self.logic.review.editAndSubmit(" in methods["onEditSubmitButton"]  # reads MRML: on the GUI thread
    sign = methods["onSignButton"]
    assert "qt.QInputDialog(" in sign and "setTextEchoMode(qt.QLineEdit.Password)" in sign
    assert "self.logic.review.startSign(password" in sign and "del password" in sign
    assert "self.logic.review.nextReview(" not in "".join(methods.values())


@needsMrmlAndServer
def test_the_heartbeat_timer_extends_an_open_reviews_lease_on_the_worker_until_it_is_decided(
        scene, lab, server, dicom_database, tmp_path):
    bothReadsIn(lab, server, tmp_path)
    logic = reviewerLogic(tmp_path, server, dicom_database, lab)
    session = logic.review.nextReview(lab.project_id)
    claimedUntil = session.leaseExpiresAt
    answers = []

    assert logic.review.beatInBackground(onDone=answers.append)
    assert logic.network.wait(timeout=30) == 0

    assert answers == [None] and session.leaseExpiresAt >= claimedUntil != ""
    logic.review.useConsensus()
    assert not logic.review.beatInBackground(onDone=answers.append)  # decided: the lease is over
