"""The MedAnnot module: its worklist logic on real MRML against a real task server, and its Qt parts as files.

Cases are CT volumes, and an ultrasound cine opened as a sequence with MedAnnotCine's logic.

The logic tests start `medannot serve` on an SQLite database per test (Testing/server/harness.py) and drive the
very class the module's widget runs: login, claim and load a case, paint, submit, heartbeat, release, and a submit
made while the server is down that the outbox delivers once it is back.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import time
import types
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_DIR = EXTENSION_DIR / "MedAnnot"
SERVER_TESTING_DIR = Path(__file__).resolve().parents[1] / "server"
for path in (MODULE_DIR, EXTENSION_DIR / "MedAnnotCine", SERVER_TESTING_DIR):  # parents of the Libs; the harness
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

try:
    import slicer_core  # noqa: F401
except ImportError:
    slicer_core = None
try:
    import harness
except ImportError:  # the server extra (FastAPI, SQLAlchemy, ...) is not installed
    harness = None

needsMrmlAndServer = pytest.mark.skipif(
    slicer_core is None or harness is None,
    reason="needs the slicer-core wheel (real MRML) and the server extra: pip install slicer-core '.[server]'")

if slicer_core is not None and harness is not None:
    import requests
    import slicer
    from harness import PASSWORD, SHAPE, ServerProcess, make_lab
    from MedAnnotWorklistLib import CaseNotReadyError
    from MedAnnotWorklistLib.logic import MedAnnotLogic
    from pydicom import dcmread
    from pydicom.uid import SegmentationStorage
    from sqlalchemy import create_engine, text

    import MedAnnotLib
    from medannot.client import AuthenticationError, ServerAddressError, ServerUnreachableError
    from medannot.demo_data import cine_phantom, make_us_cine
    from medannot.dicomseg import read_segmentation
    from medannot.dicomseg.reader import parse_sr
    from medannot.errors import MedAnnotError, SourceImageError
    from medannot.imaging import load_source

CASE_SLOPE, CASE_INTERCEPT = 2, -1024  # case-001 is rewritten with these, so loading must apply the rescale


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def lab(tmp_path):
    """Users admin, r1, r2; one project (liver guideline, 2 readers per case) with cases case-001..003."""
    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab")
    for path in sorted(lab.series["case-001"].iterdir()):
        ds = dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = CASE_SLOPE, CASE_INTERCEPT
        ds.save_as(path)
    return lab


@pytest.fixture
def server(lab, tmp_path):
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def readerLogic(tmp_path: Path, server, user: str = "r1") -> MedAnnotLogic:
    logic = MedAnnotLogic(outboxFolder=tmp_path / f"outbox-{user}", cacheFolder=tmp_path / f"cases-{user}")
    logic.login(server.url, user, PASSWORD)
    return logic


def queueOneResultAndRestartTheServer(lab, server, tmp_path: Path):
    """Reader r1 claims and paints a case, submits while the server is down (queued), then the server restarts;
    returns the logic, the session and the restarted server (stop it)."""
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    paintLiverAndLesion(session)
    server.stop()
    assert submit(logic, session).status == "queued"
    return logic, session, ServerProcess(lab.db_url, tmp_path / "data", port=server.port).start()


def paintLiverAndLesion(session) -> np.ndarray:
    """Set a liver with a lesion inside it that the project's guideline accepts as the session's segmentation (the
    CT phantom's liver is below the guideline's 1 ml minimum at this size); returns the label map painted."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 3:21, 3:15] = 1
    labels[1:3, 10:13, 7:10] = 2
    geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)
    MedAnnotLib.updateSegmentationFromLabelMap(session.segmentationNode, labels, geometry, session.guideline)
    return labels


def submit(logic, session):
    return logic.submit(session, readerName="Roe^Rita", readerId="r1", readerRole="Radiologist",
                        institution="Test Hospital", confidences={"Liver": 90, "Lesion": 60},
                        checklistAnswers={"contrast-phase": "yes", "image-quality": "good"})


def submissionsOfTask(lab, taskId) -> int:
    engine = create_engine(lab.db_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT COUNT(*) FROM submissions WHERE task_id = :task"),
                                      {"task": int(taskId)}).scalar_one()
    finally:
        engine.dispose()


def inScene(node) -> bool:
    return bool(slicer.mrmlScene.IsNodePresent(node))


def parseTime(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------------------------- logic
@needsMrmlAndServer
def test_login_lists_the_project_with_its_progress_and_keeps_no_password(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)

    rows = logic.projects()

    assert [(r.projectId, r.guideline, r.cases, r.tasksSubmitted, r.tasksTotal, r.myCase) for r in rows] == [
        (lab.project_id, "liver-ct 1.0.0", 3, 0, 6, "")]
    assert logic.isLoggedIn and logic.username == "r1"
    assert PASSWORD not in repr(vars(logic)) + repr(vars(logic._client))
    logic.logout()
    with pytest.raises(AuthenticationError, match="Log in to the task server first"):
        logic.projects()


@needsMrmlAndServer
def test_wrong_password_is_refused_with_a_message_saying_so(scene, lab, server, tmp_path):
    logic = MedAnnotLogic(outboxFolder=tmp_path / "outbox")

    with pytest.raises(AuthenticationError, match="check the username and password"):
        logic.login(server.url, "r1", "not the password")
    with pytest.raises(ServerAddressError, match="Enter the task server's address"):
        logic.login("", "r1", PASSWORD)
    with pytest.raises(ServerAddressError, match="is not a task server address"):
        logic.login("annot.lab.example", "r1", PASSWORD)
    assert not logic.isLoggedIn


@needsMrmlAndServer
def test_next_case_loads_the_ct_in_modality_values_on_its_grid_with_the_guideline_segments(
        scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)

    session = logic.nextCase(lab.project_id)

    assert (session.caseId, session.projectId) == ("case-001", lab.project_id)
    source = load_source(lab.series["case-001"])
    expected = np.stack([dcmread(path).pixel_array * CASE_SLOPE + CASE_INTERCEPT for path in source.paths])
    voxels = slicer.util.arrayFromVolume(session.volumeNode)
    assert voxels.dtype == np.int16
    np.testing.assert_array_equal(voxels, expected)
    assert MedAnnotLib.geometryFromVolumeNode(session.volumeNode).mismatches(source.geometry) == []
    firstPosition = [float(v) for v in source.datasets[0].ImagePositionPatient]  # LPS; Slicer's origin is RAS
    np.testing.assert_allclose(session.volumeNode.GetOrigin(), [-firstPosition[0], -firstPosition[1],
                                                                firstPosition[2]])
    assert session.volumeNode.GetAttribute("DICOM.instanceUIDs").split() == [
        str(ds.SOPInstanceUID) for ds in source.datasets]
    assert session.seriesUid == source.series_uid
    segmentation = session.segmentationNode.GetSegmentation()
    segments = [segmentation.GetSegment(segmentation.GetNthSegmentID(i))
                for i in range(segmentation.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == ["Liver", "Lesion"] == session.segmentNames
    np.testing.assert_allclose(segments[0].GetColor(), np.array([0xDD, 0x82, 0x65]) / 255)
    assert session.guideline.sha256 == requests.get(
        f"{server.url}/api/v1/projects", headers=harness.login(server.url, "r1"), timeout=30).json()[0][
        "guideline_sha256"]
    assert [row.myCase for row in logic.projects()] == [f"case-001 (task {session.taskId})"]
    with pytest.raises(MedAnnotError, match="Case case-001 .* is still open; submit or release it first"):
        logic.nextCase(lab.project_id)


@needsMrmlAndServer
def test_painted_case_is_submitted_as_a_seg_of_the_case_series_and_leaves_the_scene(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    painted = paintLiverAndLesion(session)

    result = submit(logic, session)

    assert (result.status, result.caseId, result.taskId) == ("sent", "case-001", session.taskId)
    record = read_segmentation(result.segPath)
    np.testing.assert_array_equal(record.labels, painted)
    seg = dcmread(result.segPath)
    assert [str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence] == [
        load_source(lab.series["case-001"]).series_uid]
    assert {s["name"]: s["confidence"] for s in record.summary["segments"]} == {"Liver": 90, "Lesion": 60}
    assert logic.projects()[0].tasksSubmitted == 1
    audit = requests.get(f"{server.url}/api/v1/audit", headers=harness.login(server.url, "admin"), timeout=30).json()
    submits = [entry for entry in audit if entry["action"] == "task.submit"]
    assert [(s["entity"], s["user"]) for s in submits] == [(f"task:{session.taskId}", "r1")]
    assert json.loads(submits[0]["new_value"])["seg_uid"] == str(seg.SOPInstanceUID)
    assert submissionsOfTask(lab, session.taskId) == 1
    assert logic.session is None
    assert not inScene(session.volumeNode) and not inScene(session.segmentationNode)
    assert not session.cacheDir.exists()
    assert (logic.outboxStatus().pending, logic.outboxStatus().sent) == (0, 1)
    assert logic.nextCase(lab.project_id).caseId == "case-002"


@needsMrmlAndServer
def test_heartbeat_extends_the_lease(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    claimedUntil = parseTime(session.leaseExpiresAt)
    time.sleep(1.1)

    extendedUntil = logic.heartbeat(session)

    assert parseTime(extendedUntil) > claimedUntil
    assert session.leaseExpiresAt == extendedUntil


@needsMrmlAndServer
def test_release_gives_the_slot_to_the_next_reader_and_clears_the_scene(scene, lab, server, tmp_path):
    first = readerLogic(tmp_path, server, "r1")
    session = first.nextCase(lab.project_id)

    first.release(session)

    assert first.session is None
    assert not inScene(session.volumeNode) and not inScene(session.segmentationNode)
    assert not session.cacheDir.exists()
    second = readerLogic(tmp_path, server, "r2")
    assert second.nextCase(lab.project_id).taskId == session.taskId
    with pytest.raises(MedAnnotError, match="No case is open"):
        first.release()


@needsMrmlAndServer
def test_case_removed_from_the_scene_is_not_submitted_and_can_still_be_released(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    scene.Clear(False)  # as closing the scene in Slicer does

    with pytest.raises(MedAnnotError, match="Case case-001 is no longer in the scene"):
        submit(logic, session)
    logic.release()

    assert logic.session is None and logic.outboxStatus().pending == 0
    assert logic.nextCase(lab.project_id).taskId == session.taskId


@needsMrmlAndServer
def test_submit_while_the_server_is_down_waits_in_the_outbox_and_is_delivered_exactly_once(
        scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    painted = paintLiverAndLesion(session)
    server.stop()

    queued = submit(logic, session)

    assert queued.status == "queued" and "cannot reach the task server" in queued.detail
    assert (logic.outboxStatus().pending, logic.outboxStatus().sent) == (1, 0)
    assert logic.session is None and not inScene(session.volumeNode)  # the result is safe in the outbox
    with pytest.raises(ServerUnreachableError):
        logic.nextCase(lab.project_id)
    restarted = ServerProcess(lab.db_url, tmp_path / "data", port=server.port).start()
    try:
        delivered = logic.flushOutbox()

        assert [(d.status, d.task_id) for d in delivered] == [("sent", session.taskId)]
        assert logic.flushOutbox() == []
        assert submissionsOfTask(lab, session.taskId) == 1
        assert (logic.outboxStatus().pending, logic.outboxStatus().sent) == (0, 1)
        np.testing.assert_array_equal(read_segmentation(logic.outbox.sent()[0].seg_path).labels, painted)
        assert logic.nextCase(lab.project_id).caseId == "case-002"
    finally:
        restarted.stop()


@needsMrmlAndServer
def test_results_queued_before_slicer_closed_are_sent_at_the_next_login(scene, lab, server, tmp_path):
    logic, session, restarted = queueOneResultAndRestartTheServer(lab, server, tmp_path)
    del logic  # Slicer closed: nothing of the logic survives but its folders on disk
    try:
        fresh = MedAnnotLogic(outboxFolder=tmp_path / "outbox-r1", cacheFolder=tmp_path / "cases-r1")
        assert fresh.outboxStatus().pending == 1

        delivered = fresh.login(server.url, "r1", PASSWORD)

        assert [(d.status, d.task_id) for d in delivered] == [("sent", session.taskId)]
        assert submissionsOfTask(lab, session.taskId) == 1
        assert (fresh.outboxStatus().pending, fresh.outboxStatus().sent) == (0, 1)
        assert fresh.login(server.url, "r1", PASSWORD) == []  # nothing left to send
    finally:
        restarted.stop()


@needsMrmlAndServer
def test_next_case_delivers_a_waiting_result_before_claiming(scene, lab, server, tmp_path):
    logic, session, restarted = queueOneResultAndRestartTheServer(lab, server, tmp_path)
    try:
        nextSession = logic.nextCase(lab.project_id)

        assert nextSession.caseId == "case-002"  # not case-001 again: its result reached the server first
        assert submissionsOfTask(lab, session.taskId) == 1
    finally:
        restarted.stop()


@needsMrmlAndServer
def test_case_whose_images_cannot_be_served_is_given_back_and_leaves_nothing_behind(scene, lab, server, tmp_path):
    for path in lab.series["case-001"].iterdir():
        path.unlink()
    logic = readerLogic(tmp_path, server)

    with pytest.raises(MedAnnotError, match="download the images of task"):
        logic.nextCase(lab.project_id)

    assert logic.session is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not any((tmp_path / "cases-r1").iterdir())
    # Through the server, not the database file: the server commits a release after answering it.
    audit = requests.get(f"{server.url}/api/v1/audit", headers=harness.login(server.url, "admin"), timeout=30).json()
    assert [(e["action"], e["entity"], e["user"]) for e in audit if e["action"].startswith("task.")] == [
        ("task.claim", "task:1", "r1"), ("task.release", "task:1", "r1")]


@needsMrmlAndServer
def test_next_case_returns_none_when_nothing_is_left_for_the_reader(scene, tmp_path):
    lab = make_lab(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "lab", cases=1)
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        logic = readerLogic(tmp_path, server)
        session = logic.nextCase(lab.project_id)
        paintLiverAndLesion(session)
        assert submit(logic, session).status == "sent"

        assert logic.nextCase(lab.project_id) is None  # the case's other slot is for another reader
    finally:
        server.stop()


@needsMrmlAndServer
def test_non_integer_rescale_loads_as_float_voxels(scene, tmp_path):
    from MedAnnotWorklistLib.caseimages import loadCaseVolume

    from medannot.demo_data import make_ct_series

    folder = make_ct_series(tmp_path / "pet", shape=(3, 8, 8))
    for path in folder.iterdir():
        ds = dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 0.25, 0.5
        ds.save_as(path)

    volumeNode, source, instances = loadCaseVolume(folder, name="PET")

    voxels = slicer.util.arrayFromVolume(volumeNode)
    assert voxels.dtype == np.float32
    np.testing.assert_allclose(voxels, np.stack([dcmread(p).pixel_array * 0.25 + 0.5 for p in source.paths]))
    assert instances.fileForInstance(str(source.datasets[1].SOPInstanceUID)) == str(source.paths[1])
    assert instances.fileForInstance("1.2.3") == ""


# ---------------------------------------------------------------------------------------------- autosave
def crashAndRestart(monkeypatch, scene):
    """What a crash leaves: nothing of the old scene or logic. Puts a new, empty scene with the module logics in place
    of ``scene`` (as a restarted Slicer has) and returns it; the caller makes a new logic on the same folders."""
    import vtk

    scene.Clear(True)
    fresh = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(fresh)
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        modules = {}
        for name, className in (("Colors", "vtkSlicerColorLogic"), ("Volumes", "vtkSlicerVolumesLogic"),
                                ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
                                ("Terminologies", "vtkSlicerTerminologiesModuleLogic")):
            logic = getattr(slicer, className)()
            logic.SetMRMLApplicationLogic(applicationLogic)
            logic.SetMRMLScene(fresh)
            applicationLogic.SetModuleLogic(name, logic)
            modules[name.lower()] = types.SimpleNamespace(logic=lambda logic=logic: logic)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    monkeypatch.setattr(slicer, "mrmlScene", fresh)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(**modules))
    _restartedApplicationLogics.append(applicationLogic)  # the module logics refer to it; keep it alive
    return fresh


_restartedApplicationLogics: list = []


def labelsOf(session) -> np.ndarray:
    return MedAnnotLib.labelMapFromSegmentationNode(session.segmentationNode, session.volumeNode, session.guideline)


@needsMrmlAndServer
def test_autosaved_drawing_survives_a_crash_and_a_server_restart_and_is_gone_after_submit(
        scene, lab, server, tmp_path, monkeypatch, caplog):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    painted = paintLiverAndLesion(session)

    saved = logic.autosave()

    assert saved == session.cacheDir / "autosave" / "segmentation.seg.nrrd" and saved.is_file()
    info = json.loads((saved.parent / "autosave.json").read_text(encoding="utf-8"))
    assert (info["task_id"], info["case_id"], info["username"]) == (str(session.taskId), "case-001", "r1")
    assert [s["name"] for s in info["segments"]] == ["Liver", "Lesion"] and parseTime(info["saved_at"])
    taskId, cacheDir = session.taskId, session.cacheDir
    del logic, session
    crashAndRestart(monkeypatch, scene)
    server.stop()
    restarted = ServerProcess(lab.db_url, tmp_path / "data", port=server.port).start()
    try:
        logic = readerLogic(tmp_path, restarted)
        with caplog.at_level("INFO", logger="MedAnnotWorklistLib.logic"):
            session = logic.nextCase(lab.project_id)

        assert (session.taskId, session.cacheDir, session.restoredFrom) == (taskId, cacheDir, saved)
        assert "Restored the autosaved segmentation of case case-001" in caplog.text
        assert inScene(session.segmentationNode) and session.segmentNames == ["Liver", "Lesion"]
        np.testing.assert_array_equal(labelsOf(session), painted)
        segmentation = session.segmentationNode.GetSegmentation()
        assert [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                for i in range(segmentation.GetNumberOfSegments())] == ["Liver", "Lesion"]
        np.testing.assert_allclose(segmentation.GetSegment(segmentation.GetNthSegmentID(0)).GetColor(),
                                   np.array([0xDD, 0x82, 0x65]) / 255)

        result = submit(logic, session)

        assert result.status == "sent"
        np.testing.assert_array_equal(read_segmentation(result.segPath).labels, painted)
        assert not saved.exists() and not cacheDir.exists()
        assert logic.autosave() is None  # no case open
    finally:
        restarted.stop()


@needsMrmlAndServer
def test_queued_submit_removes_the_autosave_and_the_outbox_keeps_the_result(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    painted = paintLiverAndLesion(session)
    saved = logic.autosave()
    server.stop()

    assert submit(logic, session).status == "queued"

    assert not saved.exists()
    np.testing.assert_array_equal(read_segmentation(logic.outbox.pending()[0].seg_path).labels, painted)


@needsMrmlAndServer
def test_an_autosave_is_not_restored_into_another_task_and_release_removes_it(scene, lab, server, tmp_path):
    first = readerLogic(tmp_path, server, "r1")
    session = first.nextCase(lab.project_id)
    paintLiverAndLesion(session)
    saved = first.autosave()
    # r2 on the same computer and cache folder gets the case's other slot: another task, its own empty drawing.
    second = MedAnnotLogic(outboxFolder=tmp_path / "outbox-r2", cacheFolder=tmp_path / "cases-r1")
    second.login(server.url, "r2", PASSWORD)
    other = second.nextCase(lab.project_id)
    assert other.taskId != session.taskId and other.restoredFrom is None
    assert not labelsOf(other).any() and not other.autosaveDir.exists()
    second.release(other)
    # Even r1's autosave copied into r2's task folder is not taken: it names another task and reader.
    shutil.copytree(saved.parent, other.autosaveDir)

    again = second.nextCase(lab.project_id)

    assert again.taskId == other.taskId and again.restoredFrom is None and not labelsOf(again).any()
    assert not again.autosaveDir.exists()
    assert [p.name.startswith("autosave-unused-") for p in again.cacheDir.iterdir() if "autosave" in p.name] == [True]
    first.release(session)
    assert not saved.exists() and not session.cacheDir.exists()


@needsMrmlAndServer
def test_a_failed_autosave_keeps_the_previous_one_whole(scene, lab, server, tmp_path, monkeypatch):
    import MedAnnotWorklistLib.logic as logicModule

    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    painted = paintLiverAndLesion(session)
    saved = logic.autosave()
    before = saved.read_bytes(), (saved.parent / "autosave.json").read_bytes()
    taskId = session.taskId
    MedAnnotLib.updateSegmentationFromLabelMap(session.segmentationNode, np.zeros_like(painted),
                                               MedAnnotLib.geometryFromVolumeNode(session.volumeNode),
                                               session.guideline)

    def failingWriter(segmentationNode, path):
        path.write_bytes(b"NRRD0004\n# half a file")
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(logicModule, "_writeSegmentation", failingWriter)
        with pytest.raises(MedAnnotError, match="Could not autosave case case-001: disk full"):
            logic.autosave()

    assert (saved.read_bytes(), (saved.parent / "autosave.json").read_bytes()) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["autosave.json", "segmentation.seg.nrrd"]
    del logic, session  # and Slicer crashes: the restarted one gets the last complete autosave
    crashAndRestart(monkeypatch, scene)
    restored = readerLogic(tmp_path, server).nextCase(lab.project_id)
    assert restored.taskId == taskId
    np.testing.assert_array_equal(labelsOf(restored), painted)


# ---------------------------------------------------------------------------------------------- ultrasound cine
ECHO_GUIDELINE = EXTENSION_DIR / "medannot" / "data" / "echo-lv.yaml"
FRAMES, ROWS, COLS = 24, 96, 128
KEYFRAMES = (1, 8, 15, 22)  # frames 0 and 23 lie outside the keyframes and stay empty
CONFIDENCES = {"LV cavity": 85, "LV wall": 70}
CHECKLIST = {"view": "yes", "image-quality": "good"}


@pytest.fixture
def echoLab(lab, tmp_path):
    """The lab plus an echo-lv project with one ultrasound cine case (the server reads it from the same database)."""
    cine = make_us_cine(tmp_path / "lab" / "us" / "cine-001.dcm", frames=FRAMES, rows=ROWS, cols=COLS)
    manifest = tmp_path / "lab" / "echo.csv"
    manifest.write_text(f"case_id,source\necho-001,{cine}\n")
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.projects import create_project, import_cases, set_members

    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        projectId = create_project(session, ECHO_GUIDELINE, actor="test").id
        import_cases(session, projectId, manifest, actor="test")
        set_members(session, projectId, [u for u in lab.users if u != "admin"], [], actor="test")
    engine.dispose()
    lab.echo_project_id, lab.cine = projectId, cine
    return lab


def drawKeyframes(session, frames=KEYFRAMES) -> np.ndarray:
    """Draw the phantom's true LV cavity (1) and wall (2) on each frame, as the Segment Editor paints the shown
    frame, and mark it as a keyframe; returns the truth (frames x rows x cols, guideline label values)."""
    _, truth = cine_phantom(FRAMES, ROWS, COLS)
    segmentation = session.segmentationNode.GetSegmentation()
    labelOfSegment = {segmentation.GetSegmentIdBySegmentName(spec.name): spec.label
                      for spec in session.guideline.segments}
    for frame in frames:
        session.cine.goToFrame(frame)
        geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)
        MedAnnotLib.updateSegmentsFromLabelMap(session.segmentationNode, truth[frame][np.newaxis], geometry,
                                               labelOfSegment)
        session.cine.markKeyframe()
    return truth


def submitCine(logic, session):
    return logic.submit(session, readerName="Echo^Erin", readerId="r1", readerRole="Cardiologist",
                        confidences=CONFIDENCES, checklistAnswers=CHECKLIST)


def storedSubmission(lab, serverDataDir: Path, taskId):
    engine = create_engine(lab.db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT seg_sha256 FROM submissions WHERE task_id = :task"),
                                      {"task": int(taskId)}).all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    sha256 = rows[0][0]
    return dcmread(serverDataDir / "objects" / sha256[:2] / sha256)


@needsMrmlAndServer
def test_next_case_opens_an_ultrasound_cine_as_a_sequence_of_its_frames_with_the_guideline_segments(
        scene, echoLab, server, tmp_path):
    logic = readerLogic(tmp_path, server)

    session = logic.nextCase(echoLab.echo_project_id)

    assert session.isCine and session.caseId == "echo-001"
    source = load_source(echoLab.cine)
    assert session.seriesUid == source.series_uid
    volumeSequence = session.cine.session.volumeSequenceNode
    assert volumeSequence.GetNumberOfDataNodes() == FRAMES
    pixels = dcmread(echoLab.cine).pixel_array
    for frame in (0, 11, FRAMES - 1):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeSequence.GetNthDataNode(frame))[0],
                                      pixels[frame])
    np.testing.assert_allclose(session.cine.session.frameTimesMs, source.frame_times_ms, atol=1e-3)
    assert session.browserNode.GetProxyNode(volumeSequence).GetID() == session.volumeNode.GetID()
    assert volumeSequence.GetNthDataNode(0).GetAttribute("DICOM.instanceUIDs") == str(source.first.SOPInstanceUID)
    segmentation = session.segmentationNode.GetSegmentation()
    assert [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
            for i in range(segmentation.GetNumberOfSegments())] == ["LV cavity", "LV wall"]
    assert session.browserNode.GetSequenceNode(session.segmentationNode).GetNumberOfDataNodes() == FRAMES
    assert session.cine.frameStates() == ["empty"] * FRAMES


@needsMrmlAndServer
def test_interpolated_cine_case_is_submitted_as_a_seg_of_the_cine_with_its_interpolated_frames(
        scene, echoLab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(echoLab.echo_project_id)
    truth = drawKeyframes(session, frames=KEYFRAMES[:1])
    with pytest.raises(CaseNotReadyError, match="Segment at least end-diastole and end-systole") as refused:
        submitCine(logic, session)
    assert {finding.where for finding in refused.value.check.errors} == {"frame 1"}

    drawKeyframes(session, frames=KEYFRAMES[1:])
    session.cine.interpolate("motion")
    check = logic.checkCase(session)
    assert check.passed, [str(finding) for finding in check.findings]
    expected = session.cine.guidelineLabels(session.guideline)
    result = submitCine(logic, session)

    assert (result.status, result.caseId) == ("sent", "echo-001")
    record = read_segmentation(result.segPath)
    np.testing.assert_array_equal(record.labels, expected)
    for frame in KEYFRAMES:
        np.testing.assert_array_equal(record.labels[frame], truth[frame])
    segments = {s["name"]: s for s in record.summary["segments"]}
    assert {name: s["algorithm_type"] for name, s in segments.items()} == {
        "LV cavity": "SEMIAUTOMATIC", "LV wall": "SEMIAUTOMATIC"}
    assert segments["LV cavity"]["algorithm_name"] == "MedAnnot keyframe interpolation (motion)"
    assert {name: s["confidence"] for name, s in segments.items()} == CONFIDENCES
    for values in parse_sr(record.sr)["groups"].values():
        texts = {code[1]: value for code, value in values.items()}
        assert texts["KEYFRAMES"] == ",".join(str(f + 1) for f in KEYFRAMES)
        assert texts["INTERP_FRAMES"] == ",".join(
            str(f + 1) for f in range(KEYFRAMES[0] + 1, KEYFRAMES[-1]) if f not in KEYFRAMES)

    stored = storedSubmission(echoLab, server.data_dir, result.taskId)
    assert stored.SOPClassUID == SegmentationStorage
    cine = load_source(echoLab.cine)
    assert [str(item.SeriesInstanceUID) for item in stored.ReferencedSeriesSequence] == [cine.series_uid]
    referenced = stored.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {str(cine.first.SOPInstanceUID)}
    assert logic.session is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


@needsMrmlAndServer
def test_a_cine_drawing_autosaved_before_a_crash_comes_back_with_its_keyframes_and_interpolation(
        scene, echoLab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(echoLab.echo_project_id)
    drawKeyframes(session)
    session.cine.interpolate("shape")
    session.cine.goToFrame(12)
    drawn = session.cine.guidelineLabels(session.guideline)
    states = session.cine.frameStates()
    assert logic.autosave() is not None

    scene.Clear(False)  # Slicer crashed: the scene is gone; the case folder and the lease are not
    reopened = readerLogic(tmp_path, server).nextCase(echoLab.echo_project_id)

    assert reopened.taskId == session.taskId and reopened.restoredFrom is not None
    np.testing.assert_array_equal(reopened.cine.guidelineLabels(reopened.guideline), drawn)
    assert reopened.cine.frameStates() == states
    assert reopened.cine.method == "shape"
    assert reopened.cine.unmarkedEditFrames() == []


@needsMrmlAndServer
def test_a_cine_whose_pixel_data_is_cut_short_is_refused_naming_the_file(scene, tmp_path):
    from MedAnnotWorklistLib.caseimages import loadCase

    path = make_us_cine(tmp_path / "bad" / "cine.dcm", frames=4, rows=8, cols=8)
    ds = dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a truncated download
    ds.save_as(path)

    with pytest.raises(SourceImageError, match=r"cine\.dcm: Pixel Data \(7FE0,0010\) holds 128 bytes, fewer than the 256"):
        loadCase(path.parent, "bad")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0


# ---------------------------------------------------------------------------------------------- module switches
def cineParameterNode(scene):
    """MedAnnot Cine's parameter node as Slicer's ScriptedLoadableModuleLogic.getParameterNode() makes it: the
    scene's singleton vtkMRMLScriptedModuleNode tagged with the module's name."""
    node = scene.GetSingletonNode("MedAnnotCine", "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag("MedAnnotCine")
        node.SetAttribute("ModuleName", "MedAnnotCine")
        node = scene.AddNode(node)
    return node


@pytest.fixture
def twoCineLab(echoLab, tmp_path):
    """The echo lab with a second cine case, echo-002, so that one reader takes two cine cases in a row."""
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.projects import import_cases

    second = make_us_cine(tmp_path / "lab" / "us" / "cine-002.dcm", frames=FRAMES, rows=ROWS, cols=COLS)
    manifest = tmp_path / "lab" / "echo-2.csv"
    manifest.write_text(f"case_id,source\necho-002,{second}\n")
    engine = make_engine(echoLab.db_url)
    with transaction(session_factory(engine)) as session:
        import_cases(session, echoLab.echo_project_id, manifest, actor="test")
    engine.dispose()
    return echoLab


@needsMrmlAndServer
def test_leaving_and_entering_the_cine_module_keeps_the_case_and_the_second_cine_case_keeps_its_lease(
        scene, twoCineLab, server, tmp_path):
    """The worklist hands its cine case to MedAnnot Cine (MedAnnot.showCine -> annotateWith), the reader marks
    keyframes there, goes back to MedAnnot (Slicer calls the Cine widget's exit(): its parameter node is
    disconnected) to check and submit, and takes a second cine case while the Cine module is not entered."""
    from MedAnnotCineLib import MedAnnotCinePanelLogic

    logic = readerLogic(tmp_path, server)
    panel = MedAnnotCinePanelLogic()  # the Cine widget's, made once in setup()
    parameterNode = cineParameterNode(scene)
    first = logic.nextCase(twoCineLab.echo_project_id)

    panel.handOver(first.cine, parameterNode)  # annotateWith, then selectModule("MedAnnotCine"): enter()
    assert panel.logicShown(parameterNode) is first.cine
    assert panel.logicForAction(parameterNode) is first.cine
    drawKeyframes(first)
    assert panel.logicShown(None) is None  # exit(): the widget shows nothing, and nothing is ended
    assert first.cine.session is not None and logic.session is first
    assert panel.logicShown(parameterNode) is first.cine  # enter() again
    panel.logicForAction(parameterNode).interpolate("shape")
    assert panel.logicShown(None) is None  # exit(): back to MedAnnot to check, autosave and submit

    assert logic.checkCase().passed
    assert logic.autosave() is not None
    assert submitCine(logic, first).status == "sent"

    second = logic.nextCase(twoCineLab.echo_project_id)  # the Cine module is not entered meanwhile
    panel.handOver(second.cine, parameterNode)
    assert second.caseId == "echo-002" and second.cine is not first.cine
    assert panel.logicShown(parameterNode) is second.cine
    assert second.cine.session is not None
    assert (parameterNode.GetNodeReference("browserNode").GetID(),
            parameterNode.GetNodeReference("segmentationNode").GetID()) == (
        second.browserNode.GetID(), second.segmentationNode.GetID())
    claimedUntil = parseTime(second.leaseExpiresAt)
    time.sleep(1.1)
    assert logic.leaseKept and logic.beatInBackground()
    assert logic.network.wait(timeout=60) == 0
    assert parseTime(second.leaseExpiresAt) > claimedUntil and second.leaseLost is None
    drawKeyframes(second, frames=KEYFRAMES[:2])
    assert panel.logicShown(None) is None  # exit()
    assert logic.checkCase(second).drawnSegments  # the check reads the second case's cine, still open


@needsMrmlAndServer
def test_a_cine_opened_by_hand_in_the_panel_never_replaces_the_worklist_case(scene, echoLab, server, tmp_path):
    from MedAnnotCineLib import MedAnnotCinePanelLogic

    logic = readerLogic(tmp_path, server)
    panel = MedAnnotCinePanelLogic()
    parameterNode = cineParameterNode(scene)
    case = logic.nextCase(echoLab.echo_project_id)
    panel.handOver(case.cine, parameterNode)
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn by hand")

    parameterNode.SetNodeReferenceID("segmentationNode", other.GetID())  # the reader picks another segmentation
    assert panel.logicShown(parameterNode) is None
    handLogic = panel.logicForAction(parameterNode)

    assert handLogic is panel.ownLogic and handLogic is not case.cine
    assert case.cine.isSessionOf(case.browserNode, case.segmentationNode)
    parameterNode.SetNodeReferenceID("segmentationNode", case.segmentationNode.GetID())
    assert panel.logicShown(parameterNode) is case.cine


@needsMrmlAndServer
def test_autosave_writes_only_when_the_drawing_changed(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    paintLiverAndLesion(session)
    saved = logic.autosave()
    written = saved.stat().st_mtime_ns
    time.sleep(0.05)

    assert logic.autosave() == saved and saved.stat().st_mtime_ns == written  # the minute passed, no stroke

    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 3:21, 3:16] = 1  # one column more liver
    geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)
    MedAnnotLib.updateSegmentationFromLabelMap(session.segmentationNode, labels, geometry, session.guideline)
    assert logic.autosave() == saved and saved.stat().st_mtime_ns != written
    restored = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(restored)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(saved))
    assert storage.ReadData(restored)
    np.testing.assert_array_equal(
        MedAnnotLib.labelMapFromSegmentationNode(restored, session.volumeNode, session.guideline), labels)


@needsMrmlAndServer
def test_a_cine_autosave_follows_marked_keyframes_and_interpolation(scene, echoLab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(echoLab.echo_project_id)
    drawKeyframes(session, frames=KEYFRAMES[:2])
    saved = logic.autosave()
    written = saved.stat().st_mtime_ns
    assert logic.autosave() == saved and saved.stat().st_mtime_ns == written

    session.cine.interpolate("shape")
    logic.autosave()

    assert saved.stat().st_mtime_ns != written
    info = json.loads((saved.parent / "autosave.json").read_text(encoding="utf-8"))
    assert (info["keyframes"], info["method"]) == (list(KEYFRAMES[:2]), "shape")


# ---------------------------------------------------------------------------------------------- network
@needsMrmlAndServer
def test_after_logout_and_login_again_the_open_case_lease_is_beaten_again(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    claimedUntil = parseTime(session.leaseExpiresAt)

    logic.logout()
    assert not logic.leaseKept and not logic.beatInBackground()  # the timer's ticks send nothing
    time.sleep(1.1)
    logic.login(server.url, "r1", PASSWORD)  # beats at once

    assert logic.network.wait(timeout=60) == 0
    assert parseTime(session.leaseExpiresAt) > claimedUntil and session.leaseLost is None
    assert logic.leaseKept and logic.beatInBackground()  # and the timer's ticks beat again
    assert logic.network.wait(timeout=60) == 0


@needsMrmlAndServer
def test_a_lease_lost_while_logged_out_is_recorded_and_beats_stop(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    logic.logout()
    engine = create_engine(lab.db_url)  # the lease runs out meanwhile
    with engine.begin() as connection:
        connection.execute(text("UPDATE tasks SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :task"),
                           {"task": int(session.taskId)})
    engine.dispose()

    logic.login(server.url, "r1", PASSWORD)
    assert logic.network.wait(timeout=60) == 0

    assert session.leaseLost and "lease is no longer yours" in session.leaseLost
    assert not logic.leaseKept and not logic.beatInBackground()
    assert logic.session is session and inScene(session.segmentationNode)  # the drawing stays


@needsMrmlAndServer
def test_the_next_case_is_claimed_and_downloaded_on_the_worker_with_progress_then_opened_by_poll(
        scene, lab, server, tmp_path):
    import threading

    logic = readerLogic(tmp_path, server)
    threads = []
    claim = logic.claimCase
    logic.claimCase = lambda *args: threads.append(threading.current_thread()) or claim(*args)
    opened, failed = [], []

    transfer = logic.startNextCase(lab.project_id, onOpened=opened.append, onFailed=failed.append)
    assert logic.session is None  # nothing is in the scene before the GUI polls
    assert logic.network.wait(timeout=120) == 0

    assert failed == [] and opened == [logic.session] and logic.session.caseId == "case-001"
    assert threads and threads[0] is not threading.main_thread()
    assert transfer.total and transfer.received == transfer.total and transfer.percent == 100
    assert inScene(logic.session.volumeNode)


@needsMrmlAndServer
def test_a_cancelled_download_gives_the_claim_back_and_leaves_no_files(scene, lab, server, tmp_path):
    from medannot.client import Transfer, TransferCancelledError

    class CancelledAtFirstPiece(Transfer):
        def report(self, received, total):
            super().report(received, total)
            self.cancel()

    logic = readerLogic(tmp_path, server)
    transfer = CancelledAtFirstPiece("the next case")

    with pytest.raises(TransferCancelledError, match="cancelled"):
        logic.claimCase(lab.project_id, transfer=transfer)

    assert transfer.is_cancelled() and transfer.received < (transfer.total or 1) + 1
    assert not any(path.is_file() for path in (tmp_path / "cases-r1").rglob("*"))
    engine = create_engine(lab.db_url)
    try:
        with engine.connect() as connection:
            held = connection.execute(text("SELECT COUNT(*) FROM tasks WHERE reader_id IS NOT NULL")).scalar_one()
    finally:
        engine.dispose()
    assert held == 0  # the claim was given back


@needsMrmlAndServer
def test_a_submit_is_sent_on_the_worker_and_the_case_closes_when_polled(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    paintLiverAndLesion(session)
    submitted, failed = [], []

    logic.startSubmit(session, "Roe^Rita", "r1", onSubmitted=submitted.append, onFailed=failed.append,
                      readerRole="Radiologist", confidences={"Liver": 90, "Lesion": 60},
                      checklistAnswers={"contrast-phase": "yes", "image-quality": "good"})
    assert logic.session is session  # open until the answer is handed back
    assert logic.network.wait(timeout=120) == 0

    assert failed == [] and [result.status for result in submitted] == ["sent"]
    assert logic.session is None and not inScene(session.segmentationNode)
    assert submissionsOfTask(lab, session.taskId) == 1


@needsMrmlAndServer
def test_a_submit_the_guideline_refuses_is_refused_before_anything_is_sent(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)

    with pytest.raises(CaseNotReadyError, match="cannot be submitted yet"):
        logic.startSubmit(session, "Roe^Rita", "r1", onSubmitted=print, onFailed=print)
    assert not logic.network.running() and logic.session is session


def test_a_heartbeat_is_one_short_try_without_retries(tmp_path):
    """A server that takes the connection and drops it: the heartbeat tries once; other calls retry."""
    import socket
    import threading

    from medannot.client import ServerUnreachableError, TaskServerClient
    from medannot.client.api import HEARTBEAT_TIMEOUT_SECONDS

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def dropEveryConnection():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            connection.close()

    threading.Thread(target=dropEveryConnection, daemon=True).start()
    client = TaskServerClient(f"http://127.0.0.1:{listener.getsockname()[1]}", token="t", backoff_factor=0)
    try:
        with pytest.raises(ServerUnreachableError):
            client.heartbeat(7, "lease")
        beats = len(accepted)
        with pytest.raises(ServerUnreachableError):
            client.release(7, "lease")
        releases = len(accepted) - beats
    finally:
        client.close()
        listener.close()

    assert beats == 1
    assert releases == 4  # the default 3 retries: the heartbeat's single try is its own choice
    assert HEARTBEAT_TIMEOUT_SECONDS <= 10


def test_the_worker_hands_outcomes_back_on_the_polling_thread_in_order():
    import threading

    from medannot.client import BackgroundCalls

    calls = BackgroundCalls()
    seen = []
    try:
        calls.submit("first", sum, [1, 2])  # without callbacks: its result is dropped
        calls.submit("where", lambda: threading.current_thread().name,
                     on_success=lambda name: seen.append(("ran on", name, threading.current_thread().name)))
        calls.submit("fails", lambda: 1 / 0, on_failure=lambda error: seen.append(("failed", type(error).__name__)))
        assert calls.wait(timeout=30) == 0
    finally:
        calls.shutdown()

    assert seen[0][0] == "ran on" and seen[0][1].startswith("medannot-network")
    assert seen[0][2] == threading.main_thread().name
    assert seen[1] == ("failed", "ZeroDivisionError")


# ---------------------------------------------------------------------------------------------- module files
MODULE_SOURCE = (MODULE_DIR / "MedAnnot.py").read_text(encoding="utf-8")
MODULE_TREE = ast.parse(MODULE_SOURCE)
UI = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnot.ui")


def _uiWidgets() -> dict[str, str]:
    return {widget.get("name"): widget.get("class") for widget in UI.iter("widget")}


def _class(name: str) -> ast.ClassDef:
    return next(node for node in MODULE_TREE.body if isinstance(node, ast.ClassDef) and node.name == name)


def _boundParameters() -> dict[str, str]:
    return {prop.findtext("string"): widget.get("name") for widget in UI.iter("widget")
            for prop in widget.findall("property") if prop.get("name") == "SlicerParameterName"}


def test_every_widget_the_gui_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"\.ui\.(\w+)", MODULE_SOURCE))
    assert used, "the widget should reach its controls through self.ui"
    assert used - set(_uiWidgets()) == set()


def test_every_parameter_is_bound_to_exactly_one_widget_and_the_password_to_none():
    parameterClass = _class("MedAnnotParameterNode")
    assert any(getattr(decorator, "id", None) == "parameterNodeWrapper" for decorator in parameterClass.decorator_list)
    fields = {statement.target.id for statement in parameterClass.body if isinstance(statement, ast.AnnAssign)}
    bound = _boundParameters()
    assert set(bound) == fields
    assert "passwordLineEdit" not in bound.values() and not any("password" in name.lower() for name in fields)
    password = next(w for w in UI.iter("widget") if w.get("name") == "passwordLineEdit")
    assert {p.get("name"): p.findtext("enum") for p in password.findall("property")}["echoMode"] == \
        "QLineEdit::Password"


def test_ui_has_the_worklist_controls():
    widgets = _uiWidgets()
    assert widgets["MedAnnot"] == "qMRMLWidget"
    assert widgets["projectsTableWidget"] == widgets["confidenceTableWidget"] == "QTableWidget"
    buttons = ("loginButton", "logoutButton", "refreshButton", "nextCaseButton", "submitButton", "releaseButton",
               "retryOutboxButton")
    assert {widgets[name] for name in buttons} == {"QPushButton"}
    assert {widgets[name] for name in ("outboxLabel", "statusLabel", "caseLabel", "loginStateLabel")} == {"QLabel"}
    projectColumns = [column.findtext("property/string") for widget in UI.iter("widget")
                      if widget.get("name") == "projectsTableWidget" for column in widget.findall("column")]
    assert projectColumns == ["Project", "Guideline", "Cases", "Submitted / tasks", "My case"]


def test_every_button_handler_shows_its_errors_through_slicer():
    widgetClass = _class("MedAnnotWidget")
    methods = {node.name: node for node in widgetClass.body if isinstance(node, ast.FunctionDef)}
    handlers = [name for name in methods if re.fullmatch(r"on\w+Button", name)]
    assert len(handlers) == 15  # worklist 8, review 7
    for name in handlers:
        contexts = {ast.unparse(item.context_expr).split("(")[0] for node in ast.walk(methods[name])
                    if isinstance(node, ast.With) for item in node.items}
        assert contexts & {"self.errorsShown", "slicer.util.tryWithErrorDisplay"}, name
    assert "slicer.util.tryWithErrorDisplay" in ast.unparse(methods["errorsShown"])


def _widgetMethods(className: str = "MedAnnotWidget", tree=None) -> dict[str, str]:
    tree = tree or MODULE_TREE
    widgetClass = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == className)
    return {node.name: ast.unparse(node).replace("'", '"') for node in widgetClass.body
            if isinstance(node, ast.FunctionDef)}


def test_a_timer_beats_the_lease_on_the_worker_while_a_case_is_open_and_logout_does_not_stop_it():
    methods = _widgetMethods()
    assert "qt.QTimer()" in methods["setup"] and "HEARTBEAT_INTERVAL_SECONDS * 1000" in methods["setup"]
    assert 'connect("timeout()", self.onHeartbeatTimer)' in methods["setup"]
    assert "self.logic.beatInBackground(" in methods["onHeartbeatTimer"]
    assert "self.logic.heartbeat(" not in MODULE_SOURCE  # the blocking form is for scripts
    assert "heartbeatTimer.stop()" not in methods["onLogoutButton"]
    assert "heartbeatTimer.stop()" not in methods["onHeartbeatAnswered"]  # a lost lease: the logic sends nothing
    opened = methods["onCaseOpened"]
    assert opened.index("self.heartbeatTimer.start()") < opened.index("self.showCase(session)")
    assert "self.heartbeatTimer.stop()" in methods["afterCaseClosed"]


def test_the_gui_polls_the_network_worker_and_waits_on_no_request_but_short_ones():
    methods = _widgetMethods()
    assert "NETWORK_POLL_MILLISECONDS" in methods["setup"] and "self.networkTimer.start()" in methods["setup"]
    assert "self.logic.network.poll()" in methods["onNetworkTimer"]
    assert "self.logic.startNextCase(" in methods["onNextCaseButton"]
    assert "self.logic.startSubmit(" in methods["onSubmitButton"]
    assert "self.logic.nextCase(" not in MODULE_SOURCE and "self.logic.submit(" not in MODULE_SOURCE
    assert "createProgressDialog(" in methods["onNextCaseButton"]
    assert "dialog.wasCanceled" in methods["onNetworkTimer"] and "transfer.cancel()" in methods["onNetworkTimer"]
    assert "self.logic.network.shutdown()" in methods["cleanup"]


@pytest.mark.parametrize("module", ["MedAnnot", "MedAnnotCine"])
def test_each_embedded_segment_editor_follows_effects_registered_later(module):
    tree = ast.parse((EXTENSION_DIR / module / f"{module}.py").read_text(encoding="utf-8"))
    methods = _widgetMethods(f"{module}Widget", tree)
    assert "slicer.qSlicerSegmentEditorEffectFactory.instance()" in methods["setup"]
    assert 'connect("effectRegistered(QString)", self.onEffectRegistered)' in methods["setup"]
    assert 'disconnect("effectRegistered(QString)", self.onEffectRegistered)' in methods["cleanup"]
    assert "self.segmentEditorWidget.updateEffectList()" in methods["onEffectRegistered"]


def test_the_cine_widget_keeps_no_session_and_ends_none():
    """Slicer calls exit() on every module switch: the Cine widget's handlers must never end the case's cine
    (the panel logic holds the hand-over; Testing: test_leaving_and_entering_the_cine_module_...)."""
    source = (EXTENSION_DIR / "MedAnnotCine" / "MedAnnotCine.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    assigned = {ast.unparse(target) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets}
    assert not {name for name in assigned if name.endswith(".session") or name == "self.logic"}
    methods = _widgetMethods("MedAnnotCineWidget", tree)
    assert "self.panel = MedAnnotCinePanelLogic()" in methods["setup"]
    assert "self.panel.handOver(" in methods["annotateWith"]
    assert "self.panel.logicShown(" in methods["shownLogic"]
    for name in ("enter", "exit", "setParameterNode", "onParameterNodeModified", "initializeParameterNode"):
        assert "startCine" not in methods[name] and "sceneClosed" not in methods[name], name


def test_a_timer_autosaves_the_drawing_while_a_case_is_open_and_on_exit():
    methods = {node.name: ast.unparse(node) for node in _class("MedAnnotWidget").body
               if isinstance(node, ast.FunctionDef)}
    setup = methods["setup"].replace("'", '"')
    assert "AUTOSAVE_INTERVAL_SECONDS * 1000" in setup
    assert 'self.autosaveTimer.connect("timeout()", self.onAutosaveTimer)' in setup
    assert "self.logic.autosave()" in methods["onAutosaveTimer"]
    assert "self.autosaveTimer.start()" in methods["onCaseOpened"]
    assert "self.autosaveTimer.stop()" in methods["afterCaseClosed"]
    assert "self.onAutosaveTimer()" in methods["exit"] and "self.onAutosaveTimer()" in methods["cleanup"]


def _selfTestMethods(module: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse((EXTENSION_DIR / module / f"{module}.py").read_text(encoding="utf-8"))
    testClass = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == f"{module}Test")
    return {node.name: node for node in testClass.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("module", ["MedAnnot", "MedAnnotExport"])
def test_each_self_test_needing_the_installed_packages_gets_them_or_skips_saying_why(module):
    """Under --testing Slicer's pip_ensure installs nothing: a self-test that imports what MedAnnot installs
    (PyYAML, highdicom through medannot's guideline and dicomseg) asks first, then skips naming the packages."""
    methods = _selfTestMethods(module)
    require = ast.unparse(methods["requireDependencies"])
    assert "ensureDependencies()" in require and "missingRequirements(" in require and "self.skipTest(" in require
    assert "REQUIREMENTS_PATH" in require
    for name, method in methods.items():
        if not name.startswith("test_"):
            continue
        statements = list(ast.walk(method))
        importsCore = [node for node in statements if isinstance(node, ast.ImportFrom)
                       and (node.module or "").startswith(("medannot.", "MedAnnotExportLib", "MedAnnotWorklistLib"))]
        usesLogic = "ensureDependencies" in ast.unparse(method) or importsCore
        if usesLogic:
            calls = [node for node in statements if isinstance(node, ast.Call)
                     and ast.unparse(node.func) == "self.requireDependencies"]
            assert calls, name
            firstImport = min((node.lineno for node in importsCore if node.module.startswith("medannot.")),
                              default=10**9)
            assert calls[0].lineno < firstImport, name
    runTest = ast.unparse(methods["runTest"])
    assert "unittest.SkipTest" in runTest  # Reload and Test calls runTest without a unittest runner


@needsMrmlAndServer
def test_the_self_test_builds_its_case_with_the_session_the_logic_uses(scene, tmp_path):
    """MedAnnotTest's guided-panel test (it needs the Slicer application) makes its case as below; here the
    same call runs on real MRML and the logic checks it as the widget's Check button does."""
    from MedAnnotWorklistLib.logic import CaseSession, caseWithoutServer

    method = _selfTestMethods("MedAnnot")["test_GuidedPanelFollowsTheGuidelineAndShowsFindings"]
    call = next(node for node in ast.walk(method) if isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith("caseWithoutServer"))
    assert "SimpleNamespace" not in ast.unparse(method)
    import inspect

    signature = inspect.signature(caseWithoutServer)
    signature.bind(*[None] * len(call.args), **{keyword.arg: None for keyword in call.keywords})  # the names fit

    from medannot.demo_data import ct_geometry, ct_phantom
    from medannot.guideline import load_guideline

    guideline_path = EXTENSION_DIR / "medannot" / "data" / "liver-ct.yaml"  # the self-test's: bundled
    guideline = load_guideline(guideline_path)
    shape = (6, 48, 48)
    geometry = ct_geometry(shape)
    volumeNode = MedAnnotLib.addVolumeNodeFromArray(ct_phantom(shape)[0], geometry, name="CT")
    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, referenceVolumeNode=volumeNode)
    labels = np.zeros(shape, np.uint8)
    labels[:, 4:40, 4:20] = 1
    labels[2:4, 10:14, 30:34] = 1  # a stray second part of the liver
    MedAnnotLib.updateSegmentationFromLabelMap(segmentationNode, labels, geometry, guideline)
    session = caseWithoutServer(volumeNode, segmentationNode, guideline_path, cacheDir=tmp_path / "case")
    logic = MedAnnotLogic(outboxFolder=tmp_path / "outbox", cacheFolder=tmp_path / "cases")
    logic.session = session

    assert isinstance(session, CaseSession) and not session.isCine
    assert session.segmentNames == [spec.name for spec in guideline.segments]
    assert logic.allowedEffects() == list(guideline.tools) and guideline.title in logic.instructions()
    assert any(finding.rule == "components" for finding in logic.checkCase().findings)


def test_the_worklist_logic_needs_no_qt():
    for path in (MODULE_DIR / "MedAnnotWorklistLib").glob("*.py"):
        modules = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {(node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text("utf-8")))
                    if isinstance(node, ast.ImportFrom)}
        assert modules & {"qt", "ctk", "slicer.qt"} == set(), path.name


