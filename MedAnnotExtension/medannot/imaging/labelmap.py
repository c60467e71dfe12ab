"""Read and write label maps and probability maps (NIfTI, NRRD, MHA) with their geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medannot.errors import LabelMapError
from medannot.imaging.geometry import Geometry

_INTEGER_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64,
}


def _read(path: Path) -> sitk.Image:
    if not path.is_file():
        raise LabelMapError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown format"
        raise LabelMapError(f"{path}: cannot read image (NIfTI, NRRD or MHA expected): {first}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelMapError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                            "a label map has one integer per voxel")
    if image.GetDimension() not in (2, 3):
        raise LabelMapError(f"{path}: is {image.GetDimension()}D; a label map is 3D (slices or frames x rows x cols)")
    return image


def read_label_map(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an integer label map; returns the (slices, rows, cols) array and its geometry.

    Raises
    ------
    LabelMapError
        If the file is unreadable, not scalar, or holds non-integer or negative values.
    """
    array, geometry, _ = _read_label_map(Path(path), view=False)
    return array, geometry


def read_label_map_view(path: str | Path) -> tuple[np.ndarray, Geometry, sitk.Image]:
    """:func:`read_label_map` without copying the voxels out of SimpleITK's image: the array is a view of the
    image's buffer (except for a map of non-integer type), valid only as long as the returned image is kept."""
    return _read_label_map(Path(path), view=True)


def _read_label_map(path: Path, view: bool) -> tuple[np.ndarray, Geometry, sitk.Image]:
    image = _read(path)
    array = sitk.GetArrayViewFromImage(image) if view else sitk.GetArrayFromImage(image)
    if image.GetPixelID() not in _INTEGER_TYPES:
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise LabelMapError(f"{path}: holds non-integer values ({image.GetPixelIDTypeAsString()}); "
                                "a label map holds whole label values")
        array = array.astype(np.int64)
    if array.dtype.kind != "u" and array.size and array.min() < 0:  # an unsigned map cannot: no pass over it
        raise LabelMapError(f"{path}: holds negative label value {int(array.min())}")
    if array.ndim == 2:
        array = array[np.newaxis]
    return array, Geometry.from_sitk(image), image


def read_probability_map(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one segment's probability map with values in [0, 1] (float32 array, geometry)."""
    path = Path(path)
    image = _read(path)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)  # no second copy when already float32
    if array.ndim == 2:
        array = array[np.newaxis]
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
        raise LabelMapError(f"{path}: probabilities must lie in [0, 1]; found {low:.3g}..{high:.3g}")
    return array, Geometry.from_sitk(image)


def write_label_map(array: np.ndarray, geometry: Geometry | None, path: str | Path) -> Path:
    """Write a (slices, rows, cols) array with the given geometry (unit spacing when ``None``)."""
    path = Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if geometry is not None:
        geometry.apply_to(image)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path), useCompression=True)
    except (OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise LabelMapError(f"{path}: cannot write the label map ({reason}); use a .nii.gz, .nrrd or .mha name in a "
                            "folder you can write") from exc
    return path
