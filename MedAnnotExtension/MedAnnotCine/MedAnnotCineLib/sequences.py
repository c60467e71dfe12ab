"""A cine in Slicer's Sequences: the volume sequence a browser plays, its frames as numpy, and the segmentation
sequence that holds one segmentation per frame.

Slicer stores a segmentation that changes over time as a sequence of segmentation nodes browsed together with the
image sequence: the segmentation the reader edits is the browser's proxy node, and the browser copies each edit
into the item of the frame shown ("save changes"). Frame ``f`` is item ``f`` of the volume sequence; the
segmentation item of a frame is the one at the same index value.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import slicer
import vtk

import MedAnnotLib
from medannot.errors import SourceImageError

logger = logging.getLogger(__name__)

_MS_PER_INDEX_UNIT = {"ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0}


def isCineVolumeSequence(sequenceNode) -> bool:
    """Whether a sequence holds grey or colour image frames (not label maps, not other node types)."""
    if sequenceNode is None or sequenceNode.GetNumberOfDataNodes() == 0:
        return False
    item = sequenceNode.GetNthDataNode(0)
    return item.IsA("vtkMRMLScalarVolumeNode") and not item.IsA("vtkMRMLLabelMapVolumeNode")


def volumeSequenceOfBrowser(browserNode):
    """The image sequence a browser plays: its master sequence if that holds images, else the first that does.

    Raises
    ------
    ValueError
        If no browser is given or it plays no image sequence.
    """
    if browserNode is None:
        raise ValueError("Select the sequence browser of the cine (the DICOM module creates one when it loads a cine).")
    master = browserNode.GetMasterSequenceNode()
    if isCineVolumeSequence(master):
        return master
    synchronized = vtk.vtkCollection()
    browserNode.GetSynchronizedSequenceNodes(synchronized, True)
    for index in range(synchronized.GetNumberOfItems()):
        sequenceNode = synchronized.GetItemAsObject(index)
        if isCineVolumeSequence(sequenceNode):
            return sequenceNode
    raise ValueError(f"Sequence browser '{browserNode.GetName()}' plays no image sequence; load the cine with the "
                     "DICOM module (or Sequences > Add data) and choose its browser.")


def addCineSequence(frames: np.ndarray, name: str, spacing: tuple[float, float] = (1.0, 1.0),
                    frameTimesMs: list[float] | None = None, instanceUid: str = "", scene=None):
    """Add a cine as Slicer's DICOM image-sequence plugin loads one: a sequence of single-slice volumes and a
    browser playing it.

    Parameters
    ----------
    frames : numpy.ndarray
        Frames x rows x cols.
    name : str
        Name of the sequence (the browser is named after it); the scene makes it unique.
    spacing : tuple of float
        Pixel spacing (row, column) in mm.
    frameTimesMs : list of float, optional
        Each frame's time; the index is then the time in seconds, as the plugin sets it, else the frame number.
    instanceUid : str
        SOP Instance UID of the multi-frame instance, set as every frame's ``DICOM.instanceUIDs`` (as the plugin
        marks them), so that the export finds the file.
    scene : vtkMRMLScene, optional
        Defaults to ``slicer.mrmlScene``.

    Returns
    -------
    tuple
        ``(browserNode, volumeSequenceNode)``.
    """
    scene = scene if scene is not None else slicer.mrmlScene
    frames = np.asarray(frames)
    sequenceNode = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    timed = frameTimesMs is not None and len(frameTimesMs) == frames.shape[0] and _increasing(frameTimesMs)
    sequenceNode.SetIndexName("time" if timed else "frame")
    sequenceNode.SetIndexUnit("s" if timed else "")
    frameVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    ijkToRas = vtk.vtkMatrix4x4()  # the plugin turns the image 180 degrees about the view axis so that it is upright
    ijkToRas.SetElement(0, 0, -1.0)
    ijkToRas.SetElement(1, 1, -1.0)
    frameVolume.SetIJKToRASMatrix(ijkToRas)
    frameVolume.SetSpacing(float(spacing[1]), float(spacing[0]), 1.0)
    if instanceUid:
        frameVolume.SetAttribute("DICOM.instanceUIDs", instanceUid)
    try:
        for frame in range(frames.shape[0]):
            slicer.util.updateVolumeFromArray(frameVolume, frames[frame:frame + 1])
            indexValue = f"{frameTimesMs[frame] / 1000.0:.6g}" if timed else str(frame + 1)
            sequenceNode.SetDataNodeAtValue(frameVolume, indexValue)  # stores a copy
    finally:
        scene.RemoveNode(frameVolume)
    browserNode = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{sequenceNode.GetName()} browser")
    browserNode.AddSynchronizedSequenceNode(sequenceNode)
    browserNode.GetProxyNode(sequenceNode).SetName(sequenceNode.GetName())
    return browserNode, sequenceNode


def frameArray(volumeNode) -> np.ndarray:
    """One frame's pixels (rows x cols), grey; colour frames become luminance.

    Raises
    ------
    SourceImageError
        If the frame is not a single slice (a cine is 2D+t).
    """
    array = slicer.util.arrayFromVolume(volumeNode)
    if array.shape[0] != 1:
        raise SourceImageError(f"Frame '{volumeNode.GetName()}' has {array.shape[0]} slices; a cine's frames are "
                               "single slices (2D+t). Use a cine loaded as an image sequence.")
    frame = array[0]
    if frame.ndim == 3:  # vector volume: rows x cols x components
        if frame.shape[2] not in (3, 4):
            raise SourceImageError(f"Frame '{volumeNode.GetName()}' has {frame.shape[2]} components per pixel; "
                                   "expected grey or RGB.")
        from medannot.imaging import rgb_to_grey  # as the core reads colour ultrasound

        return rgb_to_grey(frame)
    return frame


def cineImage(volumeSequence) -> np.ndarray:
    """All frames, frames x rows x cols, as the interpolation's motion estimate reads them.

    Raises
    ------
    SourceImageError
        If frames are not single slices or differ in size.
    """
    frames = [frameArray(volumeSequence.GetNthDataNode(i)) for i in range(volumeSequence.GetNumberOfDataNodes())]
    sizes = sorted({frame.shape for frame in frames})
    if len(sizes) > 1:
        raise SourceImageError(f"The frames of '{volumeSequence.GetName()}' differ in size ({sizes}); a cine's "
                               "frames all have the same rows and columns.")
    return np.stack(frames)


def frameSpacing(volumeSequence) -> tuple[float, float]:
    """Pixel spacing (row, column) of the frames, for the interpolation's distance maps."""
    spacingX, spacingY, _ = volumeSequence.GetNthDataNode(0).GetSpacing()
    return float(spacingY), float(spacingX)


def frameTimesFromIndex(volumeSequence) -> list[float] | None:
    """Each frame's time in ms from the sequence's index values, when the index is a time in s or ms."""
    if volumeSequence.GetIndexType() != volumeSequence.NumericIndex:
        return None
    factor = _MS_PER_INDEX_UNIT.get((volumeSequence.GetIndexUnit() or "").strip().lower())
    if factor is None:
        return None
    try:
        times = [float(volumeSequence.GetNthIndexValue(i)) * factor
                 for i in range(volumeSequence.GetNumberOfDataNodes())]
    except ValueError:
        return None
    return times if _increasing(times) else None


def frameTimesFromDicom(volumeSequence, dicomDatabase=None) -> list[float] | None:
    """Each frame's time in ms from the DICOM instance the frames came from, when Slicer's DICOM module loaded them.

    Slicer's image-sequence plugin marks every frame with the SOP Instance UID of the multi-frame instance
    (``DICOM.instanceUIDs``); cine MRI frames loaded one instance each carry ``DICOM.triggerTime`` instead.
    """
    count = volumeSequence.GetNumberOfDataNodes()
    triggerTimes = [volumeSequence.GetNthDataNode(i).GetAttribute("DICOM.triggerTime") for i in range(count)]
    if all(triggerTimes):
        try:
            times = [float(value) for value in triggerTimes]
        except ValueError:
            times = []
        if _increasing(times):
            return times
    first = volumeSequence.GetNthDataNode(0)
    if not (first.GetAttribute("DICOM.instanceUIDs") or "").strip():
        return None
    from medannot.imaging import load_source

    try:
        with MedAnnotLib.sourcePathOfVolume(first, dicomDatabase) as sourcePath:
            source = load_source(sourcePath)
    except SourceImageError as error:
        logger.info("Frame times of '%s' not read from DICOM: %s", volumeSequence.GetName(), error)
        return None
    times = source.frame_times_ms
    return list(times) if times is not None and len(times) == count and _increasing(times) else None


def _increasing(values) -> bool:
    return len(values) > 0 and all(later > earlier for earlier, later in itertools.pairwise(values))


def indexValueOfFrame(volumeSequence, frame: int) -> str:
    return volumeSequence.GetNthIndexValue(frame)


def segmentationItem(segmentationSequence, volumeSequence, frame: int):
    """The segmentation node (inside the sequence) of frame ``frame``."""
    return segmentationSequence.GetDataNodeAtValue(indexValueOfFrame(volumeSequence, frame))


def frameOfSelectedItem(browserNode, volumeSequence) -> int:
    """The frame the browser shows (0-based item of the volume sequence)."""
    master = browserNode.GetMasterSequenceNode()
    selected = browserNode.GetSelectedItemNumber()
    if master is None or selected < 0:
        return 0
    if master is volumeSequence or master.GetID() == volumeSequence.GetID():
        return selected
    frame = volumeSequence.GetItemNumberFromIndexValue(master.GetNthIndexValue(selected))
    return max(frame, 0)


def selectFrame(browserNode, volumeSequence, frame: int) -> None:
    """Make the browser show frame ``frame``."""
    master = browserNode.GetMasterSequenceNode()
    if master is None or master.GetID() == volumeSequence.GetID():
        browserNode.SetSelectedItemNumber(frame)
    else:
        browserNode.SetSelectedItemByIndexValue(indexValueOfFrame(volumeSequence, frame))


def segmentsOfSequence(segmentationNode, segmentationSequence) -> dict:
    """Every segment the shown segmentation or any frame's item holds, by ID, in order of first appearance.

    A segment added while one frame is shown exists in that frame's item only: browsing to another frame replaces
    the shown segmentation with that frame's item, which lacks it.
    """
    segments = {}
    for node in [segmentationNode] + [segmentationSequence.GetNthDataNode(i)
                                      for i in range(segmentationSequence.GetNumberOfDataNodes())]:
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            segments.setdefault(segmentId, segmentation.GetSegment(segmentId))
    return segments


def addMissingSegments(itemNode, segments) -> bool:
    """Give a segmentation item the segments it lacks (empty, with their name, colour and tags); True if any."""
    itemSegmentation = itemNode.GetSegmentation()
    added = False
    for segmentId, source in segments.items():
        if itemSegmentation.GetSegment(segmentId) is not None:
            continue
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(source)
        itemSegmentation.AddSegment(segment, segmentId)
        added = True
    return added


def segmentationSequenceForCine(browserNode, volumeSequence, segmentationNode):
    """The sequence holding ``segmentationNode``'s content per frame, created and browsed along if needed.

    A new sequence gets one item per frame: the shown frame keeps what is drawn on it, every other frame starts
    with the same segments, empty. The segmentation node becomes the browser's proxy for it, with changes saved,
    so what the reader draws on a frame stays with that frame. An existing sequence gets items for frames it lacks.

    Raises
    ------
    ValueError
        If the segmentation already belongs to another browser.
    """
    sequencesLogic = slicer.modules.sequences.logic()
    segmentationSequence = browserNode.GetSequenceNode(segmentationNode)
    if segmentationSequence is None:
        otherBrowser = sequencesLogic.GetFirstBrowserNodeForProxyNode(segmentationNode)
        if otherBrowser is not None:
            raise ValueError(f"Segmentation '{segmentationNode.GetName()}' is already browsed by "
                             f"'{otherBrowser.GetName()}'; choose that browser or another segmentation.")
        scene = segmentationNode.GetScene()
        segmentationSequence = scene.AddNewNodeByClass(
            "vtkMRMLSequenceNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} sequence"))
        segmentationSequence.CopySequenceIndex(volumeSequence)
        # Adding the proxy before the sequence keeps the browser from creating a proxy node of its own.
        browserNode.AddProxyNode(segmentationNode, segmentationSequence, False)
        browserNode.AddSynchronizedSequenceNode(segmentationSequence)
        browserNode.SetOverwriteProxyName(segmentationSequence, False)
    _fillMissingItems(segmentationSequence, volumeSequence, segmentationNode,
                      shownFrame=frameOfSelectedItem(browserNode, volumeSequence))
    browserNode.SetSaveChanges(segmentationSequence, True)
    return segmentationSequence


def _fillMissingItems(segmentationSequence, volumeSequence, segmentationNode, shownFrame: int) -> None:
    segmentIds = [segmentationNode.GetSegmentation().GetNthSegmentID(i)
                  for i in range(segmentationNode.GetSegmentation().GetNumberOfSegments())]
    for frame in range(volumeSequence.GetNumberOfDataNodes()):
        indexValue = indexValueOfFrame(volumeSequence, frame)
        if segmentationSequence.GetDataNodeAtValue(indexValue) is not None:
            continue
        segmentationSequence.SetDataNodeAtValue(segmentationNode, indexValue)  # stores a copy
        if frame != shownFrame:
            item = segmentationSequence.GetDataNodeAtValue(indexValue)
            for segmentId in segmentIds:
                slicer.vtkSlicerSegmentationsModuleLogic.ClearSegment(item, segmentId)
