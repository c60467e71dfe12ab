"""Keyframe interpolation of label maps along one axis (time for a cine, slices for a volume).

Each span between two neighbouring keyframes is interpolated on its own, so editing one keyframe recomputes only
the two spans beside it (:meth:`Interpolator.update_keyframe`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise

import numpy as np

from medannot.errors import GeometryMismatchError
from medannot.interpolation._distance import signed_distance, smooth_signed_distance
from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.motion import (FlowField, FlowSettings, RigidState, rigid_displacement, rigid_track,
                                           warped_correlation)
from medannot.interpolation.result import InterpolationResult, SegmentFrames

logger = logging.getLogger(__name__)

METHODS = ("auto", "motion", "shape", "morphological")
Span = tuple[int, int]
Progress = Callable[[int], None]


def resolve_method(method: str, has_image: bool) -> str:
    """The method ``auto`` stands for (motion-guided with an image, shape-based without); checks the others."""
    if method not in METHODS:
        raise InterpolationError(f"unknown interpolation method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        return "motion" if has_image else "shape"
    if method == "motion" and not has_image:
        raise InterpolationError("method motion estimates motion from the image: give the cine or volume "
                                 "(--image), or use --method shape")
    return method


class Interpolator:
    """Label-map interpolation between keyframes, held span by span so a keyframe edit stays cheap.

    Parameters
    ----------
    keyframes
        Frame index -> 2D integer label mask (rows x cols) drawn on that frame. Labels on different keyframes
        with the same value are the same segment; 0 is background.
    n_frames
        Number of frames along the interpolation axis.
    image
        Frames x rows x cols grey image the labels are drawn on; needed for ``motion``.
    method
        ``auto`` (motion-guided when ``image`` is given, else shape-based), ``motion``, ``shape`` or
        ``morphological`` (ITK's morphological contour interpolation, run in a separate process).
    frame_times
        Acquisition time of every frame (ms); weights between two keyframes follow time rather than frame
        number. ``None``: frames are evenly spaced.
    spacing
        Pixel spacing (row, column) for the distance maps; only the ratio matters.

    Examples
    --------
    >>> interp = Interpolator({0: first, 10: tenth}, n_frames=11, image=cine)   # doctest: +SKIP
    >>> labels = interp.run().labels                                            # doctest: +SKIP
    >>> changed = interp.update_keyframe(10, corrected)   # recomputes frames 1..10 only  # doctest: +SKIP
    """

    def __init__(self, keyframes: Mapping[int, np.ndarray], n_frames: int, *, image: np.ndarray | None = None,
                 method: str = "auto", frame_times: Sequence[float] | None = None,
                 spacing: tuple[float, float] = (1.0, 1.0), flow_settings: FlowSettings | None = None) -> None:
        if not keyframes:
            raise InterpolationError("no keyframes given: draw at least one frame and list it as a keyframe")
        if n_frames < 1:
            raise InterpolationError(f"number of frames must be positive; got {n_frames}")
        self.n_frames = int(n_frames)
        self.method = resolve_method(method, image is not None)
        first = np.asarray(next(iter(keyframes.values())))
        if first.ndim != 2:
            raise InterpolationError(f"a keyframe mask must be 2D (rows x cols); got shape {first.shape}")
        self.frame_shape: tuple[int, int] = (int(first.shape[0]), int(first.shape[1]))
        self.spacing = spacing
        self._masks: dict[int, np.ndarray] = {}
        for frame, mask in keyframes.items():
            self._masks[self._check_frame(frame)] = self._check_mask(frame, mask)
        self.dtype = np.result_type(*self._masks.values(), np.uint8)
        self.image = None if image is None else np.asarray(image)
        if self.image is not None and self.image.shape != (self.n_frames, *self.frame_shape):
            raise GeometryMismatchError(
                f"image has {_shape(self.image.shape)} (frames x rows x cols) but the label map has "
                f"{_shape((self.n_frames, *self.frame_shape))}; give the image the labels were drawn on")
        self.frame_times = self._check_times(frame_times)
        self._flow = None
        if self.method == "motion" and self.image is not None:
            self._flow = FlowField(self.image, flow_settings)
        self._spans: dict[Span, np.ndarray] = {}
        self._distance: dict[tuple[int, int], np.ndarray | None] = {}
        # Seconds each span's computation took (morphological: the filter's share, without the child's start-up).
        self.span_seconds: dict[Span, float] = {}

    # ------------------------------------------------------------------ validation
    def _check_frame(self, frame: int) -> int:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise InterpolationError(f"keyframe {frame!r} is not a frame number")
        if not 0 <= int(frame) < self.n_frames:
            raise InterpolationError(f"keyframe {frame} is out of range: frames are 0..{self.n_frames - 1}")
        return int(frame)

    def _check_mask(self, frame: int, mask: np.ndarray) -> np.ndarray:
        array = np.asarray(mask)
        if array.shape != self.frame_shape:
            raise InterpolationError(f"keyframe {frame}: mask is {_shape(array.shape)} but the other keyframes "
                                     f"are {_shape(self.frame_shape)} (rows x cols)")
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if not np.issubdtype(array.dtype, np.integer):
            raise InterpolationError(f"keyframe {frame}: labels must be integers; got {array.dtype}")
        if array.size and array.min() < 0:
            raise InterpolationError(f"keyframe {frame}: negative label value {int(array.min())}")
        return array.copy()

    def _check_times(self, frame_times: Sequence[float] | None) -> np.ndarray | None:
        if frame_times is None:
            return None
        times = np.asarray(frame_times, dtype=float)
        if times.shape != (self.n_frames,):
            raise InterpolationError(f"{len(times)} frame times given for {self.n_frames} frames")
        if np.any(np.diff(times) <= 0):
            bad = int(np.argmax(np.diff(times) <= 0)) + 1
            raise InterpolationError(f"frame times must increase; frame {bad} is at {times[bad]:g} ms, "
                                     f"frame {bad - 1} at {times[bad - 1]:g} ms")
        return times

    # ------------------------------------------------------------------ keyframes and spans
    @property
    def keyframes(self) -> list[int]:
        return sorted(self._masks)

    @property
    def spans(self) -> list[Span]:
        keys = self.keyframes
        return list(pairwise(keys))

    def keyframe(self, frame: int) -> np.ndarray:
        return self._masks[frame]

    def run(self, progress: Progress | None = None) -> InterpolationResult:
        """Interpolate every span not yet computed and return the whole result."""
        self._compute([s for s in self.spans if s not in self._spans], progress)
        return self.result()

    def update_keyframe(self, frame: int, mask: np.ndarray, progress: Progress | None = None) -> range:
        """Set (or add) the mask of keyframe ``frame`` and recompute the spans beside it.

        Returns the frames whose content may have changed: from the keyframe before ``frame`` (exclusive) to
        the one after it (exclusive), ``frame`` included. Other spans keep their results untouched.
        """
        frame = self._check_frame(frame)
        self._masks[frame] = self._check_mask(frame, mask)
        self.dtype = np.result_type(self.dtype, self._masks[frame])
        self._distance = {k: v for k, v in self._distance.items() if k[0] != frame}
        return self._recompute_around(frame, progress)

    def remove_keyframe(self, frame: int, progress: Progress | None = None) -> range:
        """Stop treating ``frame`` as a keyframe; its neighbours' span is recomputed. Returns the changed frames."""
        if frame not in self._masks:
            raise InterpolationError(f"frame {frame} is not a keyframe; keyframes are {self.keyframes}")
        if len(self._masks) == 1:
            raise InterpolationError("cannot remove the last keyframe")
        keys = self.keyframes
        i = keys.index(frame)
        before = keys[i - 1] if i > 0 else None
        after = keys[i + 1] if i + 1 < len(keys) else None
        del self._masks[frame]
        self._distance = {k: v for k, v in self._distance.items() if k[0] != frame}
        for span in [s for s in self._spans if frame in s]:
            del self._spans[span]
        if before is not None and after is not None:
            self._compute([(before, after)], progress)
        lo = before + 1 if before is not None else frame
        hi = after if after is not None else frame + 1
        return range(lo, hi)

    def _recompute_around(self, frame: int, progress: Progress | None) -> range:
        keys = self.keyframes
        i = keys.index(frame)
        before = keys[i - 1] if i > 0 else None
        after = keys[i + 1] if i + 1 < len(keys) else None
        # A new keyframe splits the span it falls in; an edited one invalidates the spans it bounds.
        for span in [s for s in self._spans if s[0] <= frame <= s[1]]:
            del self._spans[span]
        todo = [s for s in ((before, frame), (frame, after)) if s[0] is not None and s[1] is not None]
        self._compute(todo, progress)  # type: ignore[arg-type]
        lo = before + 1 if before is not None else frame
        hi = after if after is not None else frame + 1
        return range(lo, hi)

    # ------------------------------------------------------------------ computation
    def _compute(self, spans: list[Span], progress: Progress | None) -> None:
        if not spans:
            return
        if self.method == "morphological":
            from medannot.interpolation.morphological import interpolate_spans

            results, elapsed = interpolate_spans(self._masks, spans, self.dtype)
            for span, frames in results.items():
                self._spans[span] = frames
                self.span_seconds[span] = elapsed * (span[1] - span[0]) / sum(b - a for a, b in spans)
                if progress:
                    progress(span[1] - span[0])
            return
        for span in spans:
            started = time.perf_counter()
            self._spans[span] = self._interpolate_span(*span)
            self.span_seconds[span] = time.perf_counter() - started
            if progress:
                progress(span[1] - span[0])

    def _weights(self, a: int, b: int) -> np.ndarray:
        """Weight of keyframe ``b`` at each frame strictly between ``a`` and ``b``."""
        frames = np.arange(a + 1, b)
        if self.frame_times is None:
            return (frames - a) / float(b - a)
        t = self.frame_times
        return (t[frames] - t[a]) / (t[b] - t[a])

    def _signed_distance(self, frame: int, label: int) -> np.ndarray | None:
        key = (frame, label)
        if key not in self._distance:
            d = signed_distance(self._masks[frame] == label, self.spacing)
            if np.isposinf(d).all():
                self._distance[key] = None
            else:
                d = np.where(np.isneginf(d), -float(sum(d.shape)), d).astype(np.float32)
                self._distance[key] = smooth_signed_distance(d)
        return self._distance[key]

    def _interpolate_span(self, a: int, b: int) -> np.ndarray:
        out = np.zeros((b - a - 1, *self.frame_shape), dtype=self.dtype)
        present = set(np.unique(self._masks[a]).tolist()) | set(np.unique(self._masks[b]).tolist())
        if b - a <= 1 or not present - {0}:
            return out
        # Background competes like any segment: each pixel goes to the region whose interpolated signed distance
        # is lowest, so neighbouring segments neither overlap nor open a gap between them.
        regions = sorted(present)
        weights = self._weights(a, b)
        start = {region: self._signed_distance(a, region) for region in regions}
        end = {region: self._signed_distance(b, region) for region in regions}
        flow = self._flow
        backward: list[np.ndarray | None] = [None] * (b - a - 1)
        if flow is not None:
            # Chain from the right keyframe back to a+1, then from the left keyframe forward: each frame's
            # displacement to a keyframe is composed frame by frame, never registered across the whole gap.
            chained = None
            for t in range(b - 1, a, -1):
                chained = flow.compose(flow.flow(t, t + 1), chained)
                if flow.settings.anchor:
                    chained = flow.anchor(chained, t, b)
                backward[t - a - 1] = chained
        rigid_b = self._rigid_chain(b, range(b - 1, a, -1), backward, a)
        forward_steps: list[np.ndarray | None] = [None] * (b - a - 1)
        if flow is not None:
            forward_disp = None
            for t in range(a + 1, b):
                forward_disp = flow.compose(flow.flow(t, t - 1), forward_disp)
                if flow.settings.anchor:
                    forward_disp = flow.anchor(forward_disp, t, a)
                forward_steps[t - a - 1] = forward_disp
        rigid_a = self._rigid_chain(a, range(a + 1, b), forward_steps, a)
        for i, t in enumerate(range(a + 1, b)):
            forward = forward_steps[i]
            w = float(weights[i])
            best = np.full(self.frame_shape, np.inf, dtype=np.float32)
            chosen = np.zeros(self.frame_shape, dtype=self.dtype)
            for region in regions:
                d = _blend(_carry(flow, start[region], rigid_a.get((t, region), forward)),
                           _carry(flow, end[region], rigid_b.get((t, region), backward[i])), w)
                closer = d < best
                best[closer] = d[closer]
                chosen[closer] = region
            out[i] = chosen
        return out

    def _rigid_chain(self, key: int, frames: range, dense: list[np.ndarray | None],
                     a: int) -> dict[tuple[int, int], np.ndarray]:
        """Per-label rigid displacements to keyframe ``key`` where they match the image better than ``dense``.

        Small labels (a crescent turning fast in low contrast) are tracked as rigid bodies from the keyframe,
        frame by frame along ``frames``; a frame keeps the dense flow for a label unless the rigidly carried
        keyframe correlates better with it around that label.
        """
        flow = self._flow
        out: dict[tuple[int, int], np.ndarray] = {}
        if flow is None or not flow.settings.rigid_labels:
            return out
        cv2 = flow._cv2
        s = flow.settings
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * s.rigid_margin + 1,) * 2)
        mask_key = self._masks[key]
        for region in sorted(set(np.unique(mask_key).tolist()) - {0}):
            label = mask_key == region
            area = int(np.count_nonzero(label))
            if area < 16 or area > s.rigid_max_area:
                continue
            ys, xs = np.nonzero(label)
            centre = (float(xs.mean()), float(ys.mean()))
            weight = cv2.dilate(label.astype(np.uint8), kernel).astype(np.float32)
            state = RigidState()
            for t in frames:
                state, _ = rigid_track(flow, t, key, label, state)
                rigid = rigid_displacement(flow, centre, state)
                carried_weight = flow.warp(weight, rigid)
                dense_disp = dense[t - a - 1]
                if dense_disp is None:
                    continue
                if (warped_correlation(flow, t, key, rigid, carried_weight)
                        > warped_correlation(flow, t, key, dense_disp, carried_weight)):
                    out[(t, region)] = rigid
        return out

    # ------------------------------------------------------------------ result
    def result(self) -> InterpolationResult:
        """The label map and per-segment frame lists from what is computed so far (run() first)."""
        missing = [s for s in self.spans if s not in self._spans]
        if missing:
            raise InterpolationError(f"spans {missing} are not interpolated yet; call run()")
        labels = np.zeros((self.n_frames, *self.frame_shape), dtype=self.dtype)
        for frame, mask in self._masks.items():
            labels[frame] = mask
        for (a, b), frames in self._spans.items():
            labels[a + 1:b] = frames
        keys = self.keyframes
        present = {k: set(np.unique(self._masks[k]).tolist()) - {0} for k in keys}
        segments = []
        for label in sorted(set().union(*present.values())):
            interpolated = [t for a, b in self.spans if label in present[a] or label in present[b]
                            for t in range(a + 1, b)]
            segments.append(SegmentFrames(int(label), [k for k in keys if label in present[k]], interpolated))
        outside = [*range(keys[0]), *range(keys[-1] + 1, self.n_frames)]
        return InterpolationResult(labels, self.method, 0, keys, segments, outside,
                                   frame_times_used=self.frame_times is not None,
                                   seconds=sum(self.span_seconds.get(s, 0.0) for s in self.spans))


def _carry(flow: FlowField | None, distance: np.ndarray | None, displacement: np.ndarray | None) -> np.ndarray | None:
    if distance is None or flow is None or displacement is None:
        return distance
    return flow.warp(distance, displacement)


def _blend(start: np.ndarray | None, end: np.ndarray | None, w: float) -> np.ndarray:
    if start is not None and end is not None:
        return (1.0 - w) * start + w * end
    # The segment is on one keyframe only: shrink it evenly so that it vanishes exactly at the other one.
    if start is not None:
        return start + w * (max(-float(start.min()), 0.0) + 1.0)
    assert end is not None
    return end + (1.0 - w) * (max(-float(end.min()), 0.0) + 1.0)


def _shape(shape: Sequence[int]) -> str:
    return " x ".join(str(int(v)) for v in shape)


def interpolate_labels(labels: np.ndarray, keyframes: Sequence[int], *, image: np.ndarray | None = None,
                       method: str = "auto", frame_times: Sequence[float] | None = None, axis: int = 0,
                       spacing: tuple[float, float] = (1.0, 1.0), flow_settings: FlowSettings | None = None,
                       progress: Progress | None = None) -> InterpolationResult:
    """Interpolate a 3D label map between the given keyframes along ``axis``.

    Only the keyframes of ``labels`` are read; every other frame is recomputed. ``image`` (same shape as
    ``labels``) guides the motion-guided method.

    Raises
    ------
    InterpolationError
        Empty or out-of-range keyframes, an unknown method, or ``motion`` without an image.
    GeometryMismatchError
        ``image`` and ``labels`` differ in size.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InterpolationError(f"label map must be 3D (frames x rows x cols); got shape {labels.shape}")
    if not -3 <= axis < 3:
        raise InterpolationError(f"axis {axis} does not exist in a 3D label map; use 0, 1 or 2")
    axis %= 3
    keys = sorted({int(k) for k in keyframes})
    if not keys:
        raise InterpolationError("the keyframe list is empty: list the frames you drew, e.g. 0,10,20")
    n = labels.shape[axis]
    for k in keys:
        if not 0 <= k < n:
            raise InterpolationError(f"keyframe {k} is out of range: the label map has {n} frames along axis "
                                     f"{axis} (0..{n - 1})")
    if image is not None:
        image = np.asarray(image)
        if image.shape != labels.shape:
            raise GeometryMismatchError(f"image is {_shape(image.shape)} but the label map is "
                                        f"{_shape(labels.shape)}; give the image the labels were drawn on")
        image = np.moveaxis(image, axis, 0)
    moved = np.moveaxis(labels, axis, 0)
    interpolator = Interpolator({k: moved[k] for k in keys}, n, image=image, method=method,
                                frame_times=frame_times, spacing=spacing, flow_settings=flow_settings)
    result = interpolator.run(progress)
    result.labels = np.moveaxis(result.labels, 0, axis)
    result.axis = axis
    return result
