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
