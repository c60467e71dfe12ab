"""The MedAnnotCine module: keyframe interpolation on a cine browsed as a Slicer sequence, on real MRML, and its Qt
parts as files.

The logic tests build the cine as Slicer's DICOM image-sequence plugin loads an ultrasound cine (one single-slice
volume per frame in a vtkMRMLSequenceNode, index "time" in seconds, a browser with a proxy volume), draw the
phantom's true outlines on a few frames through the proxy segmentation, and drive the very class the widget runs.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_DIR = EXTENSION_DIR / "MedAnnotCine"
if str(MODULE_DIR) not in sys.path:  # parent of MedAnnotCineLib
    sys.path.insert(0, str(MODULE_DIR))

try:
    import slicer_core  # noqa: F401
except ImportError:
    slicer_core = None

needsMrml = pytest.mark.skipif(slicer_core is None, reason="needs the slicer-core wheel (real MRML): pip install slicer-core")

if slicer_core is not None:
    import slicer
    import vtk
    from MedAnnotCineLib import FRAME_EMPTY, FRAME_INTERPOLATED, FRAME_KEY, MedAnnotCineLogic, UnmarkedEditsError

    import MedAnnotLib
    from medannot.demo_data import cine_phantom, make_us_cine
    from medannot.dicomseg import read_segmentation
    from medannot.dicomseg.reader import parse_sr

FRAMES, ROWS, COLS = 24, 96, 128
FRAME_TIME_S = 0.0333
KEYFRAMES = (1, 8, 15, 22)  # frames 0 and 23 lie outside the keyframes and stay empty
SEGMENT_NAMES = ("LV cavity", "LV wall")  # the phantom's labels 1 and 2, named as in the echo-lv guideline
ECHO_GUIDELINE = EXTENSION_DIR / "medannot" / "data" / "echo-lv.yaml"


# ---------------------------------------------------------------------------------------------- helpers
def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


class Cine:
    """A phantom cine in the scene as Slicer loads one, with its browser, proxy volume and a segmentation."""

    def __init__(self, scene, indexName="time", indexUnit="s", instanceUid=None) -> None:
        self.image, self.truth = cine_phantom(FRAMES, ROWS, COLS)
        self.sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "US cine")
        self.sequence.SetIndexName(indexName)
        self.sequence.SetIndexUnit(indexUnit)
        frameVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
        ijkToRas = vtk.vtkMatrix4x4()  # Slicer's plugin turns the image 180 degrees so that it shows upright
        ijkToRas.SetElement(0, 0, -1.0)
        ijkToRas.SetElement(1, 1, -1.0)
        frameVolume.SetIJKToRASMatrix(ijkToRas)
        frameVolume.SetSpacing(0.3, 0.3, 1.0)
        if instanceUid:
            frameVolume.SetAttribute("DICOM.instanceUIDs", instanceUid)
        for frame in range(FRAMES):
            slicer.util.updateVolumeFromArray(frameVolume, self.image[frame:frame + 1])
            indexValue = f"{frame * FRAME_TIME_S:.3f}" if indexUnit == "s" else str(frame + 1)
            self.sequence.SetDataNodeAtValue(frameVolume, indexValue)
        scene.RemoveNode(frameVolume)
        self.browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "US cine browser")
        self.browser.AddSynchronizedSequenceNode(self.sequence)
        self.proxyVolume = self.browser.GetProxyNode(self.sequence)
        self.segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Cine segmentation")
        self.segmentation.CreateDefaultDisplayNodes()
        self.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.proxyVolume)
        self.segmentIds = [self.segmentation.GetSegmentation().AddEmptySegment("", name) for name in SEGMENT_NAMES]
        self.segmentation.GetSegmentation().CollapseBinaryLabelmaps()  # one shared layer, as the Segment Editor keeps
        self.labelOfSegment = {segmentId: label for label, segmentId in enumerate(self.segmentIds, start=1)}

    def draw(self, labels2d: np.ndarray) -> None:
        """Paint a label mask on the shown frame, as the Segment Editor does: into the proxy segmentation."""
        geometry = MedAnnotLib.geometryFromVolumeNode(self.proxyVolume)
        MedAnnotLib.updateSegmentsFromLabelMap(self.segmentation, labels2d[np.newaxis], geometry, self.labelOfSegment)

    def shown(self) -> np.ndarray:
        return MedAnnotLib.labelMapFromSegments(self.segmentation, self.proxyVolume, self.labelOfSegment)[0]

    def stored(self, frame: int) -> np.ndarray:
        """What the segmentation sequence holds for a frame (not what the logic remembers)."""
        item = self.segmentationSequence.GetDataNodeAtValue(self.sequence.GetNthIndexValue(frame))
        return MedAnnotLib.labelMapFromSegments(item, self.sequence.GetNthDataNode(frame), self.labelOfSegment)[0]

    def storedAll(self) -> np.ndarray:
        return np.stack([self.stored(frame) for frame in range(FRAMES)])

    def itemModifiedTimes(self) -> list[int]:
        """Modification time of each frame's stored segment voxels: unchanged means the frame was not rewritten."""
        name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        times = []
        for frame in range(FRAMES):
            item = self.segmentationSequence.GetDataNodeAtValue(self.sequence.GetNthIndexValue(frame))
            segmentation = item.GetSegmentation()
            times.append(max(segmentation.GetSegment(segmentId).GetRepresentation(name).GetMTime()
                             for segmentId in self.segmentIds))
        return times

    @property
    def segmentationSequence(self):
        return self.browser.GetSequenceNode(self.segmentation)


def markFromTruth(logic, cine: Cine, frames) -> None:
    for frame in frames:
        logic.goToFrame(frame)
        cine.draw(cine.truth[frame])
        logic.markKeyframe()


@pytest.fixture
def cine(scene):
    return Cine(scene)


@pytest.fixture
def logic(cine):
    logic = MedAnnotCineLogic()
    cine.browser.SetSelectedItemNumber(KEYFRAMES[0])
    logic.startCine(cine.browser, cine.segmentation)
    return logic


@pytest.fixture
def interpolated(logic, cine):
    """Keyframes drawn from the phantom's truth and interpolated with the shape method."""
    markFromTruth(logic, cine, KEYFRAMES)
    result = logic.interpolate("shape")
    return result


# ---------------------------------------------------------------------------------------------- storage
@needsMrml
def test_the_segmentation_becomes_the_proxy_of_a_segmentation_sequence_that_keeps_each_frames_drawing(
        scene, cine, logic):
    sequence = cine.segmentationSequence
    assert sequence is not None and sequence.GetDataNodeClassName() == "vtkMRMLSegmentationNode"
    assert sequence.GetNumberOfDataNodes() == FRAMES
    assert [sequence.GetNthIndexValue(i) for i in range(FRAMES)] == [cine.sequence.GetNthIndexValue(i)
                                                                        for i in range(FRAMES)]
    assert cine.browser.GetProxyNode(sequence).GetID() == cine.segmentation.GetID()
    assert cine.browser.GetSaveChanges(sequence)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # no stray proxy made by the browser

    logic.goToFrame(5)
    cine.draw(cine.truth[5])
    logic.goToFrame(6)
    assert not cine.shown().any()  # frame 6 has its own, empty segmentation
    logic.goToFrame(5)
    assert np.array_equal(cine.shown(), cine.truth[5])
    assert np.array_equal(cine.stored(5), cine.truth[5])


@needsMrml
def test_frame_times_come_from_the_sequence_index_in_seconds(cine, logic):
    expected = [round(frame * FRAME_TIME_S, 3) * 1000 for frame in range(FRAMES)]
    np.testing.assert_allclose(logic.session.frameTimesMs, expected)
    assert logic.session.spacing == (0.3, 0.3)


@needsMrml
def test_frame_times_come_from_the_dicom_cine_when_the_index_is_not_a_time(scene, dicom_database, tmp_path):
    path = make_us_cine(tmp_path / "us" / "cine.dcm", frame_time_ms=40.0)
    dicom_database.addFolder(path.parent)
    uid = next(iter(dicom_database.files))
    cine = Cine(scene, indexName="frame", indexUnit="", instanceUid=uid)
    logic = MedAnnotCineLogic()
    logic.startCine(cine.browser, cine.segmentation)
    np.testing.assert_allclose(logic.session.frameTimesMs, [40.0 * frame for frame in range(FRAMES)])


# ---------------------------------------------------------------------------------------------- interpolation
@needsMrml
def test_timeline_shows_keyframes_then_interpolated_frames_between_them(cine, logic):
    markFromTruth(logic, cine, KEYFRAMES)
    assert logic.keyframes() == list(KEYFRAMES)
    states = logic.frameStates()
    assert [f for f, s in enumerate(states) if s == FRAME_KEY] == list(KEYFRAMES)
    assert all(s == FRAME_EMPTY for f, s in enumerate(states) if f not in KEYFRAMES)

    logic.interpolate("shape")
    states = logic.frameStates()
    assert [f for f, s in enumerate(states) if s == FRAME_KEY] == list(KEYFRAMES)
    assert [f for f, s in enumerate(states) if s == FRAME_INTERPOLATED] == [
        f for f in range(KEYFRAMES[0] + 1, KEYFRAMES[-1]) if f not in KEYFRAMES]
    assert states[0] == states[FRAMES - 1] == FRAME_EMPTY


@needsMrml
def test_shape_interpolation_matches_the_phantom_cavity_on_every_frame(cine, logic, interpolated):
    stored = cine.storedAll()
    interpolatedFrames = [f for f, s in enumerate(logic.frameStates()) if s == FRAME_INTERPOLATED]
    cavity = [dice(stored[f] == 1, cine.truth[f] == 1) for f in interpolatedFrames]
    wall = [dice(stored[f] == 2, cine.truth[f] == 2) for f in interpolatedFrames]
    print(f"shape: cavity Dice min {min(cavity):.3f} mean {np.mean(cavity):.3f}; "
          f"wall Dice min {min(wall):.3f} mean {np.mean(wall):.3f}")
    assert min(cavity) >= 0.85
    # What is stored in the scene is exactly what the core computed; frames outside the keyframes stay empty.
    assert np.array_equal(stored[interpolatedFrames], interpolated.labels[interpolatedFrames])
    assert not stored[0].any() and not stored[FRAMES - 1].any()


@needsMrml
def test_motion_interpolation_follows_the_moving_wall_too(cine, logic):
    markFromTruth(logic, cine, KEYFRAMES)
    result = logic.interpolate("auto")
    assert result.method == logic.method == "motion"
    assert result.frame_times_used
    stored = cine.storedAll()
    frames = result.interpolated_frames
    cavity = [dice(stored[f] == 1, cine.truth[f] == 1) for f in frames]
    wall = [dice(stored[f] == 2, cine.truth[f] == 2) for f in frames]
    print(f"motion: cavity Dice min {min(cavity):.3f} mean {np.mean(cavity):.3f}; "
          f"wall Dice min {min(wall):.3f} mean {np.mean(wall):.3f}")
    assert min(cavity) >= 0.95 and min(wall) >= 0.85


@needsMrml
def test_interpolating_needs_two_keyframes(cine, logic):
    from medannot.interpolation import InterpolationError

    markFromTruth(logic, cine, [5])
    with pytest.raises(InterpolationError, match="at least two keyframes"):
        logic.interpolate("shape")


@needsMrml
def test_next_frame_to_review_is_the_next_interpolated_frame_and_wraps_around(cine, logic, interpolated):
    logic.goToFrame(KEYFRAMES[1])
    assert logic.goToNextFrameToReview() == KEYFRAMES[1] + 1
    assert logic.currentFrame() == KEYFRAMES[1] + 1
    assert logic.nextFrameToReview(after=KEYFRAMES[2] - 1) == KEYFRAMES[2] + 1  # keyframes are skipped
    assert logic.nextFrameToReview(after=KEYFRAMES[-1] - 1) == KEYFRAMES[0] + 1  # wraps to the first


# ---------------------------------------------------------------------------------------------- editing and undo
@needsMrml
def test_editing_a_frame_makes_it_a_keyframe_and_rewrites_only_its_neighbouring_spans(cine, logic, interpolated):
    before = cine.storedAll()
    modified = cine.itemModifiedTimes()
    edited = 11  # between keyframes 8 and 15
    logic.goToFrame(edited)
    cine.draw(cine.truth[edited])
    changed = logic.markKeyframe()

    assert changed == range(KEYFRAMES[1] + 1, KEYFRAMES[2])
    assert logic.keyframes() == sorted([*KEYFRAMES, edited])
    assert logic.frameStates()[edited] == FRAME_KEY
    after = cine.storedAll()
    nowModified = cine.itemModifiedTimes()
    untouched = [f for f in range(FRAMES) if f not in changed]
    assert all(nowModified[f] == modified[f] for f in untouched)  # not even rewritten with the same voxels
    assert np.array_equal(after[untouched], before[untouched])
    assert any(nowModified[f] != modified[f] for f in changed if f != edited)
    wallBefore = np.mean([dice(before[f] == 2, cine.truth[f] == 2) for f in changed])
    wallAfter = np.mean([dice(after[f] == 2, cine.truth[f] == 2) for f in changed])
    assert wallAfter > wallBefore  # the correction improved its neighbours


@needsMrml
def test_undo_restores_the_previous_keyframes_states_and_labels(cine, logic, interpolated):
    edited = 11
    logic.goToFrame(edited)
    cine.draw(np.zeros((ROWS, COLS), np.uint8))  # the reader wipes the frame ...
    beforeMark = cine.storedAll()
    statesBefore, keyframesBefore = logic.frameStates(), logic.keyframes()
    logic.markKeyframe()  # ... and marks it: its neighbours shrink towards the empty keyframe
    assert np.count_nonzero(cine.stored(edited + 1)) < np.count_nonzero(beforeMark[edited + 1])

    restored = logic.undo()
    assert set(restored) == set(range(KEYFRAMES[1] + 1, KEYFRAMES[2])) - {edited}
    assert logic.frameStates() == statesBefore and logic.keyframes() == keyframesBefore
    assert np.array_equal(cine.storedAll(), beforeMark)

    # Undoing the interpolation empties the interpolated frames again; nothing left to undo for it later.
    logic.undo()
    assert [f for f, s in enumerate(logic.frameStates()) if s == FRAME_INTERPOLATED] == []
    assert not cine.stored(KEYFRAMES[0] + 1).any()


@needsMrml
def test_after_undo_the_next_edit_is_interpolated_from_the_restored_keyframes(cine, logic, interpolated):
    edited = 11
    logic.goToFrame(edited)
    cine.draw(cine.truth[edited])
    logic.markKeyframe()
    once = cine.storedAll()
    logic.undo()
    logic.goToFrame(edited)
    logic.markKeyframe()
    assert np.array_equal(cine.storedAll(), once)


@needsMrml
def test_removing_a_keyframe_reinterpolates_it_from_its_neighbours_and_undo_brings_it_back(cine, logic,
                                                                                              interpolated):
    before = cine.storedAll()
    changed = logic.removeKeyframe(KEYFRAMES[2])
    assert changed == range(KEYFRAMES[1] + 1, KEYFRAMES[3])
    assert logic.frameStates()[KEYFRAMES[2]] == FRAME_INTERPOLATED
    assert not np.array_equal(cine.stored(KEYFRAMES[2]), before[KEYFRAMES[2]])
    logic.undo()
    assert logic.keyframes() == list(KEYFRAMES)
    assert np.array_equal(cine.storedAll(), before)


@needsMrml
def test_a_segment_added_on_one_frame_is_given_to_every_frame(cine, logic, interpolated):
    extraId = cine.segmentation.GetSegmentation().AddEmptySegment("", "Pericardium")  # on the shown frame only
    logic.goToFrame(11)
    assert cine.segmentation.GetSegmentation().GetSegment(extraId) is None  # Slicer's behaviour
    logic.syncSegments()  # what the widget does when a segment is added
    assert cine.segmentation.GetSegmentation().GetSegment(extraId) is not None
    mask = cine.truth[11].copy()
    mask[80:92, 4:16] = 3  # a pericardium patch away from the ventricle
    cine.labelOfSegment[extraId] = 3
    cine.draw(mask)
    changed = logic.markKeyframe()
    for frame in changed:
        item = cine.segmentationSequence.GetDataNodeAtValue(cine.sequence.GetNthIndexValue(frame))
        assert item.GetSegmentation().GetSegment(extraId) is not None
    assert logic.exportFrames().segmentNames == {1: "LV cavity", 2: "LV wall", 3: "Pericardium"}
    assert np.array_equal(cine.stored(11), mask)


@needsMrml
def test_colour_frames_are_read_as_grey(scene):
    from MedAnnotCineLib.sequences import frameArray

    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour frame")
    slicer.util.updateVolumeFromArray(volume, rgb)
    grey = frameArray(volume)
    assert grey.shape == (4, 5)
    np.testing.assert_allclose(grey, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- export
@needsMrml
def test_export_frames_gives_the_whole_label_map_and_the_frame_lists(cine, logic, interpolated):
    frames = logic.exportFrames()
    assert frames.labels.shape == (FRAMES, ROWS, COLS)
    assert np.array_equal(frames.labels, cine.storedAll())
    assert frames.keyframes == list(KEYFRAMES)
    assert frames.interpolatedFrames == [f for f in range(KEYFRAMES[0] + 1, KEYFRAMES[-1]) if f not in KEYFRAMES]
    assert frames.segmentNames == {1: "LV cavity", 2: "LV wall"}
    assert frames.method == "shape"
    assert frames.segments[0].keyframes == list(KEYFRAMES)


@needsMrml
def test_export_refuses_a_frame_corrected_without_being_marked(cine, logic, interpolated):
    logic.goToFrame(12)
    cine.draw(cine.truth[12])
    assert logic.unmarkedEditFrames() == [12]
    with pytest.raises(UnmarkedEditsError, match=r"Frames 13 \(numbered from 1\)") as error:
        logic.exportFrames()
    assert error.value.frames == [12]
    logic.markKeyframe()
    assert logic.unmarkedEditFrames() == []


@needsMrml
def test_export_segmentation_writes_semiautomatic_segments_and_lists_keyframes_in_the_sr(
        scene, dicom_database, tmp_path):
    sourcePath = make_us_cine(tmp_path / "us" / "cine.dcm", frames=FRAMES, rows=ROWS, cols=COLS)
    dicom_database.addFolder(sourcePath.parent)
    cine = Cine(scene, instanceUid=next(iter(dicom_database.files)))  # as Slicer's DICOM plugin marks the frames
    logic = MedAnnotCineLogic()
    logic.startCine(cine.browser, cine.segmentation)
    markFromTruth(logic, cine, KEYFRAMES)
    logic.interpolate("motion")

    result = logic.exportSegmentation(ECHO_GUIDELINE, readerName="Cine^Reader", readerId="reader1",
                                      outputDir=tmp_path / "out", confidences={"LV cavity": 80},
                                      checklist={"view": "yes", "image-quality": "good"})
    record = read_segmentation(result.seg_path)
    assert np.array_equal(record.labels, logic.exportFrames().labels)
    segments = {s["name"]: s for s in record.summary["segments"]}
    assert {s["algorithm_type"] for s in segments.values()} == {"SEMIAUTOMATIC"}
    assert segments["LV cavity"]["algorithm_name"] == "MedAnnot keyframe interpolation (motion)"
    assert segments["LV cavity"]["confidence"] == 80
    assert record.dataset.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion

    oneBased = ",".join(str(f + 1) for f in KEYFRAMES)
    interpolatedOneBased = ",".join(str(f + 1) for f in range(KEYFRAMES[0] + 1, KEYFRAMES[-1]) if f not in KEYFRAMES)
    groups = parse_sr(record.sr)["groups"]
    assert len(groups) == 2
    for values in groups.values():
        texts = {code[1]: value for code, value in values.items()}
        assert texts["KEYFRAMES"] == oneBased
        assert texts["INTERP_FRAMES"] == interpolatedOneBased


@needsMrml
def test_export_names_a_segment_the_guideline_does_not_know(cine, logic, interpolated, tmp_path):
    from medannot.errors import SegmentContentError

    cine.segmentation.GetSegmentation().GetSegment(cine.segmentIds[1]).SetName("Myocardium")
    with pytest.raises(SegmentContentError, match="segment 'Myocardium' is not in guideline echo-lv"):
        logic.exportSegmentation(ECHO_GUIDELINE, readerName="Cine^Reader", readerId="reader1",
                                 outputDir=tmp_path / "out", sourcePath=tmp_path / "unused.dcm")


@needsMrml
def test_a_reopened_session_restores_keyframes_and_interpolation_from_the_scene(cine, logic, interpolated):
    reopened = MedAnnotCineLogic()
    reopened.startCine(cine.browser, cine.segmentation)
    assert reopened.keyframes() == list(KEYFRAMES)
    assert reopened.frameStates() == logic.frameStates()
    assert reopened.method == "shape"
    assert reopened.unmarkedEditFrames() == []
    changed = reopened.markKeyframe(11)  # the interpolator is rebuilt from the keyframes before the edit
    assert changed == range(KEYFRAMES[1] + 1, KEYFRAMES[2])


# ---------------------------------------------------------------------------------------------- module files
MODULE_SOURCE = (MODULE_DIR / "MedAnnotCine.py").read_text(encoding="utf-8")
UI = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnotCine.ui")


def _uiWidgets() -> dict[str, str]:
    return {widget.get("name"): widget.get("class") for widget in UI.iter("widget")}


def _parameterFields() -> set[str]:
    tree = ast.parse(MODULE_SOURCE)
    parameterClass = next(node for node in tree.body
                          if isinstance(node, ast.ClassDef) and node.name == "MedAnnotCineParameterNode")
    assert any(getattr(decorator, "id", None) == "parameterNodeWrapper" for decorator in parameterClass.decorator_list)
    return {statement.target.id for statement in parameterClass.body if isinstance(statement, ast.AnnAssign)}


def test_every_widget_the_cine_gui_code_uses_is_in_its_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SOURCE))
    assert used, "the widget should reach its controls through self.ui"
    assert used - set(_uiWidgets()) == set()


def test_every_cine_parameter_is_bound_to_exactly_one_widget():
    bound = {}
    for widget in UI.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.findtext("string") not in bound
                bound[prop.findtext("string")] = widget.get("name")
    assert set(bound) == _parameterFields()


def test_cine_ui_has_node_selectors_method_choice_actions_and_a_timeline():
    widgets = _uiWidgets()
    assert widgets["MedAnnotCine"] == "qMRMLWidget"
    assert widgets["browserSelector"] == widgets["segmentationSelector"] == "qMRMLNodeComboBox"
    assert widgets["methodComboBox"] == "QComboBox"
    assert widgets["timelineTableWidget"] == "QTableWidget"
    for button in ("markKeyframeButton", "removeKeyframeButton", "interpolateButton", "nextToReviewButton",
                   "undoButton", "exportButton"):
        assert widgets[button] == "QPushButton"
    connected = {connection.findtext("receiver") for connection in UI.iter("connection")
                 if connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert connected == {name for name, kind in widgets.items() if kind == "qMRMLNodeComboBox"}
    from medannot.interpolation import METHODS

    methodBox = next(w for w in UI.iter("widget") if w.get("name") == "methodComboBox")
    assert [item.findtext("property/string") for item in methodBox.findall("item")] == list(METHODS)
    assert f'Choice({list(METHODS)!r})'.replace("'", '"') in MODULE_SOURCE.replace("'", '"')


def test_importing_the_cine_logic_needs_no_qt_and_installs_nothing():
    """The logic is imported at Slicer startup and by the tests, before highdicom may be installed."""
    import subprocess

    script = (
        "import sys, builtins\n"
        f"sys.path[:0] = [{str(EXTENSION_DIR)!r}, {str(MODULE_DIR)!r}]\n"
        "real_import = builtins.__import__\n"
        "def guarded(name, *args, **kwargs):\n"
        "    if name.split('.')[0] in ('qt', 'ctk', 'highdicom', 'yaml'):\n"
        "        raise ImportError(f'{name} must not be imported')\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = guarded\n"
        "import MedAnnotCineLib\n"
        "print('imported')\n"
    )
    if slicer_core is None:
        pytest.skip("needs the slicer-core wheel (real MRML): pip install slicer-core")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               check=False)
    assert "imported" in completed.stdout, completed.stderr
