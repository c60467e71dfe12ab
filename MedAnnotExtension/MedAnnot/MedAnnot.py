"""MedAnnot: the annotator's worklist. Log in to the lab's task server, take the next case, segment it, submit.

The module's work is done by :class:`MedAnnotWorklistLib.logic.MedAnnotLogic`, which needs no Qt; this file holds
the Slicer module, its parameter node, its GUI and its self-test.
"""

import contextlib
import importlib.resources
import pathlib

import numpy as np
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import MedAnnotLib
from medannot.client import LeaseLostError
from medannot.errors import MedAnnotError
from MedAnnotWorklistLib.logic import HEARTBEAT_INTERVAL_SECONDS, MedAnnotLogic

NOT_RATED = -1  # confidence spin box value meaning "the reader gave no rating"


#
# MedAnnot
#


class MedAnnot(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAnnot")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "MedAnnotExport"]
        self.parent.contributors = ["MedAnnot developers"]
        self.parent.helpText = _(
            "The annotator's worklist: log in to your lab's MedAnnot task server, take the next case (its images "
            "load and the guideline's segments are created), segment it in the Segment Editor, then submit. If the "
            "server cannot be reached the result waits in a local outbox and is sent later."
        )
        self.parent.acknowledgementText = _("Built on highdicom, pydicom and 3D Slicer.")


#
# MedAnnotParameterNode
#


@parameterNodeWrapper
class MedAnnotParameterNode:
    """What the worklist remembers with the scene (never the password).

    serverUrl, username - the task server and the login name.
    readerName, readerId, readerRole, institution - who draws, as written into the DICOM-SEG.
    """

    serverUrl: str
    username: str
    readerName: str
    readerId: str
    readerRole: str = "Annotator"
    institution: str


#
# MedAnnotWidget
#


class MedAnnotWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: every action calls :class:`MedAnnotLogic`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.heartbeatTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnnot.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedAnnotLogic()

        # Keep the lease alive while a case is open; the server gives it back to the queue when beats stop.
        self.heartbeatTimer = qt.QTimer()
        self.heartbeatTimer.setInterval(HEARTBEAT_INTERVAL_SECONDS * 1000)
        self.heartbeatTimer.connect("timeout()", self.onHeartbeatTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loginButton.connect("clicked(bool)", self.onLoginButton)
        self.ui.passwordLineEdit.connect("returnPressed()", self.onLoginButton)
        self.ui.logoutButton.connect("clicked(bool)", self.onLogoutButton)
        self.ui.refreshButton.connect("clicked(bool)", self.onRefreshButton)
        self.ui.projectsTableWidget.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)
        self.ui.submitButton.connect("clicked(bool)", self.onSubmitButton)
        self.ui.releaseButton.connect("clicked(bool)", self.onReleaseButton)
        self.ui.retryOutboxButton.connect("clicked(bool)", self.onRetryOutboxButton)

        self.initializeParameterNode()
        self.updateOutbox()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.heartbeatTimer is not None:
            self.heartbeatTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateOutbox()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(MedAnnotParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    # ------------------------------------------------------------ state shown
    def updateButtons(self, caller=None, event=None) -> None:
        loggedIn = self.logic.isLoggedIn
        caseOpen = self.logic.session is not None
        node = self._parameterNode
        self.ui.loginButton.enabled = bool(node and node.serverUrl and node.username)
        self.ui.logoutButton.enabled = loggedIn
        self.ui.refreshButton.enabled = loggedIn
        self.ui.nextCaseButton.enabled = loggedIn and not caseOpen and self.selectedProjectId() is not None
        self.ui.submitButton.enabled = caseOpen and bool(node and node.readerName and node.readerId)
        self.ui.releaseButton.enabled = caseOpen
        self.ui.loginStateLabel.text = (
            _("Logged in to {server} as {user}").format(server=self.logic.serverUrl, user=self.logic.username)
            if loggedIn else _("Not logged in"))
        session = self.logic.session
        self.ui.caseLabel.text = (
            _("Case {case} (task {task}), lease until {expiry}").format(
                case=session.caseId, task=session.taskId, expiry=session.leaseExpiresAt)
            if session else _("No case open"))

    def updateOutbox(self) -> None:
        status = self.logic.outboxStatus()
        self.ui.outboxLabel.text = _("{pending} waiting, {sent} sent, {rejected} refused by the server").format(
            pending=status.pending, sent=status.sent, rejected=status.rejected)
        self.ui.retryOutboxButton.enabled = status.pending > 0

    def selectedProjectId(self):
        items = self.ui.projectsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def refreshWorklist(self) -> None:
        """Fill the projects table from the server, keeping the selected project selected."""
        selected = self.selectedProjectId()
        rows = self.logic.projects()
        table = self.ui.projectsTableWidget
        table.setRowCount(len(rows))
        for row, project in enumerate(rows):
            cells = (project.name, project.guideline, str(project.cases),
                     f"{project.tasksSubmitted} / {project.tasksTotal}", project.myCase)
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, project.projectId)
                table.setItem(row, column, item)
            if project.projectId == selected or (selected is None and len(rows) == 1):
                table.selectRow(row)

    def fillConfidenceTable(self, segmentNames) -> None:
        table = self.ui.confidenceTableWidget
        table.setRowCount(len(segmentNames))
        for row, name in enumerate(segmentNames):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            spinBox = qt.QSpinBox()
            spinBox.setRange(NOT_RATED, 100)
            spinBox.setSpecialValueText(_("not rated"))
            spinBox.setSuffix(" %")
            spinBox.setValue(NOT_RATED)
            table.setCellWidget(row, 1, spinBox)

    def confidences(self) -> dict:
        """The ratings in the confidence table, by segment name; unrated segments are left out."""
        table = self.ui.confidenceTableWidget
        ratings = {}
        for row in range(table.rowCount):
            value = table.cellWidget(row, 1).value
            if value != NOT_RATED:
                ratings[table.item(row, 0).text()] = int(value)
        return ratings

    def afterCaseClosed(self, message) -> None:
        self.heartbeatTimer.stop()
        self.fillConfidenceTable([])
        self.ui.statusLabel.text = message

    # ------------------------------------------------------------ actions
    @contextlib.contextmanager
    def errorsShown(self, failureMessage):
        """Run an action with Slicer's error display; the buttons and outbox counts are refreshed either way."""
        try:
            with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
                yield
        finally:
            self.updateOutbox()
            self.updateButtons()

    def onLoginButton(self) -> None:
        password = self.ui.passwordLineEdit.text
        self.ui.passwordLineEdit.clear()  # never kept: not in the parameter node, the widget or the logic
        try:
            with self.errorsShown(_("Failed to log in.")):
                self.logic.login(self._parameterNode.serverUrl, self._parameterNode.username, password)
                if not self._parameterNode.readerId:
                    self._parameterNode.readerId = self._parameterNode.username[:16]
                self.refreshWorklist()
                self.ui.statusLabel.text = _("Select a project and press Next case.")
        finally:
            del password

    def onLogoutButton(self) -> None:
        with self.errorsShown(_("Failed to log out.")):
            self.heartbeatTimer.stop()
            self.logic.logout()
            self.ui.projectsTableWidget.setRowCount(0)
            if self.logic.session is not None:
                self.ui.statusLabel.text = _("Logged out. The open case stays here; log in again to keep its "
                                             "lease, or submit it into the outbox.")

    def onRefreshButton(self) -> None:
        with self.errorsShown(_("Failed to read the worklist.")):
            self.refreshWorklist()

    def onNextCaseButton(self) -> None:
        with self.errorsShown(_("Failed to open the next case.")):
            session = self.logic.nextCase(self.selectedProjectId())
            if session is None:
                self.ui.statusLabel.text = _("Nothing is left for you in this project.")
            else:
                slicer.util.setSliceViewerLayers(background=session.volumeNode, fit=True)
                self.fillConfidenceTable(session.segmentNames)
                self.heartbeatTimer.start()
                self.ui.statusLabel.text = _(
                    "Segment '{segmentation}' in the Segment Editor, rate your confidence, then press Submit."
                ).format(segmentation=session.segmentationNode.GetName())
            self.refreshWorklist()

    def onSubmitButton(self) -> None:
        node = self._parameterNode
        with self.errorsShown(_("Failed to submit the case.")):
            result = self.logic.submit(self.logic.session, node.readerName, node.readerId, node.readerRole,
                                       node.institution, self.confidences())
            if result.status == "sent":
                message = _("Case {case} submitted (submission {id}).").format(case=result.caseId,
                                                                               id=result.submissionId)
            else:
                message = _("The server could not take case {case} now ({detail}). It waits in the outbox and "
                            "is sent with Retry now or before your next case.").format(case=result.caseId,
                                                                                      detail=result.detail)
            self.afterCaseClosed(message)
            self.refreshWorklist()

    def onReleaseButton(self) -> None:
        session = self.logic.session
        if session is None or not slicer.util.confirmOkCancelDisplay(
                _("Give case {case} back to the queue? Your drawing on it is discarded.").format(case=session.caseId)):
            return
        with self.errorsShown(_("Failed to release the case.")):
            self.logic.release(session)
            self.afterCaseClosed(_("Case {case} given back.").format(case=session.caseId))
            self.refreshWorklist()

    def onRetryOutboxButton(self) -> None:
        with self.errorsShown(_("Failed to send the outbox.")):
            results = self.logic.flushOutbox()
            sent = sum(result.status == "sent" for result in results)
            problems = [f"{result.task_id}: {result.detail}" for result in results if result.status != "sent"]
            self.ui.statusLabel.text = "\n".join([_("{sent} of {total} results sent.").format(
                sent=sent, total=len(results)), *problems])
            self.refreshWorklist()

    def onHeartbeatTimer(self) -> None:
        """Extend the lease; a lost lease stops the beats and says so once, a network hiccup only in the label."""
        try:
            self.logic.heartbeat()
        except LeaseLostError as error:
            self.heartbeatTimer.stop()
            slicer.util.errorDisplay(_("The lease on this case is lost: {error}").format(error=error))
        except MedAnnotError as error:
            self.ui.statusLabel.text = _("Could not extend the lease, trying again in a few minutes: {error}").format(
                error=error)
        self.updateButtons()


#
# MedAnnotTest
#


class MedAnnotTest(ScriptedLoadableModuleTest):
    """Self-test in a running Slicer: a case folder loads as a volume MedAnnot Export can write a SEG for.

    The task-server round trip (login, claim, submit, outbox) is tested with pytest against a real server
    (Testing/slicer_mrml/test_slicer_worklist.py); Slicer's Python has no server to start.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CaseFolderLoadsAsVolumeThatExportsToSeg()
        self.setUp()
        self.test_WidgetStartsLoggedOutWithNothingToSubmit()

    def test_CaseFolderLoadsAsVolumeThatExportsToSeg(self):
        from MedAnnotExportLib.logic import MedAnnotExportLogic
        from MedAnnotWorklistLib.caseimages import loadCaseVolume

        self.delayDisplay("Starting the test")
        MedAnnotLogic(outboxFolder=pathlib.Path(slicer.util.tempDirectory()) / "outbox").ensureDependencies()
        from medannot.demo_data import ct_phantom, make_ct_series
        from medannot.dicomseg import read_segmentation
        from medannot.guideline import load_guideline

        workDir = pathlib.Path(slicer.util.tempDirectory())
        shape = (6, 32, 32)
        hu, labels = ct_phantom(shape)
        folder = make_ct_series(workDir / "case" / "images", shape=shape, hu=hu)
        guidelinePath = pathlib.Path(str(importlib.resources.files("medannot").joinpath("data/liver-ct.yaml")))
        guideline = load_guideline(guidelinePath)

        volumeNode, source, instances = loadCaseVolume(folder, name="case")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volumeNode), hu))
        segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, referenceVolumeNode=volumeNode)
        MedAnnotLib.updateSegmentationFromLabelMap(segmentationNode, labels, source.geometry, guideline)
        result = MedAnnotExportLogic().exportSegmentation(
            segmentationNode, volumeNode, guidelinePath, readerName="Test^Reader", readerId="reader1",
            outputDir=workDir / "out", dicomDatabase=instances)
        self.assertTrue(np.array_equal(read_segmentation(result.seg_path).labels, labels))
        self.delayDisplay("Test passed")

    def test_WidgetStartsLoggedOutWithNothingToSubmit(self):
        widget = slicer.modules.medannot.widgetRepresentation().self()
        self.assertFalse(widget.logic.isLoggedIn)
        self.assertFalse(widget.ui.nextCaseButton.enabled)
        self.assertFalse(widget.ui.submitButton.enabled)
        self.assertEqual(widget.ui.passwordLineEdit.echoMode, qt.QLineEdit.Password)
        self.delayDisplay("Test passed")
