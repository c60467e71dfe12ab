"""MedAnnot Cine: draw a few keyframes on an ultrasound cine, interpolate the frames between them, review and correct.

The module's work is done by :class:`MedAnnotCineLib.logic.MedAnnotCineLogic`, which needs no Qt; this file holds
the Slicer module, its parameter node, its GUI and its self-test.
"""

import contextlib
import pathlib
import sys
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLSegmentationNode, vtkMRMLSequenceBrowserNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Run from a source checkout (Additional module paths: MedAnnotExtension/<module>/, as the README says), Slicer puts
# only this file's folder on sys.path, but MedAnnotLib, medannot and the other modules' Libs sit one folder up. In a
# build or an installed extension they share qt-scripted-modules/ with this file, and nothing is added.
_moduleFolder = pathlib.Path(__file__).resolve().parent
if not (_moduleFolder / "MedAnnotLib").is_dir() and (_moduleFolder.parent / "MedAnnotLib").is_dir():
    for _folder in (_moduleFolder.parent, *(_moduleFolder.parent / name for name in ("MedAnnotExport", "MedAnnotCine"))):
        if str(_folder) not in sys.path:
            sys.path.append(str(_folder))

from MedAnnotCineLib import sequences
from MedAnnotCineLib.logic import (
    FRAME_EMPTY,
    FRAME_INTERPOLATED,
    FRAME_KEY,
    MedAnnotCineLogic,
    MedAnnotCinePanelLogic,
)

# Timeline cell colours: keyframes stand out, interpolated frames are what is left to review.
STATE_COLORS = {FRAME_KEY: "#f0aa3c", FRAME_INTERPOLATED: "#5a96dc", FRAME_EMPTY: "#d8d8d8"}
STATE_NAMES = {FRAME_KEY: _("keyframe"), FRAME_INTERPOLATED: _("interpolated"), FRAME_EMPTY: _("empty")}
# MedAnnot Cine's own Segment Editor parameter node, so that the Segment Editor module keeps its own settings.
SEGMENT_EDITOR_SINGLETON_TAG = "MedAnnotCine"


#
# MedAnnotCine
#


class MedAnnotCine(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAnnot Cine")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Sequences", "Segmentations"]
        self.parent.contributors = ["MedAnnot developers (MedAnnot project)"]
        self.parent.helpText = _(
            "Segment an ultrasound cine (or any image sequence) by drawing a few keyframes: mark each drawn frame as "
            "a keyframe, interpolate the frames between them, step through the interpolated frames to review, and "
            "correct any frame: it becomes a keyframe and only its neighbouring frames are recomputed. Export writes "
            "DICOM-SEG + SR listing which frames were drawn and which interpolated."
        )
        self.parent.acknowledgementText = _("Built on highdicom, pydicom and 3D Slicer's Sequences.")


#
# MedAnnotCineParameterNode
#


@parameterNodeWrapper
class MedAnnotCineParameterNode:
    """What the cine panel remembers with the scene, bound to the GUI through the widgets' SlicerParameterName.

    browserNode - the sequence browser playing the cine.
    segmentationNode - the segmentation drawn on the cine's frames.
    method - interpolation method (auto: motion-guided, as the cine's image is known).
    guidelinePath, readerName, readerId, readerRole, institution, outputDir - what an export needs.
    """

    browserNode: vtkMRMLSequenceBrowserNode
    segmentationNode: vtkMRMLSegmentationNode
    method: Annotated[str, Choice(["auto", "motion", "shape", "morphological"])] = "auto"
    guidelinePath: pathlib.Path
    readerName: str
    readerId: str
    readerRole: str = "Annotator"
    institution: str
    outputDir: pathlib.Path


#
# MedAnnotCineWidget
#


class MedAnnotCineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: every action calls a :class:`MedAnnotCineLogic`, the one :class:`MedAnnotCinePanelLogic` says
    annotates the selected cine. The widget keeps no annotation state: ``exit()`` (every module switch) and
    ``enter()`` only disconnect and reconnect the GUI."""

    class InterpolationCancelled(Exception):
        """The reader pressed Cancel in the interpolation's progress dialog."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.panel = None
        self.segmentEditorWidget = None
        self.effectFactory = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedBrowserNode = None
        self._observedSegmentationNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnnotCine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.panel = MedAnnotCinePanelLogic()

        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setSegmentationNodeSelectorVisible(False)
        self.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)
        self.segmentEditorWidget.setSwitchToSegmentationsButtonVisible(False)
        self.selectSegmentEditorNode()
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)
        # Effects registered after this widget was made (other extensions, or this module opened at startup) are
        # added to its list, as Slicer's Segment Editor module does.
        self.effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.effectFactory.connect("effectRegistered(QString)", self.onEffectRegistered)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.markKeyframeButton.connect("clicked(bool)", self.onMarkKeyframeButton)
        self.ui.removeKeyframeButton.connect("clicked(bool)", self.onRemoveKeyframeButton)
        self.ui.interpolateButton.connect("clicked(bool)", self.onInterpolateButton)
        self.ui.nextToReviewButton.connect("clicked(bool)", self.onNextToReviewButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.timelineTableWidget.connect("cellClicked(int,int)", self.onTimelineCellClicked)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.effectFactory is not None:
            self.effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)

    def onEffectRegistered(self, effectName=None) -> None:
        self.segmentEditorWidget.updateEffectList()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.selectSegmentEditorNode()
        self.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.segmentEditorWidget.removeViewObservations()
        self.panel.sceneClosed()  # the sessions' nodes are gone with the scene

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.selectSegmentEditorNode()

    def selectSegmentEditorNode(self) -> None:
        """Give the embedded Segment Editor this module's parameter node, creating it in the scene if needed."""
        node = slicer.mrmlScene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(SEGMENT_EDITOR_SINGLETON_TAG)
            node = slicer.mrmlScene.AddNode(node)
        if self.segmentEditorWidget.mrmlSegmentEditorNode() != node:
            self.segmentEditorWidget.setMRMLSegmentEditorNode(node)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(MedAnnotCineParameterNode(self.panel.ownLogic.getParameterNode()))
        if not self._parameterNode.browserNode:
            self._parameterNode.browserNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._offerOnlyAvailableMethods()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def _offerOnlyAvailableMethods(self) -> None:
        """Drop the methods this Slicer cannot run (morphological without its package) from the combo box that
        connectGui has just filled with every choice. The connector maps item i to choice i, so only trailing
        choices may go: morphological is the last one."""
        available = self.logic.availableMethods()
        combo = self.ui.methodComboBox
        for index in reversed(range(combo.count)):
            if combo.itemText(index) not in available:
                combo.removeItem(index)
        if self._parameterNode.method not in available:
            self._parameterNode.method = "auto"

    # ------------------------------------------------------------ state shown
    def shownLogic(self):
        """The logic annotating the selected browser and segmentation, None when none does (see
        :meth:`MedAnnotCinePanelLogic.logicShown`)."""
        return self.panel.logicShown(self._parameterNode.parameterNode if self._parameterNode else None)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Follow the chosen browser and segmentation in the Segment Editor and the timeline (only shows: no
        session is started or ended here)."""
        node = self._parameterNode
        browserNode = node.browserNode if node else None
        segmentationNode = node.segmentationNode if node else None
        self.observeBrowser(browserNode)
        self.observeSegmentation(segmentationNode)
        proxyVolumeNode = None
        if browserNode is not None:
            try:
                proxyVolumeNode = browserNode.GetProxyNode(sequences.volumeSequenceOfBrowser(browserNode))
            except ValueError:
                proxyVolumeNode = None
        self.segmentEditorWidget.setSegmentationNode(segmentationNode)
        self.segmentEditorWidget.setSourceVolumeNode(proxyVolumeNode)
        self.updateTimeline()

    def observeBrowser(self, browserNode) -> None:
        """Move the timeline's current-frame marker as the browser plays or steps."""
        if self._observedBrowserNode is browserNode:
            return
        if self._observedBrowserNode is not None:
            self.removeObserver(self._observedBrowserNode, vtk.vtkCommand.ModifiedEvent, self.onBrowserModified)
        self._observedBrowserNode = browserNode
        if browserNode is not None:
            self.addObserver(browserNode, vtk.vtkCommand.ModifiedEvent, self.onBrowserModified)

    def onBrowserModified(self, caller=None, event=None) -> None:
        self.updateCurrentFrame()

    def observeSegmentation(self, segmentationNode) -> None:
        """Give a segment added on one frame to every frame, or it vanishes from the list on the next frame."""
        if self._observedSegmentationNode is segmentationNode:
            return
        if self._observedSegmentationNode is not None:
            self.removeObserver(self._observedSegmentationNode, slicer.vtkSegmentation.SegmentAdded,
                                self.onSegmentAdded)
        self._observedSegmentationNode = segmentationNode
        if segmentationNode is not None:
            self.addObserver(segmentationNode, slicer.vtkSegmentation.SegmentAdded, self.onSegmentAdded)

    def onSegmentAdded(self, caller=None, event=None) -> None:
        # After the Segment Editor has finished adding the segment, not within its event.
        qt.QTimer.singleShot(0, self.syncSegments)

    def syncSegments(self) -> None:
        logic = self.shownLogic()
        if logic is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to add the segment to every frame.")):
                logic.syncSegments()

    def updateTimeline(self) -> None:
        """One coloured cell per frame: keyframe, interpolated or empty."""
        table = self.ui.timelineTableWidget
        logic = self.shownLogic()
        states = logic.frameStates() if logic is not None else []
        table.setColumnCount(len(states))
        table.setRowCount(1 if states else 0)
        for frame, state in enumerate(states):
            item = qt.QTableWidgetItem(str(frame + 1))
            item.setBackground(qt.QBrush(qt.QColor(STATE_COLORS[state])))
            item.setTextAlignment(qt.Qt.AlignCenter)
            item.setToolTip(_("Frame {frame}: {state}").format(frame=frame + 1, state=STATE_NAMES[state]))
            table.setItem(0, frame, item)
        self.updateCurrentFrame()
        self.updateButtons()

    def updateCurrentFrame(self) -> None:
        logic = self.shownLogic()
        if logic is None:
            self.ui.frameLabel.text = _("Choose the cine's sequence browser and a segmentation, then draw on a frame "
                                        "and mark it as a keyframe.")
            return
        frame = logic.currentFrame()
        states = logic.frameStates()
        table = self.ui.timelineTableWidget
        if 0 <= frame < table.columnCount:
            table.setCurrentCell(0, frame)
            table.scrollToItem(table.item(0, frame))
        self.ui.frameLabel.text = _("Frame {frame} of {count}: {state}").format(
            frame=frame + 1, count=len(states), state=STATE_NAMES[states[frame]] if frame < len(states) else "")

    def updateButtons(self) -> None:
        node = self._parameterNode
        ready = bool(node and node.browserNode and node.segmentationNode)
        logic = self.shownLogic()
        states = logic.frameStates() if logic is not None else []
        self.ui.markKeyframeButton.enabled = ready
        self.ui.removeKeyframeButton.enabled = bool(logic and logic.keyframes())
        self.ui.interpolateButton.enabled = bool(logic and len(logic.keyframes()) >= 2)
        self.ui.nextToReviewButton.enabled = FRAME_INTERPOLATED in states
        self.ui.undoButton.enabled = bool(logic and logic.canUndo)
        self.ui.exportButton.enabled = bool(logic and node and node.guidelinePath.is_file() and node.readerName
                                            and node.readerId and str(node.outputDir) not in ("", "."))

    def annotateWith(self, cineLogic) -> None:
        """Work on the cine another module opened, with that module's logic instance (the MedAnnot worklist's case),
        so that the keyframes marked here are the ones it checks and submits. The hand-over is kept by
        :class:`MedAnnotCinePanelLogic`, not by this widget, so leaving and entering the module keeps it."""
        self.panel.handOver(cineLogic, self.panel.ownLogic.getParameterNode())
        if self._parameterNode is not None:
            self.onParameterNodeModified()

    # ------------------------------------------------------------ actions
    def actionLogic(self):
        """The logic to act with; the panel's own one is started on the selected nodes when none annotates them."""
        if self.shownLogic() is None:
            self.segmentEditorWidget.setActiveEffect(None)
        return self.panel.logicForAction(self._parameterNode.parameterNode)

    @contextlib.contextmanager
    def frameProgressShown(self, text, frameCount):
        """A progress dialog with Cancel counting computed frames; yields the ``progress`` callback the logic
        calls after each span. The logic reads and writes the scene, so it runs on the GUI thread and the dialog is
        repainted from the callback; Cancel raises :class:`InterpolationCancelled` from it, before any frame is
        written."""
        dialog = slicer.util.createProgressDialog(labelText=text, maximum=max(int(frameCount), 1),
                                                  windowTitle=_("MedAnnot Cine"))

        def progress(frames) -> None:
            dialog.value = min(dialog.maximum, dialog.value + int(frames))
            slicer.app.processEvents()
            if dialog.wasCanceled:
                raise self.InterpolationCancelled()

        try:
            yield progress
        finally:
            dialog.close()
            dialog.deleteLater()

    def onMarkKeyframeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to mark the keyframe."), waitCursor=True):
            logic = self.actionLogic()
            changed = logic.markKeyframe()
            if logic.method is not None and len(changed) > 1:
                self.ui.statusLabel.text = _("Frames {first} to {last} re-interpolated.").format(
                    first=changed.start + 1, last=changed.stop)
            else:
                self.ui.statusLabel.text = _("Frame {frame} is a keyframe.").format(frame=logic.currentFrame() + 1)
        self.updateTimeline()

    def onRemoveKeyframeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to remove the keyframe."), waitCursor=True):
            logic = self.actionLogic()
            logic.removeKeyframe()
            self.ui.statusLabel.text = _("Frame {frame} is no longer a keyframe.").format(
                frame=logic.currentFrame() + 1)
        self.updateTimeline()

    def onInterpolateButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to interpolate."), waitCursor=True):
            logic = self.actionLogic()
            try:
                with self.frameProgressShown(_("Interpolating the frames between keyframes..."),
                                             logic.session.frameCount) as progress:
                    result = logic.interpolate(self._parameterNode.method, progress=progress)
            except self.InterpolationCancelled:
                self.ui.statusLabel.text = _("Interpolation cancelled; no frame was changed.")
                return
            self.ui.statusLabel.text = _("{count} frames interpolated ({method}, {seconds:.1f} s). Press Next to "
                                         "review them.").format(count=len(result.interpolated_frames),
                                                                method=result.method, seconds=result.seconds)
        self.updateTimeline()

    def onNextToReviewButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to go to the next frame."), waitCursor=True):
            logic = self.shownLogic()
            if logic is None or logic.goToNextFrameToReview() is None:
                self.ui.statusLabel.text = _("No interpolated frame to review.")
        self.updateCurrentFrame()

    def onUndoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo."), waitCursor=True):
            restored = self.actionLogic().undo()
            self.ui.statusLabel.text = _("Undone; {count} frames restored.").format(count=len(restored))
        self.updateTimeline()

    def onTimelineCellClicked(self, row, column) -> None:
        logic = self.shownLogic()
        if logic is not None:
            logic.goToFrame(column)

    def onExportButton(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to export the cine segmentation."), waitCursor=True):
            self.segmentEditorWidget.setActiveEffect(None)
            result = self.actionLogic().exportSegmentation(
                node.guidelinePath, readerName=node.readerName, readerId=node.readerId, readerRole=node.readerRole,
                institution=node.institution, outputDir=node.outputDir)
            self.ui.statusLabel.text = _("Written:\n{seg}\n{sr}").format(seg=result.seg_path, sr=result.sr_path)


#
# MedAnnotCineTest
#


class MedAnnotCineTest(ScriptedLoadableModuleTest):
    """Self-test in a running Slicer: a phantom cine as a sequence, keyframes, interpolation, an edit, undo, and the
    widget's timeline."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_KeyframesInterpolateAndAnEditStaysLocal()
        self.setUp()
        self.test_WidgetTimelineShowsFrameStates()

    def makeCine(self):
        """A 24-frame phantom cine as Slicer's DICOM plugin loads one, a browser, and a two-segment segmentation."""
        from medannot.demo_data import cine_phantom

        import MedAnnotLib

        image, truth = cine_phantom()
        sequenceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "Cine")
        sequenceNode.SetIndexName("time")
        sequenceNode.SetIndexUnit("s")
        frameVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        for frame in range(image.shape[0]):
            slicer.util.updateVolumeFromArray(frameVolume, image[frame:frame + 1])
            sequenceNode.SetDataNodeAtValue(frameVolume, f"{frame * 0.0333:.3f}")
        slicer.mrmlScene.RemoveNode(frameVolume)
        browserNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Cine browser")
        browserNode.AddSynchronizedSequenceNode(sequenceNode)
        proxyVolumeNode = browserNode.GetProxyNode(sequenceNode)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Cine segmentation")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(proxyVolumeNode)
        segmentIds = [segmentationNode.GetSegmentation().AddEmptySegment("", name) for name in ("LV cavity", "LV wall")]
        labelOfSegment = {segmentId: label for label, segmentId in enumerate(segmentIds, start=1)}

        def draw(mask):
            geometry = MedAnnotLib.geometryFromVolumeNode(proxyVolumeNode)
            MedAnnotLib.updateSegmentsFromLabelMap(segmentationNode, mask[np.newaxis], geometry, labelOfSegment)

        return browserNode, segmentationNode, truth, draw

    def test_KeyframesInterpolateAndAnEditStaysLocal(self):
        self.delayDisplay("Starting the test")
        browserNode, segmentationNode, truth, draw = self.makeCine()
        logic = MedAnnotCineLogic()
        logic.startCine(browserNode, segmentationNode)
        for frame in (1, 8, 15, 22):
            logic.goToFrame(frame)
            draw(truth[frame])
            logic.markKeyframe()
        logic.interpolate("shape")
        labels = logic.exportFrames().labels
        for frame in (4, 11, 18):
            cavity, expected = labels[frame] == 1, truth[frame] == 1
            self.assertGreater(2 * np.logical_and(cavity, expected).sum() / (cavity.sum() + expected.sum()), 0.85)

        logic.goToFrame(11)
        draw(truth[11])
        self.assertEqual(logic.markKeyframe(), range(9, 15))
        after = logic.exportFrames().labels
        self.assertTrue(np.array_equal(after[15:], labels[15:]))
        logic.undo()
        self.assertEqual(logic.keyframes(), [1, 8, 15, 22])
        self.delayDisplay("Test passed")

    def test_WidgetTimelineShowsFrameStates(self):
        browserNode, segmentationNode, truth, draw = self.makeCine()
        slicer.util.selectModule("MedAnnotCine")
        widget = slicer.modules.medannotcine.widgetRepresentation().self()
        widget._parameterNode.browserNode = browserNode
        widget._parameterNode.segmentationNode = segmentationNode
        for frame in (2, 12):
            browserNode.SetSelectedItemNumber(frame)
            draw(truth[frame])
            widget.onMarkKeyframeButton()
        widget._parameterNode.method = "shape"
        widget.onInterpolateButton()
        table = widget.ui.timelineTableWidget
        self.assertEqual(table.columnCount, 24)
        colours = [table.item(0, frame).background().color().name() for frame in range(24)]
        self.assertEqual(colours[2], STATE_COLORS[FRAME_KEY])
        self.assertEqual(colours[7], STATE_COLORS[FRAME_INTERPOLATED])
        self.assertEqual(colours[20], STATE_COLORS[FRAME_EMPTY])
        widget.onNextToReviewButton()  # from keyframe 12, the last: wraps around to the first interpolated frame
        self.assertEqual(widget.shownLogic().currentFrame(), 3)
        self.assertEqual(table.currentColumn(), 3)
        self.delayDisplay("Test passed")
