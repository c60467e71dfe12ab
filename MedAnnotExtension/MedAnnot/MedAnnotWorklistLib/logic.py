"""MedAnnot logic: the annotator's worklist on a task server (log in, claim a case, load it, check it against its
guideline, submit), without GUI.

A case is a CT/MR volume, or an ultrasound cine (a multi-frame US instance), which opens as a sequence annotated
with MedAnnotCine's logic: keyframes, interpolation, and an export that records which frames were interpolated.

Kept out of MedAnnot.py so that it imports without Qt: scripts and the tests that run on the slicer-core wheel
(real MRML, no Qt) use this very class, which is also the one the module's widget runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import MedAnnotLib
from MedAnnotExportLib.logic import MedAnnotExportLogic
from MedAnnotWorklistLib.caseimages import CachedInstances, loadCase
from MedAnnotWorklistLib.guidance import (
    CaseCheck,
    CaseNotReadyError,
    LocatedFinding,
    allowedEffectNames,
    checklistProblems,
    checkLabelMap,
    checkSegmentation,
    confidenceProblems,
    instructionLinkToOpen,
    instructionsMarkdown,
    jumpSlicesToFinding,
)
from medannot.client import Outbox, TaskServerClient
from medannot.client.api import medannot_home
from medannot.client.background import BackgroundCalls, Transfer
from medannot.client.errors import (
    AuthenticationError,
    LeaseLostError,
    OutboxError,
    ServerAddressError,
    ServerRejectedError,
    TaskServerError,
    TransferCancelledError,
)
from medannot.errors import GuidelineError, MedAnnotError

from MedAnnotLib.scriptedmodule import ScriptedLoadableModuleLogic

if TYPE_CHECKING:
    from collections.abc import Callable

    from medannot.client import DeliveryResult, Task
    from medannot.dicomseg import ExportResult
    from medannot.guideline import Guideline

logger = logging.getLogger(__name__)

REQUIREMENTS_PATH = MedAnnotLib.REQUIREMENTS_PATH  # the extension's one list, shared by the three modules

# The server's lease lasts 30 minutes by default; beating well within it survives a missed beat or two.
HEARTBEAT_INTERVAL_SECONDS = 180
# How often the module autosaves the open case's segmentation (see MedAnnotLogic.autosave).
AUTOSAVE_INTERVAL_SECONDS = 60
# In a case's cache folder: the last autosave of its segmentation, and what it is (task, reader, segments, time).
AUTOSAVE_FOLDER = "autosave"
AUTOSAVE_SEGMENTATION = "segmentation.seg.nrrd"
AUTOSAVE_INFO = "autosave.json"
# A cine's autosave: every frame's labels (the cine logic's values; the info maps them to segments) and keyframes.
AUTOSAVE_CINE_LABELS = "frames.nrrd"
# What the network worker runs, by name (see MedAnnotLogic.network).
CLAIM_CALL, HEARTBEAT_CALL, SUBMIT_CALL = "claim the next case", "heartbeat", "submit"


@dataclass
class CaseSession:
    """A claimed case open in the scene: the lease that makes it ours and the nodes showing it.

    ``cacheDir`` holds the downloaded images (``images/``), the project's guideline, the exported result and the
    last autosave of the drawing (``autosave/``); it is removed when the case is submitted or released.
    ``restoredFrom`` is the autosave the segmentation was restored from when the case was opened, if any.

    For an ultrasound cine (:attr:`isCine`), ``volumeNode`` is the frame shown (the browser's proxy volume),
    ``segmentationNode`` the drawing on it (the proxy of a segmentation sequence holding every frame's drawing),
    ``cine`` the :class:`MedAnnotCineLib.MedAnnotCineLogic` annotating it (keyframes, interpolation, export) and
    ``browserNode`` the sequence browser playing it.

    ``leaseLost`` is why the server no longer holds the lease for this reader (None while it does); heartbeats
    stop then, the drawing stays.
    """

    serverUrl: str
    projectId: int | str
    taskId: int | str
    caseId: str
    leaseToken: str = field(repr=False)
    leaseExpiresAt: str
    volumeNode: Any
    segmentationNode: Any
    guidelinePath: Path
    guideline: Guideline = field(repr=False)
    cacheDir: Path
    seriesUid: str
    instances: CachedInstances | None = field(repr=False)
    username: str = ""
    restoredFrom: Path | None = None
    sourcePath: Path | None = None
    browserNode: Any = None
    cine: Any = field(default=None, repr=False)
    leaseLost: str | None = None
    autosavedStamp: tuple | None = field(default=None, repr=False)

    @property
    def isCine(self) -> bool:
        return self.cine is not None

    @property
    def autosaveDir(self) -> Path:
        return self.cacheDir / AUTOSAVE_FOLDER

    @property
    def segmentNames(self) -> list[str]:
        """The guideline's segment names, in order: one confidence rating each."""
        return [spec.name for spec in self.guideline.segments]


@dataclass
class ClaimedCase:
    """A claimed task whose images and guideline are downloaded into ``caseDir`` but not yet in the scene: what
    :meth:`MedAnnotLogic.claimCase` (network and files only) hands to :meth:`MedAnnotLogic.openClaimedCase`."""

    serverUrl: str
    projectId: int | str
    task: Task
    caseDir: Path
    guidelinePath: Path
    guideline: Guideline = field(repr=False)


@dataclass
class PreparedSubmit:
    """A case checked and exported, waiting to be sent (see :meth:`MedAnnotLogic.prepareSubmit`)."""

    session: CaseSession
    exported: ExportResult


@dataclass(frozen=True)
class ProjectProgress:
    """One row of the worklist: a project, how far it is, and the case this reader has open in it."""

    projectId: int | str
    name: str
    guideline: str
    cases: int
    tasksSubmitted: int
    tasksTotal: int
    myCase: str = ""


@dataclass(frozen=True)
class OutboxStatus:
    """How many submits wait in the local outbox, were delivered, or were refused by the server."""

    pending: int
    sent: int
    rejected: int


@dataclass(frozen=True)
class CaseSubmitResult:
    """What became of a submit: ``sent`` (stored by the server) or ``queued`` (waiting in the outbox)."""

    status: str
    taskId: int | str
    caseId: str
    submissionId: int | str | None
    detail: str | None
    segPath: Path
    srPath: Path


class MedAnnotLogic(ScriptedLoadableModuleLogic):
    """The annotator's worklist: log in, see projects, claim and load the next case, submit or release it.

    One case is open at a time (:attr:`session`). Submits go through a local :class:`medannot.client.Outbox`, so a
    result made while the server is unreachable waits on disk and is delivered by :meth:`flushOutbox`.

    The logic outlives module switches (the widget's ``exit()``), so the open case and its lease are kept here.
    Every call that may wait on the network has a ``start...`` form (:meth:`startNextCase`, :meth:`beatInBackground`,
    :meth:`startSubmit`) that runs the network part on :attr:`network`'s worker thread and the scene part in a
    callback on the thread that calls ``network.poll()`` (the GUI's timer); the plain forms do all at once.

    Parameters
    ----------
    outboxFolder : str or pathlib.Path, optional
        Defaults to ``MEDANNOT_OUTBOX`` or ``~/.medannot/outbox``.
    cacheFolder : str or pathlib.Path, optional
        Where cases are downloaded when :meth:`nextCase` gets no folder; defaults to ``~/.medannot/cases``.
    """

    def __init__(self, outboxFolder=None, cacheFolder=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.outbox = Outbox(outboxFolder)
        self.cacheFolder = Path(cacheFolder) if cacheFolder else medannot_home() / "cases"
        self.session: CaseSession | None = None
        self.network = BackgroundCalls()
        self._client: TaskServerClient | None = None
        self._username = ""
        self._review = None

    def ensureDependencies(self) -> None:
        """Install the packages the core needs and Slicer lacks (``MedAnnotLib/requirements.txt``) if missing."""
        MedAnnotLib.ensureRequirements(REQUIREMENTS_PATH, requester="MedAnnot")

    @property
    def review(self):
        """The reviewer's logic (:class:`MedAnnotWorklistLib.review.MedAnnotReviewLogic`) on this login and
        network worker; kept here so that an open review survives module switches."""
        if self._review is None:
            from MedAnnotWorklistLib.review import MedAnnotReviewLogic

            self._review = MedAnnotReviewLogic(self)
        return self._review

    # ------------------------------------------------------------ login
    @property
    def isLoggedIn(self) -> bool:
        return self._client is not None and bool(self._client.token)

    @property
    def serverUrl(self) -> str:
        return self._client.base_url if self._client is not None else ""

    @property
    def username(self) -> str:
        return self._username if self.isLoggedIn else ""

    def login(self, serverUrl: str, username: str, password: str) -> list[DeliveryResult]:
        """Log in to a task server. The password goes to the server and is not kept anywhere.

        Results left in the outbox for this server (e.g. queued before Slicer was closed) are sent right away;
        returns what became of them. A delivery problem does not fail the login: the results keep waiting.

        Raises
        ------
        medannot.client.ServerAddressError, ServerUnreachableError, AuthenticationError
            For a missing or malformed address, a server that does not answer, or a missing or wrong username or
            password.
        """
        if not serverUrl or not serverUrl.strip():
            raise ServerAddressError("Enter the task server's address, for example https://annot.lab.example.")
        if not username or not username.strip():
            raise AuthenticationError("Enter your username on the task server.", server_url=serverUrl)
        client = TaskServerClient(serverUrl)
        if self.session is not None and self.session.serverUrl != client.base_url:
            client.close()
            raise MedAnnotError(
                f"Case {self.session.caseId} from {self.session.serverUrl} is open; submit or release it before "
                f"logging in to {client.base_url}."
            )
        try:
            client.login(username.strip(), password)
        except BaseException:
            client.close()
            raise
        if self._client is not None:
            self._client.close()
        self._client, self._username = client, username.strip()
        logger.info("Logged in to %s as %s", client.base_url, self._username)
        # An open case's lease went unbeaten while logged out: extend it now, the timer keeps it from here.
        self.beatInBackground()
        try:
            delivered = self.outbox.flush(client)
        except MedAnnotError as error:  # the login stands; the results wait for the next try
            logger.warning("Results in the outbox not sent after login: %s", error)
            return []
        if delivered:
            logger.info("After login: %d of %d waiting result(s) sent", sum(d.status == "sent" for d in delivered),
                        len(delivered))
        return delivered

    def logout(self) -> None:
        """Revoke the login on the server. An open case stays in the scene; its result can still be submitted
        (it waits in the outbox until the next login). Heartbeats pause until :meth:`login` (which beats at once),
        so the lease lasts only as long as the server gives it without beats."""
        if self._client is None:
            return
        try:
            self._client.logout()
        except TaskServerError as error:  # unreachable: forget the token here anyway, it expires on its own
            logger.warning("Logout could not reach %s: %s", self._client.base_url, error)
            self._client.token = None
        self._username = ""

    # ------------------------------------------------------------ worklist
    def projects(self) -> list[ProjectProgress]:
        """The projects on the server with their progress, and the case this reader has open in each."""
        with self._loginChecked() as client:
            found = client.projects()
        rows = []
        for project in found:
            myCase = ""
            if self.session is not None and str(self.session.projectId) == str(project["id"]):
                myCase = f"{self.session.caseId} (task {self.session.taskId})"
            guideline = f"{project.get('guideline_id') or ''} {project.get('guideline_version') or ''}".strip()
            rows.append(ProjectProgress(
                projectId=project["id"], name=str(project.get("name") or project["id"]), guideline=guideline,
                cases=int(project.get("cases") or 0), tasksSubmitted=int(project.get("tasks_submitted") or 0),
                tasksTotal=int(project.get("tasks_total") or 0), myCase=myCase))
        return rows

    def nextCase(self, projectId, cacheDir=None, transfer: Transfer | None = None) -> CaseSession | None:
        """Claim the next case of a project and open it: images as a volume, an empty segmentation per guideline.

        An ultrasound cine (a multi-frame US instance) opens as a sequence of frames with a browser; its
        segmentation is a segmentation sequence annotated through :attr:`CaseSession.cine` (MedAnnotCine's logic:
        mark keyframes, interpolate, review).

        When the server hands back a task this reader still holds (Slicer was closed or crashed with the case open)
        and :meth:`autosave` saved its drawing in the same cache folder, the segmentation is restored from it.

        Results still waiting in the outbox are delivered first, so the server does not hand back a case whose
        result it has not received yet.

        Parameters
        ----------
        projectId : int or str
            The project to work on.
        cacheDir : str or pathlib.Path, optional
            Folder for downloaded cases; defaults to :attr:`cacheFolder`. Each case gets its own subfolder.
        transfer : medannot.client.Transfer, optional
            Receives the download's progress; cancelling it gives the claim back and raises
            :class:`medannot.client.TransferCancelledError`.

        Returns
        -------
        CaseSession or None
            The open case (also kept as :attr:`session`), or None when the project has nothing left for this reader.

        Raises
        ------
        medannot.errors.MedAnnotError
            A case is already open, not logged in, the server fails, or the case's images or guideline are unusable
            (the claim is then given back).
        """
        self._checkNoCaseOpen()
        self.ensureDependencies()
        claimed = self.claimCase(projectId, cacheDir, transfer)
        return self.openClaimedCase(claimed) if claimed is not None else None

    def startNextCase(self, projectId, onOpened: Callable[[CaseSession | None], None],
                      onFailed: Callable[[BaseException], None], cacheDir=None) -> Transfer:
        """:meth:`nextCase` without waiting on the network: the claim and the download run on :attr:`network`'s
        worker; once ``network.poll()`` sees them done, the case is opened in the scene and ``onOpened(session)``
        (None: nothing left) or ``onFailed(error)`` is called, on the polling thread.

        Returns the download's :class:`~medannot.client.Transfer`: its progress to show, and ``cancel()``.
        """
        self._checkNoCaseOpen()
        self.ensureDependencies()  # may ask the reader to install packages: on this (the GUI's) thread
        transfer = Transfer(f"the next case of project {projectId}")

        def opened(claimed: ClaimedCase | None) -> None:
            if claimed is None:
                onOpened(None)
                return
            try:
                session = self.openClaimedCase(claimed)
            except BaseException as error:  # noqa: BLE001  (handed to the caller, who shows it)
                onFailed(error)
                return
            onOpened(session)

        self.network.submit(CLAIM_CALL, self.claimCase, projectId, cacheDir, transfer, on_success=opened,
                            on_failure=onFailed)
        return transfer

    def claimCase(self, projectId, cacheDir=None, transfer: Transfer | None = None) -> ClaimedCase | None:
        """The network half of :meth:`nextCase`: deliver waiting results, claim a task, download its images and
        guideline into its case folder. Touches no MRML, so it may run on a worker thread.

        Returns None when the project has nothing left for this reader. On any failure, or when ``transfer`` is
        cancelled, the claim is given back and the case folder emptied (an autosave in it is kept).
        """
        with self._loginChecked() as client:
            if self.outbox.pending():
                self.outbox.flush(client)
            task = client.claim(projectId)
            if task is None:
                return None
            waiting = [item for item in self.outbox.pending()
                       if str(item.task_id) == str(task.task_id) and item.manifest.get("server_url") == client.base_url]
            if waiting:
                raise OutboxError(
                    f"Your result for case {task.case_id} (task {task.task_id}) is still waiting in the outbox "
                    f"({waiting[0].manifest.get('last_error') or 'not delivered yet'}); press Retry now in the Outbox "
                    "section before taking the next case."
                )
            caseDir = Path(cacheDir or self.cacheFolder) / f"{_slug(client.base_url)}-task-{task.task_id}"
            try:
                guidelinePath, guideline = self._downloadCase(client, task, caseDir, transfer)
            except BaseException as error:
                self._giveBack(client, task, caseDir, error)
                raise
        return ClaimedCase(serverUrl=client.base_url, projectId=projectId, task=task, caseDir=caseDir,
                           guidelinePath=guidelinePath, guideline=guideline)

    def openClaimedCase(self, claimed: ClaimedCase) -> CaseSession:
        """The scene half of :meth:`nextCase` (on the GUI's thread): load the downloaded images, create the
        guideline's segments, restore an autosave. On failure the claim is given back."""
        with self._clientFor(claimed.serverUrl) as client:
            if self.session is not None:
                error = MedAnnotError(f"Case {self.session.caseId} (task {self.session.taskId}) is still open; "
                                      "submit or release it first.")
                self._giveBack(client, claimed.task, claimed.caseDir, error)
                raise error
            try:
                self.session = self._openCase(client, claimed)
            except BaseException as error:
                self._giveBack(client, claimed.task, claimed.caseDir, error)
                raise
        logger.info("Opened case %s (task %s)", self.session.caseId, self.session.taskId)
        return self.session

    def heartbeat(self, session: CaseSession | None = None) -> str:
        """Extend the lease on the open case; returns (and records) the new expiry. One short try without
        retries (see :meth:`beatInBackground` for the form the module's timer uses).

        Raises
        ------
        medannot.client.LeaseLostError
            If the lease expired or went to someone else (recorded as :attr:`CaseSession.leaseLost`); the case
            stays in the scene so nothing is lost.
        """
        session = self._openSession(session)
        with self._loginChecked() as client:
            try:
                session.leaseExpiresAt = client.heartbeat(session.taskId, session.leaseToken)
            except LeaseLostError as error:
                session.leaseLost = str(error)
                raise
        return session.leaseExpiresAt

    @property
    def leaseKept(self) -> bool:
        """Whether heartbeats can extend the open case's lease now: a case is open, its lease is not lost, and the
        reader is logged in to its server."""
        session = self.session
        return (session is not None and session.leaseLost is None and self.isLoggedIn
                and self.serverUrl == session.serverUrl)

    def beatInBackground(self, onDone: Callable[[BaseException | None], None] | None = None) -> bool:
        """Send one heartbeat for the open case on :attr:`network`'s worker; when ``network.poll()`` sees it
        answered, the new expiry is recorded (or the lost lease, see :attr:`CaseSession.leaseLost`) and
        ``onDone(None or the error)`` is called on the polling thread.

        Returns False (and sends nothing) when :attr:`leaseKept` is False, or a heartbeat is still under way: the
        module's timer calls this every :data:`HEARTBEAT_INTERVAL_SECONDS`, and :meth:`login` calls it at once.
        """
        if not self.leaseKept or self.network.is_busy(HEARTBEAT_CALL):
            return False
        session, client = self.session, self._client

        def answered(expiresAt: str) -> None:
            session.leaseExpiresAt = expiresAt
            if onDone is not None:
                onDone(None)

        def failed(error: BaseException) -> None:
            if isinstance(error, LeaseLostError):
                session.leaseLost = str(error)
                logger.warning("Case %s (task %s): %s", session.caseId, session.taskId, error)
            else:
                logger.info("Heartbeat of task %s not answered (the next one tries again): %s", session.taskId,
                            error)
            if onDone is not None:
                onDone(error)

        self.network.submit(HEARTBEAT_CALL, client.heartbeat, session.taskId, session.leaseToken,
                            on_success=answered, on_failure=failed)
        return True

    def autosave(self, session: CaseSession | None = None) -> Path | None:
        """Save the open case's segmentation in its cache folder (``autosave/segmentation.seg.nrrd`` plus
        ``autosave/autosave.json``), so that :meth:`nextCase` restores it after a crash. A cine's drawing is
        saved as every frame's labels (``autosave/frames.nrrd``) with its keyframes and interpolation method.

        The files are written under temporary names and then renamed over the previous autosave, so an autosave
        that fails half-way leaves the previous one complete. Nothing is written when the drawing has not changed
        since the last autosave (writing a CT's segmentation holds Slicer for about a second), judged by the
        modification times of the segmentation, its segments and, for a cine, its frames, keyframes and method.

        Returns
        -------
        pathlib.Path or None
            The autosaved segmentation; None when no case is open or it is no longer in the scene.

        Raises
        ------
        medannot.errors.MedAnnotError
            Slicer could not write the segmentation (the previous autosave is kept).
        """
        session = session or self.session
        if session is None or session.segmentationNode.GetScene() is None or not session.cacheDir.is_dir():
            return None
        folder = session.autosaveDir
        target = folder / (AUTOSAVE_CINE_LABELS if session.isCine else AUTOSAVE_SEGMENTATION)
        if _drawingStamp(session) == session.autosavedStamp and target.is_file():
            return target
        folder.mkdir(exist_ok=True)
        target, infoTarget = folder / AUTOSAVE_SEGMENTATION, folder / AUTOSAVE_INFO
        # The storage node picks its writer by the file's extension, so the temporary name keeps ".seg.nrrd".
        temporary = folder / f".writing-{os.getpid()}.seg.nrrd"
        infoTemporary = folder / f".writing-{os.getpid()}.json"
        if session.isCine:
            target = folder / AUTOSAVE_CINE_LABELS
            temporary = folder / f".writing-{os.getpid()}.nrrd"
        try:
            info = {
                "server_url": session.serverUrl, "username": session.username, "task_id": str(session.taskId),
                "case_id": session.caseId, "series_uid": session.seriesUid,
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            if session.isCine:
                info.update(_writeCineDrawing(self._cineOf(session), temporary))
            else:
                _writeSegmentation(session.segmentationNode, temporary)
                segmentation = session.segmentationNode.GetSegmentation()
                segments = [segmentation.GetSegment(segmentation.GetNthSegmentID(i))
                            for i in range(segmentation.GetNumberOfSegments())]
                info["segments"] = [{"name": s.GetName(), "color": [round(c, 4) for c in s.GetColor()]}
                                    for s in segments]
            infoTemporary.write_text(json.dumps(info, indent=2), encoding="utf-8")
            # The info first: it names the task and reader, which never change for this folder, so a crash between
            # the two renames leaves a usable pair (a first autosave has no segmentation yet to pair with).
            os.replace(infoTemporary, infoTarget)
            os.replace(temporary, target)
            # Taken after writing: reading a cine's frames copies the shown frame into its sequence item.
            session.autosavedStamp = _drawingStamp(session)
        except BaseException as error:
            for leftover in (temporary, infoTemporary):
                leftover.unlink(missing_ok=True)
            if isinstance(error, Exception) and not isinstance(error, MedAnnotError):
                raise MedAnnotError(f"Could not autosave case {session.caseId}: {error}") from error
            raise
        logger.debug("Autosaved case %s (task %s) to %s", session.caseId, session.taskId, target)
        return target

    def release(self, session: CaseSession | None = None) -> None:
        """Give the open case back to the queue and remove it from the scene (the drawing and its autosave are
        discarded).

        A lease that already expired counts as given back. If the server cannot be reached the case stays open.
        """
        session = self._openSession(session)
        with self._loginChecked() as client:
            try:
                client.release(session.taskId, session.leaseToken)
            except LeaseLostError as error:
                logger.info("Task %s was no longer ours: %s", session.taskId, error)
        self._closeCase(session)
        logger.info("Released case %s (task %s)", session.caseId, session.taskId)

    def submit(self, session: CaseSession | None, readerName: str, readerId: str, readerRole: str = "Annotator",
               institution: str = "", confidences: dict[str, int] | None = None,
               checklistAnswers: Mapping[str, Any] | None = None) -> CaseSubmitResult:
        """Check the case against its guideline, then export it as DICOM-SEG + SR and send it through the outbox.

        Nothing is exported or sent while the guideline's QA finds an error, a required checklist question is
        unanswered or an answer is not one the question takes, or (with ``confidence: required``) a drawn segment
        has no rating. The checklist answers are recorded in the SR.

        Parameters
        ----------
        confidences : dict of str to int, optional
            The reader's confidence (0-100) by segment name.
        checklistAnswers : mapping of str to str or bool, optional
            Answers to the guideline's per-case checklist by item id: ``yes``/``no`` or one of the item's choices.

        Returns
        -------
        CaseSubmitResult
            ``sent`` when the server stored it, ``queued`` when it could not be reached (or the login expired):
            the result then waits in the outbox for :meth:`flushOutbox`. Either way the case leaves the scene and
            its autosave is removed (the outbox keeps the SEG and SR).

        Raises
        ------
        CaseNotReadyError
            Listing every QA error, checklist and confidence problem; the case stays in the scene.
        MedAnnotCineLib.UnmarkedEditsError
            A cine's frame was drawn or corrected without being marked as a keyframe; the case stays in the scene.
        medannot.errors.MedAnnotError
            The export fails (unknown or overlapping segments, missing reader details), or the server refuses the
            result; the case then stays in the scene.
        """
        prepared = self.prepareSubmit(session, readerName, readerId, readerRole, institution, confidences,
                                      checklistAnswers)
        return self.finishSubmit(prepared, self.deliver(prepared))

    def startSubmit(self, session: CaseSession | None, readerName: str, readerId: str,
                    onSubmitted: Callable[[CaseSubmitResult], None], onFailed: Callable[[BaseException], None],
                    readerRole: str = "Annotator", institution: str = "", confidences: dict[str, int] | None = None,
                    checklistAnswers: Mapping[str, Any] | None = None) -> None:
        """:meth:`submit` without waiting on the network: check and export here (this reads the scene), send on
        :attr:`network`'s worker, then (on the thread calling ``network.poll()``) close the case and call
        ``onSubmitted(result)``, or ``onFailed(error)`` with the case still open.

        Raises what :meth:`prepareSubmit` raises, before anything is sent.
        """
        if self.network.is_busy(SUBMIT_CALL):
            raise MedAnnotError("A submit is under way already; wait for its answer.")
        prepared = self.prepareSubmit(session, readerName, readerId, readerRole, institution, confidences,
                                      checklistAnswers)

        def delivered(delivery: DeliveryResult) -> None:
            try:
                result = self.finishSubmit(prepared, delivery)
            except BaseException as error:  # noqa: BLE001  (handed to the caller, who shows it)
                onFailed(error)
                return
            onSubmitted(result)

        self.network.submit(SUBMIT_CALL, self.deliver, prepared, on_success=delivered, on_failure=onFailed)

    def prepareSubmit(self, session: CaseSession | None, readerName: str, readerId: str,
                      readerRole: str = "Annotator", institution: str = "",
                      confidences: dict[str, int] | None = None,
                      checklistAnswers: Mapping[str, Any] | None = None) -> PreparedSubmit:
        """The scene half of :meth:`submit`, before sending: check the case and export its SEG + SR."""
        session = self._inSceneSession(session)
        answers = self._checkReadyToSubmit(session, confidences or {}, checklistAnswers or {})
        if session.isCine:
            # MedAnnotCine's export (through MedAnnotExport's): interpolated segments are SEMIAUTOMATIC and the SR
            # lists the keyframes and interpolated frames.
            exported = self._cineOf(session).exportSegmentation(
                guidelinePath=session.guidelinePath, readerName=readerName, readerId=readerId,
                readerRole=readerRole, institution=institution, outputDir=session.cacheDir / "result",
                confidences=confidences, taskId=str(session.taskId), checklist=answers,
                sourcePath=session.sourcePath)
        else:
            exported = MedAnnotExportLogic().exportSegmentation(
                segmentationNode=session.segmentationNode, referenceVolumeNode=session.volumeNode,
                guidelinePath=session.guidelinePath, readerName=readerName, readerId=readerId,
                readerRole=readerRole, institution=institution, outputDir=session.cacheDir / "result",
                confidences=confidences, taskId=str(session.taskId), dicomDatabase=session.instances,
                checklist=answers)
        return PreparedSubmit(session, exported)

    def deliver(self, prepared: PreparedSubmit) -> DeliveryResult:
        """The network half of :meth:`submit`: put the exported SEG + SR in the outbox and send them (no MRML: may
        run on a worker thread)."""
        session = prepared.session
        with self._clientFor(session.serverUrl) as client:
            return self.outbox.submit(client, session.taskId, session.leaseToken, prepared.exported.seg_path,
                                      prepared.exported.sr_path)

    def finishSubmit(self, prepared: PreparedSubmit, delivery: DeliveryResult) -> CaseSubmitResult:
        """After :meth:`deliver`: a refused result keeps the case open (raises); otherwise the case leaves the
        scene."""
        session = prepared.session
        if delivery.status == "rejected":
            raise ServerRejectedError(
                f"The task server refused the result for case {session.caseId} (task {session.taskId}): "
                f"{delivery.detail}. The case stays open; a copy of the result is kept in {delivery.path}.",
                server_url=session.serverUrl, detail=delivery.detail)
        item = next(i for i in self.outbox.items() if i.item_id == delivery.item_id)
        self._closeCase(session)
        logger.info("Case %s (task %s): %s", session.caseId, session.taskId, delivery.status)
        return CaseSubmitResult(status=delivery.status, taskId=session.taskId, caseId=session.caseId,
                                submissionId=delivery.submission_id, detail=delivery.detail, segPath=item.seg_path,
                                srPath=item.sr_path)

    # ------------------------------------------------------------ guided case
    def allowedEffects(self, session: CaseSession | None = None) -> list[str]:
        """The Segment Editor effects the open case's guideline allows (all when it names none)."""
        return allowedEffectNames(self._openSession(session).guideline)

    def instructions(self, session: CaseSession | None = None) -> str:
        """The open case's guideline instructions as Markdown, with links to its reference images."""
        return instructionsMarkdown(self._openSession(session).guideline)

    def instructionLinkToOpen(self, link: str, session: CaseSession | None = None) -> str | None:
        """The URL the desktop should open for a link clicked in the instructions, or None to open nothing (see
        :func:`MedAnnotWorklistLib.guidance.instructionLinkToOpen`)."""
        return instructionLinkToOpen(link, self._openSession(session).guideline)

    def checkCase(self, session: CaseSession | None = None) -> CaseCheck:
        """Run the guideline's QA rules on the open case's segmentation, as it is now.

        Returns
        -------
        CaseCheck
            Findings in guideline order, each with the slice and the RAS point to jump to.

        Raises
        ------
        medannot.errors.MedAnnotError
            The case left the scene, or its segments cannot form a label map (unknown or overlapping segments).
        """
        session = self._inSceneSession(session)
        if session.isCine:
            labels = self._cineOf(session).guidelineLabels(session.guideline)
            geometry = MedAnnotLib.geometryFromVolumeNode(session.volumeNode)  # one frame's plane
            return checkLabelMap(labels, geometry, session.guideline, isCine=True,
                                 name=session.segmentationNode.GetName())
        return checkSegmentation(session.segmentationNode, session.volumeNode, session.guideline)

    def jumpSlicesToFinding(self, finding: LocatedFinding) -> bool:
        """Centre the slice views on a finding (showing its frame, in a cine); False when the finding has no place
        (an empty segment)."""
        session = self.session
        if session is not None and session.isCine and finding.axis == "frame" and finding.index is not None:
            self._cineOf(session).goToFrame(finding.index)
        return jumpSlicesToFinding(finding)

    # ------------------------------------------------------------ outbox
    def outboxStatus(self) -> OutboxStatus:
        return OutboxStatus(pending=len(self.outbox.pending()), sent=len(self.outbox.sent()),
                            rejected=len(self.outbox.rejected()))

    def flushOutbox(self) -> list[DeliveryResult]:
        """Deliver the results waiting in the outbox to the server logged in to; returns one result per item."""
        with self._loginChecked() as client:
            return self.outbox.flush(client)

    # ------------------------------------------------------------ internals
    def _downloadCase(self, client: TaskServerClient, task: Task, caseDir: Path,
                      transfer: Transfer | None) -> tuple[Path, Guideline]:
        """Fetch a claimed task's images and guideline into its case folder (no MRML: may run on a worker)."""
        from medannot.guideline import load_guideline

        # A folder left by an earlier claim of this task: its images and result are fetched or made again, but its
        # autosave is the reader's drawing from before a crash and is kept.
        _emptyCaseFolder(caseDir, keep=AUTOSAVE_FOLDER)
        caseDir.mkdir(parents=True, exist_ok=True)
        client.download_instances(task.task_id, task.lease_token, caseDir / "images",
                                  progress=transfer.report if transfer is not None else None,
                                  cancelled=transfer.is_cancelled if transfer is not None else None)
        # The YAML as bytes (the guideline's sha256, recorded in the SEG and checked by the server, is over the
        # bytes) and its reference images beside it, each checked against its sha256.
        guidelinePath = client.download_guideline(task.project_id, caseDir / "guideline")
        if transfer is not None and transfer.is_cancelled():
            raise TransferCancelledError(f"Opening case {task.case_id} (task {task.task_id}) was cancelled.",
                                         server_url=client.base_url)
        # A version stored before the server kept reference images has none to send: show the text without them.
        guideline = load_guideline(guidelinePath, require_reference_images=False)
        expected = task.raw.get("guideline_sha256")
        if expected and guideline.sha256 != expected:
            raise GuidelineError(
                f"The guideline the server sent ({guideline.reference}) is not the one task {task.task_id} was "
                f"claimed under (sha256 {str(expected)[:12]}); the project's guideline changed meanwhile. Press "
                "Next case again."
            )
        return guidelinePath, guideline

    def _openCase(self, client: TaskServerClient, claimed: ClaimedCase) -> CaseSession:
        task, caseDir, projectId = claimed.task, claimed.caseDir, claimed.projectId
        guidelinePath, guideline = claimed.guidelinePath, claimed.guideline
        loaded = loadCase(caseDir / "images", name=str(task.case_id))
        volumeNode, source, instances = loaded.volumeNode, loaded.source, loaded.instances
        segmentationNode = cine = None
        try:
            expectedSeries = task.raw.get("series_uid")
            if expectedSeries and source.series_uid != expectedSeries:
                raise MedAnnotError(
                    f"The server sent series {source.series_uid} for case {task.case_id}, but the case is series "
                    f"{expectedSeries}; tell the server's administrator."
                )
            segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(
                guideline, name=f"{task.case_id} segmentation", referenceVolumeNode=volumeNode)
            if loaded.isCine:
                from MedAnnotCineLib import MedAnnotCineLogic

                cine = MedAnnotCineLogic()
                cine.startCine(loaded.browserNode, segmentationNode, dicomDatabase=instances)
            restoredFrom = self._restoreAutosave(client, task, source.series_uid, caseDir, segmentationNode,
                                                 guideline, cine)
        except BaseException:
            _removeNodes(*_caseNodes(volumeNode, segmentationNode, loaded.browserNode, loaded.volumeSequenceNode))
            raise
        return CaseSession(
            serverUrl=client.base_url, projectId=task.project_id if task.project_id is not None else projectId,
            taskId=task.task_id, caseId=str(task.case_id), leaseToken=task.lease_token,
            leaseExpiresAt=task.lease_expires_at, volumeNode=volumeNode, segmentationNode=segmentationNode,
            guidelinePath=guidelinePath, guideline=guideline, cacheDir=caseDir, seriesUid=source.series_uid,
            instances=instances, username=self._username, restoredFrom=restoredFrom, sourcePath=source.paths[0],
            browserNode=loaded.browserNode, cine=cine)

    def _restoreAutosave(self, client: TaskServerClient, task: Task, seriesUid: str, caseDir: Path,
                         segmentationNode, guideline: Guideline, cine=None) -> Path | None:
        """Fill the new segmentation from the case folder's autosave, if it is this reader's drawing of this task
        and series; an autosave that is someone else's or cannot be read is set aside, not used."""
        folder = caseDir / AUTOSAVE_FOLDER
        saved = folder / (AUTOSAVE_CINE_LABELS if cine is not None else AUTOSAVE_SEGMENTATION)
        if not saved.is_file():
            return None
        try:
            info = json.loads((folder / AUTOSAVE_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        expected = {"server_url": client.base_url, "username": self._username, "task_id": str(task.task_id),
                    "series_uid": seriesUid}
        mismatches = {key: info.get(key) for key, value in expected.items() if str(info.get(key)) != str(value)}
        problem = f"it is not of this task and reader ({mismatches})" if mismatches else None
        if problem is None:
            try:
                if cine is not None:
                    _readCineDrawing(cine, saved, info)
                else:
                    _readSegmentation(segmentationNode, saved)
                    # Segments the guideline defines but the autosave lacks (or lost its colour for) are put back.
                    for spec in guideline.segments:
                        _segmentIdForSpec(segmentationNode, spec)
            except Exception as error:  # noqa: BLE001  (a broken autosave must not stop the case from opening)
                problem = f"it could not be read ({error})"
                if cine is not None:
                    cine.restoreFrames(np.zeros_like(cine.session.image, dtype=np.uint16), [], None)
                else:
                    segmentationNode.GetSegmentation().RemoveAllSegments()
                    for spec in guideline.segments:
                        _segmentIdForSpec(segmentationNode, spec)
        if problem is not None:
            aside = folder.with_name(f"{AUTOSAVE_FOLDER}-unused-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}")
            folder.rename(aside)
            logger.warning("Did not restore the autosave of task %s: %s; it was moved to %s", task.task_id,
                           problem, aside)
            return None
        logger.info("Restored the autosaved segmentation of case %s (task %s) from %s (saved %s)", task.case_id,
                    task.task_id, saved, info.get("saved_at", "at an unknown time"))
        return saved

    def _giveBack(self, client: TaskServerClient, task: Task, caseDir: Path, error: BaseException) -> None:
        """After a case failed to open: release its lease so the slot is not stuck, and drop its files (but not an
        autosaved drawing: the reader did not discard it, and gets it back on claiming this task again)."""
        _emptyCaseFolder(caseDir, keep=AUTOSAVE_FOLDER)
        with contextlib.suppress(OSError):
            caseDir.rmdir()  # only when nothing was kept
        try:
            client.release(task.task_id, task.lease_token)
        except TaskServerError as releaseError:
            logger.warning("Could not give task %s back after %s: %s", task.task_id, error, releaseError)
        else:
            logger.info("Gave task %s back: its case could not be opened (%s)", task.task_id, error)

    def _closeCase(self, session: CaseSession) -> None:
        """Remove a submitted or released case from the scene and its folder from the cache, autosave included."""
        sequenceNodes = (None, None)
        if session.isCine and session.cine.session is not None:
            sequenceNodes = (session.cine.session.volumeSequenceNode, session.cine.session.segmentationSequenceNode)
        _removeNodes(*_caseNodes(session.volumeNode, session.segmentationNode, session.browserNode, *sequenceNodes))
        shutil.rmtree(session.cacheDir, ignore_errors=True)
        if self.session is session:
            self.session = None

    @staticmethod
    def _cineOf(session: CaseSession):
        """The case's cine logic (the MedAnnotCine module's widget is given this same instance, so keyframes marked
        there are the ones exported here)."""
        if session.cine.session is None:
            raise MedAnnotError(f"Case {session.caseId}'s cine is no longer open; release the case and take it again.")
        return session.cine

    def _checkNoCaseOpen(self) -> None:
        if self.session is not None:
            raise MedAnnotError(
                f"Case {self.session.caseId} (task {self.session.taskId}) is still open; submit or release it first.")
        if self.network.is_busy(CLAIM_CALL):
            raise MedAnnotError("The next case is being downloaded already; wait for it, or cancel it.")

    def _openSession(self, session: CaseSession | None) -> CaseSession:
        session = session or self.session
        if session is None:
            raise MedAnnotError("No case is open; press Next case to claim one.")
        return session

    def _inSceneSession(self, session: CaseSession | None) -> CaseSession:
        session = self._openSession(session)
        if session.segmentationNode.GetScene() is None or session.volumeNode.GetScene() is None:
            raise MedAnnotError(
                f"Case {session.caseId} is no longer in the scene (was the scene closed?), so there is nothing to "
                "check or submit; release the case to give it back, then take it again with Next case."
            )
        return session

    def _checkReadyToSubmit(self, session: CaseSession, confidences: Mapping[str, Any],
                            checklistAnswers: Mapping[str, Any]) -> dict[str, str]:
        """Refuse a case the guideline does not accept yet; returns the checklist answers as the SR records them."""
        self.ensureDependencies()
        check = self.checkCase(session)
        problems = [f"QA error: {finding}" for finding in check.errors]
        checklistIssues, answers = checklistProblems(session.guideline, checklistAnswers)
        problems += checklistIssues
        problems += confidenceProblems(session.guideline, confidences, check.drawnSegments)
        if problems:
            raise CaseNotReadyError(
                f"Case {session.caseId} cannot be submitted yet; fix these first:\n"
                + "\n".join(f"- {problem}" for problem in problems), problems, check)
        return answers

    @contextlib.contextmanager
    def _clientFor(self, serverUrl: str) -> Iterator[TaskServerClient]:
        """The logged-in client if it is for ``serverUrl``; else one without a login, whose submits the outbox
        keeps until the reader logs in there again."""
        if self.isLoggedIn and self.serverUrl == serverUrl:
            yield self._client
            return
        with TaskServerClient(serverUrl) as client:
            yield client

    @contextlib.contextmanager
    def _loginChecked(self) -> Iterator[TaskServerClient]:
        """The logged-in client; a refused or missing login becomes a message about logging in here, in Slicer."""
        if not self.isLoggedIn:
            raise AuthenticationError("Log in to the task server first.", server_url=self.serverUrl)
        try:
            yield self._client
        except AuthenticationError as error:
            raise AuthenticationError(
                f"The task server at {self.serverUrl} no longer accepts your login ({error.detail or 'expired'}); "
                "log in again.", server_url=self.serverUrl, status_code=error.status_code, detail=error.detail,
            ) from None


def caseWithoutServer(volumeNode, segmentationNode, guidelinePath, cacheDir, caseId: str = "self-test",
                      instances: CachedInstances | None = None, browserNode=None, cine=None) -> CaseSession:
    """A case open in the scene as :meth:`MedAnnotLogic.nextCase` leaves one, without a server or a lease: for
    self-tests and scripts that drive the guided panel (check, instructions, tools) on nodes they made.

    Parameters
    ----------
    volumeNode, segmentationNode : vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
        The image and the drawing on it.
    guidelinePath : str or pathlib.Path
        The guideline YAML the case follows.
    cacheDir : str or pathlib.Path
        The case folder (autosave goes to ``cacheDir/autosave``).
    instances : CachedInstances, optional
        The case's DICOM files, for a submit's export; without them the export asks ``slicer.dicomDatabase``.
    browserNode, cine : optional
        For a cine: the browser playing it and the :class:`MedAnnotCineLib.MedAnnotCineLogic` annotating it.
    """
    from medannot.guideline import load_guideline

    guidelinePath = Path(guidelinePath)
    return CaseSession(
        serverUrl="", projectId="", taskId="", caseId=caseId, leaseToken="", leaseExpiresAt="",
        volumeNode=volumeNode, segmentationNode=segmentationNode, guidelinePath=guidelinePath,
        guideline=load_guideline(guidelinePath, require_reference_images=False), cacheDir=Path(cacheDir),
        seriesUid="", instances=instances, browserNode=browserNode, cine=cine)


def _caseNodes(volumeNode, segmentationNode, browserNode=None, *sequenceNodes) -> list:
    """The nodes of a case in the order to remove them: the browser first, which would otherwise make new proxy
    nodes for its sequences when the shown ones go, then the sequences, then the shown volume and segmentation."""
    return [browserNode, *sequenceNodes, volumeNode, segmentationNode]


def _drawingStamp(session: CaseSession) -> tuple:
    """What changes whenever the case's drawing changes: the modification times (VTK's, which only grow) of the
    segmentation node, its segmentation and every segment's source representation; for a cine also of every
    frame's segmentation item, and the keyframes and method. Equal stamps: nothing to autosave."""
    nodes = [session.segmentationNode]
    extra: tuple = ()
    if session.isCine and session.cine.session is not None:
        sequenceNode = session.cine.session.segmentationSequenceNode
        nodes += [sequenceNode] + [sequenceNode.GetNthDataNode(i) for i in range(sequenceNode.GetNumberOfDataNodes())]
        extra = (tuple(session.cine.keyframes()), session.cine.method)
    stamps = []
    for node in nodes:
        stamps.append(node.GetMTime())
        segmentation = node.GetSegmentation() if hasattr(node, "GetSegmentation") else None
        if segmentation is None:
            continue
        stamps.append(segmentation.GetMTime())
        sourceName = segmentation.GetSourceRepresentationName()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            representation = segment.GetRepresentation(sourceName)
            stamps += [segment.GetMTime(), representation.GetMTime() if representation is not None else 0]
    return (*stamps, *extra)


def _writeCineDrawing(cine, path: Path) -> dict:
    """Write every frame's labels of a cine to ``path``; returns what the autosave info records to read them back:
    keyframes, method and which label is which segment."""
    from medannot.imaging import write_label_map

    write_label_map(cine.frameLabels(), None, path)
    segmentation = cine.session.segmentationNode.GetSegmentation()
    segments = []
    for segmentId, label in sorted(cine.session.labelOfSegment.items(), key=lambda item: item[1]):
        segment = segmentation.GetSegment(segmentId)
        if segment is not None:
            segments.append({"name": segment.GetName(), "label": label,
                             "color": [round(c, 4) for c in segment.GetColor()]})
    return {"segments": segments, "keyframes": cine.keyframes(), "method": cine.method}


def _readCineDrawing(cine, path: Path, info: Mapping[str, Any]) -> None:
    """Put an autosaved cine drawing (see :func:`_writeCineDrawing`) back into the case's cine, matching the saved
    segments to the case's by name; a saved segment the case lacks is added."""
    from medannot.imaging import read_label_map

    saved, _ = read_label_map(path)
    segmentation = cine.session.segmentationNode.GetSegmentation()
    byName = {segmentation.GetSegment(segmentId).GetName().lower(): label
              for segmentId, label in cine.session.labelOfSegment.items() if segmentation.GetSegment(segmentId)}
    lookup = np.zeros(max([int(saved.max()), *(int(s["label"]) for s in info.get("segments", []))]) + 1,
                      dtype=np.uint16)
    for segment in info.get("segments", []):
        label = byName.get(str(segment["name"]).lower())
        if label is None:
            segmentId = segmentation.AddEmptySegment("", str(segment["name"]), segment.get("color"))
            cine.syncSegments()
            label = cine.session.labelOfSegment[segmentId]
        lookup[int(segment["label"])] = label
    unknown = sorted(set(np.unique(saved).tolist()) - {0} - {int(s["label"]) for s in info.get("segments", [])})
    if unknown:
        raise MedAnnotError(f"{path}: label values {unknown} are not any saved segment's")
    cine.restoreFrames(lookup[saved], info.get("keyframes", []), info.get("method"))


def _removeNodes(*nodes) -> None:
    for node in nodes:
        scene = node.GetScene() if node is not None else None
        if scene is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)


def _emptyCaseFolder(caseDir: Path, keep: str) -> None:
    """Remove everything in a case folder but its entry named ``keep``."""
    if not caseDir.is_dir():
        with contextlib.suppress(OSError):
            caseDir.unlink()  # a stray file where the folder goes
        return
    for entry in caseDir.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _writeSegmentation(segmentationNode, path: Path) -> None:
    """Write a segmentation node as a ``.seg.nrrd`` (all segments, names, colours, terminology) without adding a
    storage node to the scene."""
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentationNode) or not path.is_file():
        raise MedAnnotError(f"Slicer could not write the segmentation to {path}.")


def _readSegmentation(segmentationNode, path: Path) -> None:
    """Replace a segmentation node's segments with those of a ``.seg.nrrd``."""
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    segmentationNode.GetSegmentation().RemoveAllSegments()
    if not storage.ReadData(segmentationNode):
        raise MedAnnotError(f"Slicer could not read the segmentation in {path}.")


def _segmentIdForSpec(segmentationNode, spec) -> str:
    from MedAnnotLib.segmentations import _segmentIdFor

    return _segmentIdFor(segmentationNode, spec)


def _slug(serverUrl: str) -> str:
    """A folder-name-safe form of a server address, so tasks of two servers never share a cache folder."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", serverUrl.split("://", 1)[-1]).strip("_")
