"""Load the source images a segmentation is drawn on: a folder with one DICOM series, or one multi-frame file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.pixels.utils import get_expected_length

from medannot.errors import SourceImageError
from medannot.imaging.geometry import Geometry

logger = logging.getLogger(__name__)

_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")


@dataclass
class SourceImage:
    """The DICOM instances a segmentation refers to, in the order of the label map's first axis.

    For a single-frame series, ``datasets`` holds one dataset per slice sorted along the slice normal; for a
    multi-frame image, one dataset whose frames are in file order. ``geometry`` is ``None`` when the source has no
    patient coordinate system (for example ultrasound cine without a Frame of Reference); then only the grid size
    is known.
    """

    datasets: list[Dataset]
    paths: list[Path]
    geometry: Geometry | None
    shape: tuple[int, int, int]
    frame_times_ms: list[float] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    @property
    def is_multiframe(self) -> bool:
        return len(self.datasets) == 1 and int(self.first.get("NumberOfFrames", 1) or 1) > 1

    @property
    def has_frame_of_reference(self) -> bool:
        return self.geometry is not None

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "OT"))

    @property
    def description(self) -> str:
        kind = "multi-frame" if self.is_multiframe else f"{len(self.datasets)}-slice series"
        return f"{self.modality} {kind} {self.shape[0]}x{self.shape[1]}x{self.shape[2]} ({self.series_uid})"


def _read(path: Path, pixels: bool) -> Dataset:
    try:
        if pixels:
            return dcmread(path)
        with open(path, "rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            _check_pixel_data_complete(fp, ds, path)
            return ds
    except InvalidDicomError as exc:
        raise SourceImageError(f"{path}: not a DICOM file ({exc})") from exc
    except (OSError, ValueError, EOFError, AttributeError, KeyError, struct.error) as exc:
        raise SourceImageError(f"{path}: cannot read DICOM ({exc})") from exc


def _check_pixel_data_complete(fp: BinaryIO, ds: Dataset, path: Path) -> None:
    """Refuse a file whose Pixel Data ends before its header says (a truncated copy or download).

    Reading with ``stop_before_pixels`` leaves ``fp`` at the start of the Pixel Data element (pydicom rewinds to the
    tag), so this costs a 12-byte read and a seek, not a pixel read.
    """
    if "Rows" not in ds or "TransferSyntaxUID" not in ds.file_meta:
        return
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_deflated:
        return  # positions in a deflated stream are not file positions
    start = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    fp.seek(start)
    header = fp.read(12)
    if len(header) < 8:
        return  # no Pixel Data at all: found by the callers
    implicit, little = ds.original_encoding
    order = "little" if little is not False else "big"
    tag = (int.from_bytes(header[0:2], order) << 16) | int.from_bytes(header[2:4], order)
    if tag not in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        return
    if implicit:
        length, value_at = int.from_bytes(header[4:8], order), start + 8
    elif header[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
        length, value_at = int.from_bytes(header[8:12], order), start + 12
    else:
        length, value_at = int.from_bytes(header[6:8], order), start + 8
    if length == 0xFFFFFFFF:  # encapsulated: the fragments end with a Sequence Delimitation Item
        fp.seek(max(value_at, size - 8))
        tail = fp.read(8)
        if tail[:4] != b"\xfe\xff\xdd\xe0" and not _has_trailing_elements(path):
            raise SourceImageError(f"{path}: the compressed Pixel Data (7FE0,0010) ends without its sequence "
                                   "delimiter; the file is truncated. Copy or download it again")
        return
    if syntax.is_compressed:
        return  # a compressed stream with a defined length breaks the standard, but pydicom reads it: let it be
    if value_at + length > size:
        raise SourceImageError(f"{path}: Pixel Data (7FE0,0010) should hold {length} bytes but the file ends after "
                               f"{size - value_at}; the file is truncated. Copy or download it again")
    _number_of_frames(ds, path)  # a damaged NumberOfFrames is said as such, not as a wrong length
    try:
        expected = _expected_length(ds) if tag == 0x7FE00010 else 0
    except (TypeError, ValueError, AttributeError, KeyError):
        return  # attributes the size depends on are missing or odd: reading the pixels will say so
    if length < expected:
        raise SourceImageError(f"{path}: Pixel Data (7FE0,0010) holds {length} bytes, fewer than the {expected} its "
                               "Rows, Columns, SamplesPerPixel, NumberOfFrames and BitsAllocated need; the file is "
                               "truncated or damaged")


# The elements pydicom's get_expected_length reads. The slices of a series store the same bytes for them, so the
# length is computed once per distinct set of stored values (as read, with their encoding), not once per file.
_LENGTH_TAGS = (0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008, 0x00280004)
_expected_lengths: dict[tuple[object, ...], int] = {}


def _expected_length(ds: Dataset) -> int:
    """``get_expected_length(ds)`` (bytes of native Pixel Data), remembered for the values the file stores."""
    elements = ds._dict
    key: list[object] = []
    for tag in _LENGTH_TAGS:
        element = elements.get(tag)  # type: ignore[call-overload]
        if isinstance(element, RawDataElement) and element.value is not None:
            key.append((element.VR, element.is_implicit_VR, element.is_little_endian, element.value))
        elif element is None:
            key.append(None)
        else:
            return int(get_expected_length(ds))  # converted already (or deferred): as pydicom computes it
    found = _expected_lengths.get(tuple(key))
    if found is None:
        found = int(get_expected_length(ds))
        if len(_expected_lengths) < 64:
            _expected_lengths[tuple(key)] = found
    return found


def _has_trailing_elements(path: Path) -> bool:
    """Whether elements follow the Pixel Data (Data Set Trailing Padding, Digital Signatures): rare but legal."""
    try:
        ds = dcmread(path)
    except Exception:  # noqa: BLE001 - a file pydicom cannot read whole is truncated
        return False
    return any(element.tag > 0x7FE00010 for element in ds)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fp:
            return fp.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _number_of_frames(ds: Dataset, path: Path) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise SourceImageError(f"{path}: NumberOfFrames (0028,0008) is {str(value)!r}, not a whole number; the file "
                               "is damaged") from None
    if frames < 1:
        raise SourceImageError(f"{path}: NumberOfFrames (0028,0008) is {frames}; an image has at least one frame")
    return frames


# Objects that hold pixels or look like images but are not images to segment, with what to give instead.
_NOT_SEGMENTABLE = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation (SEG), not an image; give the image series it was drawn on",
    "1.2.840.10008.5.1.4.1.1.66.7": "a Label Map Segmentation (SEG), not an image; give the image series it was drawn on",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map, not an acquired image; give the image series it was computed from",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose grid, not an image; give the CT or MR series the plan was made on",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set (contours), not an image; give the CT or MR series",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "a VL Whole Slide Microscopy image (a tiled pyramid); MedAnnot segments "
                                      "radiology images (CT, MR, US, X-ray), not whole-slide microscopy",
}


# Image IODs that hold one frame: a file of these classes with NumberOfFrames > 1 breaks its own IOD, and a SEG
# may not reference frames of it (ReferencedFrameNumber is only for multi-frame classes; dciodvfy errs on it).
_SINGLE_FRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3",
    "1.2.840.10008.5.1.4.1.1.1.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.77.1.4",
}
# Image IODs in which the Frame of Reference module is mandatory; without it a SEG cannot be written (highdicom
# refuses too) and the image is not conformant.
_FRAME_OF_REFERENCE_REQUIRED = {
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130",
}


_REQUIRED_TAGS = tuple((keyword, int(Tag(keyword))) for keyword in _REQUIRED)


@lru_cache(maxsize=64)
def _sop_class_facts(sop_class: str) -> tuple[str, bool]:
    """The name of a SOP Class UID (the UID itself when unknown) and whether it is retired."""
    uid = UID(sop_class)
    return getattr(uid, "name", sop_class) or sop_class, bool(getattr(uid, "is_retired", False))


def _check_required(ds: Dataset, path: Path) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    what = _NOT_SEGMENTABLE.get(sop_class)
    if what:
        raise SourceImageError(f"{path}: is {what}")
    elements = ds._dict  # by tag: these checks run for every file of a series
    missing = [keyword for keyword, tag in _REQUIRED_TAGS if tag not in elements]
    if missing and set(missing) <= {"Rows", "Columns"} and "SOPClassUID" in ds:
        name = getattr(ds.SOPClassUID, "name", sop_class)
        raise SourceImageError(f"{path}: is a {name} object without pixels (no Rows, Columns), not an image; give "
                               "the image series or multi-frame image to segment")
    if missing:
        raise SourceImageError(f"{path}: missing {', '.join(missing)}; this is not an image MedAnnot can segment")
    frames = _number_of_frames(ds, path)
    name, retired = _sop_class_facts(sop_class)
    if retired:
        raise SourceImageError(
            f"{path}: uses the retired SOP Class {name} ({sop_class}), which the SEG IOD's references do not cover; "
            "have it converted to the current class (re-export it from the PACS or the scanner)"
        )
    if frames > 1 and sop_class in _SINGLE_FRAME_CLASSES:
        raise SourceImageError(
            f"{path}: holds {frames} frames, but its SOP Class ({name}) is a single-frame image, so no SEG can "
            "reference its frames conformantly; have it stored as a multi-frame class (e.g. Ultrasound Multi-frame "
            "Image Storage) or as one file per frame"
        )
    if sop_class in _FRAME_OF_REFERENCE_REQUIRED and 0x00200052 not in elements:
        raise SourceImageError(
            f"{path}: has no FrameOfReferenceUID (0020,0052), which every {name} must have; the file was damaged "
            "or stripped on its way (e.g. by an anonymiser). Fetch the original from the PACS or the scanner"
        )


def load_source(path: str | Path) -> SourceImage:
    """Load a source image for export.

    Parameters
    ----------
    path
        A folder holding the DICOM files of exactly one series, or one (multi-frame) DICOM file.

    Raises
    ------
    SourceImageError
        If nothing readable is found, files belong to different series, or geometry attributes are inconsistent.
    """
    path = Path(path)
    if path.is_dir():
        return _load_series(path)
    if not path.exists():
        raise SourceImageError(f"{path}: no such file or folder; give a DICOM series folder or a multi-frame file")
    ds = _read(path, pixels=False)
    _check_required(ds, path)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return _load_multiframe(ds, path)
    return _series_from_datasets([ds], [path])


def _load_series(folder: Path) -> SourceImage:
    datasets: list[Dataset] = []
    paths: list[Path] = []
    skipped: list[str] = []
    others: list[tuple[Path, Dataset]] = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.name.upper() == "DICOMDIR":
            continue
        try:
            ds = _read(file, pixels=False)
        except SourceImageError:
            if _is_dicom(file):
                raise  # a damaged image of the series: refuse rather than leave a gap in the volume
            skipped.append(file.name)
            continue
        if "PixelData" not in ds and "Rows" not in ds or str(ds.get("SOPClassUID", "")) in _NOT_SEGMENTABLE:
            others.append((file, ds))  # an SR, a SEG, a presentation state, ...: not part of the image series
            continue
        _check_required(ds, file)
        datasets.append(ds)
        paths.append(file)
    if not datasets:
        if others:
            _check_required(others[0][1], others[0][0])  # says what the file is instead
        raise SourceImageError(f"{folder}: no DICOM image files found (skipped {len(skipped) + len(others)} other "
                               "files)")
    if skipped or others:
        names = skipped + [f.name for f, _ in others]
        logger.warning("%s: skipped %d files that are not DICOM images: %s", folder, len(names), names[:5])
    series = sorted({str(ds.SeriesInstanceUID) for ds in datasets})
    if len(series) > 1:
        counts = {uid: sum(str(d.SeriesInstanceUID) == uid for d in datasets) for uid in series}
        listing = "; ".join(f"{uid} ({n} files)" for uid, n in counts.items())
        raise SourceImageError(
            f"{folder}: holds {len(series)} series ({listing}); put exactly one series in the source folder"
        )
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        return _load_multiframe(datasets[0], paths[0])
    multiframe = [p.name for p, d in zip(paths, datasets) if int(d.get("NumberOfFrames", 1) or 1) > 1]
    if multiframe:
        raise SourceImageError(
            f"{folder}: mixes multi-frame files ({', '.join(multiframe[:3])}) with others; "
            "give the multi-frame file itself as --source"
        )
    return _series_from_datasets(datasets, paths)


def _series_from_datasets(datasets: list[Dataset], paths: list[Path]) -> SourceImage:
    first = datasets[0]
    sizes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(sizes) > 1:
        raise SourceImageError(f"{paths[0].parent}: slices have different sizes {sorted(sizes)}")
    rows, cols = int(first.Rows), int(first.Columns)
    if "FrameOfReferenceUID" not in first or "ImagePositionPatient" not in first:
        if len(datasets) > 1:
            raise SourceImageError(
                f"{paths[0].parent}: {len(datasets)} slices without Frame of Reference / ImagePositionPatient; "
                "their order is undefined"
            )
        return SourceImage(datasets, paths, None, (1, rows, cols))
    for ds, p in zip(datasets, paths):
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                raise SourceImageError(f"{p}: missing {key}; cannot place this slice in the volume")
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    orientations = [np.asarray(ds.ImageOrientationPatient, dtype=float) for ds in datasets]
    same = [o.shape == iop.shape for o in orientations]
    if all(same):  # one comparison for the whole series (np.allclose per slice costs more than reading it)
        same = list(np.isclose(np.stack(orientations), iop, atol=1e-4).all(axis=1))
    for p, alike in zip(paths, same):
        if not alike:
            raise SourceImageError(f"{p}: ImageOrientationPatient differs from the other slices; not one volume")
    positions = np.array([np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    slice_spacing = _single_slice_spacing(first)
    if len(datasets) > 1:
        steps = np.diff(distances)
        if np.any(steps < 1e-4):
            dup = paths[int(np.argmin(steps)) + 1]
            raise SourceImageError(f"{dup}: two slices at the same position; remove the duplicate slice")
        slice_spacing = float(np.median(steps))
        if np.max(np.abs(steps - slice_spacing)) > max(0.01, 0.01 * slice_spacing):
            raise SourceImageError(
                f"{paths[0].parent}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; "
                "resample to a regular grid before segmenting"
            )
    geometry = Geometry.from_dicom_plane(rows, cols, len(datasets), [float(v) for v in first.PixelSpacing],
                                         slice_spacing, positions[0], iop)
    return SourceImage(datasets, paths, geometry, (len(datasets), rows, cols))


def _frame_times(ds: Dataset) -> list[float] | None:
    n = int(ds.NumberOfFrames)
    if "FrameTimeVector" in ds:
        increments = [float(v) for v in ds.FrameTimeVector]
        if len(increments) == n:
            return list(np.cumsum([0.0, *increments[1:]]))
    if "FrameTime" in ds and ds.FrameTime:
        return [i * float(ds.FrameTime) for i in range(n)]
    if "CineRate" in ds and ds.CineRate:
        return [i * 1000.0 / float(ds.CineRate) for i in range(n)]
    return None


def _load_multiframe(ds: Dataset, path: Path) -> SourceImage:
    n = int(ds.NumberOfFrames)
    rows, cols = int(ds.Rows), int(ds.Columns)
    geometry = None
    sfg = ds.get("SharedFunctionalGroupsSequence")
    pfg = ds.get("PerFrameFunctionalGroupsSequence")
    if "FrameOfReferenceUID" in ds and sfg and pfg:
        geometry = _enhanced_geometry(ds, path)
    return SourceImage([ds], [path], geometry, (n, rows, cols), frame_times_ms=_frame_times(ds))


def _enhanced_geometry(ds: Dataset, path: Path) -> Geometry | None:
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.PerFrameFunctionalGroupsSequence

    def item(group: Dataset, key: str) -> Dataset | None:
        if key in group:
            return group[key][0]
        if key in shared:
            return shared[key][0]
        return None

    try:
        orientation = item(frames[0], "PlaneOrientationSequence")
        measures = item(frames[0], "PixelMeasuresSequence")
        if orientation is None or measures is None:
            return None
        positions = []
        for f in frames:
            pos = item(f, "PlanePositionSequence")
            if pos is None:
                return None
            positions.append([float(v) for v in pos.ImagePositionPatient])
    except (AttributeError, KeyError, IndexError) as exc:
        raise SourceImageError(f"{path}: incomplete functional groups ({exc})") from exc
    iop = np.asarray(orientation.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray(positions)
    steps = np.diff(pos @ normal)
    if len(steps) and np.median(steps) < 0:
        # Frames stored from head to feet (or the like): the frame axis runs against the normal. The label map's
        # first axis is the frame order, so its slice direction is -normal (a left-handed grid, which ITK allows).
        normal, steps = -normal, -steps
    if len(steps) and np.any(steps < 1e-4):
        first = int(np.argmin(steps))
        raise SourceImageError(
            f"{path}: frames {first + 1} and {first + 2} lie at the same position (several phases, energies or "
            "echoes in one file?); MedAnnot segments one volume whose frames are ordered along the slice normal"
        )
    if len(steps) and np.max(np.abs(steps - np.median(steps))) > 0.01 * abs(np.median(steps)) + 0.01:
        raise SourceImageError(
            f"{path}: frame spacing varies from {steps.min():.3f} to {steps.max():.3f} mm, or the frames are not in "
            "slice order; MedAnnot needs frames on a regular grid in slice order"
        )
    slice_spacing = float(np.median(steps)) if len(steps) else _single_slice_spacing(measures)
    return Geometry.from_dicom_plane(int(ds.Rows), int(ds.Columns), len(frames),
                                     [float(v) for v in measures.PixelSpacing], slice_spacing, pos[0], iop,
                                     normal=normal)


def _single_slice_spacing(ds: Dataset) -> float:
    """The slice spacing of a one-slice grid: SpacingBetweenSlices where given (as ITK/GDCM read it), else
    SliceThickness, else 1. It places no voxel, so label maps are not checked against it (see Geometry.mismatches)."""
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(key) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return 1.0
