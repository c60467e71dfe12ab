"""Agreement between two readers' masks of one segment on one grid: Dice, HD95, NSD and volumes, in mm and ml.

Definitions (the numbers a report shows, and the JSON of ``medannot review agreement``):

- **Dice** ``2|A∩B| / (|A| + |B|)`` over voxels.
- **Surfaces** are area-weighted points (:mod:`medannot.review.surface`, DeepMind ``surface-distance``'s
  representation); distances are Euclidean in mm using the grid's spacing, so anisotropic voxels count right.
- **HD95** is the larger of the two directed 95th percentiles of surface distances (A to B and B to A), each
  percentile weighted by surface area: the definition of MetricsReloaded, DeepMind ``surface-distance`` and MONAI.
  It is not the 95th percentile of both directions pooled (MedPy, ``seg-metrics``), which is smaller whenever one
  surface is much larger than the other.
- **NSD** (normalised surface distance, surface Dice) at tolerance ``t`` mm: the share of both surfaces' area that
  lies within ``t`` of the other surface.
- **Volumes** in ml (voxels x voxel volume); ``volume_difference_ml`` is B minus A.

A **cine** (2D + t: an ultrasound loop, which has no patient coordinates) is compared frame by frame: its frames
are independent 2D images with the calibration's pixel size (:mod:`medannot.imaging.calibration`). Dice counts
pixels over all frames; surfaces are the contours of each frame (marching squares through pixel-edge midpoints,
weighted by length in mm), and a distance is measured within one frame only. Pooled over the frames, HD95 is again
the larger of the two directed length-weighted 95th percentiles and NSD the share of both contours' length within
the tolerance. A contour in a frame where the other read has none of the segment has no distance: it counts as
beyond any tolerance, and when it holds more than 5 % of a contour's length, HD95 is ``None`` with a note naming the
frames. A cine has areas, not volumes: its volume fields are ``None``.

Empty masks, defined rather than NaN: both empty -> Dice 1, HD95 0 mm, NSD 1 (the readers agree there is nothing);
one empty -> Dice 0, NSD 0 and HD95 ``None`` with a ``note`` saying which is empty (there is no surface to measure
a distance to; JSON has no infinity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import SimpleITK as sitk

from medannot.review.surface import (bounding_box, cell_codes, contour_length_table, frame_cell_codes,
                                     surfel_area_table)

# Between the frames of a cine, a distance this large (mm) stands for "no distance": it keeps SimpleITK's distance map
# within each frame, and any larger result means the frame has no contour of the other read.
_BETWEEN_FRAMES_MM = 1.0e7

HD95_DEFINITION = ("HD95 is the larger of the two directed 95th percentiles of surface distances, weighted by "
                   "surface area (MetricsReloaded, DeepMind surface-distance, MONAI), not the 95th percentile of "
                   "both directions pooled (MedPy, seg-metrics)")


class PreparedMask:
    """One segment's mask of one read, cropped to its bounding box with its voxel count, so that a full-size mask
    need not be kept for each read and segment (a 300 x 512 x 512 CT mask is 79 MB)."""

    def __init__(self, mask: np.ndarray, spacing_zyx: tuple[float, float, float], frames: bool = False) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise ValueError(f"masks must be 3D (slices, rows, columns), not {mask.shape}")
        self.shape: tuple[int, ...] = mask.shape
        self.spacing_zyx = tuple(float(s) for s in spacing_zyx)
        self.frames = bool(frames)  # the first axis is time: each slice is an independent 2D frame
        self.box = bounding_box(mask)
        self.crop = mask[self.box].copy() if self.box is not None else np.zeros((0, 0, 0), bool)
        self.voxels = int(np.count_nonzero(self.crop))

    @classmethod
    def empty_like(cls, other: PreparedMask) -> PreparedMask:
        """An empty mask on ``other``'s grid (for a segment a read does not have)."""
        empty = cls(np.zeros((1, 1, 1), dtype=bool), other.spacing_zyx, other.frames)
        empty.shape = other.shape
        return empty

    @property
    def is_empty(self) -> bool:
        return self.voxels == 0

    @property
    def volume_ml(self) -> float | None:
        """The volume in ml; None for a cine (its frames are one plane over time: areas, not a volume)."""
        if self.frames:
            return None
        return self.voxels * float(np.prod(self.spacing_zyx)) / 1000.0


class SegmentSurfaces:
    """The surfaces of several reads of one segment on a common grid of cells: the bounding box of all their masks
    plus one voxel. Each read's surface (cells and areas) and its distance map (SimpleITK's exact Euclidean
    SignedMaurerDistanceMap, with the spacing) are computed once, however many pairs the read is in; a distance from
    read A to read B is B's map looked up at A's surface cells."""

    def __init__(self, masks: Mapping[str, PreparedMask]) -> None:
        self.masks = dict(masks)
        first = next(iter(self.masks.values()))
        self.spacing_zyx = first.spacing_zyx
        self.frames = first.frames
        boxes = [m.box for m in self.masks.values() if m.box is not None]
        self.origin = (tuple(min(b[axis].start for b in boxes) for axis in range(3)) if boxes else (0, 0, 0))
        stop = tuple(max(b[axis].stop for b in boxes) for axis in range(3)) if boxes else (0, 0, 0)
        self.size = tuple(b - a for a, b in zip(self.origin, stop))
        self._cells: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._maps: dict[str, np.ndarray] = {}

    def _padded(self, name: str) -> np.ndarray:
        mask = self.masks[name]
        pad = (0, 1, 1) if self.frames else (1, 1, 1)  # a cine's frames are not padded in time: none is in between
        out = np.zeros(tuple(n + 2 * p for n, p in zip(self.size, pad)), dtype=np.uint8)
        if mask.box is not None:
            out[tuple(slice(b.start - o + p, b.stop - o + p)
                      for b, o, p in zip(mask.box, self.origin, pad))] = mask.crop
        return out

    def surface(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(boolean array of the cells the surface of read ``name`` passes through, their areas in mm²)."""
        if name not in self._cells:
            if self.frames:
                code = frame_cell_codes(self._padded(name))
                border = (code != 0) & (code != 15)
                self._cells[name] = border, contour_length_table(self.spacing_zyx[1:])[code[border]]
            else:
                code = cell_codes(self._padded(name))
                border = (code != 0) & (code != 255)
                self._cells[name] = border, surfel_area_table(self.spacing_zyx)[code[border]]
        return self._cells[name]

    def distance_map(self, name: str) -> np.ndarray:
        """Distance in mm from each cell to the nearest cell of read ``name``'s surface."""
        if name not in self._maps:
            border, _ = self.surface(name)
            image = sitk.GetImageFromArray(border.astype(np.uint8))
            spacing = (_BETWEEN_FRAMES_MM, *self.spacing_zyx[1:]) if self.frames else self.spacing_zyx
            image.SetSpacing(spacing[::-1])  # SimpleITK's order is x, y, z
            maurer = sitk.SignedMaurerDistanceMapImageFilter()
            maurer.SetUseImageSpacing(True)
            maurer.SetSquaredDistance(False)
            maurer.SetInsideIsPositive(False)
            # surface cells lie at distance 0 (Maurer counts cells inside a thick surface as negative)
            distances = np.maximum(sitk.GetArrayFromImage(maurer.Execute(image)).astype(np.float64), 0.0)
            if self.frames:  # across frames there is no distance
                distances[distances >= _BETWEEN_FRAMES_MM / 2] = np.inf
            self._maps[name] = distances
        return self._maps[name]

    def distances(self, a: str, b: str) -> np.ndarray:
        """Distance in mm from each surface cell of read ``a`` to the surface of read ``b``."""
        border, _ = self.surface(a)
        return np.asarray(self.distance_map(b)[border], dtype=float)

    def release(self, name: str) -> None:
        """Forget read ``name``'s distance map (when no pair left needs it)."""
        self._maps.pop(name, None)


@dataclass(frozen=True)
class SegmentAgreement:
    """Agreement of masks A and B of one segment (see the module docstring for the definitions)."""

    dice: float
    hd95_mm: float | None
    nsd: float
    volume_a_ml: float | None
    volume_b_ml: float | None
    volume_difference_ml: float | None
    tolerance_mm: float
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def weighted_percentile(distances: np.ndarray, weights: np.ndarray, percent: float) -> float:
    """The smallest distance at which the cumulative weight reaches ``percent`` % (DeepMind's rule)."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative / cumulative[-1], percent / 100.0))
    return float(distances[order][min(index, len(order) - 1)])


def _intersection(a: PreparedMask, b: PreparedMask) -> int:
    if a.box is None or b.box is None:
        return 0
    common = [slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a.box, b.box)]
    if any(s.start >= s.stop for s in common):
        return 0
    part_a = a.crop[tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(common, a.box))]
    part_b = b.crop[tuple(slice(s.start - q.start, s.stop - q.start) for s, q in zip(common, b.box))]
    return int(np.count_nonzero(part_a & part_b))


def compare_in(surfaces: SegmentSurfaces, a: str, b: str, tolerance_mm: float = 2.0) -> SegmentAgreement:
    """Dice, HD95, NSD at ``tolerance_mm`` and volumes of reads ``a`` and ``b`` of ``surfaces``."""
    mask_a, mask_b = surfaces.masks[a], surfaces.masks[b]
    if mask_a.shape != mask_b.shape or not np.allclose(mask_a.spacing_zyx, mask_b.spacing_zyx):
        raise ValueError(f"masks on different grids: {mask_a.shape} spacing {mask_a.spacing_zyx} vs "
                         f"{mask_b.shape} spacing {mask_b.spacing_zyx}")
    if mask_a.frames != mask_b.frames:
        raise ValueError("a cine (frame by frame) compared with a volume")
    difference = None if mask_a.volume_ml is None or mask_b.volume_ml is None else mask_b.volume_ml - mask_a.volume_ml
    volumes = dict(volume_a_ml=mask_a.volume_ml, volume_b_ml=mask_b.volume_ml,
                   volume_difference_ml=difference, tolerance_mm=float(tolerance_mm))
    if mask_a.is_empty and mask_b.is_empty:
        return SegmentAgreement(dice=1.0, hd95_mm=0.0, nsd=1.0, note="empty in both", **volumes)
    if mask_a.is_empty or mask_b.is_empty:
        which = "a" if mask_a.is_empty else "b"
        return SegmentAgreement(dice=0.0, hd95_mm=None, nsd=0.0,
                                note=f"empty in {which} only: no surface to measure HD95 to", **volumes)
    dice = 2.0 * _intersection(mask_a, mask_b) / (mask_a.voxels + mask_b.voxels)
    (_, area_a), (_, area_b) = surfaces.surface(a), surfaces.surface(b)
    d_ab, d_ba = surfaces.distances(a, b), surfaces.distances(b, a)
    hd95: float | None = max(weighted_percentile(d_ab, area_a, 95.0), weighted_percentile(d_ba, area_b, 95.0))
    nsd = (float(area_a[d_ab <= tolerance_mm].sum()) + float(area_b[d_ba <= tolerance_mm].sum())) / (
        float(area_a.sum()) + float(area_b.sum()))
    note = "cine: compared frame by frame (2D), areas not volumes" if mask_a.frames else None
    if hd95 is not None and not np.isfinite(hd95):
        hd95 = None
        note = (f"cine: in frames {_one_sided_frames(surfaces, a, b)} only one read has the segment, over 5 % of a "
                "contour: no HD95")
    return SegmentAgreement(dice=dice, hd95_mm=hd95, nsd=nsd, note=note, **volumes)


def _one_sided_frames(surfaces: SegmentSurfaces, a: str, b: str) -> str:
    """The frames (1-based, as a reader counts) where one of reads ``a`` and ``b`` has a contour and the other none."""
    has_a, has_b = (surfaces.surface(n)[0].any(axis=(1, 2)) for n in (a, b))
    frames = [int(f) + surfaces.origin[0] + 1 for f in np.flatnonzero(has_a != has_b)]
    shown = ", ".join(str(f) for f in frames[:10]) + (f" and {len(frames) - 10} more" if len(frames) > 10 else "")
    return shown


def compare(a: PreparedMask, b: PreparedMask, tolerance_mm: float = 2.0) -> SegmentAgreement:
    """Agreement of two prepared masks on one grid (use :class:`SegmentSurfaces` when a mask is in several pairs)."""
    return compare_in(SegmentSurfaces({"a": a, "b": b}), "a", "b", tolerance_mm)


def segment_agreement(mask_a: np.ndarray, mask_b: np.ndarray, spacing_zyx: tuple[float, float, float],
                      tolerance_mm: float = 2.0, frames: bool = False) -> SegmentAgreement:
    """Agreement of two boolean masks (numpy order: slices, rows, columns) on one grid.

    ``spacing_zyx`` is in numpy axis order, i.e. ``Geometry.spacing[::-1]`` (a Geometry's spacing is SimpleITK's
    x, y, z order).

    With ``frames`` the first axis is time (a cine): each frame is compared as a 2D image and
    ``spacing_zyx[0]`` is not used.
    """
    return compare(PreparedMask(mask_a, spacing_zyx, frames), PreparedMask(mask_b, spacing_zyx, frames), tolerance_mm)


@dataclass(frozen=True)
class PairAgreement:
    """One row of an agreement table: reads ``a`` and ``b`` on ``segment``."""

    a: str
    b: str
    segment: str
    agreement: SegmentAgreement


def agreement_table(reads: Mapping[str, Mapping[str, PreparedMask]], segments: Iterable[str],
                    tolerance_mm: float = 2.0,
                    pairs: Iterable[tuple[str, str]] | None = None) -> list[PairAgreement]:
    """Agreement for each segment and each pair of reads (all unordered pairs by default).

    ``reads`` maps a read's name (a file, a reader, "consensus") to its prepared masks by segment name; a segment a
    read lacks counts as empty there. Each read's surface and distance map are computed once per segment.
    """
    chosen = list(pairs) if pairs is not None else list(combinations(list(reads), 2))
    rows = []
    for segment in segments:
        involved = list(dict.fromkeys(name for pair in chosen for name in pair))
        present = [reads[n][segment] for n in involved if segment in reads[n]]
        if not present:
            raise ValueError(f"segment {segment!r} is in none of the reads")
        surfaces = SegmentSurfaces({n: reads[n].get(segment) or PreparedMask.empty_like(present[0])
                                    for n in involved})
        for index, (a, b) in enumerate(chosen):
            rows.append(PairAgreement(a, b, segment, compare_in(surfaces, a, b, tolerance_mm)))
            for name in (a, b):  # keep at most the maps later pairs still need
                if all(name not in pair for pair in chosen[index + 1:]):
                    surfaces.release(name)
    return rows
