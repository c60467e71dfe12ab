"""The MedAnnot module's guided case panel: what a case's guideline makes of it, on real MRML.

Segments with the guideline's names, colours and DICOM terminology; the Segment Editor effects the guideline allows;
its instructions; QA findings whose jump point lands on the offending voxels; and a submit that the logic refuses,
saying what is missing, until QA errors, the checklist and the confidence ratings are dealt with (against a real
task server, Testing/server/harness.py). The widget is checked as a file: it needs Slicer's Qt.
"""

from __future__ import annotations

import ast
import importlib.resources
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

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

needsMrml = pytest.mark.skipif(slicer_core is None, reason="needs the slicer-core wheel (real MRML)")
needsMrmlAndServer = pytest.mark.skipif(
    slicer_core is None or harness is None,
    reason="needs the slicer-core wheel (real MRML) and the server extra: pip install slicer-core '.[server]'")

if slicer_core is not None:
    import slicer
    import vtk
    from MedAnnotWorklistLib.guidance import (
        CaseNotReadyError,
        allowedEffectNames,
        checkSegmentation,
        confidenceProblems,
        instructionLinkToOpen,
        instructionsMarkdown,
        jumpSlicesToFinding,
    )
    from MedAnnotWorklistLib.logic import MedAnnotLogic

    import MedAnnotLib
    from medannot.dicomseg import read_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging.geometry import Geometry

PROJECT_GUIDELINE = Path(str(importlib.resources.files("medannot").joinpath("data/liver-ct.yaml")))
GUIDELINE_WITHOUT_TOOLS = Path(__file__).resolve().parent / "liver-ct.yaml"
EVERY_SLICER_EFFECT = ["Paint", "Draw", "Erase", "Scissors", "Threshold", "Islands", "Smoothing",
                       "Fill between slices", "Grow from seeds", "Level tracing", "Margin", "Hollow",
                       "Logical operators"]
PROJECT_EFFECTS = ["Paint", "Draw", "Erase", "Scissors", "Threshold", "Islands", "Smoothing", "Fill between slices",
                   "Grow from seeds", "Level tracing", "Margin", "Logical operators"]

# An oblique CT grid (rotated about S, tilted about L) of shape (8, 32, 40); a voxel is 3.6 mm³.
OBLIQUE_SHAPE = (8, 32, 40)
LIVER = (slice(1, 7), slice(4, 28), slice(4, 20))  # 2304 voxels, 8.3 ml: one region within the volume rule


# ---------------------------------------------------------------------------------------------- helpers
def projectGuideline():
    return load_guideline(PROJECT_GUIDELINE)


def obliqueGeometry() -> Geometry:
    angle, tilt = np.deg2rad(25), 0.15
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    tilting = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]])
    return Geometry(size=(OBLIQUE_SHAPE[2], OBLIQUE_SHAPE[1], OBLIQUE_SHAPE[0]), spacing=(1.2, 1.0, 3.0),
                    origin=(-30.0, 12.5, -80.0), direction=tuple((rotation @ tilting).reshape(-1).tolist()))


def drawnCase(scene, labels: np.ndarray, guideline):
    """A volume on the oblique grid and a guideline segmentation holding ``labels``."""
    geometry = obliqueGeometry()
    volumeNode = MedAnnotLib.addVolumeNodeFromArray(np.zeros(geometry.shape, np.int16), geometry, name="CT",
                                                    scene=scene)
    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, referenceVolumeNode=volumeNode,
                                                                    scene=scene)
    MedAnnotLib.updateSegmentationFromLabelMap(segmentationNode, labels, geometry, guideline)
    return volumeNode, segmentationNode


def voxelAt(volumeNode, pointRas) -> tuple[int, int, int]:
    """The numpy index (k, j, i) of the volume voxel whose centre is at ``pointRas``."""
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    ijk = np.array(rasToIjk.MultiplyPoint((*pointRas, 1.0))[:3])
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)  # the point is a voxel centre
    i, j, k = (int(v) for v in np.round(ijk))
    return k, j, i


def addSliceViews(scene) -> list:
    """Red (axial), Yellow (sagittal) and Green (coronal) slice nodes, as Slicer's default layout has."""
    orientations = {"Red": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]], "Yellow": [[0, 0, 1], [-1, 0, 0], [0, 1, 0]],
                    "Green": [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]}
    nodes = []
    for name, rotation in orientations.items():
        node = slicer.vtkMRMLSliceNode()
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        node.SetDimensions(256, 256, 1)
        node.SetFieldOfView(250.0, 250.0, 1.0)
        matrix = np.eye(4)
        matrix[:3, :3] = rotation
        node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(matrix))
        node.UpdateMatrices()
        nodes.append(scene.AddNode(node))
    return nodes


def sliceToRas(node) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())


def segmentsOf(segmentationNode) -> dict:
    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i)
            for i in range(segmentation.GetNumberOfSegments())}


# ---------------------------------------------------------------------------------------------- guideline
@needsMrml
def test_guideline_segments_carry_their_names_colours_and_dicom_terminology_and_keep_them(scene):
    guideline = projectGuideline()

    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, name="case-001", scene=scene)

    segments = segmentsOf(segmentationNode)
    assert list(segments) == ["Liver", "Lesion"]
    np.testing.assert_allclose(segments["Liver"].GetColor(), np.array([0xDD, 0x82, 0x65]) / 255)
    np.testing.assert_allclose(segments["Lesion"].GetColor(), np.array([0xF0, 0xD2, 0x64]) / 255)
    terminologies = slicer.modules.terminologies.logic()
    for name, category, segmentType in (
            ("Liver", ("SCT", "91723000", "Anatomical Structure"), ("SCT", "10200004", "Liver")),
            ("Lesion", ("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "52988006", "Lesion"))):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(segments[name].GetTerminology(), entry)
        assert entry.GetTerminologyContextName() == "Segmentation category and type - DICOM master list"
        coded = [(o.GetCodingSchemeDesignator(), o.GetCodeValue(), o.GetCodeMeaning())
                 for o in (entry.GetCategoryObject(), entry.GetTypeObject())]
        assert coded == [category, segmentType]
        # Slicer renames and recolours a segment from its terminology only when its name and colour were generated
        assert not segments[name].GetNameAutoGenerated() and not segments[name].GetColorAutoGenerated()


@needsMrml
def test_allowed_effects_are_the_guideline_tools_in_its_order():
    assert allowedEffectNames(projectGuideline()) == PROJECT_EFFECTS
    assert "Hollow" not in allowedEffectNames(projectGuideline())


@needsMrml
def test_every_segment_editor_effect_is_allowed_when_the_guideline_names_no_tools():
    assert "tools" not in GUIDELINE_WITHOUT_TOOLS.read_text(encoding="utf-8")

    assert allowedEffectNames(load_guideline(GUIDELINE_WITHOUT_TOOLS)) == EVERY_SLICER_EFFECT


@needsMrml
def test_instructions_show_the_guideline_text_and_link_its_reference_images(tmp_path):
    (tmp_path / "images").mkdir()
    atlas = tmp_path / "images" / "liver atlas.png"
    atlas.write_bytes(b"\x89PNG\r\n\x1a\n")
    text = GUIDELINE_WITHOUT_TOOLS.read_text(encoding="utf-8")
    guidelinePath = tmp_path / "g.yaml"
    guidelinePath.write_text(text + "instructions:\n  text: |\n    Draw the **whole** liver.\n"
                             "  reference_images: [images/liver atlas.png]\n", encoding="utf-8")

    markdown = instructionsMarkdown(load_guideline(guidelinePath))

    assert "Draw the **whole** liver." in markdown
    assert f"[liver atlas.png]({atlas.resolve().as_uri()})" in markdown
    assert "liver-ct 1.0.0" in markdown
    assert "## Liver and focal lesions" in instructionsMarkdown(projectGuideline())


def test_a_reference_image_link_is_opened_with_the_desktop_and_no_other_local_file_is(tmp_path):
    (tmp_path / "images").mkdir()
    atlas = tmp_path / "images" / "liver atlas.png"
    atlas.write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "evil.sh").write_text("echo no\n")
    guidelinePath = tmp_path / "g.yaml"
    guidelinePath.write_text(GUIDELINE_WITHOUT_TOOLS.read_text(encoding="utf-8")
                             + "instructions:\n  text: See [the atlas site](https://example.org/atlas).\n"
                             "  reference_images: [images/liver atlas.png]\n", encoding="utf-8")
    guideline = load_guideline(guidelinePath)
    links = re.findall(r"\]\(([^)]+)\)", instructionsMarkdown(guideline))

    assert links == ["https://example.org/atlas", atlas.resolve().as_uri()]
    assert instructionLinkToOpen(links[1], guideline) == atlas.resolve().as_uri()
    # QUrl.toString() hands the handler the decoded form ("liver atlas.png", not "liver%20atlas.png")
    assert instructionLinkToOpen(f"file://{atlas.resolve()}", guideline) == atlas.resolve().as_uri()
    assert instructionLinkToOpen(links[0], guideline) == "https://example.org/atlas"
    assert instructionLinkToOpen((tmp_path / "evil.sh").as_uri(), guideline) is None
    assert instructionLinkToOpen("images/liver atlas.png", guideline) is None
    assert instructionLinkToOpen("javascript:alert(1)", guideline) is None


def test_the_instructions_browser_follows_no_link_itself_and_the_widget_opens_them_with_the_desktop():
    """With openLinks on, QTextBrowser navigates to a file: link and the instructions disappear."""
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnot.ui")
    browser = next(w for w in ui.iter("widget") if w.get("name") == "instructionsTextBrowser")
    properties = {p.get("name"): p.findtext("bool") for p in browser.findall("property")}
    assert (properties.get("openLinks"), properties.get("openExternalLinks")) == ("false", "false")
    source = (MODULE_DIR / "MedAnnot.py").read_text(encoding="utf-8")
    assert 'instructionsTextBrowser.connect("anchorClicked(QUrl)", self.onInstructionLinkClicked)' in source
    handler = next(node for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.FunctionDef) and node.name == "onInstructionLinkClicked")
    body = ast.unparse(handler)
    assert "self.logic.instructionLinkToOpen(url.toString())" in body
    assert "qt.QDesktopServices.openUrl(qt.QUrl(target))" in body


# ---------------------------------------------------------------------------------------------- check
@needsMrml
def test_second_liver_part_is_found_and_the_views_jump_onto_it(scene):
    labels = np.zeros(OBLIQUE_SHAPE, np.uint8)
    labels[LIVER] = 1
    stray = np.zeros(OBLIQUE_SHAPE, bool)
    stray[2:4, 10:14, 30:36] = True
    labels[stray] = 1
    volumeNode, segmentationNode = drawnCase(scene, labels, projectGuideline())
    views = addSliceViews(scene)

    check = checkSegmentation(segmentationNode, volumeNode, projectGuideline())

    assert not check.passed
    [finding] = [f for f in check.findings if f.rule == "components"]
    assert (finding.severity, finding.segment) == ("error", "Liver")
    assert "one connected region" in finding.message
    k, j, i = voxelAt(volumeNode, finding.pointRas)
    assert stray[k, j, i], "the jump point must fall on the extra part, not on the liver"
    assert (k, j, i) == finding.voxel and (finding.axis, finding.index) == ("slice", k)
    assert finding.where == f"slice {k}"
    np.testing.assert_allclose(finding.pointRas, np.array(finding.pointLps) * [-1, -1, 1])

    assert jumpSlicesToFinding(finding)
    for node in views:  # each view is centred on the point, in its own orientation
        np.testing.assert_allclose(sliceToRas(node)[:3, 3], finding.pointRas, atol=1e-6)
    np.testing.assert_allclose(sliceToRas(views[1])[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, 1, 0]], atol=1e-9)


@needsMrml
def test_lesion_reaching_outside_the_liver_is_found_where_it_is_outside(scene):
    labels = np.zeros(OBLIQUE_SHAPE, np.uint8)
    labels[LIVER] = 1
    labels[3:5, 10:13, 16:30] = 2  # columns 16-19 in the liver, 20-29 outside it
    outside = np.zeros(OBLIQUE_SHAPE, bool)
    outside[3:5, 10:13, 20:30] = True
    volumeNode, segmentationNode = drawnCase(scene, labels, projectGuideline())

    check = checkSegmentation(segmentationNode, volumeNode, projectGuideline())

    [finding] = [f for f in check.findings if f.rule == "inside:Liver"]
    assert (finding.severity, finding.segment, finding.message) == (
        "error", "Lesion", "A lesion extends outside the liver outline.")
    assert "lie outside Liver by more than 2 mm" in finding.detail
    k, j, i = voxelAt(volumeNode, finding.pointRas)
    assert outside[k, j, i] and labels[k, j, i] == 2
    assert check.drawnSegments == ("Liver", "Lesion")


@needsMrml
def test_overlapping_segments_are_a_finding_that_jumps_onto_the_overlap(scene):
    labels = np.zeros(OBLIQUE_SHAPE, np.uint8)
    labels[LIVER] = 1
    volumeNode, segmentationNode = drawnCase(scene, labels, projectGuideline())
    lesion = np.zeros(OBLIQUE_SHAPE, np.uint8)
    lesion[3:5, 10:13, 8:12] = 1  # drawn over the liver without "Overwrite all": both segments hold these voxels
    segmentation = segmentationNode.GetSegmentation()
    slicer.util.updateSegmentBinaryLabelmapFromArray(lesion, segmentationNode,
                                                     segmentation.GetSegmentIdBySegmentName("Lesion"), volumeNode)

    check = checkSegmentation(segmentationNode, volumeNode, projectGuideline())

    assert not check.passed
    [finding] = [f for f in check.findings if f.rule == "overlap"]
    assert (finding.severity, finding.segment) == ("error", "Liver")
    assert "Liver and Lesion overlap in 24 voxels" in finding.message and "Overwrite all" in finding.message
    k, j, i = voxelAt(volumeNode, finding.pointRas)
    assert lesion[k, j, i] and labels[k, j, i] == 1, "the jump point must be a voxel both segments hold"
    assert check.drawnSegments == ("Liver", "Lesion")


@needsMrml
def test_segmentation_following_the_guideline_passes_and_an_empty_one_has_nowhere_to_jump(scene):
    labels = np.zeros(OBLIQUE_SHAPE, np.uint8)
    labels[LIVER] = 1
    labels[3:5, 10:13, 8:12] = 2
    volumeNode, segmentationNode = drawnCase(scene, labels, projectGuideline())

    assert checkSegmentation(segmentationNode, volumeNode, projectGuideline()).findings == ()

    emptyNode = MedAnnotLib.addSegmentationNodeFromGuideline(projectGuideline(), scene=scene)
    check = checkSegmentation(emptyNode, volumeNode, projectGuideline())
    assert [(f.rule, f.segment, f.where, f.pointRas) for f in check.findings] == [("required", "Liver", "", None)]
    assert check.drawnSegments == ()
    assert not jumpSlicesToFinding(check.findings[0])


@needsMrml
def test_confidence_is_required_for_drawn_segments_only_when_the_guideline_says_so():
    required, optional = projectGuideline(), load_guideline(GUIDELINE_WITHOUT_TOOLS)

    assert confidenceProblems(required, {"liver": 80}, ["Liver"]) == []
    assert confidenceProblems(required, {}, ["Liver"]) == [
        "Confidence: rate Liver (0-100 %); guideline liver-ct requires a rating for every segment drawn."]
    assert confidenceProblems(optional, {}, ["Liver", "Lesion"]) == []
    assert confidenceProblems(optional, {"Liver": 120}, ["Liver"]) == [
        "Confidence: the rating of Liver must be a number from 0 to 100, not 120."]


# ---------------------------------------------------------------------------------------------- submit
@pytest.fixture
def lab(tmp_path):
    """Users admin, r1, r2; one project under the shipped liver guideline (QA rules, checklist, confidence
    required) with cases case-001..003."""
    return harness.make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab")


@pytest.fixture
def server(lab, tmp_path):
    server = harness.ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def paint(session, labels: np.ndarray) -> None:
    geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)
    MedAnnotLib.updateSegmentationFromLabelMap(session.segmentationNode, labels, geometry, session.guideline)


def submitAs(logic, session, **kwargs):
    return logic.submit(session, readerName="Roe^Rita", readerId="r1", **kwargs)


@needsMrmlAndServer
def test_submit_is_refused_until_qa_checklist_and_confidence_are_satisfied_then_records_the_answers(
        scene, lab, server, tmp_path):
    logic = MedAnnotLogic(outboxFolder=tmp_path / "outbox", cacheFolder=tmp_path / "cases")
    logic.login(server.url, "r1", harness.PASSWORD)
    session = logic.nextCase(lab.project_id)
    assert logic.allowedEffects() == PROJECT_EFFECTS
    assert "## Liver and focal lesions" in logic.instructions()
    liver = np.zeros(harness.SHAPE, np.uint8)
    liver[:, 3:21, 3:15] = 1  # 864 voxels of 1.6 mm³: 1.4 ml
    twoParts = liver.copy()
    twoParts[1:3, 2:5, 19:22] = 1
    paint(session, twoParts)

    check = logic.checkCase()
    [finding] = check.errors
    assert finding.rule == "components" and voxelAt(session.volumeNode, finding.pointRas)[2] in (19, 20, 21)
    with pytest.raises(CaseNotReadyError) as refused:
        submitAs(logic, session)
    assert refused.value.problems == [
        ("QA error: Liver: The liver must be one connected region; remove stray islands (Islands effect, keep "
         f"largest). (slice {finding.index})"),
        'Checklist: answer "Contrast phase adequate (portal-venous)?" (contrast-phase).',
        'Checklist: answer "Image quality" (image-quality).',
        "Confidence: rate Liver (0-100 %); guideline liver-ct requires a rating for every segment drawn.",
    ]  # the optional artefacts question and the undrawn Lesion are not asked for
    assert str(refused.value).startswith("Case case-001 cannot be submitted yet; fix these first:\n- QA error")

    withLesion = liver.copy()
    withLesion[1:3, 10:13, 7:10] = 2
    paint(session, withLesion)
    with pytest.raises(CaseNotReadyError) as refused:
        submitAs(logic, session, confidences={"Liver": 90},
                 checklistAnswers={"contrast-phase": "yes", "image-quality": "excellent"})
    assert refused.value.problems == [
        "Checklist item 'image-quality' (Image quality) takes one of good, acceptable, poor, not 'excellent'.",
        "Confidence: rate Lesion (0-100 %); guideline liver-ct requires a rating for every segment drawn.",
    ]
    assert logic.session is session and slicer.mrmlScene.IsNodePresent(session.segmentationNode)
    assert (logic.outboxStatus().pending, logic.outboxStatus().sent) == (0, 0)
    assert logic.projects()[0].tasksSubmitted == 0

    result = submitAs(logic, session, confidences={"Liver": 90, "Lesion": 70},
                      checklistAnswers={"contrast-phase": True, "image-quality": "acceptable"})

    assert result.status == "sent"
    record = read_segmentation(result.segPath, result.srPath)
    assert record.summary["checklist"] == {"contrast-phase": "yes", "image-quality": "acceptable"}
    assert {s["name"]: s["confidence"] for s in record.summary["segments"]} == {"Liver": 90, "Lesion": 70}
    np.testing.assert_array_equal(record.labels, withLesion)
    assert logic.projects()[0].tasksSubmitted == 1


# ---------------------------------------------------------------------------------------------- module files
MODULE_SOURCE = (MODULE_DIR / "MedAnnot.py").read_text(encoding="utf-8")
WIDGET_CLASS = next(node for node in ast.parse(MODULE_SOURCE).body
                    if isinstance(node, ast.ClassDef) and node.name == "MedAnnotWidget")
UI_WIDGETS = {widget.get("name"): widget.get("class")
              for widget in ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnot.ui").iter("widget")}


def widgetMethod(name: str) -> str:
    return ast.unparse(next(node for node in WIDGET_CLASS.body
                            if isinstance(node, ast.FunctionDef) and node.name == name))


def test_ui_has_the_guided_panel_controls():
    assert UI_WIDGETS["instructionsTextBrowser"] == "QTextBrowser"
    assert UI_WIDGETS["checklistTableWidget"] == UI_WIDGETS["findingsTableWidget"] == "QTableWidget"
    assert UI_WIDGETS["checkButton"] == "QPushButton"
    assert UI_WIDGETS["segmentEditorFrame"] == "QWidget"
    assert UI_WIDGETS["checkSummaryLabel"] == "QLabel"
    assert set(re.findall(r"\.ui\.(\w+)", MODULE_SOURCE)) - set(UI_WIDGETS) == set()


def test_widget_embeds_a_segment_editor_limited_to_the_effects_the_logic_allows():
    setup = widgetMethod("setup")
    assert "slicer.qMRMLSegmentEditorWidget()" in setup
    assert "self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)" in setup
    showCase = widgetMethod("showCase")
    assert "editor.setEffectNameOrder(self.logic.allowedEffects(session))" in showCase
    assert "editor.unorderedEffectsVisible = False" in showCase
    assert "setMarkdown(self.logic.instructions(session))" in showCase
    assert "self.logic.startNextCase(" in widgetMethod("onNextCaseButton")
    assert "self.showCase(session)" in widgetMethod("onCaseOpened")  # once the worker's download is opened


def test_widget_checks_jumps_and_submits_through_the_logic_with_errors_shown():
    assert "self.logic.checkCase()" in widgetMethod("onCheckButton")
    assert "self.errorsShown(" in widgetMethod("onCheckButton")
    selected = widgetMethod("onFindingSelected")
    assert "self.logic.jumpSlicesToFinding(finding)" in selected and "slicer.util.tryWithErrorDisplay(" in selected
    assert "checklistAnswers=self.checklistAnswers()" in widgetMethod("onSubmitButton")
    setup = widgetMethod("setup").replace("'", '"')
    assert 'findingsTableWidget.connect("itemSelectionChanged()", self.onFindingSelected)' in setup
    assert 'checkButton.connect("clicked(bool)", self.onCheckButton)' in setup
