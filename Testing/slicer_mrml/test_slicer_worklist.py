"""The MedAnnot module: its worklist logic on real MRML against a real task server, and its Qt parts as files.

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
from PIL import Image

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_DIR = EXTENSION_DIR / "MedAnnot"
SERVER_TESTING_DIR = Path(__file__).resolve().parents[1] / "server"
for path in (MODULE_DIR, SERVER_TESTING_DIR):  # parent of MedAnnotWorklistLib; home of the server harness
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
    from MedAnnotWorklistLib.logic import MedAnnotLogic
    from pydicom import dcmread
    from sqlalchemy import create_engine, text

    import MedAnnotLib
    from medannot.client import AuthenticationError, ServerAddressError, ServerUnreachableError
    from medannot.dicomseg import read_segmentation
    from medannot.errors import MedAnnotError
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
def test_next_case_delivers_a_waiting_result_before_claiming(scene, lab, server, tmp_path):
    logic = readerLogic(tmp_path, server)
    session = logic.nextCase(lab.project_id)
    paintLiverAndLesion(session)
    server.stop()
    assert submit(logic, session).status == "queued"
    restarted = ServerProcess(lab.db_url, tmp_path / "data", port=server.port).start()
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
    assert len(handlers) == 8
    for name in handlers:
        contexts = {ast.unparse(item.context_expr).split("(")[0] for node in ast.walk(methods[name])
                    if isinstance(node, ast.With) for item in node.items}
        assert contexts & {"self.errorsShown", "slicer.util.tryWithErrorDisplay"}, name
    assert "slicer.util.tryWithErrorDisplay" in ast.unparse(methods["errorsShown"])


def test_a_timer_beats_the_lease_while_a_case_is_open():
    setup = ast.unparse(next(node for node in _class("MedAnnotWidget").body
                             if isinstance(node, ast.FunctionDef) and node.name == "setup"))
    assert "qt.QTimer()" in setup and "HEARTBEAT_INTERVAL_SECONDS * 1000" in setup
    assert 'connect("timeout()", self.onHeartbeatTimer)' in setup.replace("'", '"')
    assert "self.logic.heartbeat()" in MODULE_SOURCE


def test_a_timer_autosaves_the_drawing_while_a_case_is_open_and_on_exit():
    methods = {node.name: ast.unparse(node) for node in _class("MedAnnotWidget").body
               if isinstance(node, ast.FunctionDef)}
    setup = methods["setup"].replace("'", '"')
    assert "AUTOSAVE_INTERVAL_SECONDS * 1000" in setup
    assert 'self.autosaveTimer.connect("timeout()", self.onAutosaveTimer)' in setup
    assert "self.logic.autosave()" in methods["onAutosaveTimer"]
    assert "self.autosaveTimer.start()" in methods["onNextCaseButton"]
    assert "self.autosaveTimer.stop()" in methods["afterCaseClosed"]
    assert "self.onAutosaveTimer()" in methods["exit"] and "self.onAutosaveTimer()" in methods["cleanup"]


def test_the_module_runs_the_logic_class_the_tests_exercise_and_the_logic_needs_no_qt():
    imported = {(node.module, alias.name) for node in ast.walk(MODULE_TREE) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert ("MedAnnotWorklistLib.logic", "MedAnnotLogic") in imported
    defined = {node.name for node in MODULE_TREE.body if isinstance(node, ast.ClassDef)}
    assert defined == {"MedAnnot", "MedAnnotParameterNode", "MedAnnotWidget", "MedAnnotTest"}
    for path in (MODULE_DIR / "MedAnnotWorklistLib").glob("*.py"):
        modules = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {(node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text("utf-8")))
                    if isinstance(node, ast.ImportFrom)}
        assert modules & {"qt", "ctk", "slicer.qt"} == set(), path.name


def test_module_icon_is_a_128_pixel_png():
    with Image.open(MODULE_DIR / "Resources" / "Icons" / "MedAnnot.png") as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))


def test_cmake_installs_every_file_of_the_module_and_the_extension_builds_it():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "MedAnnot")
    listed = set(re.findall(r"[\w/]+\.(?:py|ui|png|txt)\b", text)) - {"CMakeLists.txt"}
    moduleFiles = {str(path.relative_to(MODULE_DIR)) for path in MODULE_DIR.rglob("*")
                   if path.is_file() and path.suffix in (".py", ".ui", ".png", ".txt") and path.name != "CMakeLists.txt"
                   and "__pycache__" not in path.parts}
    assert listed == moduleFiles
    extension = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(MedAnnot)" in extension.splitlines()
