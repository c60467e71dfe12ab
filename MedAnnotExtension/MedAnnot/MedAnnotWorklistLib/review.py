"""MedAnnot review logic: a reviewer claims a case whose reads are all in, sees every reader's segmentation beside
the consensus with the server's agreement table, decides (accept a read, use the consensus, submit an edit, return
a read) and signs the result, without GUI.

Kept out of MedAnnot.py so that it imports without Qt; the tests on the slicer-core wheel (real MRML) drive this
very class against a real task server.
"""

from __future__ import annotations

import colorsys
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import MedAnnotLib
from medannot.errors import MedAnnotError, SourceImageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from medannot.guideline import Guideline

logger = logging.getLogger(__name__)

# What the network worker runs, by name (see MedAnnotLogic.network).
CLAIM_REVIEW_CALL, DECIDE_CALL, SIGN_CALL = "claim the next review", "decide a review", "sign"
REVIEW_HEARTBEAT_CALL = "review heartbeat"
CONSENSUS = "consensus"


@dataclass(frozen=True)
class AgreementRow:
    """One row of the agreement table, as the server stored it: a segment, two reads (reader names, or
    ``consensus``) and their Dice, HD95 (mm) and NSD at ``toleranceMm``."""

    segment: str
    a: str
    b: str
    dice: float | None
    hd95Mm: float | None
    nsd: float | None
    toleranceMm: float | None
    volumeAMl: float | None
    volumeBMl: float | None
    belowThreshold: bool
    note: str | None = None


@dataclass
class ReviewSession:
    """A claimed review open in the scene: the lease, the case's volume, one segmentation node per read (by
    submission id) and the consensus node (None when the guideline asks for no consensus).

    ``decision`` is the server's answer to the decision made (None while undecided); ``result`` what the case's
    result became (``{"kind": "submission"|"consensus"|"edited", ...}``), which :meth:`MedAnnotReviewLogic.sign`
    signs. The lease ends with the decision; the nodes stay until :meth:`MedAnnotReviewLogic.closeReview`.
    """

    serverUrl: str
    projectId: int | str
    reviewId: int | str
    caseId: str
    leaseToken: str = field(repr=False)
    leaseExpiresAt: str
    reviewDir: Path
    guidelinePath: Path
    guideline: Guideline = field(repr=False)
    volumeNode: Any
    instances: Any = field(repr=False)
    readerNames: dict[int, str] = field(default_factory=dict)
    readerNodes: dict[int, Any] = field(default_factory=dict)
    segPaths: dict[int, Path] = field(default_factory=dict)
    consensusNode: Any = None
    consensusSegPath: Path | None = None
    agreement: list[AgreementRow] = field(default_factory=list)
    disagreement: list[str] = field(default_factory=list)
    decision: dict | None = None
    result: dict | None = None

    def submissionOf(self, reader: str | int) -> int:
        """The submission id of a read given by reader name or submission id."""
        for submissionId, name in self.readerNames.items():
            if str(reader) in (name, str(submissionId)):
                return submissionId
        raise MedAnnotError(f"Review {self.reviewId} (case {self.caseId}) has no read by '{reader}'; its readers are "
                            f"{', '.join(self.readerNames.values())}.")


class MedAnnotReviewLogic:
    """The reviewer's part of the MedAnnot module, on the worklist logic's login and network worker.

    One review is open at a time (:attr:`session`); it outlives module switches because the worklist logic owns
    this object (``MedAnnotLogic.review``).

    Parameters
    ----------
    worklist : MedAnnotWorklistLib.logic.MedAnnotLogic
        Gives the logged-in client, the network worker and the cache folder.
    dicomDatabase : optional
        Where the case's images are found by SOP Instance UID (``fileForInstance``); defaults to
        ``slicer.dicomDatabase``. The task server hands images only to a read's leaseholder, so the reviewer's
        images come from the lab's DICOM database (e.g. retrieved from PACS).
    """

    def __init__(self, worklist, dicomDatabase=None) -> None:
        self.worklist = worklist
        self.dicomDatabase = dicomDatabase
        self.session: ReviewSession | None = None

    # ------------------------------------------------------------ list and claim
    def reviews(self, projectId) -> list[dict]:
        """The project's review rounds as the server lists them (a case appears once all its reads are in)."""
        with self.worklist._loginChecked() as client:
            return client.reviews(projectId)

    def nextReview(self, projectId, cacheDir=None) -> ReviewSession | None:
        """Claim the next review of a project and open it: the case's volume, one segmentation node per reader
        (named after the reader, each in its own colours) and the consensus, and the agreement table.

        Returns None (and claims nothing) when no case of the project has all its reads in, or all are reviewed.

        Raises
        ------
        medannot.errors.MedAnnotError
            A review is open already, not logged in, the server refuses, or the case's images are not in the
            DICOM database.
        """
        return self.openClaimedReview(self.claimReview(projectId, cacheDir))

    def startNextReview(self, projectId, onOpened: Callable[[ReviewSession | None], None],
                        onFailed: Callable[[BaseException], None], cacheDir=None) -> None:
        """:meth:`nextReview` with the claim and downloads on the worklist's network worker; the scene part runs
        when ``network.poll()`` (the GUI's timer) hands the claim back."""
        self._checkNoReviewOpen()

        def claimed(found) -> None:
            try:
                session = self.openClaimedReview(found)
            except BaseException as error:  # noqa: BLE001  (handed to the caller, who shows it)
                onFailed(error)
                return
            onOpened(session)

        self.worklist.network.submit(CLAIM_REVIEW_CALL, self.claimReview, projectId, cacheDir, on_success=claimed,
                                     on_failure=onFailed)

    def claimReview(self, projectId, cacheDir=None) -> dict | None:
        """The network half of :meth:`nextReview`: claim, then download the reads, the consensus and the
        guideline into the review's folder. Touches no MRML."""
        self._checkNoReviewOpen()
        with self.worklist._loginChecked() as client:
            claimed = client.claim_review(projectId)
            if claimed is None:
                return None
            reviewDir = Path(cacheDir or self.worklist.cacheFolder) / f"review-{claimed['review_id']}"
            files = client.download_review(claimed, reviewDir / "files")
            guidelinePath = client.download_guideline(projectId, reviewDir / "guideline")
        return {"claimed": claimed, "files": files, "reviewDir": reviewDir, "guidelinePath": guidelinePath,
                "serverUrl": client.base_url, "projectId": projectId}

    def openClaimedReview(self, found: dict | None) -> ReviewSession | None:
        """The scene half of :meth:`nextReview` (on the GUI's thread)."""
        if found is None:
            return None
        from medannot.dicomseg import read_segmentation
        from medannot.guideline import load_guideline
        from MedAnnotWorklistLib.caseimages import loadCaseVolume

        claimed, files, reviewDir = found["claimed"], found["files"], Path(found["reviewDir"])
        guideline = load_guideline(found["guidelinePath"], require_reference_images=False)
        reads = claimed.get("reads") or []
        if not reads:
            raise MedAnnotError(f"Review {claimed['review_id']} lists no reads; ask the lab's admin to retry it.")
        segPaths = {int(r["submission_id"]): Path(files[f"submission-{r['submission_id']}-seg.dcm"]) for r in reads}
        imagesDir = self._linkSourceImages(next(iter(segPaths.values())), reviewDir / "images")
        volumeNode, source, instances = loadCaseVolume(imagesDir, str(claimed["case_id"]))
        session = ReviewSession(
            serverUrl=found["serverUrl"], projectId=found["projectId"], reviewId=claimed["review_id"],
            caseId=str(claimed["case_id"]), leaseToken=str(claimed["lease_token"]),
            leaseExpiresAt=str(claimed.get("lease_expires_at") or ""), reviewDir=reviewDir,
            guidelinePath=Path(found["guidelinePath"]), guideline=guideline, volumeNode=volumeNode,
            instances=instances, segPaths=segPaths, disagreement=list(claimed.get("disagreement") or []))
        try:
            readerCount = len(reads)
            for index, read in enumerate(reads):
                submissionId = int(read["submission_id"])
                name = str(read.get("reader") or f"submission {submissionId}")
                session.readerNames[submissionId] = name
                record = read_segmentation(segPaths[submissionId],
                                           files.get(f"submission-{submissionId}-sr.dcm"), source=source)
                node = MedAnnotLib.addSegmentationNodeFromLabelMap(record.labels, source.geometry, guideline,
                                                                   name=f"{name} ({session.caseId})")
                node.SetAttribute("MedAnnot.submissionId", str(submissionId))
                node.SetAttribute("MedAnnot.reader", name)
                _tintSegments(node, guideline, (index + 1) / (readerCount + 1))
                session.readerNodes[submissionId] = node
            if "consensus-seg.dcm" in files:
                session.consensusSegPath = Path(files["consensus-seg.dcm"])
                record = read_segmentation(session.consensusSegPath, files.get("consensus-sr.dcm"), source=source)
                session.consensusNode = MedAnnotLib.addSegmentationNodeFromLabelMap(
                    record.labels, source.geometry, guideline, name=f"Consensus ({session.caseId})")
                session.consensusNode.SetAttribute("MedAnnot.reader", CONSENSUS)
            session.agreement = self._agreementRows(claimed.get("metrics") or [], session.readerNames)
        except BaseException:
            self._removeNodes(session)
            raise
        self.session = session
        logger.info("Opened review %s of case %s: %d reads%s", session.reviewId, session.caseId, len(reads),
                    " and the consensus" if session.consensusNode else "")
        return session

    # ------------------------------------------------------------ lease
    def heartbeat(self, session: ReviewSession | None = None) -> str:
        """Extend the lease on the open, undecided review; returns the new expiry (also in the session)."""
        session = self._openSession(session)
        with self.worklist._loginChecked() as client:
            session.leaseExpiresAt = client.heartbeat_review(session.reviewId, session.leaseToken)
        return session.leaseExpiresAt

    def beatInBackground(self, onDone: Callable[[BaseException | None], None] | None = None) -> bool:
        """:meth:`heartbeat` on the network worker, if a review is open, undecided and the reviewer logged in
        (the worklist's heartbeat timer calls this too); ``onDone(error or None)`` from ``network.poll()``.
        Returns whether a beat was sent."""
        session = self.session
        if (session is None or session.decision is not None or not self.worklist.isLoggedIn
                or self.worklist.network.is_busy(REVIEW_HEARTBEAT_CALL)):
            return False
        self.worklist.network.submit(REVIEW_HEARTBEAT_CALL, self.heartbeat, session,
                                     on_success=lambda _: onDone and onDone(None),
                                     on_failure=lambda error: onDone and onDone(error))
        return True

    # ------------------------------------------------------------ decide
    def accept(self, reader: str | int, session: ReviewSession | None = None) -> dict:
        """Make a reader's submission (by reader name or submission id) the case's result."""
        session = self._openSession(session)
        return self._decide(session, "accept", submissionId=session.submissionOf(reader))

    def useConsensus(self, session: ReviewSession | None = None) -> dict:
        """Make the consensus the case's result."""
        session = self._openSession(session)
        if session.consensusNode is None:
            raise MedAnnotError(f"Review {session.reviewId} (case {session.caseId}) has no consensus (the guideline "
                                "asks for none); accept a read or submit an edit instead.")
        return self._decide(session, CONSENSUS)

    def returnRead(self, reader: str | int, reason: str, session: ReviewSession | None = None) -> dict:
        """Send a reader's read back to that reader with a reason; the old read is kept on the server."""
        session = self._openSession(session)
        if not reason or not reason.strip():
            raise MedAnnotError("Say why the read goes back to its reader (the reason is shown to them).")
        return self._decide(session, "return", submissionId=session.submissionOf(reader), reason=reason.strip())

    def editAndSubmit(self, editedFrom: str | int, readerName: str, readerId: str, session: ReviewSession | None = None,
                      segmentationNode=None, readerRole: str = "Reviewer", institution: str = "") -> dict:
        """Export the edited segmentation node as SEG + SR that references the SEG it was edited from, and send
        it as the decision.

        Parameters
        ----------
        editedFrom : str or int
            The read it was edited from (reader name or submission id), or ``"consensus"``.
        readerName, readerId : str
            The reviewer as the export records the author (DICOM person name, lab id).
        segmentationNode : vtkMRMLSegmentationNode, optional
            The edited node; defaults to the node of ``editedFrom`` (edited in place in the Segment Editor).
        """
        from MedAnnotExportLib.logic import MedAnnotExportLogic

        session = self._openSession(session)
        if str(editedFrom) == CONSENSUS:
            if session.consensusSegPath is None:
                raise MedAnnotError(f"Review {session.reviewId} has no consensus to edit.")
            replaces, node = session.consensusSegPath, session.consensusNode
        else:
            submissionId = session.submissionOf(editedFrom)
            replaces, node = session.segPaths[submissionId], session.readerNodes[submissionId]
        node = segmentationNode if segmentationNode is not None else node
        exported = MedAnnotExportLogic().exportSegmentation(
            node, session.volumeNode, session.guidelinePath, readerName, readerId,
            session.reviewDir / "edited" / uuid.uuid4().hex[:8], readerRole=readerRole, institution=institution,
            dicomDatabase=session.instances, replaces=replaces)
        with self.worklist._loginChecked() as client:
            answer = client.decide_edited(session.reviewId, session.leaseToken, str(uuid.uuid4()),
                                          exported.seg_path, exported.sr_path)
        return self._decided(session, answer)

    def startDecision(self, decide: Callable[[], dict], onDone: Callable[[dict], None],
                      onFailed: Callable[[BaseException], None]) -> None:
        """Run a decision (e.g. ``lambda: logic.accept("r1")``) on the network worker; ``onDone(answer)`` or
        ``onFailed(error)`` is called from ``network.poll()``. An edit's export reads MRML, so do not run
        :meth:`editAndSubmit` this way."""
        self.worklist.network.submit(DECIDE_CALL, decide, on_success=onDone, on_failure=onFailed)

    # ------------------------------------------------------------ sign
    def sign(self, password: str, meaning: str, printedName: str | None = None,
             session: ReviewSession | None = None) -> dict:
        """Sign the decided result with a meaning (``reviewed``, ``approved``, ...); the password is asked again
        (it goes to the server, is not kept) and a wrong one is refused like a failed login.

        Returns the server's signature (``signature_id``, ``sha256``, ``meaning``, ``signed_at``, ...).
        """
        session = self._openSession(session)
        if session.result is None:
            raise MedAnnotError(f"Review {session.reviewId} (case {session.caseId}) is not decided yet; accept a "
                                "read, use the consensus or submit an edit before signing.")
        if not password:
            raise MedAnnotError("Enter your password to sign (a signature needs it again, not just the login).")
        result = session.result
        with self.worklist._loginChecked() as client:
            if result.get("kind") == "submission":
                return client.sign(result["submission_id"], password, meaning, printed_name=printedName)
            return client.sign_review(session.reviewId, str(result.get("kind")), password, meaning,
                                             printed_name=printedName)

    def startSign(self, password: str, meaning: str, onDone: Callable[[dict], None],
                  onFailed: Callable[[BaseException], None], printedName: str | None = None) -> None:
        """:meth:`sign` on the network worker."""
        self.worklist.network.submit(SIGN_CALL, self.sign, password, meaning, printedName, on_success=onDone,
                                     on_failure=onFailed)

    def closeReview(self, session: ReviewSession | None = None) -> None:
        """Remove the review's nodes and its folder (the server keeps everything)."""
        session = self._openSession(session)
        self._removeNodes(session)
        shutil.rmtree(session.reviewDir, ignore_errors=True)
        if self.session is session:
            self.session = None

    # ------------------------------------------------------------ helpers
    def _decide(self, session: ReviewSession, action: str, submissionId: int | None = None,
                reason: str | None = None) -> dict:
        if session.decision is not None:
            raise MedAnnotError(f"Review {session.reviewId} (case {session.caseId}) is decided already "
                                f"({session.decision.get('action')}).")
        with self.worklist._loginChecked() as client:
            answer = client.decide(session.reviewId, session.leaseToken, str(uuid.uuid4()), action,
                                   submission_id=submissionId, reason=reason)
        return self._decided(session, answer)

    def _decided(self, session: ReviewSession, answer: dict) -> dict:
        session.decision = answer
        with self.worklist._loginChecked() as client:
            listed = [r for r in client.reviews(session.projectId) if str(r["review_id"]) == str(session.reviewId)]
        session.result = listed[0].get("result") if listed else None
        logger.info("Review %s of case %s decided: %s", session.reviewId, session.caseId, answer.get("action"))
        return answer

    def _linkSourceImages(self, segPath: Path, folder: Path) -> Path:
        """Gather the instances a reader's SEG was drawn on from the DICOM database into ``folder``."""
        from pydicom import dcmread

        database = self.dicomDatabase
        if database is None:
            import slicer

            database = getattr(slicer, "dicomDatabase", None)
        seg = dcmread(segPath, stop_before_pixels=True)
        uids = [str(item.ReferencedSOPInstanceUID) for series in seg.get("ReferencedSeriesSequence", [])
                for item in series.get("ReferencedInstanceSequence", [])]
        files = [database.fileForInstance(uid) if database is not None else "" for uid in uids]
        missing = [uid for uid, file in zip(uids, files) if not file]
        if not uids or missing:
            raise SourceImageError(
                f"{segPath.name}: {len(missing) or 'its'} of the {len(uids)} images it was drawn on are not in the "
                f"DICOM database (first missing: {missing[0] if missing else 'none referenced'}); import the case's "
                "series (e.g. from PACS) and take the review again.")
        folder.mkdir(parents=True, exist_ok=True)
        for index, file in enumerate(files):
            target = folder / f"{index:05d}_{Path(file).name}"
            try:
                os.symlink(Path(file).resolve(), target)
            except OSError:  # Windows without the symlink privilege
                shutil.copy2(file, target)
        return folder

    @staticmethod
    def _agreementRows(metrics: list[dict], readerNames: dict[int, str]) -> list[AgreementRow]:
        def named(key: str) -> str:
            return CONSENSUS if key == CONSENSUS else readerNames.get(int(key), key) if key.isdigit() else key

        return [AgreementRow(segment=m["segment"], a=named(str(m["a"])), b=named(str(m["b"])), dice=m.get("dice"),
                             hd95Mm=m.get("hd95_mm"), nsd=m.get("nsd"), toleranceMm=m.get("tolerance_mm"),
                             volumeAMl=m.get("volume_a_ml"), volumeBMl=m.get("volume_b_ml"),
                             belowThreshold=bool(m.get("below_threshold")), note=m.get("note"))
                for m in metrics]

    def _checkNoReviewOpen(self) -> None:
        if self.session is not None:
            raise MedAnnotError(f"Review {self.session.reviewId} (case {self.session.caseId}) is still open; decide "
                                "and close it first.")

    def _openSession(self, session: ReviewSession | None) -> ReviewSession:
        session = session or self.session
        if session is None:
            raise MedAnnotError("No review is open; press Next review to claim one.")
        return session

    @staticmethod
    def _removeNodes(session: ReviewSession) -> None:
        for node in [*session.readerNodes.values(), session.consensusNode, session.volumeNode]:
            scene = node.GetScene() if node is not None else None
            if scene is not None and scene.IsNodePresent(node):
                scene.RemoveNode(node)


def _tintSegments(segmentationNode, guideline: Guideline, hueShift: float) -> None:
    """Give a reader's segments their guideline colours with the hue turned by ``hueShift`` (0-1), so that each
    reader's node reads apart from the others and from the consensus (which keeps the guideline's colours)."""
    segmentation = segmentationNode.GetSegmentation()
    for spec in guideline.segments:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        if segment is None:
            continue
        hue, lightness, saturation = colorsys.rgb_to_hls(*segment.GetColor())
        saturation = max(saturation, 0.6)  # a grey guideline colour would not change with the hue
        segment.SetColor(*colorsys.hls_to_rgb((hue + hueShift) % 1.0, min(max(lightness, 0.35), 0.65), saturation))
