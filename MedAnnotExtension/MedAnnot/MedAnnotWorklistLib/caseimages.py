"""Load a case's downloaded DICOM files into the scene, so that MedAnnot Export can trace the result back to them:
a CT/MR series as a volume, an ultrasound cine as a sequence browsed as MedAnnotCine works on it.

Slicer's DICOM module is not involved: the files live in the case's cache folder, so the volume gets the same
``DICOM.instanceUIDs`` attribute Slicer's DICOM plugins set, and :class:`CachedInstances` answers
``fileForInstance`` for those UIDs the way Slicer's DICOM database would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue

import MedAnnotLib
from medannot.errors import SourceImageError
from medannot.imaging import SourceImage, grey_frames, load_source, modality_volume
from MedAnnotLib.dicomsource import INSTANCE_UIDS_ATTRIBUTE

logger = logging.getLogger(__name__)


class CachedInstances:
    """The few answers of a DICOM database that an export needs, for files outside Slicer's DICOM database.

    Pass it as ``dicomDatabase`` to ``MedAnnotExportLogic.exportSegmentation`` (or to
    ``MedAnnotLib.sourcePathOfVolume``): it maps each SOP Instance UID of a case to its cached file.
    """

    def __init__(self, source: SourceImage) -> None:
        self._files = {str(ds.SOPInstanceUID): str(path) for ds, path in zip(source.datasets, source.paths)}

    def fileForInstance(self, uid: str) -> str:
        """The file of an instance, or an empty string when it is not one of the case's (as ctkDICOMDatabase)."""
        return self._files.get(uid, "")

    def __len__(self) -> int:
        return len(self._files)


@dataclass
class LoadedCase:
    """A case's images in the scene.

    ``volumeNode`` is what the segmentation is drawn on: the volume, or for a cine the browser's proxy volume
    (the frame shown). ``browserNode`` and ``volumeSequenceNode`` are set for a cine only.
    """

    volumeNode: Any
    source: SourceImage
    instances: CachedInstances
    browserNode: Any = None
    volumeSequenceNode: Any = None

    @property
    def isCine(self) -> bool:
        return self.browserNode is not None


def isCineSource(source: SourceImage) -> bool:
    """Whether a case is an ultrasound cine (2D+t): modality US in one multi-frame instance.

    Such a source has no slice axis in patient space; its frames are time points.
    """
    return source.is_multiframe and source.modality.upper() == "US"


def loadCase(imagesFolder: Path, name: str, scene=None) -> LoadedCase:
    """Add a case's images to the scene: an ultrasound cine (see :func:`isCineSource`) as a sequence of frames
    with a browser, anything else as a volume (:func:`loadCaseVolume`).

    Raises
    ------
    SourceImageError
        If the folder does not hold one usable series or multi-frame file, or its pixel data cannot be read.
    """
    source = load_source(imagesFolder)
    if isCineSource(source):
        return _loadCine(source, name, scene)
    volumeNode, source, instances = _loadVolume(source, imagesFolder, name, scene)
    return LoadedCase(volumeNode, source, instances)


def _loadCine(source: SourceImage, name: str, scene) -> LoadedCase:
    from MedAnnotCineLib import sequences

    frames = grey_frames(source)
    if np.array_equal(frames, np.round(frames)) and frames.min() >= 0 and frames.max() <= 255:
        frames = frames.astype(np.uint8)  # 8-bit grey ultrasound: a quarter of the memory, the same values
    browserNode, volumeSequence = sequences.addCineSequence(
        frames, name, spacing=_pixelSpacing(source.first), frameTimesMs=source.frame_times_ms,
        instanceUid=str(source.first.SOPInstanceUID), scene=scene)
    return LoadedCase(browserNode.GetProxyNode(volumeSequence), source, CachedInstances(source), browserNode,
                      volumeSequence)


def _pixelSpacing(dataset: Dataset) -> tuple[float, float]:
    """Row and column spacing in mm: PixelSpacing, else the first ultrasound region's physical deltas (in cm), else
    1 mm (areas are then in pixels)."""
    try:
        if "PixelSpacing" in dataset:
            rowSpacing, columnSpacing = (float(v) for v in dataset.PixelSpacing)
            return rowSpacing, columnSpacing
        for region in dataset.get("SequenceOfUltrasoundRegions", []):
            units = (int(region.get("PhysicalUnitsXDirection", 0)), int(region.get("PhysicalUnitsYDirection", 0)))
            if units == (3, 3):  # cm
                return abs(float(region.PhysicalDeltaY)) * 10.0, abs(float(region.PhysicalDeltaX)) * 10.0
    except (TypeError, ValueError, AttributeError):
        logger.warning("Unreadable pixel spacing in %s; frames are shown with 1 mm pixels", dataset.SOPInstanceUID)
    return 1.0, 1.0


def loadCaseVolume(imagesFolder: Path, name: str, scene=None):
    """Add the case's images as a scalar volume holding modality values (HU for CT), placed in patient space.

    Parameters
    ----------
    imagesFolder : pathlib.Path
        Folder with exactly one DICOM series, or one multi-frame file.
    name : str
        Node name (the case id); the scene makes it unique.
    scene : vtkMRMLScene, optional
        Defaults to ``slicer.mrmlScene``.

    Returns
    -------
    tuple
        ``(volumeNode, source, cachedInstances)``: the new node (with ``DICOM.instanceUIDs`` in slice order), the
        :class:`medannot.imaging.SourceImage` it shows, and the UID-to-file map for exporting.

    Raises
    ------
    SourceImageError
        If the folder does not hold one placeable series, the images are colour, or the pixel data cannot be read.
    """
    return _loadVolume(load_source(imagesFolder), imagesFolder, name, scene)


def _loadVolume(source: SourceImage, imagesFolder: Path, name: str, scene):
    if source.geometry is None:
        raise SourceImageError(
            f"{imagesFolder}: the case's images ({source.description}) have no patient coordinate system (no Frame "
            "of Reference), so they cannot be placed as a volume; ask your lab to check the case's source."
        )
    voxels = voxelsOfSource(source)
    volumeNode = MedAnnotLib.addVolumeNodeFromArray(voxels, source.geometry, name=name, scene=scene)
    volumeNode.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(str(ds.SOPInstanceUID) for ds in source.datasets))
    _applyDicomWindow(volumeNode, source.first)
    return volumeNode, source, CachedInstances(source)


def voxelsOfSource(source: SourceImage) -> np.ndarray:
    """Return the (slices, rows, columns) modality values of a source image, in the source's slice order.

    See :func:`medannot.imaging.modality_volume`, which this is.

    Raises
    ------
    SourceImageError
        If an image is colour or its pixel data cannot be decoded.
    """
    return modality_volume(source)


def _applyDicomWindow(volumeNode, dataset: Dataset) -> None:
    """Show the volume with the window the images carry (as Slicer's DICOM plugin does), if they carry one."""
    try:
        center, width = _firstValue(dataset.get("WindowCenter")), _firstValue(dataset.get("WindowWidth"))
    except (TypeError, ValueError, IndexError):  # absent or malformed: keep Slicer's automatic window
        return
    displayNode = volumeNode.GetDisplayNode()
    if displayNode is not None and width > 0:
        displayNode.SetAutoWindowLevel(False)
        displayNode.SetWindowLevel(width, center)


def _firstValue(value) -> float:
    return float(value[0]) if isinstance(value, MultiValue) else float(value)
