"""Load the grey frames an interpolation follows: a DICOM multi-frame cine or series, or a NIfTI/NRRD/MHA image.

Colour ultrasound (RGB, YBR, palette) becomes luminance; frame times come from the DICOM header
(FrameTimeVector, else FrameTime, else CineRate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset, dcmread
from pydicom.misc import is_dicom

from medannot.errors import SourceImageError
from medannot.imaging.source import load_source

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma, the Y of the YBR colour spaces DICOM ultrasound uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601 weights) of an RGB array whose last axis holds R, G, B (float32)."""
    return (np.asarray(rgb)[..., :3].astype(np.float32) @ _LUMA).astype(np.float32)


@dataclass
class Cine:
    """Grey frames (frames x rows x cols, float32) and, when the file says, each frame's time in ms."""

    frames: np.ndarray
    frame_times_ms: list[float] | None
    path: Path

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
    if source.is_multiframe:
        frames = _grey(_pixels(source.paths[0]), source.first, source.paths[0])
    else:
        frames = np.stack([_grey(_pixels(p)[np.newaxis], d, p)[0] for d, p in zip(source.datasets, source.paths)])
    if frames.shape != source.shape:
        raise SourceImageError(f"{path}: decoded {frames.shape} frames x rows x cols, header says {source.shape}")
    return Cine(frames, source.frame_times_ms, path)


def _pixels(path: Path) -> np.ndarray:
    ds = dcmread(path)
    try:
        array = ds.pixel_array  # pydicom converts YBR to RGB
    except Exception as exc:  # decoders raise anything from RuntimeError to NotImplementedError
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise SourceImageError(
            f"{path}: cannot decode the pixel data ({name}): {str(exc).splitlines()[0] if str(exc) else exc}; "
            "for JPEG install pillow or pylibjpeg-libjpeg, for JPEG-LS pyjpegls, for JPEG 2000 pylibjpeg-openjpeg"
        ) from exc
    return array


def _grey(array: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples == 1 and photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array, samples = apply_color_lut(array, ds), 3
    if samples == 1:
        if array.ndim == 2:
            array = array[np.newaxis]
        grey = array.astype(np.float32)
        if photometric == "MONOCHROME1":
            grey = float(grey.max()) - grey
        return grey
    if samples != 3:
        raise SourceImageError(f"{path}: {samples} samples per pixel; expected 1 (grey) or 3 (colour)")
    if array.ndim == 3:
        array = array[np.newaxis]
    return rgb_to_grey(array)


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
    return Cine(array, None, path)
