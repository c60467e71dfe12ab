"""The MedAnnot worklist on an ultrasound cine case: claimed from a real task server, opened as a sequence with
MedAnnotCine's logic, keyframes drawn and interpolated on real MRML, checked, autosaved and submitted as a SEG of
the cine that records which frames were interpolated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
SERVER_TESTING_DIR = Path(__file__).resolve().parents[1] / "server"
for path in (EXTENSION_DIR / "MedAnnot", EXTENSION_DIR / "MedAnnotCine", SERVER_TESTING_DIR):
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
    import slicer
    from harness import PASSWORD, ServerProcess, make_lab
    from MedAnnotWorklistLib import CaseNotReadyError, MedAnnotLogic
    from pydicom import dcmread
    from pydicom.uid import SegmentationStorage
    from sqlalchemy import create_engine, text

    import MedAnnotLib
    from medannot.demo_data import cine_phantom, make_us_cine
    from medannot.dicomseg import read_segmentation
    from medannot.dicomseg.reader import parse_sr
    from medannot.errors import SourceImageError
    from medannot.imaging import load_source

ECHO_GUIDELINE = EXTENSION_DIR / "medannot" / "data" / "echo-lv.yaml"
FRAMES, ROWS, COLS = 24, 96, 128
KEYFRAMES = (1, 8, 15, 22)  # frames 0 and 23 lie outside the keyframes and stay empty
CONFIDENCES = {"LV cavity": 85, "LV wall": 70}
CHECKLIST = {"view": "yes", "image-quality": "good"}


@pytest.fixture
def echoLab(tmp_path):
    """The harness's lab (users admin, r1, r2; a CT project) plus an echo-lv project with one ultrasound cine case."""
    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab", cases=1)
    cine = make_us_cine(tmp_path / "lab" / "us" / "cine-001.dcm", frames=FRAMES, rows=ROWS, cols=COLS)
    manifest = tmp_path / "lab" / "echo.csv"
    manifest.write_text(f"case_id,source\necho-001,{cine}\n")
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.projects import create_project, import_cases

    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        projectId = create_project(session, ECHO_GUIDELINE, actor="test").id
        import_cases(session, projectId, manifest, actor="test")
    engine.dispose()
    lab.echo_project_id, lab.cine = projectId, cine
    return lab


@pytest.fixture
def server(echoLab, tmp_path):
    server = ServerProcess(echoLab.db_url, tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def readerLogic(tmp_path: Path, server, user: str = "r1", cacheFolder: Path | None = None) -> MedAnnotLogic:
    logic = MedAnnotLogic(outboxFolder=tmp_path / f"outbox-{user}",
                          cacheFolder=cacheFolder or tmp_path / f"cases-{user}")
    logic.login(server.url, user, PASSWORD)
    return logic


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


def submit(logic, session):
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


# ---------------------------------------------------------------------------------------------- tests
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
        submit(logic, session)
    assert {finding.where for finding in refused.value.check.errors} == {"frame 1"}

    drawKeyframes(session, frames=KEYFRAMES[1:])
    session.cine.interpolate("motion")
    check = logic.checkCase(session)
    assert check.passed, [str(finding) for finding in check.findings]
    expected = session.cine.guidelineLabels(session.guideline)
    result = submit(logic, session)

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
def test_a_colour_us_frame_with_an_undecodable_pixel_data_is_refused_naming_the_file(scene, tmp_path):
    from MedAnnotWorklistLib.caseimages import loadCase

    path = make_us_cine(tmp_path / "bad" / "cine.dcm", frames=4, rows=8, cols=8)
    ds = dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a truncated download
    ds.save_as(path)

    with pytest.raises(SourceImageError, match=r"cine\.dcm: cannot decode the pixel data"):
        loadCase(path.parent, "bad")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0
