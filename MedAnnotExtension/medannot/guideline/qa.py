"""Guideline QA: check a label map (or per-segment masks) against a guideline's rules.

Every finding names the rule, the segment and a place a viewer can jump to (slice, voxel and LPS point for a
volume; frame, row and column for a cine). Volumes are checked in 3D (face connectivity); a 2D+t cine frame by
frame, with the pixel size of its calibration (ultrasound regions, see :mod:`medannot.imaging.calibration`) or in
pixels when it has none: a rule in mm² then says that it could not be checked instead of comparing pixels to mm².
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import SimpleITK as sitk

from medannot.errors import LabelMapError
from medannot.guideline.model import Guideline, SegmentSpec
from medannot.guideline.rules import (
    AreaRule,
    ComponentsRule,
    InsideRule,
    MinSlicesRule,
    NoOverlapRule,
    Rule,
    VolumeRule,
)
from medannot.imaging.calibration import PixelCalibration
from medannot.imaging.geometry import Geometry

logger = logging.getLogger(__name__)

_LIST_LIMIT = 6


@dataclass(frozen=True)
class Location:
    """Where a finding is.

    ``axis`` is ``slice`` for a volume and ``frame`` for a cine; ``voxel`` is the numpy index (k, j, i), for a
    cine (frame, row, column). ``point_mm`` is the voxel's point in the geometry's coordinates, or ``None`` without
    a geometry: LPS for a volume (``patient``); for a cine the point in the plane of the frame's geometry, which a
    viewer can jump to but which is no patient position (a cine has no patient coordinate system), so the JSON
    form gives ``point_mm`` null for a cine.
    """

    axis: str
    index: int
    voxel: tuple[int, int, int]
    point_mm: tuple[float, float, float] | None = None
    patient: bool = True

    def to_dict(self) -> dict[str, Any]:
        point = self.point_mm if self.patient else None
        return {"axis": self.axis, "index": self.index, "voxel": list(self.voxel),
                "point_mm": None if point is None else [round(v, 3) for v in point]}

    def __str__(self) -> str:
        """``slice 4, voxel (4, 15, 16)`` for a volume; ``frame 7, row 40, col 60`` for a cine."""
        if self.axis == "frame":
            return f"frame {self.index}, row {self.voxel[1]}, col {self.voxel[2]}"
        return f"{self.axis} {self.index}, voxel {self.voxel}"


@dataclass(frozen=True)
class Finding:
    """One failed check. ``message`` is the guideline's text for the rule when it has one, else ``detail``,
    the generated description with numbers and units."""

    rule: str
    severity: str
    segment: str
    message: str
    location: Location | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "segment": self.segment, "message": self.message,
                "detail": self.detail, "location": None if self.location is None else self.location.to_dict()}


@dataclass(frozen=True)
class QAReport:
    """The outcome of a QA run: ``passed`` when no finding is an error. ``notes`` say what could not be checked."""

    guideline: str
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()
    pixel_size: dict[str, Any] | None = None  # for a cine: unit "mm" or "px", where it comes from (or why not)

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``medannot guideline check --json`` prints; a cine's has its ``pixel_size`` too."""
        out: dict[str, Any] = {"passed": self.passed, "findings": [f.to_dict() for f in self.findings]}
        if self.pixel_size is not None:
            out["pixel_size"] = self.pixel_size
        return out


@dataclass(frozen=True)
class _Grid:
    """The label grid: shape, optional geometry, whether axis 0 is time (cine) or slices, and a cine's pixel size.

    A cine's pixel size comes from ``calibration`` when given, else from the geometry's spacing; with neither it
    is unknown (``physical`` False) and sizes are in pixels.
    """

    shape: tuple[int, int, int]
    geometry: Geometry | None
    cine: bool
    calibration: PixelCalibration | None = None

    @property
    def axis(self) -> str:
        return "frame" if self.cine else "slice"

    @property
    def physical(self) -> bool:
        """Sizes are in mm (else in pixels)."""
        if self.calibration is not None:
            return self.calibration.known
        return self.geometry is not None

    @property
    def unknown_size_reason(self) -> str:
        if self.calibration is not None and self.calibration.reason:
            return self.calibration.reason
        return "no pixel size was given (no geometry, no ultrasound calibration)"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm; unit spacing when it is unknown. With ultrasound regions of
        different sizes, the largest region's (see :meth:`spacing_of` for a segment's own)."""
        if self.calibration is not None:
            region = self.calibration.default
            return (1.0, 1.0, 1.0) if region is None else (1.0, region.row_mm, region.col_mm)
        if self.geometry is None:
            return (1.0, 1.0, 1.0)
        sx, sy, sz = self.geometry.spacing
        return (sz, sy, sx)

    @property
    def pixel_mm2(self) -> float:
        return self.spacing[1] * self.spacing[2]

    @cached_property
    def _pixel_mm2_map(self) -> np.ndarray | None:
        """Per-pixel area of a frame when its ultrasound regions differ in pixel size; None when one size fits."""
        if self.calibration is None or not self.calibration.known or self.calibration.is_uniform:
            return None
        return self.calibration.pixel_mm2_map()

    def plane_areas(self, mask: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray | None:
        """Area in mm² of ``mask`` (a crop at ``offset``) on each of its planes; None when the size is unknown."""
        if not self.physical:
            return None
        if self._pixel_mm2_map is None:
            return mask.sum(axis=(1, 2)) * self.pixel_mm2
        window = self._pixel_mm2_map[offset[1]:offset[1] + mask.shape[1], offset[2]:offset[2] + mask.shape[2]]
        return (mask * window[np.newaxis]).sum(axis=(1, 2))

    def spacing_of(self, mask: np.ndarray, offset: tuple[int, int, int]) -> tuple[tuple[float, float, float], str]:
        """The spacing to measure distances around ``mask`` with: that of the ultrasound region holding most of
        its pixels when regions differ (with a note naming it), else :attr:`spacing` (and no note)."""
        if self._pixel_mm2_map is None:
            return self.spacing, ""
        assert self.calibration is not None
        index = self.calibration.region_index()[offset[1]:offset[1] + mask.shape[1],
                                                offset[2]:offset[2] + mask.shape[2]]
        counts = np.bincount(index[mask.any(axis=0)], minlength=len(self.calibration.regions))
        region = self.calibration.regions[int(np.argmax(counts))]
        spread = int(np.count_nonzero(counts))
        where = "all its pixels" if spread == 1 else f"most of its pixels ({spread} regions hold some)"
        return (1.0, region.row_mm, region.col_mm), f"distances measured with {region.describe()}, which holds {where}"

    @property
    def voxel_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    def location(self, voxel: tuple[int, int, int]) -> Location:
        k, j, i = (int(v) for v in voxel)
        point = None
        if self.geometry is not None:
            lps = self.geometry.voxel_to_lps(np.array([i, j, 0 if self.cine else k], dtype=float))
            point = (float(lps[0]), float(lps[1]), float(lps[2]))
        return Location(self.axis, k, (k, j, i), point, patient=not self.cine)

    def size_text(self, voxels: int, planar: bool, mask: np.ndarray | None = None,
                  offset: tuple[int, int, int] = (0, 0, 0)) -> str:
        """Voxel count with its physical size: ``12 voxels (0.02 ml)``, ``35 px (12.3 mm²)`` or ``35 px`` when the
        pixel size is unknown. A planar size is measured on ``mask`` (a crop at ``offset``) when given, so that
        ultrasound regions of different pixel sizes count each pixel with its own."""
        if planar:
            areas = None if mask is None else self.plane_areas(mask.reshape((-1, *mask.shape[-2:])), offset)
            if areas is None and mask is None and self.physical and self._pixel_mm2_map is None:
                areas = np.array([voxels * self.pixel_mm2])
            return f"{voxels} px" if areas is None else f"{voxels} px ({float(np.sum(areas)):.4g} mm²)"
        return f"{voxels} voxels ({voxels * self.voxel_ml:.4g} ml)"


@dataclass(frozen=True)
class _Mask:
    """A segment's voxels cropped to their bounding box (``crop`` is ``None`` for an empty segment)."""

    crop: np.ndarray | None
    offset: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_full(cls, full: np.ndarray) -> _Mask:
        ks = np.flatnonzero(full.any(axis=(1, 2)))
        if ks.size == 0:
            return cls(None)
        slab = full[ks[0]:ks[-1] + 1]
        js = np.flatnonzero(slab.any(axis=(0, 2)))
        is_ = np.flatnonzero(slab.any(axis=(0, 1)))
        crop = slab[:, js[0]:js[-1] + 1, is_[0]:is_[-1] + 1]
        return cls(np.ascontiguousarray(crop), (int(ks[0]), int(js[0]), int(is_[0])))

    @property
    def empty(self) -> bool:
        return self.crop is None

    @property
    def region(self) -> tuple[slice, slice, slice]:
        assert self.crop is not None
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.crop.shape))  # type: ignore[return-value]

    def within(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """This mask on ``region`` of the full grid (False outside the mask's bounding box)."""
        out = np.zeros(tuple(s.stop - s.start for s in region), dtype=bool)
        if self.crop is None:
            return out
        src, dst = [], []
        for mine, theirs in zip(self.region, region):
            lo, hi = max(mine.start, theirs.start), min(mine.stop, theirs.stop)
            if lo >= hi:
                return out
            src.append(slice(lo - mine.start, hi - mine.start))
            dst.append(slice(lo - theirs.start, hi - theirs.start))
        out[tuple(dst)] = self.crop[tuple(src)]
        return out


def _representative_voxel(mask: np.ndarray, offset: tuple[int, int, int],
                          spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """The voxel of ``mask`` nearest its centroid, on the slice nearest the centroid: always inside the mask."""
    per_slice = mask.sum(axis=(1, 2))
    total = per_slice.sum()
    ck = float((per_slice * np.arange(mask.shape[0])).sum() / total)
    cj = float((mask.sum(axis=(0, 2)) * np.arange(mask.shape[1])).sum() / total)
    ci = float((mask.sum(axis=(0, 1)) * np.arange(mask.shape[2])).sum() / total)
    present = np.flatnonzero(per_slice)
    k = int(present[np.argmin(np.abs(present - ck))])
    points = np.argwhere(mask[k])
    d2 = ((points[:, 0] - cj) * spacing[1]) ** 2 + ((points[:, 1] - ci) * spacing[2]) ** 2
    j, i = points[int(np.argmin(d2))]
    return (k + offset[0], int(j) + offset[1], int(i) + offset[2])


def _ranges(indices: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` as ``3-5, 9``; long lists are cut with the total."""
    values = sorted({int(v) for v in indices})
    runs = []
    for _, group in itertools.groupby(enumerate(values), key=lambda pair: pair[1] - pair[0]):
        run = [v for _, v in group]
        runs.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    text = ", ".join(runs[:_LIST_LIMIT])
    return text + (f", ... ({len(values)} in all)" if len(runs) > _LIST_LIMIT else "")


def _sitk_mask(array: np.ndarray, spacing: tuple[float, ...] | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8, copy=False))
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    return image


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components with face connectivity (3D for a 3D array, 2D for a 2D one), numbered 1..n."""
    labelled = sitk.ConnectedComponent(_sitk_mask(mask), False)
    array = sitk.GetArrayFromImage(labelled)
    return array, int(array.max()) if array.size else 0


def _fill_holes(mask: np.ndarray, cine: bool) -> np.ndarray:
    """The mask with enclosed holes filled: per frame for a cine; for a volume in 3D and on each slice, so that a
    region enclosed on its slices still counts as enclosed where it touches the outline in 3D."""
    filled = np.zeros_like(mask) if cine else sitk.GetArrayFromImage(sitk.BinaryFillhole(_sitk_mask(mask))) > 0
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        filled[k] |= sitk.GetArrayFromImage(sitk.BinaryFillhole(_sitk_mask(mask[k]))) > 0
    return filled


def _distance_outside(allowed: np.ndarray, spacing: tuple[float, float, float], cine: bool) -> np.ndarray:
    """Distance in mm from each voxel to the nearest ``allowed`` voxel (0 inside; per frame for a cine)."""
    if not cine:
        if not allowed.any():
            return np.full(allowed.shape, np.inf)
        image = sitk.SignedMaurerDistanceMap(_sitk_mask(allowed, spacing), insideIsPositive=False,
                                             squaredDistance=False, useImageSpacing=True)
        return np.maximum(sitk.GetArrayFromImage(image), 0.0)
    out = np.full(allowed.shape, np.inf)
    for k in range(allowed.shape[0]):
        if allowed[k].any():
            image = sitk.SignedMaurerDistanceMap(_sitk_mask(allowed[k], spacing[1:]), insideIsPositive=False,
                                                 squaredDistance=False, useImageSpacing=True)
            out[k] = np.maximum(sitk.GetArrayFromImage(image), 0.0)
    return out


@dataclass
class _Run:
    """One QA run: the grid, every segment's mask, and what was learnt along the way."""

    grid: _Grid
    guideline: Guideline
    masks: dict[str, _Mask]
    exclusive: bool
    notes: list[str] = field(default_factory=list)
    _filled: dict[str, _Mask] = field(default_factory=dict)
    _overlaps_done: set[frozenset[str]] = field(default_factory=set)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def finding(self, rule: Rule, spec: SegmentSpec, detail: str, voxel: tuple[int, int, int] | None,
                rule_id: str | None = None) -> Finding:
        return Finding(rule_id or rule.rule_id, rule.severity, spec.name, rule.message or detail,
                       None if voxel is None else self.grid.location(voxel), detail)

    def representative(self, mask: np.ndarray, offset: tuple[int, int, int]) -> tuple[int, int, int]:
        return _representative_voxel(mask, offset, self.grid.spacing)

    def filled(self, name: str) -> _Mask:
        if name not in self._filled:
            mask = self.masks[name]
            assert mask.crop is not None
            self._filled[name] = _Mask(_fill_holes(mask.crop, self.grid.cine), mask.offset)
        return self._filled[name]

    # ------------------------------------------------------------------ rule checks
    def check(self, rule: Rule, spec: SegmentSpec) -> list[Finding]:
        checks: dict[type, Callable[[Any, SegmentSpec, _Mask], list[Finding]]] = {
            ComponentsRule: self._components, VolumeRule: self._volume, AreaRule: self._area,
            InsideRule: self._inside, NoOverlapRule: self._no_overlap, MinSlicesRule: self._min_slices,
        }
        return checks[type(rule)](rule, spec, self.masks[spec.name])

    def _components(self, rule: ComponentsRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        assert mask.crop is not None
        planes = [(None, mask.crop)] if not self.grid.cine else [
            (int(k), mask.crop[k]) for k in np.flatnonzero(mask.crop.any(axis=(1, 2)))]
        findings = []
        for k, array in planes:
            labelled, count = _components(array)
            if rule.accepts(count):
                continue
            sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
            order = np.argsort(-sizes, kind="stable")
            on = "" if k is None else f" on {self.grid.axis} {k + mask.offset[0]}"
            detail = f"{spec.name} has {count} connected component(s){on}; expected {rule.describe_limits()}"
            if rule.max is not None and count > rule.max:
                extra = order[int(rule.max):]
                target = int(extra[0]) + 1
                plane_offset = mask.offset if k is None else (mask.offset[0] + k, *mask.offset[1:])
                shown = ", ".join(self.grid.size_text(int(sizes[c]), self.grid.cine,
                                                     labelled == c + 1 if self.grid.cine else None, plane_offset)
                                  for c in extra[:_LIST_LIMIT])
                more = ", ..." if len(extra) > _LIST_LIMIT else ""
                detail += f"; extra: {shown}{more} (the largest extra one is shown)"
            else:
                target = int(order[0]) + 1
            component = labelled == target
            if k is None:
                voxel = self.representative(component, mask.offset)
            else:
                voxel = self.representative(component[np.newaxis], (mask.offset[0] + k, *mask.offset[1:]))
            findings.append(self.finding(rule, spec, detail + ".", voxel))
        return findings

    def _volume(self, rule: VolumeRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        assert mask.crop is not None
        if self.grid.cine:
            self.note(f"{spec.name}: volume_ml is a 3D rule and was not checked on a 2D+t cine (use area_mm2).")
            return []
        voxels = int(np.count_nonzero(mask.crop))
        ml = voxels * self.grid.voxel_ml
        if rule.accepts(ml):
            return []
        detail = f"{spec.name} volume is {ml:.4g} ml ({voxels} voxels); expected {rule.describe_limits('ml')}."
        return [self.finding(rule, spec, detail, self.representative(mask.crop, mask.offset))]

    def _area(self, rule: AreaRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        assert mask.crop is not None
        per_plane = mask.crop.sum(axis=(1, 2))
        present = np.flatnonzero(per_plane)
        areas = self.grid.plane_areas(mask.crop, mask.offset)
        if areas is None:
            # Not an error: the reader cannot fix a missing calibration, and blocking would make every
            # uncalibrated cine unsubmittable. Not a silent note either: the guideline asked for this check.
            detail = (f"{spec.name}: area_mm2 ({rule.describe_limits('mm²')}) cannot be checked in mm² because "
                      f"{self.grid.unknown_size_reason}; its area is {int(per_plane[present].min())}-"
                      f"{int(per_plane[present].max())} px per {self.grid.axis}.")
            return [Finding(rule.rule_id, "warning", spec.name, detail, None, detail)]
        findings = []
        for k in present:
            area = float(areas[k])
            if rule.accepts(area):
                continue
            index = int(k) + mask.offset[0]
            detail = (f"{spec.name} area on {self.grid.axis} {index} is {area:.4g} mm² ({int(per_plane[k])} px); "
                      f"expected {rule.describe_limits('mm²')}.")
            voxel = self.representative(mask.crop[k][np.newaxis], (index, *mask.offset[1:]))
            findings.append(self.finding(rule, spec, detail, voxel))
        return findings

    def _min_slices(self, rule: MinSlicesRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        assert mask.crop is not None
        present = np.flatnonzero(mask.crop.any(axis=(1, 2))) + mask.offset[0]
        if len(present) >= rule.count:
            return []
        detail = (f"{spec.name} is drawn on {len(present)} {self.grid.axis}(s) ({_ranges(present)}); "
                  f"at least {rule.count} required.")
        return [self.finding(rule, spec, detail, self.representative(mask.crop, mask.offset))]

    def _inside(self, rule: InsideRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        assert mask.crop is not None
        container = self.masks[rule.segment]
        if container.empty:
            detail = f"{spec.name} must lie inside {rule.segment}, but {rule.segment} is empty."
            return [self.finding(rule, spec, detail, self.representative(mask.crop, mask.offset))]
        spacing, how = self.grid.spacing_of(mask.crop, mask.offset)
        tolerance = rule.tolerance_mm
        unit = "mm" if self.grid.physical else "px"
        if tolerance and not self.grid.physical:
            self.note(f"{spec.name}: tolerance_mm {tolerance:g} of rule {rule.rule_id} was applied as {tolerance:g} "
                      f"pixels because {self.grid.unknown_size_reason}.")
        elif tolerance and how:
            self.note(f"{spec.name}: tolerance_mm of rule {rule.rule_id}: {how}.")
        # work on the segment's box grown by the tolerance: container voxels further away cannot matter
        pad = [0 if (axis == 0 and self.grid.cine) else math.ceil(tolerance / spacing[axis]) + 1 for axis in range(3)]
        region = tuple(slice(max(0, s.start - p), min(n, s.stop + p))
                       for s, p, n in zip(mask.region, pad, self.grid.shape))
        allowed = self.filled(rule.segment).within(region)  # type: ignore[arg-type]
        segment = mask.within(region)  # type: ignore[arg-type]
        distance = _distance_outside(allowed, spacing, self.grid.cine)
        outside = segment & (distance > tolerance + 1e-6)
        count = int(np.count_nonzero(outside))
        if count == 0:
            return []
        beyond = f" by more than {tolerance:g} {unit}" if tolerance else ""
        planes = np.flatnonzero(outside.any(axis=(1, 2))) + region[0].start
        region_start = (region[0].start, region[1].start, region[2].start)
        size = self.grid.size_text(count, self.grid.cine, outside, region_start)
        detail = (f"{size} of {spec.name} lie outside {rule.segment}{beyond}, "
                  f"on {self.grid.axis}(s) {_ranges(planes)}; the farthest is shown.")
        far = np.unravel_index(int(np.argmax(np.where(outside, distance, -1.0))), outside.shape)
        voxel = (int(far[0]) + region[0].start, int(far[1]) + region[1].start, int(far[2]) + region[2].start)
        return [self.finding(rule, spec, detail, voxel)]

    def _no_overlap(self, rule: NoOverlapRule, spec: SegmentSpec, mask: _Mask) -> list[Finding]:
        if self.exclusive:
            return []  # a label map gives each voxel one label: segments cannot overlap
        findings = []
        for other in rule.segments:
            pair = frozenset((spec.name, other))
            if pair in self._overlaps_done or self.masks[other].empty:
                continue
            self._overlaps_done.add(pair)
            overlap = mask.within(mask.region) & self.masks[other].within(mask.region)
            count = int(np.count_nonzero(overlap))
            if count == 0:
                continue
            planes = np.flatnonzero(overlap.any(axis=(1, 2))) + mask.offset[0]
            size = self.grid.size_text(count, self.grid.cine, overlap, mask.offset)
            detail = (f"{spec.name} and {other} overlap in {size}, "
                      f"on {self.grid.axis}(s) {_ranges(planes)}.")
            findings.append(self.finding(rule, spec, detail, self.representative(overlap, mask.offset),
                                         rule_id=f"no_overlap:{other}"))
        return findings


def _grid(shape: tuple[int, ...], geometry: Geometry | None, is_cine: bool, what: str,
          calibration: PixelCalibration | None = None) -> _Grid:
    if len(shape) != 3:
        raise LabelMapError(f"{what} has shape {shape}; expected (slices or frames, rows, columns)")
    cine = is_cine or geometry is None
    if calibration is not None:
        if not cine:
            raise LabelMapError(f"{what}: a pixel calibration describes the frames of a 2D+t cine; check a volume "
                                "with its geometry only, or pass is_cine")
        if tuple(shape[1:]) != calibration.frame_shape:
            raise LabelMapError(f"{what} has {shape[1]} x {shape[2]} pixels per frame but the calibration "
                                f"({calibration.source or calibration.reason}) describes {calibration.frame_shape[0]} "
                                f"x {calibration.frame_shape[1]}; give the cine the labels were drawn on")
    if geometry is not None:
        expected = geometry.shape[1:] if cine else geometry.shape
        if tuple(shape[1:] if cine else shape) != tuple(expected):
            raise LabelMapError(f"{what} has shape {shape} but its geometry describes {geometry.shape} "
                                "(slices or frames, rows, columns)")
    return _Grid((int(shape[0]), int(shape[1]), int(shape[2])), geometry, cine, calibration)


def _run(grid: _Grid, guideline: Guideline, masks: dict[str, _Mask], exclusive: bool,
         extra: list[Finding]) -> QAReport:
    run = _Run(grid, guideline, masks, exclusive)
    if grid.calibration is not None:
        for note in grid.calibration.notes:
            run.note(note)
    findings: list[Finding] = []
    for spec in guideline.segments:
        if masks[spec.name].empty:
            # rules describe a drawn segment; an empty optional segment has nothing to check
            if spec.required:
                findings.append(Finding("required", "error", spec.name,
                                        f"{spec.name} is required by guideline {guideline.id} {guideline.version} "
                                        "but is empty; draw it.",
                                        detail=f"{spec.name} (label {spec.label}) has no voxels."))
            continue
        for rule in spec.qa_rules:
            findings.extend(run.check(rule, spec))
    findings.extend(extra)
    report = QAReport(guideline.reference, tuple(findings), tuple(run.notes), _pixel_size(grid))
    logger.info("QA against %s: %d error(s), %d warning(s)", guideline.reference, len(report.errors),
                len(report.warnings))
    return report


def _pixel_size(grid: _Grid) -> dict[str, Any] | None:
    """What a cine's sizes are measured in, for the report: ``{"unit": "mm" | "px", "text": ..., ...}``."""
    if not grid.cine:
        return None
    if grid.calibration is not None:
        return {**grid.calibration.to_dict(), "text": grid.calibration.describe()}
    if grid.geometry is None:
        return {"unit": "px", "source": None, "reason": grid.unknown_size_reason, "regions": [],
                "text": f"unknown, sizes in px: {grid.unknown_size_reason}"}
    _, row_mm, col_mm = grid.spacing
    return {"unit": "mm", "source": "the given geometry", "reason": None, "regions": [],
            "text": f"{row_mm:.4g} x {col_mm:.4g} mm pixels (row x column), from the given geometry"}


def _label_counts(labels: np.ndarray) -> dict[int, int]:
    """Voxel count of every label value present, a few slices at a time (bincount would copy to intp at once)."""
    if not labels.size:
        return {}
    if labels.max() > np.iinfo(np.uint16).max:
        values, counts = np.unique(labels, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))
    total = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    step = max(1, 4_000_000 // max(1, labels[0].size))
    for k in range(0, labels.shape[0], step):
        chunk = np.bincount(labels[k:k + step].ravel(), minlength=total.size)
        total += chunk
    return {int(v): int(total[v]) for v in np.flatnonzero(total)}


def check_labels(labels: np.ndarray, geometry: Geometry | None, guideline: Guideline,
                 is_cine: bool = False, calibration: PixelCalibration | None = None) -> QAReport:
    """Check a label map against the guideline's required segments and rules.

    Parameters
    ----------
    labels
        Integer label map, shape (slices, rows, columns), or (frames, rows, columns) for a cine.
    geometry
        The grid's geometry (for a cine, one frame's plane). ``None`` means a cine.
    guideline
        The guideline whose segments give the label values and rules.
    is_cine
        Axis 0 is time: components, areas and containment are checked on each frame in 2D.
    calibration
        A cine's pixel size (:func:`medannot.imaging.calibration.calibration_from_file` reads an ultrasound
        file's regions); it overrides the geometry's spacing, which for a cine is seldom more than a placeholder.
        Without a calibration or geometry, or with an unknown one, sizes are in pixels: each ``area_mm2`` rule is
        then one warning saying it could not be checked (with the areas in px), and ``inside`` tolerances are
        applied as pixels (a note says so).

    Returns
    -------
    QAReport
        Findings in guideline order; ``unknown_label`` findings for label values the guideline does not define.

    Raises
    ------
    LabelMapError
        If the array is not a 3D non-negative integer array or does not fit ``geometry``.

    Examples
    --------
    >>> report = check_labels(labels, geometry, load_guideline("liver-ct.yaml"))  # doctest: +SKIP
    >>> report.passed, [f.rule for f in report.findings]  # doctest: +SKIP
    (False, ['components'])
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise LabelMapError(f"label map has type {labels.dtype}; expected whole label values (an integer array)")
    grid = _grid(labels.shape, geometry, is_cine, "label map", calibration)
    if labels.size and labels.min() < 0:
        raise LabelMapError(f"label map holds negative label value {int(labels.min())}")
    masks = {spec.name: _Mask.from_full(labels == spec.label) for spec in guideline.segments}
    unknown = []
    defined = ", ".join(f"{s.name} ({s.label})" for s in guideline.segments)
    counts = _label_counts(labels)
    for value in sorted(v for v in counts if v != 0 and v not in guideline.labels):
        first = np.unravel_index(int(np.argmax(labels == value)), labels.shape)
        size = grid.size_text(counts[value], grid.cine, labels == value if grid.cine else None)
        text = (f"label value {value} on {size} is not a segment of "
                f"guideline {guideline.id} {guideline.version}; it defines: {defined}.")
        unknown.append(Finding("unknown_label", "error", f"label {value}", text,
                               grid.location(tuple(int(v) for v in first)), text))  # type: ignore[arg-type]
    return _run(grid, guideline, masks, exclusive=True, extra=unknown)


def check_masks(masks: Mapping[str | int, np.ndarray], geometry: Geometry | None, guideline: Guideline,
                is_cine: bool = False, one_label_per_voxel: bool = False,
                calibration: PixelCalibration | None = None) -> QAReport:
    """Check one boolean mask per segment (which may overlap, unlike a label map) against the guideline.

    ``masks`` is keyed by segment name or label value; segments not given are empty. Otherwise as
    :func:`check_labels`, plus ``no_overlap`` findings where masks overlap. With ``one_label_per_voxel`` (the
    result will be written as a label map, e.g. from a Slicer segmentation) every overlapping pair is an
    ``overlap`` error located on its overlap, whatever the rules say.
    """
    resolved: dict[str, _Mask] = {spec.name: _Mask(None) for spec in guideline.segments}
    shape: tuple[int, ...] | None = None
    for key, array in masks.items():
        spec = guideline.segment(key)
        array = np.asarray(array).astype(bool, copy=False)
        if array.ndim == 2:
            array = array[np.newaxis]
        if shape is not None and array.shape != shape:
            raise LabelMapError(f"mask of {spec.name} has shape {array.shape}, the others {shape}")
        shape = array.shape
        resolved[spec.name] = _Mask.from_full(array)
    if shape is None:
        raise LabelMapError("no segment masks given")
    grid = _grid(shape, geometry, is_cine, "masks", calibration)
    if not one_label_per_voxel:
        return _run(grid, guideline, resolved, exclusive=False, extra=[])
    report = _run(grid, guideline, resolved, exclusive=False, extra=_overlap_findings(grid, guideline, resolved))
    # Every overlap is already an error of its own: the rules' no_overlap findings would say it twice.
    kept = tuple(f for f in report.findings if not f.rule.startswith("no_overlap:"))
    return QAReport(report.guideline, kept, report.notes, report.pixel_size)


def _overlap_findings(grid: _Grid, guideline: Guideline, masks: dict[str, _Mask]) -> list[Finding]:
    """One error per pair of segments that share voxels, located on a voxel of the overlap."""
    findings = []
    drawn = [spec.name for spec in guideline.segments if not masks[spec.name].empty]
    for i, first in enumerate(drawn):
        for second in drawn[i + 1:]:
            a, b = masks[first], masks[second]
            assert a.crop is not None and b.crop is not None
            start = tuple(max(p, q) for p, q in zip(a.offset, b.offset, strict=True))
            stop = tuple(min(p + n, q + m) for p, n, q, m in zip(a.offset, a.crop.shape, b.offset, b.crop.shape,
                                                                  strict=True))
            if any(lo >= hi for lo, hi in zip(start, stop, strict=True)):
                continue
            window = tuple(slice(lo, hi) for lo, hi in zip(start, stop, strict=True))
            overlap = (a.crop[tuple(slice(w.start - o, w.stop - o) for w, o in zip(window, a.offset, strict=True))]
                       & b.crop[tuple(slice(w.start - o, w.stop - o) for w, o in zip(window, b.offset, strict=True))])
            count = int(np.count_nonzero(overlap))
            if not count:
                continue
            planes = np.flatnonzero(overlap.any(axis=(1, 2))) + start[0]
            size = grid.size_text(count, grid.cine, overlap, start)  # type: ignore[arg-type]
            text = (f"{first} and {second} overlap in {size} on {grid.axis}(s) {_ranges(planes)}; each voxel may "
                    "belong to one segment only. In the Segment Editor use "
                    "Logical operators > Subtract, or paint with Masking > Modify other segments: Overwrite all.")
            voxel = _representative_voxel(overlap, start, grid.spacing)  # type: ignore[arg-type]
            findings.append(Finding("overlap", "error", first, text, grid.location(voxel), text))
    return findings
