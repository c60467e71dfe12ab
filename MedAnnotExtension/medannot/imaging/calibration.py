"""The physical size of a 2D+t image's pixels: ultrasound regions, PixelSpacing, or honestly unknown.

An ultrasound cine has no patient coordinate system, but the scanner usually calibrates its image: the
SequenceOfUltrasoundRegions (PS3.3 C.8.5.5) gives rectangles of the frame with their own PhysicalDeltaX/Y.
Only 2D regions (RegionSpatialFormat 1) whose units are cm (PhysicalUnitsX/YDirection 3) measure tissue; the
others (M-mode, spectral Doppler, ECG trace) have time or velocity on an axis and are ignored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from medannot.errors import SourceImageError
from medannot.imaging.geometry import Geometry

logger = logging.getLogger(__name__)

UNITS_CM = 3  # PhysicalUnitsXDirection / YDirection code for cm
FORMAT_2D = 1  # RegionSpatialFormat of a 2D (tissue or flow) region
_UNIT_NAMES = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz", 6: "dB/seconds",
               7: "cm/sec", 8: "cm²", 9: "cm²/sec", 0xC: "degrees"}


@dataclass(frozen=True)
class PixelRegion:
    """A rectangle of the frame (inclusive row and column bounds) whose pixels are ``row_mm`` x ``col_mm``."""

    number: int  # 1-based item of SequenceOfUltrasoundRegions, as a reader counts; 0 for a uniform spacing
    rows: tuple[int, int]
    cols: tuple[int, int]
    row_mm: float
    col_mm: float

    @property
    def pixels(self) -> int:
        return (self.rows[1] - self.rows[0] + 1) * (self.cols[1] - self.cols[0] + 1)

    @property
    def pixel_mm2(self) -> float:
        return self.row_mm * self.col_mm

    def contains(self, row: int, col: int) -> bool:
        return self.rows[0] <= row <= self.rows[1] and self.cols[0] <= col <= self.cols[1]

    def same_size(self, other: PixelRegion) -> bool:
        return math.isclose(self.row_mm, other.row_mm, rel_tol=1e-6) and \
            math.isclose(self.col_mm, other.col_mm, rel_tol=1e-6)

    def describe(self) -> str:
        size = f"{self.row_mm:.4g} x {self.col_mm:.4g} mm pixels (row x column)"
        if self.number == 0:
            return size
        return (f"ultrasound region {self.number} (rows {self.rows[0]}-{self.rows[1]}, columns "
                f"{self.cols[0]}-{self.cols[1]}): {size}")


@dataclass(frozen=True)
class PixelCalibration:
    """How large a frame's pixels are, and where that was read.

    ``regions`` is empty when the size is unknown: then ``reason`` says why, and sizes are in pixels. With several
    regions, a pixel takes the smallest region that contains it; a pixel in none takes the largest region
    (``default``), the image's main 2D view. ``notes`` are things a reader should know (a region clipped to the
    image, regions of different pixel sizes).
    """

    frame_shape: tuple[int, int]
    regions: tuple[PixelRegion, ...]
    source: str
    reason: str = ""
    notes: tuple[str, ...] = ()

    @classmethod
    def unknown(cls, frame_shape: tuple[int, int], reason: str, source: str = "") -> PixelCalibration:
        return cls((int(frame_shape[0]), int(frame_shape[1])), (), source, reason)

    @classmethod
    def uniform(cls, frame_shape: tuple[int, int], row_mm: float, col_mm: float, source: str) -> PixelCalibration:
        rows, cols = int(frame_shape[0]), int(frame_shape[1])
        return cls((rows, cols), (PixelRegion(0, (0, rows - 1), (0, cols - 1), float(row_mm), float(col_mm)),),
                   source)

    @property
    def known(self) -> bool:
        return bool(self.regions)

    @property
    def default(self) -> PixelRegion | None:
        """The largest region: the main 2D view, used for pixels outside every region and for distances."""
        return max(self.regions, key=lambda r: r.pixels) if self.regions else None

    @property
    def is_uniform(self) -> bool:
        """Every region has the same pixel size, so the whole frame has one."""
        return all(r.same_size(self.regions[0]) for r in self.regions[1:])

    def region_index(self) -> np.ndarray:
        """Per pixel of a frame, the index in ``regions`` of the region it takes (int16, rows x cols)."""
        default = self.default
        assert default is not None, "no regions: the pixel size is unknown"
        index = np.full(self.frame_shape, self.regions.index(default), dtype=np.int16)
        # larger first, so that a region inside another (a colour-flow box in the B-mode sector) wins
        for position, region in sorted(enumerate(self.regions), key=lambda pair: -pair[1].pixels):
            index[region.rows[0]:region.rows[1] + 1, region.cols[0]:region.cols[1] + 1] = position
        return index

    def pixel_mm2_map(self) -> np.ndarray:
        """Area in mm² of every pixel of a frame (float64, rows x cols)."""
        areas = np.array([r.pixel_mm2 for r in self.regions])
        return areas[self.region_index()]

    def describe(self) -> str:
        """One line for a report: the pixel size(s) and where they come from, or why they are unknown."""
        if not self.known:
            return f"unknown, sizes in px: {self.reason}"
        if len(self.regions) == 1:
            return f"{self.regions[0].describe()}, from {self.source}"
        if self.is_uniform:
            return f"{self.regions[0].row_mm:.4g} x {self.regions[0].col_mm:.4g} mm pixels (row x column) in " \
                   f"{len(self.regions)} ultrasound regions, from {self.source}"
        return f"{len(self.regions)} ultrasound regions of different pixel sizes, from {self.source}: " + \
            "; ".join(r.describe() for r in self.regions)

    def to_dict(self) -> dict:
        return {"unit": "mm" if self.known else "px", "source": self.source or None,
                "reason": self.reason or None,
                "regions": [{"number": r.number, "rows": list(r.rows), "columns": list(r.cols),
                             "row_mm": r.row_mm, "column_mm": r.col_mm} for r in self.regions]}


def _region(item: Dataset, number: int, frame_shape: tuple[int, int]) -> tuple[PixelRegion | None, str]:
    """A usable region of ``item``, or None and why it is not used."""
    spatial = item.get("RegionSpatialFormat")
    units = (item.get("PhysicalUnitsXDirection"), item.get("PhysicalUnitsYDirection"))
    if spatial != FORMAT_2D:
        return None, f"region {number} is not a 2D view (RegionSpatialFormat {spatial})"
    if units != (UNITS_CM, UNITS_CM):
        names = "/".join(_UNIT_NAMES.get(u, str(u)) if u is not None else "missing" for u in units)
        return None, f"region {number} has units {names}, not cm"
    try:
        dx, dy = abs(float(item.PhysicalDeltaX)), abs(float(item.PhysicalDeltaY))
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
    except (AttributeError, TypeError, ValueError):
        return None, f"region {number} lacks PhysicalDeltaX/Y or its RegionLocation"
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        return None, f"region {number} has PhysicalDelta {dx:g} x {dy:g} cm"
    rows, cols = frame_shape
    if x0 > x1 or y0 > y1 or x0 >= cols or y0 >= rows:
        return None, f"region {number} (rows {y0}-{y1}, columns {x0}-{x1}) lies outside the {rows} x {cols} image"
    region = PixelRegion(number, (max(0, y0), min(rows - 1, y1)), (max(0, x0), min(cols - 1, x1)),
                         row_mm=dy * 10.0, col_mm=dx * 10.0)
    return region, ""


def calibration_from_dataset(ds: Dataset, what: str) -> PixelCalibration:
    """The pixel size of an ultrasound (or other 2D+t) image from its header.

    SequenceOfUltrasoundRegions first (its 2D regions in cm), else PixelSpacing, else unknown with the reason.
    ``what`` names the file in the texts (e.g. its name).
    """
    frame_shape = (int(ds.Rows), int(ds.Columns))
    skipped: list[str] = []
    regions: list[PixelRegion] = []
    notes: list[str] = []
    for number, item in enumerate(ds.get("SequenceOfUltrasoundRegions", []) or [], start=1):
        region, why = _region(item, number, frame_shape)
        if region is None:
            skipped.append(why)
            continue
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        if y1 > frame_shape[0] or x1 > frame_shape[1]:
            # One past the edge is a common off-by-one (OBXXXX1A.dcm: MaxX1 800 of 800 columns) and is clipped
            # quietly; further is a resized copy that kept the scanner's regions (pydicom's examples_ybr_color.dcm).
            notes.append(f"{what}: ultrasound region {number} reaches row {y1}, column {x1}, beyond the "
                         f"{frame_shape[0]} x {frame_shape[1]} image; it was clipped. The image may have been "
                         "resized after the scanner calibrated it, so sizes in mm may be wrong.")
        regions.append(region)
    if regions:
        source = f"SequenceOfUltrasoundRegions of {what}"
        calibration = PixelCalibration(frame_shape, tuple(regions), source, notes=tuple(notes))
        if not calibration.is_uniform:
            calibration = PixelCalibration(frame_shape, tuple(regions), source, notes=(*notes, (
                f"{what}: the ultrasound regions have different pixel sizes; each pixel is measured with the "
                "region that contains it (areas add up pixel by pixel; distances use the region holding most of "
                "the segment).")))
        return calibration
    if "PixelSpacing" in ds:
        try:
            row_mm, col_mm = (abs(float(v)) for v in ds.PixelSpacing)
            if row_mm > 0 and col_mm > 0:
                return PixelCalibration.uniform(frame_shape, row_mm, col_mm, f"PixelSpacing of {what}")
        except (TypeError, ValueError):
            skipped.append(f"PixelSpacing {ds.PixelSpacing!r} is unreadable")
    if "SequenceOfUltrasoundRegions" in ds:
        reason = f"{what} has SequenceOfUltrasoundRegions but no 2D region in cm ({'; '.join(skipped)})"
    else:
        reason = f"{what} has neither SequenceOfUltrasoundRegions nor PixelSpacing"
        if skipped:
            reason += f" ({'; '.join(skipped)})"
    return PixelCalibration.unknown(frame_shape, reason)


def calibration_from_file(path: str | Path) -> PixelCalibration:
    """:func:`calibration_from_dataset` of a DICOM file, reading its header only.

    Raises
    ------
    SourceImageError
        If ``path`` is not a readable DICOM image file.
    """
    path = Path(path)
    if path.is_dir():
        raise SourceImageError(f"{path}: is a folder; give the multi-frame DICOM file of the cine")
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except FileNotFoundError as exc:
        raise SourceImageError(f"{path}: no such file; give the DICOM cine the labels were drawn on") from exc
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
        raise SourceImageError(f"{path}: cannot read DICOM ({exc})") from exc
    if "Rows" not in ds or "Columns" not in ds:
        raise SourceImageError(f"{path}: has no Rows/Columns; this is not a DICOM image")
    return calibration_from_dataset(ds, path.name)


def calibration_from_geometry(geometry: Geometry, what: str) -> PixelCalibration:
    """The pixel size of a 2D+t label map or image file from its header (NIfTI, NRRD, MHA); see
    :func:`calibration_from_spacing`."""
    return calibration_from_spacing((int(geometry.size[1]), int(geometry.size[0])), float(geometry.spacing[1]),
                                    float(geometry.spacing[0]), what)


def calibration_from_spacing(frame_shape: tuple[int, int], row_mm: float, col_mm: float,
                             what: str) -> PixelCalibration:
    """The pixel size a file header states, in mm.

    A spacing of exactly 1 x 1 is taken as unknown: it is what writers put when they know no size (MedAnnot's own
    cine label maps, most 2D+t NIfTI), and a 1 mm ultrasound pixel is not plausible. Any other spacing is mm.
    """
    if row_mm == 1.0 and col_mm == 1.0:
        return PixelCalibration.unknown(frame_shape, f"{what} has unit pixel spacing, as written when the size is "
                                                     "unknown; give the DICOM cine it was drawn on (--source) for its "
                                                     "calibration")
    return PixelCalibration.uniform(frame_shape, row_mm, col_mm, f"the pixel spacing in the header of {what}")
