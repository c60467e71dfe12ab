"""Load a case's downloaded DICOM files into the scene as a volume that MedAnnot Export can trace back to them.

Slicer's DICOM module is not involved: the files live in the case's cache folder, so the volume gets the same
``DICOM.instanceUIDs`` attribute Slicer's DICOM plugins set, and :class:`CachedInstances` answers
``fileForInstance`` for those UIDs the way Slicer's DICOM database would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue

import MedAnnotLib
from medannot.errors import SourceImageError
from medannot.imaging import SourceImage, load_source, modality_volume
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
    source = load_source(imagesFolder)
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
