"""Keyframe interpolation of label maps along one axis (time for a cine, slices for a volume).

Each span between two neighbouring keyframes is interpolated on its own, so editing one keyframe recomputes only
the two spans beside it (:meth:`Interpolator.update_keyframe`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from itertools import pairwise

import numpy as np

from medannot.errors import GeometryMismatchError
from medannot.interpolation._distance import signed_distance, smooth_signed_distance
from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.motion import (Box, FlowField, FlowSettings, RigidState, align_masks,
                                           matrix_displacement, rigid_track, smooth_poses)
from medannot.interpolation.result import InterpolationResult, SegmentFrames

logger = logging.getLogger(__name__)

METHODS = ("auto", "motion", "shape", "morphological")
Span = tuple[int, int]
Progress = Callable[[int], None]


class _Everywhere:
    """The signed distance of a region that covers a whole keyframe: it has no boundary to carry."""

    def __repr__(self) -> str:
        return "EVERYWHERE"


EVERYWHERE = _Everywhere()
Distance = np.ndarray | _Everywhere | None


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
            settings = flow_settings or FlowSettings()
            if settings.flow_fits(self.frame_shape):
                self._flow = FlowField(self.image, settings)
            else:
                logger.warning("frames of %s pixels are too small for optical flow (DIS needs at least %d x %d): "
                               "interpolating shape-based instead of motion-guided", _shape(self.frame_shape),
                               settings.patch_size, int(np.ceil(1.5 * settings.patch_size)))
                self.method = "shape"
        self._spans: dict[Span, np.ndarray] = {}
        self._distance: dict[tuple[int, int], Distance] = {}
        self._flow_distance: dict[tuple[int, int], np.ndarray | None] = {}
        self._held: dict[Span, list[set[int]]] = {}  # labels in each computed frame of a span, for the result
        # Threads that interpolate spans side by side (motion-guided and shape-based).
        self.workers = min(2, _usable_cpus())
        # Seconds each span's computation took: its share, by frames, of the wall time of the batch it was
        # computed in (morphological: of the filter's time, without the child process's start-up).
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
        self._forget_distances(frame)
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
        self._forget_distances(frame)
        for span in [s for s in self._spans if frame in s]:
            del self._spans[span]
        if before is not None and after is not None:
            self._compute([(before, after)], progress)
        lo = before + 1 if before is not None else frame
        hi = after if after is not None else frame + 1
        return range(lo, hi)

    def _forget_distances(self, frame: int) -> None:
        self._distance = {k: v for k, v in self._distance.items() if k[0] != frame}
        self._flow_distance = {k: v for k, v in self._flow_distance.items() if k[0] != frame}

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
        # Spans are independent: two run side by side, so one span's single-threaded work (rigid tracking,
        # resampling) overlaps another's optical flow. Results do not depend on the order (tested).
        started = time.perf_counter()
        workers = min(len(spans), self.workers)
        total = sum(b - a for a, b in spans)
        if workers <= 1:
            for span in spans:
                self._spans[span] = self._interpolate_span(*span)
                if progress:
                    progress(span[1] - span[0])
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medannot-interp")
            try:
                futures = {pool.submit(self._interpolate_span, *span): span for span in spans}
                for future in as_completed(futures):
                    span = futures[future]
                    self._spans[span] = future.result()
                    if progress:
                        progress(span[1] - span[0])
            finally:
                # On an error (or a cancelled progress callback) the spans not started yet are dropped.
                pool.shutdown(wait=True, cancel_futures=True)
        elapsed = time.perf_counter() - started
        for a, b in spans:
            self.span_seconds[(a, b)] = elapsed * (b - a) / total

    def _weights(self, a: int, b: int) -> np.ndarray:
        """Weight of keyframe ``b`` at each frame strictly between ``a`` and ``b``."""
        frames = np.arange(a + 1, b)
        if self.frame_times is None:
            return (frames - a) / float(b - a)
        t = self.frame_times
        return (t[frames] - t[a]) / (t[b] - t[a])

    def _signed_distance(self, frame: int, label: int) -> Distance:
        """Smoothed signed distance of ``label`` on keyframe ``frame``; None where the label is absent and
        EVERYWHERE where it covers the whole frame (background of an empty keyframe): neither has a boundary."""
        key = (frame, label)
        if key not in self._distance:
            d = signed_distance(self._masks[frame] == label, self.spacing)
            if np.isposinf(d).all():
                self._distance[key] = None
            elif np.isneginf(d).all():
                self._distance[key] = EVERYWHERE
            else:
                self._distance[key] = smooth_signed_distance(d)
        return self._distance[key]

    def _distance_on_flow_grid(self, frame: int, label: int) -> np.ndarray | None:
        """The signed distance of ``label`` on keyframe ``frame`` on the flow grid, in pixels of that grid."""
        key = (frame, label)
        if key not in self._flow_distance:
            flow = self._flow
            d = self._signed_distance(frame, label)
            if flow is None or not isinstance(d, np.ndarray):
                self._flow_distance[key] = None
            else:
                self._flow_distance[key] = flow.reduce(d) * np.float32(flow.scale / min(self.spacing))
        return self._flow_distance[key]

    def _interpolate_span(self, a: int, b: int) -> np.ndarray:
        out = np.zeros((b - a - 1, *self.frame_shape), dtype=self.dtype)
        present = set(np.unique(self._masks[a]).tolist()) | set(np.unique(self._masks[b]).tolist())
        held: list[set[int]] = [{0} for _ in range(b - a - 1)]
        self._held[(a, b)] = held
        if b - a <= 1 or not present - {0}:
            return out
        # Background competes like any segment: each pixel goes to the region whose interpolated signed distance
        # is lowest, so neighbouring segments neither overlap nor open a gap between them.
        weights = self._weights(a, b)
        start = {region: self._signed_distance(a, region) for region in present}
        end = {region: self._signed_distance(b, region) for region in present}
        # A region that holds what the others leave comes last, when they are known.
        regions = sorted(present, key=lambda region: (_leaves_the_rest(start[region], end[region]), region))
        flow = self._flow
        backward: list[np.ndarray | None] = [None] * (b - a - 1)
        forward_steps: list[np.ndarray | None] = [None] * (b - a - 1)
        if flow is not None:
            # Each frame's displacement to a keyframe is found frame by frame walking away from that keyframe,
            # never registered across the whole gap in one step (on the flow grid; upsampled frame by frame).
            backward = list(reversed(flow.displacements(b, range(b - 1, a, -1), full=False)))
            forward_steps = list(flow.displacements(a, range(a + 1, b), full=False))
        rigid = self._rigid_poses(a, b, weights)
        # Only the part of the frame the keyframes' segments can reach is computed: elsewhere every segment's
        # distance is positive and the background's negative at both ends, so the background wins anyway.
        boxes = (_label_box(self._masks[a]), _label_box(self._masks[b]))
        margin = 2.0 + (0.0 if flow is None else 1.0 / flow.scale)
        still = _union(*(None if box is None else _grow(box, margin, self.frame_shape) for box in boxes))
        for i in range(b - a - 1):
            forward, back = forward_steps[i], backward[i]
            maps: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
            own: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            box = still
            if flow is not None:
                to_flow = flow.to_flow
                from_flow = np.linalg.inv(to_flow)
                for region, poses in rigid.items():
                    # Poses are on the flow grid: laid over the dense flow there, applied at full size.
                    own[region] = (from_flow @ poses[i][0] @ to_flow, from_flow @ poses[i][1] @ to_flow)
                    forward = self._layer(forward, a, region, matrix_displacement(flow, poses[i][0]))
                    back = self._layer(back, b, region, matrix_displacement(flow, poses[i][1]))
                assert forward is not None and back is not None
                box = _union(None if boxes[0] is None else flow.reach(forward, boxes[0], margin),
                             None if boxes[1] is None else flow.reach(back, boxes[1], margin))
                if box is not None:
                    maps = (flow.sampling_map(forward, box), flow.sampling_map(back, box))  # shared by every region
            if box is None:
                continue  # every segment carried out of the frame: background
            w = float(weights[i])
            size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
            best = np.full(size, np.inf, dtype=np.float32)
            closer = np.empty(size, dtype=bool)
            closer_d = np.empty(size, dtype=np.float32)
            chosen = out[i][box]
            for region in regions:
                if _leaves_the_rest(start[region], end[region]):
                    # Its distance is minus the lowest of the others': it wins exactly where none is inside.
                    np.negative(best, out=closer_d)
                    np.less(closer_d, best, out=closer)
                    np.copyto(best, closer_d, where=closer)
                    chosen[closer] = region
                    continue
                if flow is None:
                    carried = (_crop(start[region], box), _crop(end[region], box))
                elif region in own:
                    # A rigid label moves with its own map alone: the dense flow cannot leave a copy of it.
                    carried = (_carry_rigid(flow, start[region], own[region][0], box),
                               _carry_rigid(flow, end[region], own[region][1], box))
                else:
                    carried = (_carry(flow, start[region], maps[0]), _carry(flow, end[region], maps[1]))
                d = _blend(carried[0], carried[1], w)
                np.less(d, best, out=closer)
                np.copyto(best, d, where=closer)
                chosen[closer] = region
            held[i] = set(np.unique(chosen).tolist()) | ({0} if chosen.size < out[i].size else set())
        return out

    def _rigid_poses(self, a: int, b: int, weights: np.ndarray) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
        """Rigid maps (frame -> left keyframe, frame -> right keyframe, on flow-grid (x, y, 1)) of every label that
        moves as a rigid body.

        A label is rigid in a span when no other label lies within its layer's reach (a wall around a cavity
        deforms with it), its two keyframe masks are congruent (Dice >= ``rigid_min_dice`` after the best
        rotation and translation) and that rotation is unique (a disc or an ellipse fits several): a crescent
        turning fast in low contrast, which dense flow blurs. Its pose is tracked in every frame from both
        keyframes, and the noisy tracks are smoothed over time by a curve through the two exactly known ends
        (pose on the left keyframe; pose on the right one from the drawn masks), so the label keeps its drawn
        shape and arrives exactly where the reader put it. Where the image gives the tracker too little to match
        (median correlation below ``rigid_min_score``, e.g. a flat blood pool) the label stays on the dense flow.
        """
        flow = self._flow
        out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        if flow is None or not flow.settings.rigid_labels or b - a < 2:
            return out
        s = flow.settings
        mask_a, mask_b = self._masks[a], self._masks[b]
        to_flow = flow.to_flow
        for region in sorted((set(np.unique(mask_a).tolist()) & set(np.unique(mask_b).tolist())) - {0}):
            full_a, full_b = mask_a == region, mask_b == region
            area = int(np.count_nonzero(full_a))
            reach = s.rigid_margin + int(np.ceil(s.rigid_fade))
            if (area < 16 or area > s.rigid_max_area or _touches_other(mask_a, region, reach)
                    or _touches_other(mask_b, region, reach)):
                continue
            # The right keyframe's pose comes from the drawn masks at full size, where they are exact.
            end, dice, unique = align_masks(full_a, full_b, coarse=flow.scale)
            if dice < s.rigid_min_dice or not unique:
                continue
            end = to_flow @ end @ np.linalg.inv(to_flow)
            label_a, label_b = self._mask_on_flow_grid(full_a), self._mask_on_flow_grid(full_b)
            if not label_a.any() or not label_b.any():
                continue
            ys, xs = np.nonzero(label_a)
            centre_a = (float(xs.mean()), float(ys.mean()))
            radius = float(np.sqrt(np.mean((xs - centre_a[0]) ** 2 + (ys - centre_a[1]) ** 2)))
            ys, xs = np.nonzero(label_b)
            centre_b = (float(xs.mean()), float(ys.mean()))
            degree = 1 + (b - a - 1) // s.rigid_frames_per_degree
            inverse_end = np.linalg.inv(end)
            poses: list[np.ndarray] | None = None
            for _ in range(max(s.rigid_passes, 1)):
                # First pass: each frame predicted from the one before; later passes: from the smoothed track.
                forward, backward, forward_score, backward_score = [], [], [], []
                state = RigidState()
                for i, t in enumerate(range(a + 1, b)):
                    if poses is not None:
                        state = RigidState.from_matrix(poses[i], centre_a)
                    state, value = rigid_track(flow, t, a, label_a, state, refine=poses is not None)
                    forward.append(state.matrix(centre_a))
                    forward_score.append(value)
                state = RigidState()
                for i, t in reversed(list(enumerate(range(a + 1, b)))):
                    if poses is not None:
                        state = RigidState.from_matrix(inverse_end @ poses[i], centre_b)
                    state, value = rigid_track(flow, t, b, label_b, state, refine=poses is not None)
                    backward.append(end @ state.matrix(centre_b))
                    backward_score.append(value)
                backward.reverse()
                backward_score.reverse()
                if float(np.median(forward_score + backward_score)) < s.rigid_min_score:
                    poses = None  # too little to match: the dense flow does better
                    break
                poses = smooth_poses(forward, backward, end, weights, centre_a, degree,
                                     scores=(forward_score, backward_score), radius=radius,
                                     disagreement=2.5 * flow.scale)
            if poses is not None:
                out[region] = [(pose, inverse_end @ pose) for pose in poses]
        return out

    def _mask_on_flow_grid(self, mask: np.ndarray) -> np.ndarray:
        flow = self._flow
        assert flow is not None
        if flow.scale == 1.0:
            return mask
        return flow.reduce(mask.astype(np.float32)) >= 0.5

    def _layer(self, dense: np.ndarray | None, key: int, region: int, rigid: np.ndarray) -> np.ndarray | None:
        """``dense`` with the rigid displacement ``rigid`` laid over the label ``region`` of keyframe ``key`` and a
        margin (all on the flow grid)."""
        flow = self._flow
        distance = self._distance_on_flow_grid(key, region)
        if flow is None or dense is None or distance is None:
            return dense
        carried = flow.warp(distance, rigid)  # in flow-grid pixels, as the margin and fade are
        margin, fade = flow.rigid_margin, flow.rigid_fade
        weight = np.clip((margin + fade - carried) * np.float32(1.0 / fade), 0.0, 1.0)
        weight = weight[..., None]
        return dense + weight * (rigid - dense)

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
        # What each computed frame holds, read from the frames themselves: a segment that shrinks away towards a
        # keyframe without it (or an empty keyframe) is not claimed for the frames it has left.
        held: dict[int, set[int]] = {}
        for a, b in self.spans:
            known = self._held.get((a, b))
            for t in range(a + 1, b):
                held[t] = known[t - a - 1] if known is not None else set(np.unique(labels[t]).tolist())
        segments = []
        for label in sorted(set().union(*present.values())):
            computed = [t for a, b in self.spans if label in present[a] or label in present[b]
                        for t in range(a + 1, b)]
            segments.append(SegmentFrames(int(label), [k for k in keys if label in present[k]],
                                          [t for t in computed if label in held[t]],
                                          [t for t in computed if label not in held[t]]))
        outside = [*range(keys[0]), *range(keys[-1] + 1, self.n_frames)]
        return InterpolationResult(labels, self.method, 0, keys, segments, outside,
                                   frame_times_used=self.frame_times is not None,
                                   seconds=sum(self.span_seconds.get(s, 0.0) for s in self.spans))


def _usable_cpus() -> int:
    """CPUs this process may run on (affinity and container limits included where the platform says)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _touches_other(mask: np.ndarray, region: int, gap: int = 2) -> bool:
    """Whether another label lies within ``gap`` pixels of label ``region``."""
    import cv2

    near = cv2.dilate((mask == region).astype(np.uint8), np.ones((2 * gap + 1,) * 2, np.uint8)).astype(bool)
    others = mask[near]
    return bool(np.any((others != 0) & (others != region)))


def _carry(flow: FlowField, distance: Distance, sampling_map: np.ndarray | None) -> Distance:
    if not isinstance(distance, np.ndarray) or sampling_map is None:
        return distance
    return flow.carry(distance, sampling_map)


def _carry_rigid(flow: FlowField, distance: Distance, matrix: np.ndarray, box: Box) -> Distance:
    if not isinstance(distance, np.ndarray):
        return distance
    return flow.carry_rigid(distance, matrix, box)


def _crop(distance: Distance, box: Box) -> Distance:
    return distance[box] if isinstance(distance, np.ndarray) else distance


def _label_box(mask: np.ndarray) -> Box | None:
    """Rows and columns holding any segment (label other than 0), or None."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _grow(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    m = int(np.ceil(margin))
    return (slice(max(box[0].start - m, 0), min(box[0].stop + m, shape[0])),
            slice(max(box[1].start - m, 0), min(box[1].stop + m, shape[1])))


def _union(first: Box | None, second: Box | None) -> Box | None:
    if first is None or second is None:
        return first if second is None else second
    return (slice(min(first[0].start, second[0].start), max(first[0].stop, second[0].stop)),
            slice(min(first[1].start, second[1].start), max(first[1].stop, second[1].stop)))


def _leaves_the_rest(start: Distance, end: Distance) -> bool:
    """Whether a region covers one keyframe and is drawn on the other, e.g. the background next to an empty
    keyframe: it then holds what the other regions leave, so each of them shrinks away at its own pace."""
    return (start is EVERYWHERE and isinstance(end, np.ndarray)) or (end is EVERYWHERE and isinstance(start, np.ndarray))


def _blend(start: Distance, end: Distance, w: float) -> np.ndarray:
    if isinstance(start, np.ndarray) and isinstance(end, np.ndarray):
        return start * np.float32(1.0 - w) + end * np.float32(w)
    # The segment is on one keyframe only: shrink it evenly so that it vanishes exactly at the other one.
    if isinstance(start, np.ndarray) and end is None:
        return start + np.float32(w * (max(-float(start.min()), 0.0) + 1.0))
    if isinstance(end, np.ndarray) and start is None:
        return end + np.float32((1.0 - w) * (max(-float(end.min()), 0.0) + 1.0))
    # No boundary on either keyframe: everywhere on both, or everywhere on one and absent from the other
    # (a region everywhere on one keyframe and drawn on the other is what the others leave: _leaves_the_rest).
    value = -1.0 if start is EVERYWHERE and end is EVERYWHERE else (2.0 * w - 1.0 if start is EVERYWHERE
                                                                     else 1.0 - 2.0 * w)
    return np.full((1, 1), value, dtype=np.float32)


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
