"""Decode the pixel data of a source image: modality values (HU for CT) for a volume, grey frames for a cine.

One place for what the worklist (Slicer) and the interpolation's cine loader both need, so that a file that cannot
be read or decoded gets the same message, naming the file and its transfer syntax, wherever it is opened.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread

from medannot.errors import SourceImageError
from medannot.imaging.source import SourceImage

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma, the Y of the YBR colour spaces DICOM ultrasound uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601 weights) of an RGB array whose last axis holds R, G, B (float32)."""
    return (np.asarray(rgb)[..., :3].astype(np.float32) @ _LUMA).astype(np.float32)


def read_with_pixels(path: Path) -> Dataset:
    """Read a DICOM file with its pixel data.

    Raises
    ------
    SourceImageError
        If the file cannot be read.
    """
    try:
        return dcmread(path)
    except Exception as error:  # noqa: BLE001 - any failure is an unreadable source file
        raise SourceImageError(f"{path}: cannot read the DICOM file ({error})") from None


def stored_values(dataset: Dataset, path: Path) -> np.ndarray:
    """The decoded pixel data as pydicom gives it (YBR becomes RGB): (frames,) rows, cols(, samples).

    Pixel data pydicom has no decoder for here (JPEG Lossless, HTJ2K: Slicer's Python has only pillow and pyjpegls)
    is decoded by the GDCM inside SimpleITK, which Slicer ships.

    Raises
    ------
    SourceImageError
        If the pixel data cannot be decoded; the message names the transfer syntax.
    """
    try:
        return dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders raise anything from RuntimeError to NotImplementedError
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        decoded = _decode_with_gdcm(dataset, path) if getattr(syntax, "is_compressed", False) else None
        if decoded is not None:
            return decoded
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceImageError(
            f"{path}: cannot decode the pixel data ({name}: {first_line}; GDCM could not either); ask for the case "
            "to be served uncompressed (Explicit VR Little Endian)."
        ) from None


# The Image Pixel attributes GDCM needs to decode; rescale, LUTs and functional groups are left out so that GDCM
# returns stored values, as pydicom does.
_PIXEL_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
                   "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "PixelData")


def _decode_with_gdcm(dataset: Dataset, path: Path) -> np.ndarray | None:
    """Stored values decoded by SimpleITK's GDCM, shaped and typed as pydicom's ``pixel_array``; None if it cannot."""
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    pixels = Dataset()
    for keyword in _PIXEL_KEYWORDS:
        if keyword in dataset:
            setattr(pixels, keyword, dataset[keyword].value)
    if int(pixels.get("SamplesPerPixel", 1) or 1) == 1:  # ITK would invert MONOCHROME1 and needs PALETTE COLOR's
        pixels.PhotometricInterpretation = "MONOCHROME2"  # LUTs; pydicom returns the stored values of both
    pixels.SOPClassUID, pixels.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    pixels.file_meta = FileMetaDataset()
    pixels.file_meta.TransferSyntaxUID = dataset.file_meta.TransferSyntaxUID
    try:
        with tempfile.TemporaryDirectory(prefix="medannot-gdcm-") as folder:
            copy = Path(folder) / "pixels.dcm"
            pixels.save_as(copy, enforce_file_format=True)
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(str(copy))
            array = sitk.GetArrayFromImage(reader.Execute())
    except Exception as error:  # noqa: BLE001 - any GDCM failure means: not decodable here
        logger.info("%s: GDCM cannot decode the pixel data either (%s)", path, str(error).splitlines()[0][:200])
        return None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    expected = (frames, int(dataset.Rows), int(dataset.Columns)) + ((samples,) if samples > 1 else ())
    if array.shape != expected:
        logger.info("%s: GDCM decoded %s, the header says %s", path, array.shape, expected)
        return None
    kind = "i" if int(dataset.get("PixelRepresentation", 0)) else "u"
    dtype = np.dtype(f"{kind}{max(1, int(dataset.BitsAllocated) // 8)}")
    logger.info("%s: %s decoded with SimpleITK's GDCM", path, dataset.file_meta.TransferSyntaxUID.name)
    return (array if frames > 1 else array[0]).astype(dtype, copy=False)


def modality_volume(source: SourceImage) -> np.ndarray:
    """The (slices, rows, columns) modality values of a grey source image, in the source's slice order.

    The stored values go through the modality LUT or rescale slope/intercept (per frame for enhanced multi-frame
    images). The result is int16 or int32 when all values are whole numbers, float32 otherwise.

    Raises
    ------
    SourceImageError
        If an image is colour or its pixel data cannot be read or decoded.
    """
    if source.is_multiframe:
        dataset = read_with_pixels(source.paths[0])
        frames = _grey_stored_values(dataset, source.paths[0])
        if frames.ndim == 2:
            frames = frames[np.newaxis]
        slices = [_modality_values(dataset, frame, index) for index, frame in enumerate(frames)]
    else:
        slices = []
        for path in source.paths:
            dataset = read_with_pixels(path)
            slices.append(_modality_values(dataset, _grey_stored_values(dataset, path), None))
    return _compact_stack(slices)


def grey_frames(source: SourceImage) -> np.ndarray:
    """The frames (or slices) of a source image as grey levels, frames x rows x cols, float32.

    Colour (RGB, YBR, palette) becomes luminance; MONOCHROME1 is inverted so that bright is high.

    Raises
    ------
    SourceImageError
        If the pixel data cannot be read or decoded, has other than 1 or 3 samples per pixel, or does not have
        the size the header says.
    """
    if source.is_multiframe:
        dataset = read_with_pixels(source.paths[0])
        frames = _grey(stored_values(dataset, source.paths[0]), dataset, source.paths[0])
    else:
        frames = np.stack([_grey(stored_values(d, p)[np.newaxis], d, p)[0]
                           for d, p in ((read_with_pixels(p), p) for p in source.paths)])
    if frames.shape != source.shape:
        where = source.paths[0] if source.is_multiframe else source.paths[0].parent
        raise SourceImageError(f"{where}: decoded {frames.shape} frames x rows x cols, header says {source.shape}")
    return frames


def _grey_stored_values(dataset: Dataset, path: Path) -> np.ndarray:
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise SourceImageError(
            f"{path}: a colour image ({dataset.get('PhotometricInterpretation', '?')}); modality values (a volume "
            "in HU or other units) exist for grey-level images only."
        )
    return stored_values(dataset, path)


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


def _modality_values(dataset: Dataset, stored: np.ndarray, frame_index: int | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    rescale = _frame_rescale(dataset, frame_index) if frame_index is not None else None
    if rescale is not None:
        slope, intercept = rescale
        return stored.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(stored, dataset))


def _frame_rescale(dataset: Dataset, frame_index: int) -> tuple[float, float] | None:
    """Slope and intercept of one frame of an enhanced image (its own functional group, else the shared one)."""
    groups = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        transformation = group.get("PixelValueTransformationSequence")
        if transformation and "RescaleSlope" in transformation[0] and "RescaleIntercept" in transformation[0]:
            return float(transformation[0].RescaleSlope), float(transformation[0].RescaleIntercept)
    return None


def _compact_stack(slices: list[np.ndarray]) -> np.ndarray:
    whole = all(np.issubdtype(s.dtype, np.integer) or np.array_equal(s, np.round(s)) for s in slices)
    if not whole:
        return np.stack([s.astype(np.float32) for s in slices])
    low = min(int(s.min()) for s in slices)
    high = max(int(s.max()) for s in slices)
    fits_int16 = np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max
    return np.stack([s.astype(np.int16 if fits_int16 else np.int32) for s in slices])
