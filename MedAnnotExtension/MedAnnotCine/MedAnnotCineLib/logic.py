"""MedAnnotCine logic: keyframes on a cine browsed as a Slicer sequence, interpolation between them, review, undo
and export as DICOM-SEG + SR, without any GUI.

Kept out of MedAnnotCine.py so that it imports without Qt: scripts, other modules and the tests that run on the
slicer-core wheel (real MRML, no Qt) use this very class, which is also the one the module's widget runs.

The segmentation lives in a segmentation sequence browsed with the cine (see :mod:`MedAnnotCineLib.sequences`);
the logic keeps the keyframe masks, the core's :class:`~medannot.interpolation.Interpolator` and an undo history.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import MedAnnotLib
from MedAnnotCineLib import sequences
from medannot.errors import MedAnnotError, SegmentContentError, SourceImageError
from medannot.interpolation import InterpolationError, Interpolator, SegmentFrames

from MedAnnotLib.scriptedmodule import ScriptedLoadableModuleLogic

if TYPE_CHECKING:
    from collections.abc import Callable

    from medannot.dicomseg import ExportResult
    from medannot.guideline import Guideline
    from medannot.interpolation import InterpolationResult

logger = logging.getLogger(__name__)

REQUIREMENTS_PATH = MedAnnotLib.REQUIREMENTS_PATH  # the extension's one list, shared by the three modules

FRAME_KEY = "key"
FRAME_INTERPOLATED = "interpolated"
FRAME_EMPTY = "empty"
HISTORY_DEPTH = 20  # undo steps kept; each holds only the frames its action rewrote
# Kept on the segmentation sequence so that a saved scene reopens with its keyframes and interpolation.
KEYFRAMES_ATTRIBUTE = "MedAnnotCine.keyframes"
METHOD_ATTRIBUTE = "MedAnnotCine.method"


class UnmarkedEditsError(MedAnnotError):
    """Frames were drawn or corrected without being marked as keyframes: drawn and computed frames cannot be told
    apart for the export's provenance."""

    def __init__(self, message: str, frames: list[int]) -> None:
        super().__init__(message)
        self.frames = frames


@dataclass
class CineSession:
    """The cine being annotated: its browser and sequences, its frames as numpy, and the segment label values.

    ``labelOfSegment`` maps segment IDs to the label values the interpolation works with; it only grows, so a
    segment keeps its value while segments are added.
    """

    browserNode: Any
    volumeSequenceNode: Any
    segmentationSequenceNode: Any
    segmentationNode: Any
    image: np.ndarray = field(repr=False)
    frameTimesMs: list[float] | None
    spacing: tuple[float, float]
    labelOfSegment: dict[str, int] = field(default_factory=dict)

    @property
    def frameCount(self) -> int:
        return int(self.image.shape[0])

    @property
    def proxyVolumeNode(self):
        return self.browserNode.GetProxyNode(self.volumeSequenceNode)


@dataclass
class CineFrames:
    """The cine's segmentation frame by frame, and which frames were drawn and which computed (0-based frames).

    ``labels`` is frames x rows x cols; its values are the keys of ``segmentNames``. ``segments`` tells per label
    on which keyframes it is drawn and which frames were interpolated for it. ``method`` is the interpolation
    method used, None when nothing was interpolated.
    """

    labels: np.ndarray
    keyframes: list[int]
    interpolatedFrames: list[int]
    segmentNames: dict[int, str]
    segments: list[SegmentFrames]
    method: str | None


@dataclass
class _Step:
    """One undoable action: the state before it and the content of the frames it rewrote."""

    action: str
    frame: int | None
    keyframes: dict[int, np.ndarray]
    states: list[str]
    method: str | None
    interpolator: Interpolator | None
    labelsBefore: dict[int, np.ndarray] = field(default_factory=dict)


class MedAnnotCineLogic(ScriptedLoadableModuleLogic):
    """Keyframe interpolation on an ultrasound cine (or any 2D+t image sequence) in Slicer.

    Typical use: :meth:`startCine`, draw on a frame and :meth:`markKeyframe` (repeat), :meth:`interpolate`,
    review with :meth:`goToNextFrameToReview`, correct a frame and :meth:`markKeyframe` again (only its
    neighbouring spans are recomputed), :meth:`undo` when needed, then :meth:`exportSegmentation`.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session: CineSession | None = None
        self._keyframes: dict[int, np.ndarray] = {}
        self._states: list[str] = []
        self._interpolator: Interpolator | None = None
        self._method: str | None = None
        self._history: deque[_Step] = deque(maxlen=HISTORY_DEPTH)

    def ensureDependencies(self) -> None:
        """Install the packages the core needs and Slicer lacks (``MedAnnotLib/requirements.txt``) if missing."""
        MedAnnotLib.ensureRequirements(REQUIREMENTS_PATH, requester="MedAnnot Cine")

    @staticmethod
    def availableMethods() -> list[str]:
        """The interpolation methods this Slicer can run, in the order the GUI offers them: morphological only
        where its optional package (itk-morphologicalcontourinterpolation) is installed."""
        from medannot.interpolation import METHODS
        from medannot.interpolation.morphological import is_available

        return [method for method in METHODS if method != "morphological" or is_available()]

    # ------------------------------------------------------------ session
    def startCine(self, browserNode, segmentationNode, dicomDatabase=None) -> CineSession:
        """Start annotating the cine a sequence browser plays, with a segmentation drawn on its frames.

        The segmentation becomes the proxy of a segmentation sequence browsed with the cine (created if needed),
        so each frame keeps its own drawing. Keyframes and interpolation stored with a saved scene are restored.

        Parameters
        ----------
        browserNode : vtkMRMLSequenceBrowserNode
            Plays the cine's image sequence (one single-slice volume per frame).
        segmentationNode : vtkMRMLSegmentationNode
            What the reader draws on the shown frame.
        dicomDatabase : ctkDICOMDatabase, optional
            To read frame times from the DICOM file when the sequence index is not a time; defaults to
            ``slicer.dicomDatabase``.

        Raises
        ------
        ValueError
            If an input is missing, the browser plays no image sequence, or the segmentation is browsed elsewhere.
        medannot.errors.SourceImageError
            If the frames are not single slices of one size.
        """
        if segmentationNode is None:
            raise ValueError("Select the segmentation drawn on the cine.")
        volumeSequence = sequences.volumeSequenceOfBrowser(browserNode)
        image = sequences.cineImage(volumeSequence)
        proxyVolume = browserNode.GetProxyNode(volumeSequence)
        if not segmentationNode.GetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole()):
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(proxyVolume)
        segmentationSequence = sequences.segmentationSequenceForCine(browserNode, volumeSequence, segmentationNode)
        frameTimes = (sequences.frameTimesFromIndex(volumeSequence)
                      or sequences.frameTimesFromDicom(volumeSequence, dicomDatabase))
        self.session = CineSession(browserNode, volumeSequence, segmentationSequence, segmentationNode, image,
                                   frameTimes, sequences.frameSpacing(volumeSequence))
        self._keyframes, self._interpolator, self._method = {}, None, None
        self._history.clear()
        self._syncSegments()
        self._restoreFromScene()
        logger.info("Cine '%s': %d frames, frame times %s", volumeSequence.GetName(), self.session.frameCount,
                    "known" if frameTimes else "unknown (frames taken as evenly spaced)")
        return self.session

    def isSessionOf(self, browserNode, segmentationNode) -> bool:
        """Whether the current session annotates this browser's cine with this segmentation."""
        session = self.session
        return (session is not None and browserNode is not None and segmentationNode is not None
                and session.browserNode.GetScene() is not None
                and session.browserNode.GetID() == browserNode.GetID()
                and session.segmentationNode.GetID() == segmentationNode.GetID())

    def syncSegments(self) -> None:
        """Add segments added on one frame to every frame (empty), so they stay in the list while browsing.

        Slicer keeps a segment added while a frame is shown in that frame's segmentation only. The widget calls
        this when a segment is added; every action of this logic does it first too.
        """
        self._syncSegments()

    # ------------------------------------------------------------ what the reader sees
    def frameStates(self) -> list[str]:
        """Per frame: ``"key"`` (drawn and marked), ``"interpolated"`` (computed) or ``"empty"`` (neither)."""
        return list(self._states)

    def keyframes(self) -> list[int]:
        """The keyframes, 0-based, in order."""
        return sorted(self._keyframes)

    @property
    def method(self) -> str | None:
        """The interpolation method in use (``auto`` resolved), None before the first interpolation."""
        return self._method

    @property
    def canUndo(self) -> bool:
        return bool(self._history)

    def currentFrame(self) -> int:
        """The frame the browser shows, 0-based."""
        session = self._requireSession()
        return sequences.frameOfSelectedItem(session.browserNode, session.volumeSequenceNode)

    def goToFrame(self, frame: int) -> None:
        """Show frame ``frame`` (0-based)."""
        session = self._requireSession()
        sequences.selectFrame(session.browserNode, session.volumeSequenceNode, self._checkFrame(frame))

    def nextFrameToReview(self, after: int | None = None) -> int | None:
        """The first interpolated frame after ``after`` (default: the shown frame), wrapping around; None if none."""
        after = self.currentFrame() if after is None else after
        candidates = [frame for frame, state in enumerate(self._states) if state == FRAME_INTERPOLATED]
        later = [frame for frame in candidates if frame > after]
        return (later or candidates or [None])[0]

    def goToNextFrameToReview(self) -> int | None:
        """Show the next interpolated frame and return it; None (nothing shown) when no frame is interpolated."""
        frame = self.nextFrameToReview()
        if frame is not None:
            self.goToFrame(frame)
        return frame

    # ------------------------------------------------------------ keyframes and interpolation
    def markKeyframe(self, frame: int | None = None, progress: Callable[[int], None] | None = None) -> range:
        """Make a frame (default: the shown one) a keyframe with what is drawn on it now.

        Once interpolated, the spans beside the frame are recomputed and only their frames are rewritten; the
        other frames are not touched. Marking an existing keyframe again takes its corrected drawing.

        Returns
        -------
        range
            The frames whose content or state may have changed.

        Raises
        ------
        medannot.errors.SegmentContentError
            If segments overlap on the frame.
        """
        self._syncSegments()
        frame = self.currentFrame() if frame is None else self._checkFrame(frame)
        mask = self._readFrame(frame)
        interpolator = self._ensureInterpolator(progress)
        step = self._newStep("mark", frame)
        if interpolator is None:
            self._keyframes[frame] = mask
            self._states[frame] = FRAME_KEY
            changed = range(frame, frame + 1)
        else:
            changed = interpolator.update_keyframe(frame, mask, progress)
            self._keyframes[frame] = mask
            self._applyInterpolation(changed, step, drawnFrame=frame)
        self._finishStep(step)
        return changed

    def removeKeyframe(self, frame: int | None = None, progress: Callable[[int], None] | None = None) -> range:
        """Stop using a frame (default: the shown one) as a keyframe.

        Once interpolated, the frame is recomputed from its neighbouring keyframes (or emptied when it lay outside
        them); before, its drawing stays and it is simply no longer a keyframe.

        Raises
        ------
        medannot.interpolation.InterpolationError
            If the frame is not a keyframe, or it is the last keyframe of an interpolated cine.
        """
        self._syncSegments()
        frame = self.currentFrame() if frame is None else self._checkFrame(frame)
        if frame not in self._keyframes:
            raise InterpolationError(f"Frame {frame + 1} is not a keyframe; keyframes are "
                                     f"{_frameList(self._keyframes)} (numbered from 1).")
        interpolator = self._ensureInterpolator(progress)
        step = self._newStep("remove", frame)
        if interpolator is None:
            del self._keyframes[frame]
            self._states[frame] = FRAME_EMPTY
            changed = range(frame, frame + 1)
        else:
            changed = interpolator.remove_keyframe(frame, progress)
            del self._keyframes[frame]
            self._applyInterpolation(changed, step, drawnFrame=None)
        self._finishStep(step)
        return changed

    def interpolate(self, method: str = "auto", progress: Callable[[int], None] | None = None) -> InterpolationResult:
        """Fill every frame between the first and the last keyframe by interpolating between keyframes.

        The keyframes are taken as they are drawn now (a keyframe corrected since it was marked counts with its
        correction). Frames before the first or after the last keyframe are not touched.

        Parameters
        ----------
        method : str
            ``auto`` (motion-guided, as the cine's image is known), ``motion``, ``shape`` or ``morphological``.
        progress : callable, optional
            Called with the number of frames each finished span computed.

        Raises
        ------
        medannot.interpolation.InterpolationError
            Fewer than two keyframes, or an unknown method.
        """
        session = self._requireSession()
        self._syncSegments()
        if len(self._keyframes) < 2:
            raise InterpolationError(
                f"Mark at least two keyframes before interpolating (marked: {_frameList(self._keyframes) or 'none'});"
                " interpolation fills the frames between keyframes.")
        keyframes = {frame: self._readFrame(frame) for frame in sorted(self._keyframes)}
        interpolator = self._newInterpolator(keyframes, method)
        result = interpolator.run(progress)
        step = self._newStep("interpolate", None)
        states = _statesFor(keyframes, session.frameCount, interpolated=True)
        targets = [frame for frame in range(session.frameCount) if frame not in keyframes
                   and (states[frame] == FRAME_INTERPOLATED or self._states[frame] != FRAME_EMPTY)]
        step.labelsBefore = {frame: self._readFrame(frame) for frame in targets}
        self._writeFrames({frame: result.labels[frame] for frame in targets})
        self._keyframes, self._states = keyframes, states
        self._interpolator, self._method = interpolator, interpolator.method
        self._finishStep(step)
        logger.info("Interpolated %d frames between keyframes %s (%s, %.2f s)", len(result.interpolated_frames),
                    _frameList(keyframes), result.method, result.seconds)
        return result

    def undo(self) -> list[int]:
        """Take back the last mark, removal or interpolation: keyframes, frame states and the frames it rewrote.

        Returns the frames whose content was restored (empty when there was nothing to undo).
        """
        self._requireSession()
        if not self._history:
            return []
        step = self._history.pop()
        if step.action == "interpolate":
            self._interpolator = step.interpolator
        elif self._interpolator is not None and step.frame is not None:
            # Reverse the action on the interpolator so that its spans match the keyframes again.
            if step.frame in step.keyframes:
                self._interpolator.update_keyframe(step.frame, step.keyframes[step.frame])
            elif step.frame in self._interpolator.keyframes:
                self._interpolator.remove_keyframe(step.frame)
        self._keyframes, self._states, self._method = step.keyframes, step.states, step.method
        self._writeFrames(step.labelsBefore)
        self._storeAttributes()
        return sorted(step.labelsBefore)

    # ------------------------------------------------------------ export
    def unmarkedEditFrames(self) -> list[int]:
        """Frames (0-based) whose drawing differs from what their state says: a keyframe corrected after marking,
        an interpolated frame corrected by hand, or a drawing on a frame that is not a keyframe."""
        self._syncSegments()
        return self._unmarkedEdits(self._readAllFrames())

    def frameLabels(self) -> np.ndarray:
        """What is drawn on every frame now, frames x rows x cols, with the values of ``session.labelOfSegment``
        (edits not marked as keyframes included).

        Raises
        ------
        medannot.errors.SegmentContentError
            If segments overlap on a frame (the message names the frame).
        """
        self._syncSegments()
        return self._readAllFrames()

    def guidelineLabels(self, guideline: Guideline) -> np.ndarray:
        """What is drawn on every frame now (as :meth:`frameLabels`), with the guideline's label values: the label
        map its QA rules check.

        Raises
        ------
        medannot.errors.SegmentContentError
            If a segment is not in the guideline, two segments are one guideline segment, or segments overlap.
        """
        session = self._requireSession()
        labels = self.frameLabels()
        lookup = _guidelineLookup(self._segmentNames(), guideline, session.segmentationNode.GetName())
        return lookup[labels]

    def restoreFrames(self, labels: np.ndarray, keyframes, method: str | None) -> None:
        """Put back a saved drawing: every frame's labels (values of ``session.labelOfSegment``), which frames are
        keyframes, and the interpolation method (None when nothing was interpolated). Undo starts afresh.

        Raises
        ------
        medannot.interpolation.InterpolationError
            If the labels do not have the cine's frames, rows and columns.
        """
        session = self._requireSession()
        self._syncSegments()
        labels = np.asarray(labels)
        if labels.shape != session.image.shape:
            raise InterpolationError(f"The saved drawing has {labels.shape} frames x rows x cols; the cine has "
                                     f"{tuple(session.image.shape)}.")
        self._writeFrames({frame: labels[frame] for frame in range(session.frameCount)})
        sequenceNode = session.segmentationSequenceNode
        sequenceNode.SetAttribute(KEYFRAMES_ATTRIBUTE, " ".join(str(int(frame)) for frame in sorted(keyframes)))
        if method:
            sequenceNode.SetAttribute(METHOD_ATTRIBUTE, method)
        else:
            sequenceNode.RemoveAttribute(METHOD_ATTRIBUTE)
        self._interpolator, self._method = None, None
        self._history.clear()
        self._restoreFromScene()

    def exportFrames(self) -> CineFrames:
        """The segmentation of every frame as one label map, with the keyframes and interpolated frames.

        Raises
        ------
        UnmarkedEditsError
            If frames were drawn or corrected without being marked (see :meth:`unmarkedEditFrames`).
        """
        session = self._requireSession()
        self._syncSegments()
        labels = self._readAllFrames()
        edits = self._unmarkedEdits(labels)
        if edits:
            raise UnmarkedEditsError(
                f"Frames {_frameList(edits)} (numbered from 1) were drawn or corrected but are not marked as "
                "keyframes, so drawn and computed frames cannot be told apart. Mark each one as a keyframe (its "
                "neighbours are re-interpolated) or undo the change.", edits)
        if self._interpolator is not None:
            segments = self._interpolator.result().segments
        else:
            present = {frame: set(np.unique(mask).tolist()) - {0} for frame, mask in self._keyframes.items()}
            segments = [SegmentFrames(label, [f for f in sorted(present) if label in present[f]], [])
                        for label in sorted(set().union(*present.values()))]
        return CineFrames(labels, self.keyframes(),
                          [frame for frame, state in enumerate(self._states) if state == FRAME_INTERPOLATED],
                          self._segmentNames(), segments, self._method)

    def loadGuideline(self, guidelinePath) -> Guideline:
        """Read and validate a guideline YAML file (as MedAnnotExport does).

        Raises
        ------
        medannot.errors.GuidelineError
            If the file is missing or invalid; the message names the file and the problem.
        """
        return _exportLogic().loadGuideline(guidelinePath)

    def exportSegmentation(self, guidelinePath, readerName: str, readerId: str, outputDir,
                           readerRole: str = "Annotator", institution: str = "",
                           confidences: dict[str, int] | None = None, taskId: str | None = None,
                           checklist: dict[str, str | bool] | None = None, sourcePath=None,
                           dicomDatabase=None) -> ExportResult:
        """Write the cine's segmentation as DICOM-SEG + SR on the DICOM multi-frame cine it was drawn on.

        Interpolated segments are recorded as SEMIAUTOMATIC with the interpolation method and MedAnnot's version;
        the SR lists each segment's keyframes and interpolated frames (numbered from 1, as DICOM frames are).
        The files are written by MedAnnotExport's logic (:meth:`MedAnnotExportLogic.exportLabels`), as every MedAnnot
        export is; the MedAnnot worklist submits a cine case through this method.

        Parameters
        ----------
        guidelinePath : str or pathlib.Path
            The guideline YAML; segments are matched to its segments by name.
        readerName, readerId, readerRole, institution : str
            Who drew it: DICOM person name ``Last^First``, lab id, role, institution (may be empty).
        outputDir : str or pathlib.Path
            Folder for the SEG and SR files; created if needed.
        confidences : dict of str to int, optional
            Reader's confidence (0-100) per segment name.
        taskId : str, optional
            Task-server task the result belongs to.
        checklist : dict of str to str or bool, optional
            The reader's answers to the guideline's checklist by item id.
        sourcePath : str or pathlib.Path, optional
            The cine's DICOM file; by default the instance Slicer's DICOM module loaded the frames from.
        dicomDatabase : ctkDICOMDatabase, optional
            Defaults to ``slicer.dicomDatabase``.

        Raises
        ------
        UnmarkedEditsError
            See :meth:`exportFrames`.
        medannot.errors.MedAnnotError
            For any problem a user can fix: segments not in the guideline, a cine not loaded from DICOM, frames
            that do not match the DICOM file, invalid reader details.
        """
        if not outputDir or str(outputDir) in ("", "."):
            raise ValueError("Choose an output folder for the DICOM-SEG and SR files.")
        frames = self.exportFrames()
        exportLogic = _exportLogic()
        guideline = exportLogic.loadGuideline(guidelinePath)
        reader = exportLogic.readerInfo(readerName, readerId, readerRole, institution)
        labels, provenance = _guidelineLabelsAndProvenance(frames, guideline, confidences or {},
                                                           self._requireSession().segmentationNode.GetName())
        with self._sourcePath(sourcePath, dicomDatabase) as path:
            result = exportLogic.exportLabels(
                labels, None, path, guideline, reader, outputDir, provenance, taskId=taskId, checklist=checklist,
                labelsName=f"segmentation sequence '{self.session.segmentationSequenceNode.GetName()}'")
        logger.info("Exported cine segmentation to %s and %s", result.seg_path, result.sr_path)
        return result

    # ------------------------------------------------------------ internals
    def _requireSession(self) -> CineSession:
        if self.session is None:
            raise ValueError("Choose the cine's sequence browser and segmentation first (startCine).")
        return self.session

    def _checkFrame(self, frame: int) -> int:
        count = self._requireSession().frameCount
        if not 0 <= int(frame) < count:
            raise InterpolationError(f"Frame {int(frame) + 1} does not exist; the cine has frames 1 to {count}.")
        return int(frame)

    def _syncSegments(self) -> None:
        """Give every segment a label value and every frame every segment (see :meth:`syncSegments`)."""
        import slicer

        session = self._requireSession()
        sequencesLogic = slicer.modules.sequences.logic()
        # The shown frame's item first takes what is shown, so that refreshing the shown segmentation from it
        # below cannot drop a segment just added.
        sequencesLogic.UpdateSequencesFromProxyNodes(session.browserNode, session.segmentationNode)
        segments = sequences.segmentsOfSequence(session.segmentationNode, session.segmentationSequenceNode)
        new = [segmentId for segmentId in segments if segmentId not in session.labelOfSegment]
        for segmentId in new:
            session.labelOfSegment[segmentId] = max(session.labelOfSegment.values(), default=0) + 1
        if not new:
            return
        sequenceNode = session.segmentationSequenceNode
        added = [sequences.addMissingSegments(sequenceNode.GetNthDataNode(index), segments)
                 for index in range(sequenceNode.GetNumberOfDataNodes())]
        if any(added):  # the shown segmentation follows its frame's item
            sequencesLogic.UpdateProxyNodesFromSequences(session.browserNode)

    def _segmentNames(self) -> dict[int, str]:
        """Segment names by label value, for the segments the shown segmentation holds."""
        session = self._requireSession()
        segmentation = session.segmentationNode.GetSegmentation()
        return {label: segmentation.GetSegment(segmentId).GetName()
                for segmentId, label in session.labelOfSegment.items() if segmentation.GetSegment(segmentId)}

    def _readFrame(self, frame: int) -> np.ndarray:
        """What is drawn on a frame, rows x cols; the shown frame is read from the segmentation being edited."""
        session = self._requireSession()
        if frame == self.currentFrame():
            node, reference = session.segmentationNode, session.proxyVolumeNode
        else:
            node = sequences.segmentationItem(session.segmentationSequenceNode, session.volumeSequenceNode, frame)
            reference = session.volumeSequenceNode.GetNthDataNode(frame)
        try:
            return MedAnnotLib.labelMapFromSegments(node, reference, session.labelOfSegment)[0]
        except SegmentContentError as error:
            raise SegmentContentError(f"Frame {frame + 1}: {error}") from error

    def _readAllFrames(self) -> np.ndarray:
        return np.stack([self._readFrame(frame) for frame in range(self._requireSession().frameCount)])

    def _writeFrames(self, labelsByFrame: dict[int, np.ndarray]) -> None:
        """Put label masks into the frames' segmentation items; the shown frame's segmentation follows."""
        if not labelsByFrame:
            return
        import slicer

        session = self._requireSession()
        volumeSequence = session.volumeSequenceNode
        for frame, mask in labelsByFrame.items():
            item = sequences.segmentationItem(session.segmentationSequenceNode, volumeSequence, frame)
            present = {segmentId: label for segmentId, label in session.labelOfSegment.items()
                       if item.GetSegmentation().GetSegment(segmentId) is not None}
            geometry = MedAnnotLib.geometryFromVolumeNode(volumeSequence.GetNthDataNode(frame))
            MedAnnotLib.updateSegmentsFromLabelMap(item, np.asarray(mask)[np.newaxis], geometry, present)
        if self.currentFrame() in labelsByFrame:
            slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(session.browserNode)

    def _newInterpolator(self, keyframes: dict[int, np.ndarray], method: str) -> Interpolator:
        if method == "morphological" and method not in self.availableMethods():  # e.g. a scene saved elsewhere
            raise InterpolationError(
                "Morphological interpolation is not available in this Slicer (its optional package is not "
                "installed); choose auto, motion or shape and interpolate again.")
        self.ensureDependencies()  # OpenCV for motion-guided interpolation, on first use
        session = self._requireSession()
        return Interpolator(keyframes, session.frameCount, image=session.image, method=method,
                            frame_times=session.frameTimesMs, spacing=session.spacing)

    def _ensureInterpolator(self, progress=None) -> Interpolator | None:
        """The interpolator; rebuilt from the keyframes when a scene was reopened after interpolating."""
        if self._interpolator is None and self._method is not None and self._keyframes:
            self._interpolator = self._newInterpolator(dict(self._keyframes), self._method)
            self._interpolator.run(progress)
        return self._interpolator

    def _applyInterpolation(self, changed: range, step: _Step, drawnFrame: int | None) -> None:
        """Write the interpolator's frames in ``changed`` whose content is computed (not the drawn keyframe)."""
        session = self._requireSession()
        states = _statesFor(self._keyframes, session.frameCount, interpolated=True)
        targets = [frame for frame in changed if frame != drawnFrame and (
            states[frame] == FRAME_INTERPOLATED or (states[frame] == FRAME_EMPTY and self._states[frame] != FRAME_EMPTY))]
        labels = self._interpolator.result().labels
        step.labelsBefore = {frame: self._readFrame(frame) for frame in targets}
        self._writeFrames({frame: labels[frame] for frame in targets})
        self._states = states

    def _newStep(self, action: str, frame: int | None) -> _Step:
        return _Step(action, frame, dict(self._keyframes), list(self._states), self._method, self._interpolator)

    def _finishStep(self, step: _Step) -> None:
        self._history.append(step)
        self._storeAttributes()

    def _expectedLabels(self) -> np.ndarray:
        session = self._requireSession()
        interpolator = self._ensureInterpolator()
        if interpolator is not None:
            expected = np.array(interpolator.result().labels, copy=True)
            expected[[frame for frame, state in enumerate(self._states) if state == FRAME_EMPTY]] = 0
        else:
            expected = np.zeros((session.frameCount, *session.image.shape[1:]), dtype=np.uint16)
        for frame, mask in self._keyframes.items():
            expected[frame] = mask
        return expected

    def _unmarkedEdits(self, labels: np.ndarray) -> list[int]:
        expected = self._expectedLabels()
        return [frame for frame in range(labels.shape[0]) if not np.array_equal(labels[frame], expected[frame])]

    def _storeAttributes(self) -> None:
        sequenceNode = self._requireSession().segmentationSequenceNode
        sequenceNode.SetAttribute(KEYFRAMES_ATTRIBUTE, " ".join(str(frame) for frame in sorted(self._keyframes)))
        if self._method:
            sequenceNode.SetAttribute(METHOD_ATTRIBUTE, self._method)
        else:
            sequenceNode.RemoveAttribute(METHOD_ATTRIBUTE)

    def _restoreFromScene(self) -> None:
        session = self._requireSession()
        sequenceNode = session.segmentationSequenceNode
        frames = [int(value) for value in (sequenceNode.GetAttribute(KEYFRAMES_ATTRIBUTE) or "").split()
                  if value.isdigit() and int(value) < session.frameCount]
        self._keyframes = {frame: self._readFrame(frame) for frame in frames}
        self._method = (sequenceNode.GetAttribute(METHOD_ATTRIBUTE) or None) if len(frames) >= 2 else None
        self._states = _statesFor(self._keyframes, session.frameCount, interpolated=self._method is not None)

    def _sourcePath(self, sourcePath, dicomDatabase):
        """Context giving the DICOM cine's path: the one given, or the instance the frames were loaded from."""
        if sourcePath:
            return contextlib.nullcontext(Path(sourcePath))
        volumeSequence = self._requireSession().volumeSequenceNode
        uids = {volumeSequence.GetNthDataNode(i).GetAttribute("DICOM.instanceUIDs") or ""
                for i in range(volumeSequence.GetNumberOfDataNodes())}
        if len(uids) > 1:
            raise SourceImageError(
                f"The frames of '{volumeSequence.GetName()}' come from {len(uids)} different DICOM instances; "
                "export needs the one multi-frame cine they were drawn on: give its file as the source.")
        return MedAnnotLib.sourcePathOfVolume(volumeSequence.GetNthDataNode(0), dicomDatabase)


# The fields of MedAnnotCineParameterNode (MedAnnotCine.py) that say what the panel shows; the parameter node
# wrapper stores a node field as a node reference with the field's name (and an empty parameter of that name).
BROWSER_PARAMETER = "browserNode"
SEGMENTATION_PARAMETER = "segmentationNode"


class MedAnnotCinePanelLogic:
    """Which cine logic the MedAnnot Cine panel works with, kept apart from the panel's widget.

    Slicer calls a module widget's ``exit()`` on every module switch and ``enter()`` on coming back, so the widget
    holds no annotation state: it asks this object which logic annotates the browser and segmentation its
    parameter node selects (:meth:`logicShown`), and which to act with (:meth:`logicForAction`). Two kinds of
    logic can be current: one another module handed over (:meth:`handOver`: the MedAnnot worklist's cine case,
    whose keyframes it checks and submits) and the panel's own, for a cine opened by hand. Nothing here ends a
    session: selecting other nodes, leaving the module or taking the next case leaves every session as it was.
    """

    def __init__(self) -> None:
        self.ownLogic = MedAnnotCineLogic()
        self.handedOver: MedAnnotCineLogic | None = None

    def handOver(self, cineLogic: MedAnnotCineLogic, parameterNode) -> None:
        """Show another module's cine with that module's logic: select its browser and segmentation.

        Parameters
        ----------
        cineLogic : MedAnnotCineLogic
            A logic with a started session (the worklist's :attr:`CaseSession.cine`).
        parameterNode : vtkMRMLScriptedModuleNode
            The module's parameter node (``MedAnnotCineLogic().getParameterNode()``).
        """
        session = cineLogic.session
        if session is None:
            raise ValueError("The cine to hand over is not open (startCine was not called or its case closed).")
        self.handedOver = cineLogic
        selectNodes(parameterNode, session.browserNode, session.segmentationNode)

    def logicShown(self, parameterNode) -> MedAnnotCineLogic | None:
        """The logic whose session annotates what ``parameterNode`` selects (the handed-over one first); None when
        no session does (or ``parameterNode`` is None, as after ``exit()``). Starts and ends nothing."""
        browserNode, segmentationNode = selectedNodes(parameterNode)
        for logic in (self.handedOver, self.ownLogic):
            if logic is not None and logic.isSessionOf(browserNode, segmentationNode):
                return logic
        return None

    def logicForAction(self, parameterNode) -> MedAnnotCineLogic:
        """The logic to mark keyframes or interpolate with: :meth:`logicShown`, or else the panel's own logic,
        started on the selected browser and segmentation (a handed-over session is never replaced).

        Raises
        ------
        ValueError
            If the parameter node selects no browser or segmentation (see :meth:`MedAnnotCineLogic.startCine`).
        """
        logic = self.logicShown(parameterNode)
        if logic is None:
            browserNode, segmentationNode = selectedNodes(parameterNode)
            if browserNode is None:
                raise ValueError("Select the cine's sequence browser.")
            self.ownLogic.startCine(browserNode, segmentationNode)
            logic = self.ownLogic
        return logic

    def sceneClosed(self) -> None:
        """The scene was closed: every session's nodes are gone with it."""
        self.ownLogic = MedAnnotCineLogic()
        self.handedOver = None


def selectedNodes(parameterNode) -> tuple[Any, Any]:
    """The browser and segmentation a MedAnnot Cine parameter node selects (None for a missing one or node)."""
    if parameterNode is None:
        return None, None
    return (parameterNode.GetNodeReference(BROWSER_PARAMETER),
            parameterNode.GetNodeReference(SEGMENTATION_PARAMETER))


def selectNodes(parameterNode, browserNode, segmentationNode) -> None:
    """Select a browser and segmentation in a MedAnnot Cine parameter node, stored as its parameter node wrapper
    stores node fields, so that the GUI bound to it follows (one Modified event)."""
    wasModifying = parameterNode.StartModify()
    try:
        for name, node in ((BROWSER_PARAMETER, browserNode), (SEGMENTATION_PARAMETER, segmentationNode)):
            parameterNode.SetParameter(name, "")
            parameterNode.SetNodeReferenceID(name, node.GetID() if node is not None else None)
        parameterNode.Modified()
    finally:
        parameterNode.EndModify(wasModifying)


def _exportLogic():
    """MedAnnotExport's logic, which writes every MedAnnot SEG + SR.

    Imported on use: Slicer puts each module's folder on the path as it loads the module, so MedAnnotExport's may
    not be there yet while this one is being imported at startup.
    """
    from MedAnnotExportLib.logic import MedAnnotExportLogic

    return MedAnnotExportLogic()


def _statesFor(keyframes, frameCount: int, interpolated: bool) -> list[str]:
    states = [FRAME_EMPTY] * frameCount
    if keyframes and interpolated:
        for frame in range(min(keyframes) + 1, max(keyframes)):
            states[frame] = FRAME_INTERPOLATED
    for frame in keyframes:
        states[frame] = FRAME_KEY
    return states


def _frameList(frames) -> str:
    """Frames as a reader numbers them (from 1, as the DICOM frames and the sequence browser do)."""
    return ", ".join(str(frame + 1) for frame in sorted(frames))


def _guidelineLookup(segmentNames: dict[int, str], guideline: Guideline, segmentationName: str) -> np.ndarray:
    """A table from the cine's label values to the guideline's, matching segments by name."""
    labelType = np.uint8 if max(guideline.labels, default=0) < 256 else np.uint16
    lookup = np.zeros(max(segmentNames, default=0) + 1, dtype=labelType)
    claimed: dict[int, str] = {}
    for label, name in sorted(segmentNames.items()):
        spec = next((s for s in guideline.segments if s.name.lower() == name.strip().lower()), None)
        if spec is None:
            known = ", ".join(f"{s.name} ({s.label})" for s in guideline.segments)
            raise SegmentContentError(
                f"Segmentation '{segmentationName}': segment '{name}' is not in guideline {guideline.id} "
                f"{guideline.version}, which defines {known}; rename or delete the segment.")
        if spec.label in claimed:
            raise SegmentContentError(
                f"Segmentation '{segmentationName}': segments '{claimed[spec.label]}' and '{name}' are both "
                f"guideline segment '{spec.name}'; merge them or delete one.")
        claimed[spec.label] = name
        lookup[label] = spec.label
    return lookup


def _guidelineLabelsAndProvenance(frames: CineFrames, guideline: Guideline, confidences: dict[str, int],
                                  segmentationName: str) -> tuple[np.ndarray, dict]:
    """The label map with the guideline's label values, and each drawn segment's provenance."""
    from medannot.interpolation.provenance import segment_provenance

    ratings = {name.strip().lower(): value for name, value in confidences.items()}
    lookup = _guidelineLookup(frames.segmentNames, guideline, segmentationName)
    present = set(np.unique(frames.labels).tolist()) - {0}
    provenance: dict[str, object] = {}
    for label, name in sorted(frames.segmentNames.items()):
        if label not in present:
            continue  # an empty optional segment is not exported; the core refuses an empty required one
        spec = next(s for s in guideline.segments if s.label == int(lookup[label]))
        drawn = next((s for s in frames.segments if s.label == label), SegmentFrames(label, [], []))
        rating = ratings.get(spec.name.lower(), ratings.get(name.strip().lower()))
        provenance[spec.name] = segment_provenance(drawn, frames.method, rating)
    return lookup[frames.labels], provenance
