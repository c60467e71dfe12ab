"""Frame-to-frame motion of a cine (dense optical flow) and the warps that carry a map along it.

A flow ``f`` from frame ``s`` to frame ``d`` says where each pixel of ``s`` is found in ``d``:
``image[s][y, x] ~ image[d][y + f[y, x, 1], x + f[y, x, 0]]``. Carrying a map drawn on ``d`` to ``s`` is then
one backward warp, and flows are chained by composition, so a map is resampled once however long the chain.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from medannot.interpolation.errors import InterpolationError

logger = logging.getLogger(__name__)


def _cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ImportError as exc:
        raise InterpolationError(
            "motion-guided interpolation needs OpenCV: pip install opencv-python-headless "
            "(or use --method shape)"
        ) from exc
    return cv2


@dataclass(frozen=True)
class FlowSettings:
    """How frames are prepared and matched (OpenCV DIS optical flow).

    Frames are normalised one by one to their own 1st..99th percentile (so gain flicker does not look like
    motion) and smoothed with a Gaussian of ``smoothing`` pixels (so speckle does not dominate the matching).
    With ``anchor`` each chained displacement is corrected by one more flow between the frame and its keyframe
    warped along the chain, which stops the chain from drifting over long spans. The defaults were chosen on
    ``Testing/benchmarks/bench_interpolation.py`` (256 x 256 echo-like cines).
    """

    smoothing: float = 1.5
    preset: str = "medium"
    patch_size: int = 16
    patch_stride: int = 5
    finest_scale: int = 1
    anchor: bool = True
    refinement_iterations: int = 5
    refinement_alpha: float = 20.0
    refinement_gamma: float = 10.0
    refinement_delta: float = 5.0
    rigid_labels: bool = True
    rigid_max_area: int = 2500
    rigid_margin: int = 4
    rigid_search: int = 6
    rigid_angles: tuple[float, ...] = (-0.24, -0.16, -0.08, 0.0, 0.08, 0.16, 0.24)


class FlowField:
    """Dense flows between neighbouring frames of one cine, computed on demand and kept in a bounded cache."""

    def __init__(self, frames: np.ndarray, settings: FlowSettings | None = None, cache_mb: float = 256.0) -> None:
        if frames.ndim != 3:
            raise InterpolationError(f"image must be frames x rows x columns; got shape {frames.shape}")
        self._cv2 = _cv2()
        self.frames = frames
        self.settings = settings or FlowSettings()
        self._prepared: dict[int, np.ndarray] = {}
        self._flows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_limit = int(cache_mb * 2**20)
        self._cache_bytes = 0
        rows, cols = frames.shape[1:]
        gy, gx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self._grid = (gx, gy)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

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

    def prepared(self, index: int) -> np.ndarray:
        """Frame ``index`` as the 8-bit, normalised, smoothed image the flow is computed on."""
        if index not in self._prepared:
            frame = np.asarray(self.frames[index], dtype=np.float32)
            low, high = np.percentile(frame, (1.0, 99.0))
            scaled = (frame - low) * (255.0 / max(float(high - low), 1e-6))
            if self.settings.smoothing > 0:
                scaled = self._cv2.GaussianBlur(scaled, (0, 0), self.settings.smoothing)
            self._prepared[index] = np.clip(scaled, 0, 255).astype(np.uint8)
        return self._prepared[index]

    def flow(self, source: int, target: int) -> np.ndarray:
        """Flow (rows x cols x 2, x then y displacement) from frame ``source`` to frame ``target``."""
        key = (source, target)
        cached = self._flows.get(key)
        if cached is not None:
            self._flows.move_to_end(key)
            return cached
        flow = self._make_dis().calc(self.prepared(source), self.prepared(target), None)
        self._flows[key] = flow
        self._cache_bytes += flow.nbytes
        while self._cache_bytes > self._cache_limit and len(self._flows) > 1:
            _, old = self._flows.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return flow

    def anchor(self, displacement: np.ndarray, frame: int, keyframe: int) -> np.ndarray:
        """Correct a chained ``displacement`` from ``frame`` to ``keyframe`` by matching them directly.

        The keyframe is warped onto ``frame`` along the chain; the small flow left between the two is composed
        in front of the chain. Matching starts from the chain's answer, so it never has to find a long motion.
        """
        keyframe_on_frame = self.warp(self.prepared(keyframe).astype(np.float32), displacement)
        keyframe_on_frame = np.clip(keyframe_on_frame, 0, 255).astype(np.uint8)
        residual = self._make_dis().calc(self.prepared(frame), keyframe_on_frame, None)
        return self.compose(residual, displacement)

    def compose(self, step: np.ndarray, chained: np.ndarray | None) -> np.ndarray:
        """Displacement of ``step`` followed by ``chained`` (both rows x cols x 2)."""
        if chained is None:
            return step.copy()
        gx, gy = self._grid
        moved = self._cv2.remap(chained, gx + step[..., 0], gy + step[..., 1], self._cv2.INTER_LINEAR,
                                borderMode=self._cv2.BORDER_REPLICATE)
        return step + moved

    def warp(self, values: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        """Sample ``values`` (rows x cols float32) at every pixel plus ``displacement``."""
        gx, gy = self._grid
        return self._cv2.remap(values, gx + displacement[..., 0], gy + displacement[..., 1],
                               self._cv2.INTER_LINEAR, borderMode=self._cv2.BORDER_REPLICATE)


@dataclass
class RigidState:
    """A rigid map from a frame to a keyframe, around one label: keyframe point = c + R(angle) (x - c - shift)."""

    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # x, y


def _ncc(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
    w = weight / max(float(weight.sum()), 1e-6)
    ma, mb = float((a * w).sum()), float((b * w).sum())
    da, db = a - ma, b - mb
    num = float((da * db * w).sum())
    den = np.sqrt(float((da * da * w).sum()) * float((db * db * w).sum()))
    return num / den if den > 1e-9 else -1.0


def _peak(values: np.ndarray, i: int) -> float:
    """Sub-sample offset of the peak at ``i`` of a 1D score by a parabola through its neighbours."""
    if i <= 0 or i >= len(values) - 1:
        return 0.0
    a, b, c = float(values[i - 1]), float(values[i]), float(values[i + 1])
    den = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0


def rigid_track(field: FlowField, frame: int, keyframe: int, label_mask: np.ndarray,
                predicted: RigidState) -> tuple[RigidState, float]:
    """Rigid map from ``frame`` to ``keyframe`` matching the keyframe around ``label_mask`` (drawn on it).

    Rotations of the keyframe patch are matched over translations (normalised cross-correlation with a mask)
    near the ``predicted`` map; returns the best map and its correlation.
    """
    cv2 = field._cv2
    s = field.settings
    ys, xs = np.nonzero(label_mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    half = int(np.ceil(max(np.abs(xs - cx).max(), np.abs(ys - cy).max()))) + s.rigid_margin + 1
    size = 2 * half + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * s.rigid_margin + 1,) * 2)
    weight = cv2.dilate(label_mask.astype(np.uint8), kernel).astype(np.float32)
    key_image = field.prepared(keyframe).astype(np.float32)
    image = field.prepared(frame).astype(np.float32)
    r = s.rigid_search
    centre = (cx + predicted.shift[0], cy + predicted.shift[1])
    base = (round(centre[0]), round(centre[1]))
    window = cv2.getRectSubPix(image, (size + 2 * r, size + 2 * r), (float(base[0]), float(base[1])))

    def score(angle: float) -> tuple[float, float, float]:
        c, sn = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -sn], [sn, c]], dtype=np.float64)
        offset = np.array([cx, cy]) - rot @ np.array([half, half], dtype=np.float64)
        matrix = np.hstack([rot, offset[:, None]])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        patch = cv2.warpAffine(key_image, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(weight, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        result = cv2.matchTemplate(window, patch, cv2.TM_CCOEFF_NORMED, mask=mask)
        result = np.nan_to_num(result, nan=-1.0, posinf=-1.0, neginf=-1.0)
        iy, ix = np.unravel_index(int(np.argmax(result)), result.shape)
        dx = ix + _peak(result[iy, :], ix) - r
        dy = iy + _peak(result[:, ix], iy) - r
        return float(result[iy, ix]), base[0] + dx - cx, base[1] + dy - cy

    angles = [predicted.angle + a for a in s.rigid_angles]
    results = [score(a) for a in angles]
    best = int(np.argmax([v[0] for v in results]))
    step = s.rigid_angles[1] - s.rigid_angles[0] if len(s.rigid_angles) > 1 else 0.0
    fine = [angles[best] - step / 2, angles[best] + step / 2]
    candidates = list(zip(angles, results)) + [(a, score(a)) for a in fine]
    angle, (value, sx, sy) = max(candidates, key=lambda item: item[1][0])
    return RigidState(angle, (sx, sy)), value


def rigid_displacement(field: FlowField, label_mask_centre: tuple[float, float], state: RigidState) -> np.ndarray:
    """Displacement field (rows x cols x 2) of a rigid map from a frame to its keyframe."""
    gx, gy = field._grid
    cx, cy = label_mask_centre
    c, sn = np.cos(state.angle), np.sin(state.angle)
    ux, uy = gx - cx - state.shift[0], gy - cy - state.shift[1]
    out = np.empty((*gx.shape, 2), dtype=np.float32)
    out[..., 0] = cx + c * ux - sn * uy - gx
    out[..., 1] = cy + sn * ux + c * uy - gy
    return out


def warped_correlation(field: FlowField, frame: int, keyframe: int, displacement: np.ndarray,
                       weight: np.ndarray) -> float:
    """Correlation of ``frame`` with the keyframe carried onto it by ``displacement``, within ``weight``."""
    carried = field.warp(field.prepared(keyframe).astype(np.float32), displacement)
    return _ncc(field.prepared(frame).astype(np.float32), carried, weight)
