"""Load a case's downloaded DICOM files into the scene as a volume that MedAnnot Export can trace back to them.

Slicer's DICOM module is not involved: the files live in the case's cache folder, so the volume gets the same
``DICOM.instanceUIDs`` attribute Slicer's DICOM plugins set, and :class:`CachedInstances` answers
``fileForInstance`` for those UIDs the way Slicer's DICOM database would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.multival import MultiValue

import MedAnnotLib
from medannot.errors import SourceImageError
from medannot.imaging import SourceImage, load_source
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

    The stored values go through the modality LUT or rescale slope/intercept (per frame for enhanced multi-frame
    images). The result is int16 or int32 when all values are whole numbers, float32 otherwise.

    Raises
    ------
    SourceImageError
        If an image is colour or its pixel data cannot be decoded.
    """
    if source.is_multiframe:
        dataset = _readPixels(source.paths[0])
        frames = _storedValues(dataset, source.paths[0])
        if frames.ndim == 2:
            frames = frames[np.newaxis]
        slices = [_modalityValues(dataset, frame, index) for index, frame in enumerate(frames)]
    else:
        slices = []
        for path in source.paths:
            dataset = _readPixels(path)
            slices.append(_modalityValues(dataset, _storedValues(dataset, path), None))
    return _compactStack(slices)


def _readPixels(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except Exception as error:  # noqa: BLE001 - any failure is an unreadable case file
        raise SourceImageError(f"{path}: cannot read the DICOM file ({error}); download the case again.") from None


def _storedValues(dataset: Dataset, path: Path) -> np.ndarray:
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise SourceImageError(
            f"{path}: a colour image ({dataset.get('PhotometricInterpretation', '?')}); the worklist loads grey-level "
            "images only."
        )
    try:
        return dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - pydicom raises several types for missing decoders
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise SourceImageError(
            f"{path}: cannot decode the pixel data ({name}: {error}); ask your lab to serve this case uncompressed "
            "or install a pydicom decoder for it (pylibjpeg)."
        ) from None


def _modalityValues(dataset: Dataset, stored: np.ndarray, frameIndex: int | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    rescale = _frameRescale(dataset, frameIndex) if frameIndex is not None else None
    if rescale is not None:
        slope, intercept = rescale
        return stored.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(stored, dataset))


def _frameRescale(dataset: Dataset, frameIndex: int) -> tuple[float, float] | None:
    """Slope and intercept of one frame of an enhanced image (its own functional group, else the shared one)."""
    groups = []
    perFrame = dataset.get("PerFrameFunctionalGroupsSequence")
    if perFrame and frameIndex < len(perFrame):
        groups.append(perFrame[frameIndex])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        transformation = group.get("PixelValueTransformationSequence")
        if transformation and "RescaleSlope" in transformation[0] and "RescaleIntercept" in transformation[0]:
            return float(transformation[0].RescaleSlope), float(transformation[0].RescaleIntercept)
    return None


def _compactStack(slices: list[np.ndarray]) -> np.ndarray:
    whole = all(np.issubdtype(s.dtype, np.integer) or np.array_equal(s, np.round(s)) for s in slices)
    if not whole:
        return np.stack([s.astype(np.float32) for s in slices])
    low = min(int(s.min()) for s in slices)
    high = max(int(s.max()) for s in slices)
    fitsInt16 = np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max
    return np.stack([s.astype(np.int16 if fitsInt16 else np.int32) for s in slices])


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
