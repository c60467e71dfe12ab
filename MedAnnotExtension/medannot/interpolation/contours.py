"""Keyframe interpolation of polygons, polylines and points (vertex coordinates, not masks).

Polygons are matched by arc length: both keyframe outlines are resampled to the same number of vertices at
equal arc-length steps, a closed outline is turned to the same orientation and rotated to the start vertex that
fits best. Matched vertices (and points, matched by order) then move linearly in time or, when the image is
given, along its motion: each vertex is carried forward from the left keyframe and backward from the right one
along the same optical flow the label maps follow, and the two positions are blended by time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.motion import FlowField, FlowSettings

logger = logging.getLogger(__name__)

KINDS = ("polygon", "polyline", "points")


def resample_by_arc_length(vertices: np.ndarray, count: int, closed: bool = True) -> np.ndarray:
    """``count`` vertices at equal arc-length steps along an outline (closed) or a line (open)."""
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or len(v) < 2:
        raise InterpolationError(f"an outline needs at least 2 vertices with coordinates; got shape {v.shape}")
    path = np.vstack([v, v[:1]]) if closed else v
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    position = np.concatenate([[0.0], np.cumsum(lengths)])
    total = position[-1]
    if total <= 0:
        return np.repeat(v[:1], count, axis=0)
    stops = np.linspace(0.0, total, count, endpoint=not closed)
    return np.column_stack([np.interp(stops, position, path[:, d]) for d in range(v.shape[1])])


def _signed_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def match_outlines(start: np.ndarray, end: np.ndarray, closed: bool = True,
                   count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample two outlines to matching vertices (same count, orientation and best start vertex)."""
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    if start.shape[1:] != end.shape[1:]:
        raise InterpolationError(f"outlines have {start.shape[1]}D and {end.shape[1]}D vertices")
    n = count or max(len(start), len(end), 16)
    a = resample_by_arc_length(start, n, closed)
    b = resample_by_arc_length(end, n, closed)
    if not closed:
        return a, b
    if a.shape[1] == 2 and _signed_area(a) * _signed_area(b) < 0:
        b = resample_by_arc_length(np.asarray(end)[::-1], n, closed)
    # Choose the rotation of b that moves vertices least (centroids removed so translation does not bias it).
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    cost = [float(np.sum((ac - np.roll(bc, -s, axis=0)) ** 2)) for s in range(n)]
    return a, np.roll(b, -int(np.argmin(cost)), axis=0)


def interpolate_track(keyframes: Mapping[int, np.ndarray], kind: str = "polygon",
                      frame_times: Sequence[float] | None = None,
                      count: int | None = None, image: np.ndarray | None = None,
                      flow_settings: FlowSettings | None = None) -> dict[int, np.ndarray]:
    """Interpolate one annotation drawn on some frames to every frame between the first and last of them.

    Parameters
    ----------
    keyframes
        Frame index -> vertices (N x 2 or N x 3 array). For ``points`` every keyframe has the same number of
        points, matched by order.
    kind
        ``polygon`` (closed outline), ``polyline`` (open line, matched from its first vertex) or ``points``.
    frame_times
        Time of every frame (ms), indexed by frame number; weights follow time. ``None``: evenly spaced.
    count
        Vertices per interpolated outline (default: the most vertices of the two keyframes, at least 16).
    image
        Frames x rows x cols image the annotation is drawn on. Vertices are then 2D pixel coordinates
        (column, row) and follow the image's motion instead of moving linearly.

    Returns
    -------
    dict
        Frame -> vertices for every frame from the first to the last keyframe; keyframes are returned as drawn.
    """
    if kind not in KINDS:
        raise InterpolationError(f"unknown annotation kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not keyframes:
        raise InterpolationError("no keyframes given for the annotation")
    frames = sorted(keyframes)
    times = None if frame_times is None else np.asarray(frame_times, dtype=float)
    if times is not None and (len(times) <= frames[-1] or np.any(np.diff(times) <= 0)):
        raise InterpolationError(f"frame times must increase and cover frame {frames[-1]}")
    out = {k: np.asarray(keyframes[k], dtype=float).copy() for k in frames}
    field = None
    if image is not None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] <= frames[-1]:
            raise InterpolationError(f"image must be frames x rows x cols covering frame {frames[-1]}; "
                                     f"got shape {image.shape}")
        if any(v.ndim != 2 or v.shape[1] != 2 for v in out.values()):
            raise InterpolationError("with an image, vertices must be 2D pixel coordinates (column, row)")
        field = FlowField(image, flow_settings)
    for a, b in pairwise(frames):
        if kind == "points":
            start, end = out[a], out[b]
            if start.shape != end.shape:
                raise InterpolationError(f"frames {a} and {b} hold {len(start)} and {len(end)} points; "
                                         "points are matched by order, so every keyframe needs the same number")
        else:
            start, end = match_outlines(out[a], out[b], closed=kind == "polygon", count=count)
        if b - a < 2:
            continue
        forward = backward = None
        if field is not None:
            forward = field.displacements(a, range(a + 1, b))
            backward = list(reversed(field.displacements(b, range(b - 1, a, -1))))
        for i, t in enumerate(range(a + 1, b)):
            w = (t - a) / (b - a) if times is None else (times[t] - times[a]) / (times[b] - times[a])
            if forward is None or backward is None:
                out[t] = (1.0 - w) * start + w * end
            else:
                out[t] = (1.0 - w) * _carry_points(start, forward[i]) + w * _carry_points(end, backward[i])
    return dict(sorted(out.items()))


def _carry_points(points: np.ndarray, displacement: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Where in a frame the keyframe ``points`` (column, row) are, given the frame's ``displacement`` to the keyframe.

    The displacement field maps each pixel of the frame to the keyframe; the points are found by inverting it:
    Newton steps on ``x + D(x) = p`` with the field's Jacobian from finite differences, each step at most 16 px,
    keeping every point's best solution (large turns and stretches, where plain fixed-point iteration diverges,
    converge too). A point that cannot be placed to within half a pixel is logged.
    """
    import cv2

    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    h = 0.5

    def sample(x: np.ndarray) -> np.ndarray:
        map_x = x[:, 0].reshape(1, -1).astype(np.float32)
        map_y = x[:, 1].reshape(1, -1).astype(np.float32)
        return cv2.remap(displacement, map_x, map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)[0].astype(np.float64)

    x = p.copy()
    best, best_residual = x.copy(), np.full(n, np.inf)
    for _ in range(iterations):
        values = sample(np.vstack([x, x + [h, 0.0], x + [0.0, h]]))
        d, dx, dy = values[:n], values[n:2 * n], values[2 * n:]
        residual = x + d - p
        size = np.hypot(residual[:, 0], residual[:, 1])
        better = size < best_residual
        best[better], best_residual[better] = x[better], size[better]
        if float(best_residual.max(initial=0.0)) < 1e-3:
            break
        jacobian = np.empty((n, 2, 2))
        jacobian[:, :, 0] = np.eye(2)[0] + (dx - d) / h
        jacobian[:, :, 1] = np.eye(2)[1] + (dy - d) / h
        singular = np.abs(np.linalg.det(jacobian)) < 1e-6
        jacobian[singular] = np.eye(2)
        step = np.linalg.solve(jacobian, residual[:, :, None])[:, :, 0]
        length = np.hypot(step[:, 0], step[:, 1])
        step *= np.minimum(1.0, 16.0 / np.maximum(length, 1e-12))[:, None]
        x = x - step
    if float(best_residual.max(initial=0.0)) > 0.5:
        logger.warning("%d of %d points could not be placed along the motion to within half a pixel (worst %.1f px)",
                       int(np.count_nonzero(best_residual > 0.5)), n, float(best_residual.max()))
    return best
