"""MedAnnot: the annotator's worklist. Log in to the lab's task server, take the next case, segment it as its
guideline says (instructions, allowed tools, checklist, QA check), submit.

The module's work is done by :class:`MedAnnotWorklistLib.logic.MedAnnotLogic`, which needs no Qt; this file holds
the Slicer module, its parameter node, its GUI and its self-test.
"""

import contextlib
import importlib.resources
import pathlib
import sys
import unittest

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

# Run from a source checkout (Additional module paths: MedAnnotExtension/<module>/, as the README says), Slicer puts
# only this file's folder on sys.path, but MedAnnotLib, medannot and the other modules' Libs sit one folder up. In a
# build or an installed extension they share qt-scripted-modules/ with this file, and nothing is added.
_moduleFolder = pathlib.Path(__file__).resolve().parent
if not (_moduleFolder / "MedAnnotLib").is_dir() and (_moduleFolder.parent / "MedAnnotLib").is_dir():
    for _folder in (_moduleFolder.parent, *(_moduleFolder.parent / name for name in ("MedAnnotExport", "MedAnnotCine"))):
        if str(_folder) not in sys.path:
            sys.path.append(str(_folder))

import MedAnnotLib
from medannot.client import LeaseLostError, TransferCancelledError
from medannot.errors import MedAnnotError
from MedAnnotWorklistLib import logic as worklistLogic
from MedAnnotWorklistLib.guidance import CaseNotReadyError
from MedAnnotWorklistLib.logic import (
    AUTOSAVE_INTERVAL_SECONDS,
    CLAIM_CALL,
    HEARTBEAT_INTERVAL_SECONDS,
    SUBMIT_CALL,
    MedAnnotLogic,
)
from MedAnnotWorklistLib.review import CLAIM_REVIEW_CALL, CONSENSUS, DECIDE_CALL, SIGN_CALL

NOT_RATED = -1  # confidence spin box value meaning "the reader gave no rating"
UNANSWERED = ""  # checklist combo box data meaning "the reader gave no answer"
# MedAnnot's own Segment Editor parameter node: restricting its effects leaves the Segment Editor module alone.
SEGMENT_EDITOR_SINGLETON_TAG = "MedAnnot"
# How often the GUI collects what the network worker finished (answers, download progress).
NETWORK_POLL_MILLISECONDS = 100


def _number(value, digits: int) -> str:
    """A metric for the agreement table; the server stores None where a metric is undefined (see its note)."""
    return "-" if value is None else f"{value:.{digits}f}"


#
# MedAnnot
#


class MedAnnot(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAnnot")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Sequences", "MedAnnotExport", "MedAnnotCine"]
        self.parent.contributors = ["MedAnnot developers (MedAnnot project)"]
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
    """GUI only: every action calls :class:`MedAnnotLogic`, which keeps the open case and its lease (``exit()``,
    called on every module switch, only disconnects the GUI). Requests that wait on the network run on the logic's
    worker thread; a timer hands their answers back here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.heartbeatTimer = None
        self.autosaveTimer = None
        self.networkTimer = None
        self.downloadDialog = None
        self.downloadTransfer = None
        self.segmentEditorWidget = None
        self.effectFactory = None
        self.findings = []  # the findings listed, by table row

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnnot.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedAnnotLogic()

        # The Segment Editor sits in the panel; each case limits it to the effects its guideline allows.
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setSegmentationNodeSelectorVisible(False)
        self.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)
        self.segmentEditorWidget.setSwitchToSegmentationsButtonVisible(False)
        self.segmentEditorWidget.setAddRemoveSegmentButtonsVisible(False)  # the guideline fixes the segments
        self.segmentEditorWidget.unorderedEffectsVisible = False
        self.selectSegmentEditorNode()  # before the scene, so the editor's first selections are kept in it
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)
        # Effects registered after this widget was made (other extensions, or this module opened at startup) are
        # added to its list, as Slicer's Segment Editor module does.
        self.effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.effectFactory.connect("effectRegistered(QString)", self.onEffectRegistered)

        # Keep the lease alive while a case is open; the server gives it back to the queue when beats stop.
        self.heartbeatTimer = qt.QTimer()
        self.heartbeatTimer.setInterval(HEARTBEAT_INTERVAL_SECONDS * 1000)
        self.heartbeatTimer.connect("timeout()", self.onHeartbeatTimer)
        # Save the drawing into the case's cache folder, so a crash loses at most a minute of it.
        self.autosaveTimer = qt.QTimer()
        self.autosaveTimer.setInterval(AUTOSAVE_INTERVAL_SECONDS * 1000)
        self.autosaveTimer.connect("timeout()", self.onAutosaveTimer)
        # Hand the network worker's answers back to this (the GUI's) thread.
        self.networkTimer = qt.QTimer()
        self.networkTimer.setInterval(NETWORK_POLL_MILLISECONDS)
        self.networkTimer.connect("timeout()", self.onNetworkTimer)
        self.networkTimer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loginButton.connect("clicked(bool)", self.onLoginButton)
        self.ui.passwordLineEdit.connect("returnPressed()", self.onLoginButton)
        self.ui.logoutButton.connect("clicked(bool)", self.onLogoutButton)
        self.ui.refreshButton.connect("clicked(bool)", self.onRefreshButton)
        self.ui.projectsTableWidget.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)
        # The browser follows no link itself (openLinks and openExternalLinks are off in the .ui): QTextBrowser
        # would replace the instructions by a file: link's target, or by nothing; the desktop opens it instead.
        self.ui.instructionsTextBrowser.connect("anchorClicked(QUrl)", self.onInstructionLinkClicked)
        self.ui.checkButton.connect("clicked(bool)", self.onCheckButton)
        self.ui.findingsTableWidget.connect("itemSelectionChanged()", self.onFindingSelected)
        self.ui.submitButton.connect("clicked(bool)", self.onSubmitButton)
        self.ui.releaseButton.connect("clicked(bool)", self.onReleaseButton)
        self.ui.retryOutboxButton.connect("clicked(bool)", self.onRetryOutboxButton)
        self.ui.nextReviewButton.connect("clicked(bool)", self.onNextReviewButton)
        self.ui.acceptReadButton.connect("clicked(bool)", self.onAcceptReadButton)
        self.ui.useConsensusButton.connect("clicked(bool)", self.onUseConsensusButton)
        self.ui.editSubmitButton.connect("clicked(bool)", self.onEditSubmitButton)
        self.ui.returnReadButton.connect("clicked(bool)", self.onReturnReadButton)
        self.ui.signButton.connect("clicked(bool)", self.onSignButton)
        self.ui.closeReviewButton.connect("clicked(bool)", self.onCloseReviewButton)

        self.initializeParameterNode()
        self.updateOutbox()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.heartbeatTimer is not None:
            self.heartbeatTimer.stop()
        if self.autosaveTimer is not None:
            self.autosaveTimer.stop()
            self.onAutosaveTimer()
        if self.networkTimer is not None:
            self.networkTimer.stop()
        if self.logic is not None:
            self.logic.network.shutdown()
        if self.effectFactory is not None:
            self.effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)
        self.removeObservers()

    def onEffectRegistered(self, effectName=None) -> None:
        self.segmentEditorWidget.updateEffectList()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateOutbox()
        self.selectSegmentEditorNode()
        self.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.onAutosaveTimer()
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onAutosaveTimer()  # the case's nodes are still in the scene
        self.setParameterNode(None)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.segmentEditorWidget.removeViewObservations()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.selectSegmentEditorNode()

    def selectSegmentEditorNode(self) -> None:
        """Give the embedded Segment Editor MedAnnot's parameter node, creating it in the scene if needed."""
        node = slicer.mrmlScene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(SEGMENT_EDITOR_SINGLETON_TAG)
            node = slicer.mrmlScene.AddNode(node)
        if self.segmentEditorWidget.mrmlSegmentEditorNode() != node:
            self.segmentEditorWidget.setMRMLSegmentEditorNode(node)

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
        # While the worker claims or sends, the buttons that would start another request wait.
        waiting = self.logic.network.is_busy(CLAIM_CALL) or self.logic.network.is_busy(SUBMIT_CALL)
        node = self._parameterNode
        self.ui.loginButton.enabled = bool(node and node.serverUrl and node.username) and not waiting
        self.ui.logoutButton.enabled = loggedIn and not waiting
        self.ui.refreshButton.enabled = loggedIn and not waiting
        self.ui.nextCaseButton.enabled = (loggedIn and not caseOpen and not waiting
                                          and self.selectedProjectId() is not None)
        self.ui.checkButton.enabled = caseOpen
        self.ui.submitButton.enabled = caseOpen and not waiting and bool(node and node.readerName and node.readerId)
        self.ui.releaseButton.enabled = caseOpen and not waiting
        self.ui.loginStateLabel.text = (
            _("Logged in to {server} as {user}").format(server=self.logic.serverUrl, user=self.logic.username)
            if loggedIn else _("Not logged in"))
        self.updateReviewButtons(loggedIn)
        session = self.logic.session
        if session is None:
            self.ui.caseLabel.text = _("No case open")
        elif session.leaseLost is not None:
            self.ui.caseLabel.text = _("Case {case} (task {task}): the lease is lost").format(
                case=session.caseId, task=session.taskId)
        elif not self.logic.leaseKept:
            self.ui.caseLabel.text = _("Case {case} (task {task}), lease until {expiry}; log in to keep it").format(
                case=session.caseId, task=session.taskId, expiry=session.leaseExpiresAt)
        else:
            self.ui.caseLabel.text = _("Case {case} (task {task}), lease until {expiry}").format(
                case=session.caseId, task=session.taskId, expiry=session.leaseExpiresAt)

    def updateReviewButtons(self, loggedIn) -> None:
        review = self.logic.review.session
        busy = any(self.logic.network.is_busy(call) for call in (CLAIM_REVIEW_CALL, DECIDE_CALL, SIGN_CALL))
        undecided = review is not None and review.decision is None and not busy
        self.ui.nextReviewButton.enabled = (loggedIn and review is None and not busy
                                            and self.selectedProjectId() is not None)
        self.ui.acceptReadButton.enabled = self.ui.returnReadButton.enabled = undecided
        self.ui.useConsensusButton.enabled = undecided and review.consensusNode is not None
        self.ui.editSubmitButton.enabled = undecided
        self.ui.signButton.enabled = loggedIn and review is not None and review.result is not None and not busy
        self.ui.closeReviewButton.enabled = review is not None and not busy

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

    def showCase(self, session) -> None:
        """Fill the panel from the case's guideline: instructions, Segment Editor tools, checklist, confidence."""
        slicer.util.setSliceViewerLayers(background=session.volumeNode, fit=True)
        self.ui.instructionsTextBrowser.setMarkdown(self.logic.instructions(session))
        editor = self.segmentEditorWidget
        editor.setSegmentationNode(session.segmentationNode)
        editor.setSourceVolumeNode(session.volumeNode)
        editor.setEffectNameOrder(self.logic.allowedEffects(session))
        editor.unorderedEffectsVisible = False
        self.fillChecklistTable(session.guideline.checklist)
        self.fillConfidenceTable(session.segmentNames, required=session.guideline.confidence == "required")
        self.showFindings(None)
        if session.isCine:
            self.showCine(session)

    def showCine(self, session) -> None:
        """An ultrasound cine: keyframes and interpolation are MedAnnotCine's panel, given this case's cine logic;
        the reader comes back here to check and submit. Untested in a real Slicer."""
        slicer.modules.sequences.showSequenceBrowser(session.browserNode)
        cineWidget = slicer.modules.medannotcine.widgetRepresentation().self()
        cineWidget.annotateWith(session.cine)
        slicer.util.selectModule("MedAnnotCine")

    def clearCase(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.ui.instructionsTextBrowser.clear()
        self.fillChecklistTable(())
        self.fillConfidenceTable([])
        self.showFindings(None)

    def fillChecklistTable(self, items) -> None:
        table = self.ui.checklistTableWidget
        table.setRowCount(len(items))
        for row, item in enumerate(items):
            question = qt.QTableWidgetItem(item.question + (" *" if item.required else ""))
            question.setData(qt.Qt.UserRole, item.id)
            question.setToolTip(_("Required") if item.required else _("Optional"))
            table.setItem(row, 0, question)
            comboBox = qt.QComboBox()
            comboBox.addItem(_("(not answered)"), UNANSWERED)
            for answer, text in ((("yes", _("yes")), ("no", _("no"))) if item.type == "yes_no"
                                 else ((choice, choice) for choice in item.choices)):
                comboBox.addItem(text, answer)
            table.setCellWidget(row, 1, comboBox)

    def checklistAnswers(self) -> dict:
        """The checklist answers chosen, by item id; unanswered questions are left out."""
        table = self.ui.checklistTableWidget
        answers = {}
        for row in range(table.rowCount):
            comboBox = table.cellWidget(row, 1)
            answer = comboBox.itemData(comboBox.currentIndex)
            if answer:
                answers[table.item(row, 0).data(qt.Qt.UserRole)] = answer
        return answers

    def showFindings(self, check) -> None:
        """List a check's findings in guideline order and sum them up; None clears the list."""
        self.findings = list(check.findings) if check is not None else []
        table = self.ui.findingsTableWidget
        table.setRowCount(len(self.findings))
        for row, finding in enumerate(self.findings):
            for column, text in enumerate((finding.severity, finding.segment, finding.where, finding.message)):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(finding.detail or finding.message)
                table.setItem(row, column, item)
        if check is None:
            summary = ""
        elif not check.findings:
            summary = _("The segmentation follows every rule of the guideline.")
        else:
            summary = _("{errors} error(s) to fix before submitting, {warnings} warning(s). Click a finding to see "
                        "it.").format(errors=len(check.errors), warnings=len(check.warnings))
        self.ui.checkSummaryLabel.text = "\n".join([summary, *check.notes]) if check is not None else summary

    def fillConfidenceTable(self, segmentNames, required=False) -> None:
        self.ui.confidenceLabel.text = (_("Confidence per segment (required for each segment you draw):") if required
                                        else _("Confidence per segment (optional):"))
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
        if self.logic.review.session is None:  # the timer also keeps an open review's lease
            self.heartbeatTimer.stop()
        self.autosaveTimer.stop()
        self.clearCase()
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
                delivered = self.logic.login(self._parameterNode.serverUrl, self._parameterNode.username, password)
                if not self._parameterNode.readerId:
                    self._parameterNode.readerId = self._parameterNode.username[:16]
                self.refreshWorklist()
                status = [_("Select a project and press Next case.")]
                if delivered:
                    status.insert(0, _("{sent} of {total} waiting results sent.").format(
                        sent=sum(d.status == "sent" for d in delivered), total=len(delivered)))
                self.ui.statusLabel.text = " ".join(status)
        finally:
            del password

    def onLogoutButton(self) -> None:
        # The heartbeat timer keeps running: the logic sends no beats while logged out, and login beats at once.
        with self.errorsShown(_("Failed to log out.")):
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
            self.downloadTransfer = self.logic.startNextCase(
                self.selectedProjectId(), onOpened=self.onCaseOpened, onFailed=self.onNextCaseFailed)
            self.downloadDialog = slicer.util.createProgressDialog(
                labelText=_("Claiming the next case and downloading its images..."), maximum=0,
                windowTitle=_("MedAnnot"), autoClose=False, autoReset=False)
            self.ui.statusLabel.text = _("Downloading the next case...")

    def closeDownloadDialog(self) -> None:
        if self.downloadDialog is not None:
            self.downloadDialog.close()
            self.downloadDialog.deleteLater()
        self.downloadDialog = self.downloadTransfer = None

    def onCaseOpened(self, session) -> None:
        """The worker claimed and downloaded a case and the logic opened it in the scene (None: nothing left)."""
        self.closeDownloadDialog()
        with self.errorsShown(_("Failed to show the case.")):
            if session is None:
                self.ui.statusLabel.text = _("Nothing is left for you in this project.")
                self.refreshWorklist()
                return
            # The lease is kept and the drawing saved from now on, even if showing the case fails below.
            self.heartbeatTimer.start()
            self.autosaveTimer.start()
            self.ui.statusLabel.text = _(
                "Read the instructions, segment '{segmentation}' in the Segment section, answer the checklist, "
                "rate your confidence, press Check, then Submit."
            ).format(segmentation=session.segmentationNode.GetName())
            if session.restoredFrom is not None:
                self.ui.statusLabel.text = _("Your autosaved drawing of this case was restored.") + " " + \
                    self.ui.statusLabel.text
            self.refreshWorklist()
            self.showCase(session)

    def onNextCaseFailed(self, error) -> None:
        self.closeDownloadDialog()
        if isinstance(error, TransferCancelledError):
            self.ui.statusLabel.text = _("Download cancelled; the case went back to the queue.")
        else:
            self.showFailure(_("Failed to open the next case."), error)
        self.updateButtons()

    def onInstructionLinkClicked(self, url) -> None:
        """Open a reference image (in the image viewer) or a web link of the instructions with the desktop."""
        try:
            target = self.logic.instructionLinkToOpen(url.toString())
        except MedAnnotError:
            target = None
        if target is None:
            slicer.util.showStatusMessage(_("This link is not one of the guideline's reference images: not opened."), 5000)
        elif not qt.QDesktopServices.openUrl(qt.QUrl(target)):
            slicer.util.showStatusMessage(_("No application on this computer opens {link}.").format(link=target), 5000)

    def onCheckButton(self) -> None:
        with self.errorsShown(_("Failed to check the case.")):
            self.showFindings(self.logic.checkCase())

    def onFindingSelected(self) -> None:
        """Centre the slice views on the selected finding and select its segment in the Segment Editor."""
        selected = self.ui.findingsTableWidget.selectedItems()
        if not selected or selected[0].row() >= len(self.findings) or self.logic.session is None:
            return
        finding = self.findings[selected[0].row()]
        with slicer.util.tryWithErrorDisplay(_("Failed to show the finding."), waitCursor=True):
            segmentId = self.logic.session.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(
                finding.segment)
            if segmentId:
                self.segmentEditorWidget.setCurrentSegmentID(segmentId)
            if not self.logic.jumpSlicesToFinding(finding):
                self.ui.statusLabel.text = _("{finding} (nothing to show in the views)").format(finding=finding)

    def onSubmitButton(self) -> None:
        node = self._parameterNode
        with self.errorsShown(_("Failed to submit the case.")):
            self.segmentEditorWidget.setActiveEffect(None)
            try:
                self.logic.startSubmit(self.logic.session, node.readerName, node.readerId,
                                       onSubmitted=self.onSubmitted, onFailed=self.onSubmitFailed,
                                       readerRole=node.readerRole, institution=node.institution,
                                       confidences=self.confidences(), checklistAnswers=self.checklistAnswers())
            except CaseNotReadyError as error:
                if error.check is not None:
                    self.showFindings(error.check)
                raise
            self.ui.statusLabel.text = _("Sending the result...")

    def onSubmitted(self, result) -> None:
        if result.status == "sent":
            message = _("Case {case} submitted (submission {id}).").format(case=result.caseId,
                                                                           id=result.submissionId)
        else:
            message = _("The server could not take case {case} now ({detail}). It waits in the outbox and "
                        "is sent with Retry now or before your next case.").format(case=result.caseId,
                                                                                  detail=result.detail)
        self.afterCaseClosed(message)
        with self.errorsShown(_("Failed to read the worklist.")):
            self.refreshWorklist()

    def onSubmitFailed(self, error) -> None:
        self.ui.statusLabel.text = _("The case is still open: the submit failed.")
        self.showFailure(_("Failed to submit the case."), error)
        self.updateButtons()

    def showFailure(self, message, error) -> None:
        """Show a failure that a worker call handed back, as ``tryWithErrorDisplay`` shows one."""
        import traceback

        slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText="".join(
            traceback.format_exception(type(error), error, error.__traceback__)))

    def onReleaseButton(self) -> None:
        session = self.logic.session
        if session is None or not slicer.util.confirmOkCancelDisplay(
                _("Give case {case} back to the queue? Your drawing on it is discarded.").format(case=session.caseId)):
            return
        with self.errorsShown(_("Failed to release the case.")):
            self.segmentEditorWidget.setActiveEffect(None)
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

    # ------------------------------------------------------------ review
    def showReview(self, review) -> None:
        """Fill the Review section: the case, the reads to choose from, the agreement table."""
        if review is None:
            self.ui.reviewLabel.text = _("No review open")
            self.ui.agreementTableWidget.setRowCount(0)
            self.ui.reviewReadComboBox.clear()
            return
        state = _("decided ({action})").format(action=review.decision.get("action")) if review.decision else _(
            "to decide")
        self.ui.reviewLabel.text = _("Review {review} of case {case}, {state}. {problems}").format(
            review=review.reviewId, case=review.caseId, state=state,
            problems="; ".join(review.disagreement) if review.disagreement else "")
        combo = self.ui.reviewReadComboBox
        combo.clear()
        for submissionId, name in review.readerNames.items():
            combo.addItem(name, submissionId)
        if review.consensusNode is not None:
            combo.addItem(_("consensus"), CONSENSUS)
        table = self.ui.agreementTableWidget
        table.setRowCount(len(review.agreement))
        for row, metric in enumerate(review.agreement):
            cells = (metric.segment, metric.a, metric.b, _number(metric.dice, 3), _number(metric.hd95Mm, 2),
                     _number(metric.nsd, 3))
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                if metric.belowThreshold:
                    item.setForeground(qt.QBrush(qt.QColor("red")))
                if metric.note:
                    item.setToolTip(metric.note)
                table.setItem(row, column, item)

    def selectedRead(self):
        """The read chosen in the Review section: a submission id, or ``consensus``."""
        combo = self.ui.reviewReadComboBox
        return combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None

    def onNextReviewButton(self) -> None:
        with self.errorsShown(_("Failed to open the next review.")):
            self.logic.review.startNextReview(self.selectedProjectId(), onOpened=self.onReviewOpened,
                                              onFailed=self.onReviewFailed)
            self.ui.statusLabel.text = _("Claiming the next review and downloading its reads...")

    def onReviewOpened(self, review) -> None:
        self.showReview(review)
        if review is not None:
            self.heartbeatTimer.start()
        self.ui.statusLabel.text = (_("Nothing to review in this project: no case has all its reads in, or all are "
                                      "reviewed.") if review is None else _("Compare the reads, then decide."))
        self.updateButtons()

    def onReviewFailed(self, error) -> None:
        self.showFailure(_("The review action failed."), error)
        self.updateButtons()

    def onReviewDecided(self, answer) -> None:
        self.showReview(self.logic.review.session)
        self.ui.statusLabel.text = _("Decision stored; sign the result.")
        self.updateButtons()

    def onAcceptReadButton(self) -> None:
        read = self.selectedRead()
        with self.errorsShown(_("Failed to accept the read.")):
            if read == CONSENSUS:
                raise MedAnnotError(_("Choose a reader's read to accept, or press Use consensus."))
            self.logic.review.startDecision(lambda: self.logic.review.accept(read), onDone=self.onReviewDecided,
                                            onFailed=self.onReviewFailed)

    def onUseConsensusButton(self) -> None:
        with self.errorsShown(_("Failed to use the consensus.")):
            self.logic.review.startDecision(self.logic.review.useConsensus, onDone=self.onReviewDecided,
                                            onFailed=self.onReviewFailed)

    def onReturnReadButton(self) -> None:
        read, reason = self.selectedRead(), self.ui.returnReasonLineEdit.text
        with self.errorsShown(_("Failed to return the read.")):
            if read == CONSENSUS:
                raise MedAnnotError(_("Choose a reader's read to return; the consensus has no reader."))
            self.logic.review.startDecision(lambda: self.logic.review.returnRead(read, reason),
                                            onDone=self.onReviewDecided, onFailed=self.onReviewFailed)

    def onEditSubmitButton(self) -> None:
        node = self._parameterNode
        with self.errorsShown(_("Failed to submit the edited segmentation.")):
            # On this thread: the export reads the edited segmentation node (MRML).
            answer = self.logic.review.editAndSubmit(self.selectedRead(), readerName=node.readerName,
                                                     readerId=node.readerId, readerRole=node.readerRole or "Reviewer",
                                                     institution=node.institution)
            self.onReviewDecided(answer)

    def onSignButton(self) -> None:
        meaning = self.ui.signMeaningComboBox.currentText
        dialog = qt.QInputDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(_("Sign"))
        dialog.setLabelText(_("Signing as {user} with the meaning '{meaning}'. Enter your password:").format(
            user=self.logic.username, meaning=meaning))
        dialog.setTextEchoMode(qt.QLineEdit.Password)
        accepted = dialog.exec_() == qt.QDialog.Accepted
        password = dialog.textValue()
        dialog.setTextValue("")
        dialog.deleteLater()
        if not accepted:
            return
        try:
            with self.errorsShown(_("Failed to sign.")):
                self.logic.review.startSign(password, meaning, onDone=self.onSigned, onFailed=self.onReviewFailed,
                                            printedName=self._parameterNode.readerName or None)
        finally:
            del password

    def onSigned(self, signature) -> None:
        self.ui.statusLabel.text = _("Signed as {meaning} at {time} (sha256 {sha}).").format(
            meaning=signature.get("meaning"), time=signature.get("signed_at"), sha=str(signature.get("sha256"))[:12])
        self.updateButtons()

    def onCloseReviewButton(self) -> None:
        with self.errorsShown(_("Failed to close the review.")):
            self.logic.review.closeReview()
            self.showReview(None)

    def onAutosaveTimer(self) -> None:
        """Autosave the open case's drawing; a failure is shown in the status label, the timer keeps trying."""
        if self.logic is None or self.logic.session is None:
            return
        try:
            self.logic.autosave()
        except MedAnnotError as error:
            self.ui.statusLabel.text = _("Could not autosave the drawing, trying again in a minute: {error}").format(
                error=error)

    def onHeartbeatTimer(self) -> None:
        """Extend the lease on the worker thread (the logic sends nothing while logged out or once it is lost)."""
        self.logic.beatInBackground(onDone=self.onHeartbeatAnswered)
        self.logic.review.beatInBackground(onDone=self.onHeartbeatAnswered)

    def onHeartbeatAnswered(self, error) -> None:
        """A lost lease is said once; a network hiccup only in the label (the next tick beats again)."""
        if isinstance(error, LeaseLostError):
            slicer.util.errorDisplay(_("The lease on this case is lost: {error}").format(error=error))
        elif isinstance(error, MedAnnotError):
            self.ui.statusLabel.text = _("Could not extend the lease, trying again in a few minutes: {error}").format(
                error=error)
        self.updateButtons()

    def onNetworkTimer(self) -> None:
        """Hand finished worker calls to their callbacks, and show the download's progress (Cancel stops it)."""
        dialog, transfer = self.downloadDialog, self.downloadTransfer
        if dialog is not None and transfer is not None:
            if dialog.wasCanceled:
                transfer.cancel()
            elif transfer.percent is not None:
                dialog.maximum = 100
                dialog.value = transfer.percent
        wasBusy = bool(self.logic.network.running())
        self.logic.network.poll()
        if wasBusy:
            self.updateButtons()


#
# MedAnnotTest
#


class MedAnnotTest(ScriptedLoadableModuleTest):
    """Self-test in a running Slicer: a case folder loads as a volume MedAnnot Export can write a SEG for, and the
    guided panel follows a case's guideline.

    The task-server round trip (login, claim, submit, outbox) is tested with pytest against a real server
    (Testing/slicer_mrml/test_slicer_worklist.py); Slicer's Python has no server to start.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_CaseFolderLoadsAsVolumeThatExportsToSeg,
                     self.test_WidgetStartsLoggedOutWithNothingToSubmit,
                     self.test_GuidedPanelFollowsTheGuidelineAndShowsFindings):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:  # runTest (Reload and Test) has no unittest runner to report it
                self.delayDisplay(f"{test.__name__} skipped: {skipped}")

    def requireDependencies(self, logic):
        """Install what MedAnnot needs (it asks first), or skip this test when it is still missing: under
        ``--testing`` (ctest) Slicer's ``pip_ensure`` installs nothing, so that tests never change Slicer's Python."""
        logic.ensureDependencies()
        missing = [str(requirement) for requirement in MedAnnotLib.missingRequirements(worklistLogic.REQUIREMENTS_PATH)]
        if missing:
            self.skipTest(
                f"MedAnnot's Python packages are not installed in this Slicer ({', '.join(missing)}), and Slicer "
                "installs none while testing. Install them once (use MedAnnot in this Slicer, or "
                "slicer.util.pip_install) and run the test again.")

    def test_CaseFolderLoadsAsVolumeThatExportsToSeg(self):
        from MedAnnotExportLib.logic import MedAnnotExportLogic
        from MedAnnotWorklistLib.caseimages import loadCaseVolume

        self.delayDisplay("Starting the test")
        self.requireDependencies(MedAnnotLogic(outboxFolder=pathlib.Path(slicer.util.tempDirectory()) / "outbox"))
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

    def test_GuidedPanelFollowsTheGuidelineAndShowsFindings(self):
        widget = slicer.modules.medannot.widgetRepresentation().self()
        self.requireDependencies(widget.logic)
        from medannot.demo_data import ct_geometry, ct_phantom
        from medannot.guideline import load_guideline

        guidelinePath = pathlib.Path(str(importlib.resources.files("medannot").joinpath("data/liver-ct.yaml")))
        guideline = load_guideline(guidelinePath)
        shape = (6, 48, 48)
        hu = ct_phantom(shape)[0]
        geometry = ct_geometry(shape)
        volumeNode = MedAnnotLib.addVolumeNodeFromArray(hu, geometry, name="CT")
        segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, referenceVolumeNode=volumeNode)
        labels = np.zeros(shape, np.uint8)
        labels[:, 4:40, 4:20] = 1
        labels[2:4, 10:14, 30:34] = 1  # a stray second part of the liver
        MedAnnotLib.updateSegmentationFromLabelMap(segmentationNode, labels, geometry, guideline)
        session = worklistLogic.caseWithoutServer(volumeNode, segmentationNode, guidelinePath,
                                                  cacheDir=pathlib.Path(slicer.util.tempDirectory()) / "case")
        widget.logic.session = session  # as Next case leaves it, without a server
        try:
            widget.showCase(session)
            self.assertEqual(list(widget.segmentEditorWidget.effectNameOrder()), list(guideline.tools))
            self.assertIn(guideline.title, widget.ui.instructionsTextBrowser.toPlainText())
            self.assertEqual(widget.ui.checklistTableWidget.rowCount, len(guideline.checklist))
            self.assertEqual(widget.ui.confidenceTableWidget.rowCount, len(guideline.segments))

            widget.onCheckButton()
            row = next(row for row, finding in enumerate(widget.findings) if finding.rule == "components")
            widget.ui.findingsTableWidget.selectRow(row)

            sliceToRas = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
            center = [sliceToRas.GetElement(axis, 3) for axis in range(3)]
            np.testing.assert_allclose(center, widget.findings[row].pointRas, atol=1e-3)
        finally:
            widget.logic.session = None
            widget.clearCase()
        self.delayDisplay("Test passed")
