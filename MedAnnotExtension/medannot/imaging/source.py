"""Load the source images a segmentation is drawn on: a folder with one DICOM series, or one multi-frame file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

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
        return dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        raise SourceImageError(f"{path}: not a DICOM file ({exc})") from exc
    except (OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
        raise SourceImageError(f"{path}: cannot read DICOM ({exc})") from exc


def _check_required(ds: Dataset, path: Path) -> None:
    missing = [k for k in _REQUIRED if k not in ds]
    if missing:
        raise SourceImageError(f"{path}: missing {', '.join(missing)}; this is not an image MedAnnot can segment")


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
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.name.upper() == "DICOMDIR":
            continue
        try:
            ds = dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
            skipped.append(file.name)
            continue
        if "PixelData" not in ds and "Rows" not in ds:
            skipped.append(file.name)  # an SR, a presentation state, ...: not part of the image series
            continue
        _check_required(ds, file)
        datasets.append(ds)
        paths.append(file)
    if not datasets:
        raise SourceImageError(f"{folder}: no DICOM image files found (skipped {len(skipped)} other files)")
    if skipped:
        logger.warning("%s: skipped %d files that are not DICOM images: %s", folder, len(skipped), skipped[:5])
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
    for ds, p in zip(datasets, paths):
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise SourceImageError(f"{p}: ImageOrientationPatient differs from the other slices; not one volume")
    positions = np.array([np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    slice_spacing = float(first.get("SliceThickness", 1.0) or 1.0)
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
    distances = pos @ normal
    steps = np.diff(distances)
    if len(steps) and (np.any(steps <= 0) or np.max(np.abs(steps - np.median(steps))) > 0.01 * abs(np.median(steps)) + 0.01):
        raise SourceImageError(
            f"{path}: frames are not ordered on a regular grid along the slice normal; "
            "MedAnnot needs frames in slice order"
        )
    slice_spacing = float(np.median(steps)) if len(steps) else float(measures.get("SliceThickness", 1.0) or 1.0)
    return Geometry.from_dicom_plane(int(ds.Rows), int(ds.Columns), len(frames),
                                     [float(v) for v in measures.PixelSpacing], slice_spacing, pos[0], iop)
