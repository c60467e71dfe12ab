"""Frame-to-frame motion of a cine (dense optical flow) and the warps that carry a map along it.

A flow ``f`` from frame ``s`` to frame ``d`` says where each pixel of ``s`` is found in ``d``:
``image[s][y, x] ~ image[d][y + f[y, x, 1], x + f[y, x, 0]]``. Carrying a map drawn on ``d`` to ``s`` is then
one backward warp, and flows are chained by composition, so a map is resampled once however long the chain.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medannot.interpolation.errors import InterpolationError

logger = logging.getLogger(__name__)

Box = tuple[slice, slice]  # rows, columns of a part of a frame


def _cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ImportError as exc:
        raise InterpolationError(
            "motion-guided interpolation needs OpenCV (the opencv-python-headless package), which is not "
            "installed; choose the shape method instead"
        ) from exc
    return cv2


@dataclass(frozen=True)
class FlowSettings:
    """How frames are prepared and matched (OpenCV DIS optical flow), and how rigid labels are tracked.

    Frames are normalised one by one to their own 1st..99th percentile (so gain flicker does not look like
    motion) and smoothed with a Gaussian of ``smoothing`` pixels (so speckle does not dominate the matching).
    Walking away from a keyframe, each frame's displacement to it is predicted from the frame before: the
    previous frame's displacement as it is, or with ``chain`` composed with one more flow between the two
    frames. With ``anchor`` the prediction is corrected by a flow between the frame and the keyframe carried
    along it, so errors do not pile up over long spans (the direct match makes ``chain`` unnecessary:
    one flow per frame and direction instead of two, same Dice on the benchmark).

    ``rigid_*``: a label that touches no other label, is at most ``rigid_max_area`` pixels and has congruent
    masks on both keyframes of a span (Dice >= ``rigid_min_dice`` after the best rotation and translation) is
    tracked as a rigid body (see ``Interpolator._rigid_poses``): rotations ``rigid_angles`` around the
    prediction and shifts within ``rigid_search`` pixels, matched on frames smoothed by ``rigid_smoothing``
    within ``rigid_margin`` pixels of the label; ``rigid_passes`` passes, the later ones around the smoothed
    track; a polynomial of one degree per ``rigid_frames_per_degree`` frames of the span. The rigid motion
    replaces the dense flow on the label and its margin, fading into it over ``rigid_fade`` pixels.

    ``flow_size``: frames whose longer side exceeds it are reduced (by area averaging) to that many pixels on
    the longer side before flows are computed and rigid labels tracked; the displacements are upsampled to full
    size, so the label maps are still carried and blended at full resolution. Smoothing and every ``rigid_*``
    length and area stay in full-size pixels (on the reduced frames they shrink with them). 0 computes the
    flow at full size.

    The defaults were chosen on ``Testing/benchmarks/bench_interpolation.py`` (256 x 256 echo-like cines; 640 x 480
    ones for ``flow_size``).
    """

    smoothing: float = 0.8
    preset: str = "medium"
    patch_size: int = 16
    patch_stride: int = 5
    finest_scale: int = 1
    anchor: bool = True
    chain: bool = False
    refinement_iterations: int = 5
    refinement_alpha: float = 20.0
    refinement_gamma: float = 10.0
    refinement_delta: float = 5.0
    rigid_labels: bool = True
    rigid_max_area: int = 5000
    rigid_min_dice: float = 0.9
    rigid_min_score: float = 0.2
    rigid_margin: int = 4
    rigid_fade: float = 4.0
    rigid_search: int = 6
    rigid_frames_per_degree: int = 7
    rigid_smoothing: float = 0.8
    rigid_passes: int = 2
    rigid_angles: tuple[float, ...] = (-0.24, -0.16, -0.08, 0.0, 0.08, 0.16, 0.24)
    flow_size: int = 320

    def __post_init__(self) -> None:
        positive = {"patch_size": self.patch_size, "patch_stride": self.patch_stride,
                    "rigid_frames_per_degree": self.rigid_frames_per_degree, "rigid_passes": self.rigid_passes,
                    "rigid_search": self.rigid_search, "rigid_fade": self.rigid_fade}
        for name, value in positive.items():
            if not value > 0:
                raise InterpolationError(f"flow setting {name} must be positive; got {value!r}")
        for name in ("smoothing", "rigid_smoothing", "rigid_margin", "finest_scale", "flow_size"):
            if getattr(self, name) < 0:
                raise InterpolationError(f"flow setting {name} must not be negative; got {getattr(self, name)!r}")
        if self.preset not in ("ultrafast", "fast", "medium"):
            raise InterpolationError(f"flow setting preset must be ultrafast, fast or medium; got {self.preset!r}")
        if len(self.rigid_angles) < 2:
            raise InterpolationError("flow setting rigid_angles needs at least two angles")
        if 0 < self.flow_size < 2 * self.patch_size:
            raise InterpolationError(f"flow setting flow_size must be 0 or at least twice patch_size "
                                     f"({2 * self.patch_size}); got {self.flow_size!r}")

    def flow_fits(self, shape: tuple[int, int]) -> bool:
        """Whether DIS optical flow can run on frames of ``shape`` (rows, cols) with these settings.

        OpenCV refuses frames whose shorter side is below the patch size or whose longer side is below
        about 1.41 patch sizes (its coarsest pyramid level would be negative); 1.5 keeps clear of the rounding.
        """
        return min(shape) >= self.patch_size and max(shape) >= 1.5 * self.patch_size


class FlowField:
    """Dense flows between neighbouring frames of one cine, computed on demand and kept in a bounded cache.

    Flows are computed on the frames reduced to ``settings.flow_size`` pixels on the longer side (the *flow
    grid*; :attr:`scale` is its size over the full size, 1 for small frames): :meth:`flow`, :meth:`compose`,
    :meth:`warp` and the ``full=False`` answers of :meth:`displacements` are on that grid, in its pixels.
    :meth:`displacements` and :meth:`upsample` give full-size displacements in full-size pixels.
    """

    def __init__(self, frames: np.ndarray, settings: FlowSettings | None = None, cache_mb: float = 256.0) -> None:
        if frames.ndim != 3:
            raise InterpolationError(f"image must be frames x rows x columns; got shape {frames.shape}")
        self._cv2 = _cv2()
        self.frames = frames
        self.settings = settings or FlowSettings()
        rows, cols = (int(v) for v in frames.shape[1:])
        if not self.settings.flow_fits((rows, cols)):
            raise InterpolationError(f"frames of {rows} x {cols} pixels are too small for optical flow (at least "
                                     f"{self.settings.patch_size} x {int(np.ceil(1.5 * self.settings.patch_size))} "
                                     "needed); use --method shape")
        self.scale = self._scale((rows, cols))
        small = (max(round(rows * self.scale), 1), max(round(cols * self.scale), 1))
        self.flow_shape: tuple[int, int] = small
        self._prepared: dict[tuple[int, float], np.ndarray] = {}
        self._flows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_limit = int(cache_mb * 2**20)
        self._cache_bytes = 0
        self._lock = threading.Lock()  # spans are interpolated in threads that share this cache
        gy, gx = np.mgrid[0:small[0], 0:small[1]].astype(np.float32)
        self._grid = (gx, gy)
        # Full-size pixel centres as one two-channel map: adding a displacement gives cv2.remap's sampling map.
        full = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self._full_grid = np.ascontiguousarray(np.stack([full[1], full[0]], axis=-1))
        # ... and where they fall on the flow grid (cv2.resize's pixel centres), to upsample part of a field.
        c = np.float32(0.5 * self.scale - 0.5)
        self._full_on_flow = self._full_grid * np.float32(self.scale) + c

    def _scale(self, shape: tuple[int, int]) -> float:
        size = self.settings.flow_size
        if size <= 0 or max(shape) <= size:
            return 1.0
        scale = size / max(shape)
        if not self.settings.flow_fits((round(shape[0] * scale), round(shape[1] * scale))):
            # A long, thin frame: reduce only as far as the flow still runs.
            scale = min(1.0, 1.5 * self.settings.patch_size / min(shape))
        return float(scale)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def rigid_margin(self) -> int:
        """``rigid_margin`` in pixels of the flow grid."""
        return max(round(self.settings.rigid_margin * self.scale), 1 if self.settings.rigid_margin else 0)

    @property
    def rigid_fade(self) -> float:
        """``rigid_fade`` in pixels of the flow grid."""
        return self.settings.rigid_fade * self.scale

    @property
    def to_flow(self) -> np.ndarray:
        """3 x 3 map from full-size pixel coordinates (x, y, 1) to the flow grid's (pixel centres, as cv2.resize)."""
        f = self.scale
        c = 0.5 * f - 0.5
        return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])

    def reduce(self, values: np.ndarray, interpolation: int | None = None) -> np.ndarray:
        """A full-size map (rows x cols, float32) on the flow grid, by area averaging unless told otherwise."""
        if self.scale == 1.0:
            return values
        rows, cols = self.flow_shape
        method = self._cv2.INTER_AREA if interpolation is None else interpolation
        return self._cv2.resize(values, (cols, rows), interpolation=method)

    def upsample(self, displacement: np.ndarray) -> np.ndarray:
        """A displacement on the flow grid as a full-size displacement in full-size pixels."""
        if self.scale == 1.0:
            return displacement
        rows, cols = self.shape
        full = self._cv2.resize(displacement, (cols, rows), interpolation=self._cv2.INTER_LINEAR)
        full *= np.float32(1.0 / self.scale)
        return full

    def sampling_map(self, displacement: np.ndarray, box: Box | None = None) -> np.ndarray:
        """The full-size map (rows x cols x 2, float32) that cv2.remap samples along a flow-grid ``displacement``,
        or its part ``box`` (row slice, column slice) of the frame. One map serves every label carried along it.
        """
        if box is None:
            full = self.upsample(displacement)
            return self._full_grid + full
        grid = self._full_grid[box]
        if self.scale == 1.0:
            return grid + displacement[box]
        part = self._cv2.remap(displacement, self._full_on_flow[box], None, self._cv2.INTER_LINEAR,
                               borderMode=self._cv2.BORDER_REPLICATE)
        part *= np.float32(1.0 / self.scale)
        part += grid
        return part

    def reach(self, displacement: np.ndarray, box: Box, margin: float) -> Box | None:
        """The part of the frame (full size) that a flow-grid ``displacement`` carries into ``box`` grown by ``margin``
        pixels (None: nowhere); a box on the frame's edge reaches every point beyond it (cv2.remap replicates)."""
        rows, cols = self.shape
        ys, xs = box
        f, c = self.scale, 0.5 * self.scale - 0.5
        low_x = -np.inf if xs.start == 0 else (xs.start - margin) * f + c
        high_x = np.inf if xs.stop == cols else (xs.stop - 1 + margin) * f + c
        low_y = -np.inf if ys.start == 0 else (ys.start - margin) * f + c
        high_y = np.inf if ys.stop == rows else (ys.stop - 1 + margin) * f + c
        gx, gy = self._grid
        px = gx + displacement[..., 0]
        py = gy + displacement[..., 1]
        inside = (px >= low_x) & (px <= high_x) & (py >= low_y) & (py <= high_y)
        hit_rows, hit_cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if not len(hit_rows):
            return None
        # Back to full-size pixels, one flow-grid pixel wider for the upsampling between grid points.
        grow = 1.0 / f

        def span(first: int, last: int, size: int) -> slice:
            lo = int(np.floor((first - c) / f - grow))
            hi = int(np.ceil((last - c) / f + grow)) + 1
            return slice(max(lo, 0), min(hi, size))

        return span(int(hit_rows[0]), int(hit_rows[-1]), rows), span(int(hit_cols[0]), int(hit_cols[-1]), cols)

    def carry(self, values: np.ndarray, sampling_map: np.ndarray) -> np.ndarray:
        """Full-size ``values`` (rows x cols float32) sampled along a :meth:`sampling_map`."""
        return self._cv2.remap(values, sampling_map, None, self._cv2.INTER_LINEAR,
                               borderMode=self._cv2.BORDER_REPLICATE)

    def carry_rigid(self, values: np.ndarray, matrix: np.ndarray, box: Box | None = None) -> np.ndarray:
        """Full-size ``values`` sampled at every pixel (of ``box``) moved by a 3 x 3 map on full-size (x, y, 1)."""
        rows, cols = self.shape
        m = np.asarray(matrix, dtype=np.float64)
        if box is not None:
            ys, xs = box
            m = m @ np.array([[1.0, 0.0, xs.start], [0.0, 1.0, ys.start], [0.0, 0.0, 1.0]])
            rows, cols = ys.stop - ys.start, xs.stop - xs.start
        return self._cv2.warpAffine(values, m[:2], (cols, rows),
                                    flags=self._cv2.INTER_LINEAR | self._cv2.WARP_INVERSE_MAP,
                                    borderMode=self._cv2.BORDER_REPLICATE)

    def _make_dis(self):  # type: ignore[no-untyped-def]
        # A new matcher for every pair: an OpenCV DIS object answers its first call differently from later ones,
        # and results must not depend on what was computed before (incremental updates, reproducibility).
        cv2 = self._cv2
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        s = self.settings
        dis = cv2.DISOpticalFlow_create(presets[s.preset])
        dis.setPatchSize(s.patch_size)
        dis.setPatchStride(s.patch_stride)
        dis.setFinestScale(s.finest_scale)
        dis.setVariationalRefinementIterations(s.refinement_iterations)
        dis.setVariationalRefinementAlpha(s.refinement_alpha)
        dis.setVariationalRefinementGamma(s.refinement_gamma)
        dis.setVariationalRefinementDelta(s.refinement_delta)
        dis.setUseMeanNormalization(True)
        dis.setUseSpatialPropagation(True)
        return dis

    def prepared(self, index: int, smoothing: float | None = None) -> np.ndarray:
        """Frame ``index`` on the flow grid as the 8-bit, normalised, smoothed image the flow is computed on.

        ``smoothing`` (pixels) replaces the settings' one; rigid tracking matches less smoothed frames.
        """
        # Sigmas are in full-size pixels: a reduced frame is smoothed as much, measured on the full frame.
        sigma = (self.settings.smoothing if smoothing is None else smoothing) * self.scale
        key = (index, sigma)
        if key not in self._prepared:
            frame = self.reduce(np.asarray(self.frames[index], dtype=np.float32))
            low, high = np.percentile(frame, (1.0, 99.0))
            scaled = (frame - np.float32(low)) * np.float32(255.0 / max(float(high - low), 1e-6))
            if sigma > 0:
                scaled = self._cv2.GaussianBlur(scaled, (0, 0), sigma)
            self._prepared[key] = np.clip(scaled, 0, 255).astype(np.uint8)
        return self._prepared[key]

    def flow(self, source: int, target: int) -> np.ndarray:
        """Flow (flow grid rows x cols x 2, x then y displacement) from frame ``source`` to frame ``target``."""
        key = (source, target)
        with self._lock:
            cached = self._flows.get(key)
            if cached is not None:
                self._flows.move_to_end(key)
                return cached
        flow = self._make_dis().calc(self.prepared(source), self.prepared(target), None)
        with self._lock:
            if key not in self._flows:
                self._flows[key] = flow
                self._cache_bytes += flow.nbytes
            while self._cache_bytes > self._cache_limit and len(self._flows) > 1:
                _, old = self._flows.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return flow

    def displacements(self, keyframe: int, frames: range, full: bool = True) -> list[np.ndarray]:
        """Displacement from each of ``frames`` (walking away from ``keyframe`` one frame at a time) to it.

        With ``chain`` (or without ``anchor``) each frame's displacement is the flow to the frame before it
        composed with that frame's displacement; otherwise the frame before's displacement is the prediction.
        With ``anchor`` the prediction is then corrected by matching the frame with the keyframe carried along it.
        ``full``: full-size displacements in full-size pixels; otherwise on the flow grid.
        """
        s = self.settings
        out: list[np.ndarray] = []
        previous: int = keyframe
        current: np.ndarray | None = None
        for t in frames:
            if s.chain or not s.anchor or current is None:
                current = self.compose(self.flow(t, previous), current)
            if s.anchor:
                current = self.anchor(current, t, keyframe)
            out.append(current)
            previous = t
        return [self.upsample(d) for d in out] if full else out

    def anchor(self, displacement: np.ndarray, frame: int, keyframe: int) -> np.ndarray:
        """Correct a chained ``displacement`` from ``frame`` to ``keyframe`` by matching them directly.

        The keyframe is warped onto ``frame`` along the chain; the small flow left between the two is composed
        in front of the chain. Matching starts from the chain's answer, so it never has to find a long motion.
        """
        keyframe_on_frame = self.warp(self.prepared(keyframe), displacement)  # uint8 in, uint8 out
        residual = self._make_dis().calc(self.prepared(frame), keyframe_on_frame, None)
        return self.compose(residual, displacement)

    def compose(self, step: np.ndarray, chained: np.ndarray | None) -> np.ndarray:
        """Displacement of ``step`` followed by ``chained`` (both flow grid rows x cols x 2)."""
        if chained is None:
            return step.copy()
        gx, gy = self._grid
        moved = self._cv2.remap(chained, gx + step[..., 0], gy + step[..., 1], self._cv2.INTER_LINEAR,
                                borderMode=self._cv2.BORDER_REPLICATE)
        return step + moved

    def warp(self, values: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        """Sample ``values`` (flow grid rows x cols) at every pixel plus ``displacement``."""
        gx, gy = self._grid
        return self._cv2.remap(values, gx + displacement[..., 0], gy + displacement[..., 1],
                               self._cv2.INTER_LINEAR, borderMode=self._cv2.BORDER_REPLICATE)


@dataclass
class RigidState:
    """A rigid map from a frame to a keyframe, around one label: keyframe point = c + R(angle) (x - c - shift)."""

    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # x, y

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, centre: tuple[float, float]) -> RigidState:
        """The state of a 3 x 3 rigid map about ``centre`` (inverse of :meth:`matrix`)."""
        c = np.asarray(centre, dtype=np.float64)
        angle = float(np.arctan2(matrix[1, 0], matrix[0, 0]))
        shift = np.linalg.solve(matrix[:2, :2], c - matrix[:2, 2]) - c
        return cls(angle, (float(shift[0]), float(shift[1])))

    def matrix(self, centre: tuple[float, float]) -> np.ndarray:
        """The map as a 3 x 3 matrix acting on (x, y, 1), about the label's centre ``c`` on the keyframe."""
        c = np.asarray(centre, dtype=np.float64)
        rot = _rotation(self.angle)
        out = np.eye(3)
        out[:2, :2] = rot
        out[:2, 2] = c - rot @ (c + np.asarray(self.shift, dtype=np.float64))
        return out


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]], dtype=np.float64)


def _peak(values: np.ndarray, i: int) -> float:
    """Sub-sample offset of the peak at ``i`` of a 1D score by a parabola through its neighbours."""
    if i <= 0 or i >= len(values) - 1:
        return 0.0
    a, b, c = float(values[i - 1]), float(values[i]), float(values[i + 1])
    den = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0


def _rigid_candidates(cv2, key_image: np.ndarray, image: np.ndarray, label_mask: np.ndarray,  # type: ignore[no-untyped-def]
                      predicted: RigidState, search: int, margin: int) -> Callable[[float], tuple[float, RigidState]]:
    """A scorer of rotations of the key patch around ``label_mask`` (drawn on the key image): for an angle, the best
    translation within ``search`` pixels of the ``predicted`` map by normalised cross-correlation with a mask,
    and its correlation (-1 where nothing can be matched, e.g. a flat patch)."""
    ys, xs = np.nonzero(label_mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    half = int(np.ceil(max(np.abs(xs - cx).max(), np.abs(ys - cy).max()))) + margin + 1
    size = 2 * half + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)
    weight = cv2.dilate(label_mask.astype(np.uint8), kernel).astype(np.float32)
    r = search
    base = (round(cx + predicted.shift[0]), round(cy + predicted.shift[1]))
    window = cv2.getRectSubPix(image, (size + 2 * r, size + 2 * r), (float(base[0]), float(base[1])))

    def score(angle: float) -> tuple[float, RigidState]:
        rot = _rotation(angle)
        offset = np.array([cx, cy]) - rot @ np.array([half, half], dtype=np.float64)
        matrix = np.hstack([rot, offset[:, None]])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        patch = cv2.warpAffine(key_image, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(weight, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        result = cv2.matchTemplate(window, patch, cv2.TM_CCOEFF_NORMED, mask=mask)
        result = np.nan_to_num(result, nan=-1.0, posinf=-1.0, neginf=-1.0)
        iy, ix = np.unravel_index(int(np.argmax(result)), result.shape)
        if result[iy, ix] <= -1.0:
            return -1.0, RigidState(angle, predicted.shift)  # nothing to match: keep the prediction
        dx = ix + _peak(result[iy, :], ix) - r
        dy = iy + _peak(result[:, ix], iy) - r
        return float(result[iy, ix]), RigidState(angle, (base[0] + dx - cx, base[1] + dy - cy))

    return score


def _match_rigid(cv2, key_image: np.ndarray, image: np.ndarray, label_mask: np.ndarray,  # type: ignore[no-untyped-def]
                 predicted: RigidState, angles: list[float], step: float, search: int,
                 margin: int, refine_peak: bool = False) -> tuple[RigidState, float]:
    """Best rigid map from ``image`` to ``key_image`` around ``label_mask`` (drawn on the key image).

    Rotations of the key patch (``angles``, then half a ``step`` either side of the best, or with
    ``refine_peak`` the peak of a parabola through the best and its neighbours) are matched over
    translations within ``search`` pixels of the ``predicted`` map by normalised cross-correlation with a mask.
    """
    score = _rigid_candidates(cv2, key_image, image, label_mask, predicted, search, margin)
    results = [score(a) for a in angles]
    values = np.array([v for v, _ in results])
    best = int(np.argmax(values))
    if refine_peak:
        # A parabola through the best angle's neighbours places the peak between the angles tried.
        offset = _peak(values, best)
        if offset:
            results.append(score(angles[best] + offset * step))
    else:
        results += [score(angles[best] - step / 2), score(angles[best] + step / 2)]
    value, state = max(results, key=lambda item: item[0])
    return state, value


def rigid_track(field: FlowField, frame: int, keyframe: int, label_mask: np.ndarray,
                predicted: RigidState, refine: bool = False) -> tuple[RigidState, float]:
    """Rigid map from ``frame`` to ``keyframe`` matching the keyframe around ``label_mask`` (drawn on it).

    Rotations of the keyframe patch are matched over translations (normalised cross-correlation with a mask)
    near the ``predicted`` map; returns the best map and its correlation. With ``refine`` the prediction is
    already close: five angles within a sixth of the range, and half the search range, are tried.
    """
    s = field.settings
    angles = np.asarray(s.rigid_angles)
    if refine:
        angles = np.linspace(-1.0, 1.0, 5) * float(np.max(np.abs(angles))) / 6
    full_search = max(s.rigid_search // 2, 2) if refine else s.rigid_search
    search = max(round(full_search * field.scale), 1)  # settings are in full-size pixels
    step = float(angles[1] - angles[0]) if len(angles) > 1 else 0.0
    return _match_rigid(field._cv2, field.prepared(keyframe, s.rigid_smoothing).astype(np.float32),
                        field.prepared(frame, s.rigid_smoothing).astype(np.float32), label_mask, predicted,
                        [predicted.angle + float(a) for a in angles], step, search, field.rigid_margin,
                        refine_peak=refine)


def align_masks(key_mask: np.ndarray, mask: np.ndarray, coarse: float = 1.0) -> tuple[np.ndarray, float, bool]:
    """Rigid map (3 x 3, on x, y, 1) from the frame of ``mask`` to that of ``key_mask``, the Dice it reaches, and
    whether the rotation is unique.

    Both masks are one label on two keyframes; a Dice near 1 says the label moved as a rigid body between them.
    A shape that looks the same turned (a disc, an ellipse, a square) fits several rotations about as well: the
    rotation is then not unique, and the smallest one is returned. ``coarse`` < 1: the search over all
    rotations runs on the masks reduced by that factor, and only the final, fine match at full size.
    """
    cv2 = _cv2()
    ys, xs = np.nonzero(key_mask)
    centre = (float(xs.mean()), float(ys.mean()))
    key_image = cv2.GaussianBlur(key_mask.astype(np.float32), (0, 0), 1.5)
    image = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
    if coarse < 1.0:
        rows, cols = key_mask.shape
        size = (max(round(cols * coarse), 1), max(round(rows * coarse), 1))
        small_key = cv2.resize(key_mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        to_small = np.array([[coarse, 0.0, 0.5 * coarse - 0.5], [0.0, coarse, 0.5 * coarse - 0.5], [0, 0, 1.0]])
        if np.any(small_key >= 0.5) and np.any(small >= 0.5):
            found, unique, small_centre = _search_rotations(cv2, small_key >= 0.5, small >= 0.5)
            start = RigidState.from_matrix(np.linalg.inv(to_small) @ found.matrix(small_centre) @ to_small, centre)
        else:  # too small to show at the reduced size
            start, unique, _ = _search_rotations(cv2, key_mask, mask, key_image, image)
    else:
        start, unique, _ = _search_rotations(cv2, key_mask, mask, key_image, image)
    fine = 0.02
    state, _ = _match_rigid(cv2, key_image, image, key_mask, start, list(start.angle + np.arange(-2, 3) * fine),
                            fine, 2, 3)
    matrix = state.matrix(centre)
    rows, cols = key_mask.shape
    carried = cv2.warpAffine(key_mask.astype(np.float32), matrix[:2], (cols, rows),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0.5
    other = mask.astype(bool)
    dice = 2.0 * np.count_nonzero(carried & other) / max(np.count_nonzero(carried) + np.count_nonzero(other), 1)
    return matrix, float(dice), bool(unique)


def _search_rotations(cv2, key_mask: np.ndarray, mask: np.ndarray,  # type: ignore[no-untyped-def]
                      key_image: np.ndarray | None = None, image: np.ndarray | None = None
                      ) -> tuple[RigidState, bool, tuple[float, float]]:
    """The best of rotations 0.1 rad apart (and shifts) carrying ``mask`` onto ``key_mask``, whether no rotation
    far from it fits nearly as well, and the key label's centre the state refers to."""
    ys, xs = np.nonzero(key_mask)
    centre = (float(xs.mean()), float(ys.mean()))
    ys2, xs2 = np.nonzero(mask)
    predicted = RigidState(0.0, (float(xs2.mean()) - centre[0], float(ys2.mean()) - centre[1]))
    if key_image is None or image is None:
        key_image = cv2.GaussianBlur(key_mask.astype(np.float32), (0, 0), 1.5)
        image = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
    score = _rigid_candidates(cv2, key_image, image, key_mask, predicted, 3, 3)
    # Smallest turns first, so that among equal fits the one nearest no turn wins.
    angles = sorted(np.arange(-31, 32) * 0.1, key=abs)
    results = [score(float(a)) for a in angles]
    values = np.array([v for v, _ in results])
    best = int(np.argmax(values))
    rival = [v for a, v in zip(angles, values, strict=True)
             if abs(np.angle(np.exp(1j * (a - angles[best])))) > 0.5]
    unique = not rival or max(rival) < values[best] - 0.02
    return results[best][1], bool(unique), centre


def matrix_displacement(field: FlowField, matrix: np.ndarray) -> np.ndarray:
    """Displacement field (flow grid rows x cols x 2) of a 3 x 3 map acting on flow-grid (x, y, 1)."""
    gx, gy = field._grid
    m = np.asarray(matrix, dtype=np.float32)  # float64 coefficients would make float64 copies of the grid
    out = np.empty((*gx.shape, 2), dtype=np.float32)
    out[..., 0] = (m[0, 0] - 1) * gx + m[0, 1] * gy + m[0, 2]
    out[..., 1] = m[1, 0] * gx + (m[1, 1] - 1) * gy + m[1, 2]
    return out


def pose_distance(first: np.ndarray, second: np.ndarray, centre: tuple[float, float], radius: float) -> float:
    """Mean distance (pixels) between where two maps to a keyframe put the points of a label there.

    The label is taken as its ``centre`` and eight points at ``radius`` around it.
    """
    cx, cy = centre
    points = np.array([[cx + dx, cy + dy, 1.0] for dx in (-radius, 0.0, radius) for dy in (-radius, 0.0, radius)]).T
    moved = np.linalg.solve(first, points) - np.linalg.solve(second, points)
    return float(np.hypot(moved[0], moved[1]).mean())


def smooth_poses(forward: list[np.ndarray], backward: list[np.ndarray], end: np.ndarray, weights: np.ndarray,
                 centre: tuple[float, float], degree: int, *, scores: tuple[list[float], list[float]] | None = None,
                 radius: float = 10.0, disagreement: float = 2.5) -> list[np.ndarray]:
    """Smooth the noisy rigid maps of the frames between two keyframes, knowing both ends exactly.

    ``forward[i]`` and ``backward[i]`` are two estimates of the map from frame i to the left keyframe (the
    right keyframe's estimate already composed with ``end``, the right keyframe's map to the left one, found
    from the two drawn masks). Each map is written as the angle turned and where the left keyframe's label
    centre lies in the frame; each of the three is fitted over time (``weights``: 0 at the left keyframe,
    1 at the right) by a polynomial through both exact ends, robust to a few outliers.

    With ``scores`` (the match correlation of every estimate), a frame whose two estimates put the label
    (``centre``, ``radius``) more than ``disagreement`` pixels apart keeps only the better matching one: a
    track that lost the label in a dropout then cannot pull the curve away, and estimates count by their
    correlation.
    """
    c = np.asarray(centre, dtype=np.float64)

    def params(matrix: np.ndarray) -> np.ndarray:
        angle = float(np.arctan2(matrix[1, 0], matrix[0, 0]))
        position = np.linalg.solve(matrix[:2, :2], c - matrix[:2, 2])
        return np.array([angle, position[0], position[1]])

    n = len(weights)
    start_p, end_p = np.array([0.0, c[0], c[1]]), params(end)
    tau = np.concatenate([weights, weights])
    data = np.array([params(m) for m in [*forward, *backward]])
    line = start_p[None, :] + tau[:, None] * (end_p - start_p)[None, :]
    residual = data - line
    residual[:, 0] = np.angle(np.exp(1j * residual[:, 0]))  # turn by the short way round
    keep = np.ones(2 * n, dtype=bool)
    trust = np.ones(2 * n)
    if scores is not None:
        value = np.asarray([*scores[0], *scores[1]], dtype=np.float64)
        trust = np.clip(value, 0.05, 1.0)
        for i in range(n):
            if pose_distance(forward[i], backward[i], centre, radius) > disagreement:
                keep[n + i if value[i] >= value[n + i] else i] = False
    fitted = np.zeros((n, 3))
    if degree > 0:
        basis = np.stack([tau * (1 - tau) * tau**k for k in range(degree)], axis=1)
        coef = np.zeros((degree, 3))
        for _ in range(2):
            sw = trust[keep][:, None]
            coef, *_ = np.linalg.lstsq(basis[keep] * sw, residual[keep] * sw, rcond=None)
            error = np.abs(residual - basis @ coef)
            scale = 1.4826 * np.median(error[keep], axis=0) + np.array([0.02, 0.3, 0.3])
            inliers = keep & np.all(error <= 3.0 * scale, axis=1)
            if inliers.sum() < degree + 1:
                break
            keep = inliers
        w = np.asarray(weights, dtype=np.float64)
        fitted = np.stack([w * (1 - w) * w**k for k in range(degree)], axis=1) @ coef
    out = []
    for i, w in enumerate(weights):
        angle, px, py = start_p + w * (end_p - start_p) + fitted[i]
        rot = _rotation(angle)
        matrix = np.eye(3)
        matrix[:2, :2] = rot
        matrix[:2, 2] = c - rot @ np.array([px, py])
        out.append(matrix)
    return out
