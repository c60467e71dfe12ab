"""Load the grey frames an interpolation follows: a DICOM multi-frame cine or series, or a NIfTI/NRRD/MHA image.

Colour ultrasound (RGB, YBR, palette) becomes luminance (decoded by :mod:`medannot.imaging.pixels`); frame times
come from the DICOM header (FrameTimeVector, else FrameTime, else CineRate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.misc import is_dicom

from medannot.errors import SourceImageError
from medannot.imaging.calibration import PixelCalibration, calibration_from_dataset, calibration_from_spacing
from medannot.imaging.pixels import grey_frames, rgb_to_grey
from medannot.imaging.source import load_source

logger = logging.getLogger(__name__)


@dataclass
class Cine:
    """Grey frames (frames x rows x cols, float32) and, when the file says, each frame's time in ms.

    ``calibration`` is the frames' pixel size: a DICOM file's ultrasound regions (or PixelSpacing), an image file's
    header spacing; it says so when the size is unknown (see :mod:`medannot.imaging.calibration`).
    """

    frames: np.ndarray
    frame_times_ms: list[float] | None
    path: Path
    calibration: PixelCalibration | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.frames.shape)  # type: ignore[return-value]


def load_cine(path: str | Path) -> Cine:
    """Load a cine (or a volume, for interpolation across slices) as grey frames.

    Parameters
    ----------
    path
        A multi-frame DICOM file (ultrasound cine, grey or colour, uncompressed or compressed), a folder with one
        DICOM series, or a NIfTI/NRRD/MHA image whose last (SimpleITK z or t) axis is the frame axis.

    Raises
    ------
    SourceImageError
        Unreadable file, pixel data that cannot be decoded, or an image that is not 2D+t / 3D.
    """
    path = Path(path)
    if not path.exists():
        raise SourceImageError(f"{path}: no such file or folder")
    if path.is_dir() or is_dicom(path):
        return _load_dicom(path)
    return _load_itk(path)


def _load_dicom(path: Path) -> Cine:
    source = load_source(path)
    return Cine(grey_frames(source), source.frame_times_ms, path,
                calibration_from_dataset(source.first, source.paths[0].name))


def _load_itk(path: Path) -> Cine:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown format"
        raise SourceImageError(f"{path}: cannot read image (DICOM, NIfTI, NRRD or MHA expected): {last}") from exc
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    components = image.GetNumberOfComponentsPerPixel()
    if components in (3, 4):
        array = rgb_to_grey(array)
    elif components != 1:
        raise SourceImageError(f"{path}: {components} components per pixel; expected grey or RGB")
    array = np.squeeze(array)  # a 2D+t NIfTI is often x, y, 1, t
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise SourceImageError(f"{path}: image is {array.ndim}D after dropping single-sample axes; "
                               "a cine is 2D+t (frames x rows x cols)")
    col_mm, row_mm = (float(v) for v in image.GetSpacing()[:2])
    return Cine(array, None, path, calibration_from_spacing(array.shape[1:], row_mm, col_mm, path.name))
