"""Keyframe interpolation: label maps (motion-guided, shape-based, morphological), outlines and points, cine input,
incremental updates after a keyframe edit, and `medannot interpolate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medannot_testing import CLI_ENV, run_medannot

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medannot.demo_data import cine_phantom, make_us_cine
from medannot.errors import GeometryMismatchError
from medannot.imaging import read_label_map, write_label_map
from medannot.interpolation import (
    InterpolationError,
    Interpolator,
    interpolate_labels,
    interpolate_track,
    load_cine,
)

def medannot_interpolate(*args: object) -> subprocess.CompletedProcess[str]:
    return run_medannot("interpolate", *args)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.uint8)


def centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def moving_bean(frames: int = 21, size: int = 96, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A bright bean-shaped (non-convex) object that drifts 24 px and turns 60 degrees, on a noisy image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    labels = np.zeros((frames, size, size), dtype=np.uint8)
    for f in range(frames):
        u = f / (frames - 1)
        cy, cx, turn = 48.0, 34.0 + 24.0 * u, np.pi / 3 * u
        theta = np.arctan2(yy - cy, xx - cx) - turn
        labels[f] = np.hypot(yy - cy, xx - cx) < 17 * (1 + 0.35 * np.cos(2 * theta) + 0.1 * np.cos(3 * theta))
    image = np.where(labels > 0, 170.0, 70.0) + rng.normal(0, 18, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


# ---------------------------------------------------------------------------- label maps
@pytest.mark.parametrize("method", ["motion", "shape"])
def test_keyframes_come_back_unchanged(method):
    image, labels = cine_phantom(frames=13, rows=64, cols=80)
    keys = [0, 6, 12]
    result = interpolate_labels(labels, keys, image=image, method=method)
    for k in keys:
        np.testing.assert_array_equal(result.labels[k], labels[k])
    assert result.method == method
    assert result.keyframes == keys


def test_nested_labels_stay_exclusive_without_gaps_or_strays():
    # Cavity (1) inside a wall (2) that both move: no frame gets background between them, a wall pixel inside
    # the cavity, or a label no keyframe has.
    image, labels = cine_phantom(frames=13, rows=64, cols=80)
    result = interpolate_labels(labels, [0, 12], image=image, method="motion")
    for t in range(1, 12):
        frame = result.labels[t]
        assert set(np.unique(frame)) <= {0, 1, 2}
        cavity = frame == 1
        neighbours = [np.roll(frame, s, axis=a) for a in (0, 1) for s in (1, -1)]
        touching_background = cavity & np.any([n == 0 for n in neighbours], axis=0)
        assert not touching_background.any(), f"frame {t}: the cavity touches background"
        assert dice(cavity, labels[t] == 1) > 0.9


def test_shape_based_moves_a_translating_disk_to_the_right_place():
    shape = (64, 96)
    keyframes = {0: disk(shape, 32, 40, 20), 4: disk(shape, 32, 48, 20)}
    result = Interpolator(keyframes, 5, method="shape").run()
    assert result.method == "shape"
    for t, expected_x in [(1, 42), (2, 44), (3, 46)]:
        frame = result.labels[t] > 0
        assert centroid_x(frame) == pytest.approx(expected_x, abs=0.5)
        assert dice(frame, disk(shape, 32, expected_x, 20) > 0) > 0.97


def test_motion_guided_beats_shape_based_on_a_moving_non_convex_shape():
    image, truth = moving_bean()
    keys = [0, 20]
    scores = {}
    for method in ("motion", "shape"):
        labels = interpolate_labels(truth, keys, image=image, method=method).labels
        scores[method] = np.mean([dice(labels[t] > 0, truth[t] > 0) for t in range(1, 20)])
    assert scores["motion"] > 0.95
    assert scores["motion"] > scores["shape"] + 0.05, scores


def test_frame_times_set_the_weights():
    shape = (64, 96)
    keyframes = {0: disk(shape, 32, 40, 20), 4: disk(shape, 32, 48, 20)}
    even = Interpolator(keyframes, 5, method="shape").run()
    # Frame 2 is at 20 ms of a 100 ms span: one fifth of the way, not half.
    timed = Interpolator(keyframes, 5, method="shape", frame_times=[0, 10, 20, 30, 100]).run()
    assert timed.frame_times_used and not even.frame_times_used
    assert centroid_x(even.labels[2]) == pytest.approx(44, abs=0.5)
    assert centroid_x(timed.labels[2]) == pytest.approx(41.6, abs=0.5)


def test_a_segment_on_one_keyframe_only_shrinks_away_and_is_listed():
    shape = (48, 48)
    keyframes = {0: disk(shape, 24, 24, 12), 6: np.zeros(shape, np.uint8)}
    result = Interpolator(keyframes, 7, method="shape").run()
    areas = [int(np.count_nonzero(result.labels[t])) for t in range(7)]
    assert areas == sorted(areas, reverse=True) and areas[5] < areas[1] and areas[6] == 0
    assert result.segment(1).keyframes == [0]
    assert result.segment(1).interpolated_frames == [1, 2, 3, 4, 5]


def test_frames_outside_the_keyframes_are_left_empty_and_reported():
    _, labels = cine_phantom(frames=10, rows=48, cols=48)
    result = interpolate_labels(labels, [2, 6], method="shape")
    assert result.frames_outside_keyframes == [0, 1, 7, 8, 9]
    assert not result.labels[[0, 1, 7, 8, 9]].any()
    assert result.summary()["segments"][0] == {"label": 1, "keyframes": [2, 6], "interpolated_frames": [3, 4, 5]}


def test_interpolation_along_another_axis_keeps_the_array_layout():
    _, labels = cine_phantom(frames=12, rows=40, cols=40)
    swapped = np.ascontiguousarray(np.moveaxis(labels, 0, 2))  # rows x cols x frames
    result = interpolate_labels(swapped, [0, 11], method="shape", axis=2)
    assert result.labels.shape == swapped.shape and result.axis == 2
    np.testing.assert_array_equal(result.labels[..., 11], swapped[..., 11])


def test_morphological_runs_out_of_process_and_keeps_keyframes():
    shape = (48, 64)
    keyframes = {0: disk(shape, 24, 24, 10), 6: disk(shape, 24, 36, 10)}
    result = Interpolator(keyframes, 7, method="morphological").run()
    np.testing.assert_array_equal(result.labels[0], keyframes[0])
    np.testing.assert_array_equal(result.labels[6], keyframes[6])
    assert 26 < centroid_x(result.labels[3]) < 34
    assert "itk" not in sys.modules  # ITK's wrapping never enters this process (it corrupts the heap here)


@pytest.mark.parametrize(("keyframes", "message"), [
    ([], "empty"), ([0, 24], "out of range"), ([-1, 5], "out of range")])
def test_bad_keyframes_say_what_is_wrong(keyframes, message):
    _, labels = cine_phantom(frames=24, rows=32, cols=32)
    with pytest.raises(InterpolationError, match=message):
        interpolate_labels(labels, keyframes, method="shape")


def test_motion_needs_an_image_of_the_same_size():
    image, labels = cine_phantom(frames=8, rows=32, cols=32)
    with pytest.raises(InterpolationError, match="--image"):
        interpolate_labels(labels, [0, 7], method="motion")
    with pytest.raises(GeometryMismatchError, match="8 x 32 x 32"):
        interpolate_labels(labels, [0, 7], image=image[:, :, :30], method="motion")


# ---------------------------------------------------------------------------- rigid labels
def turning_crescent(frames: int = 11, size: int = 112, seed: int = 5,
                     turn: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A textured crescent turning ``turn`` rad per frame about its outer disc's centre and drifting 1 px/frame.

    Its speckle moves with it (plus 40 % fresh noise per frame); the background has speckle of its own that only
    drifts. The shape never changes: a rigid body, which dense optical flow smears at the speed it turns.
    """
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 1, (4 * size, 4 * size)).astype(np.float32)
    background = rng.normal(0, 1, (4 * size, 4 * size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((frames, size, size), np.uint8)
    labels = np.zeros((frames, size, size), np.uint8)
    for f in range(frames):
        cy, cx, angle = 56.0 + 0.5 * f, 50.0 + f, turn * f
        outer = np.hypot(yy - cy, xx - cx) < 26
        inner = np.hypot(yy - cy - 12 * np.sin(angle), xx - cx - 12 * np.cos(angle)) < 20
        labels[f] = outer & ~inner
        qy, qx = yy - cy, xx - cx  # material coordinates of the crescent
        my = (2 * size + np.cos(-angle) * qy + np.sin(-angle) * qx).astype(int)
        mx = (2 * size - np.sin(-angle) * qy + np.cos(-angle) * qx).astype(int)
        moving = np.where(labels[f] > 0, texture[my, mx], background[(yy - 0.5 * f).astype(int) + size,
                                                                     (xx - f).astype(int) + size])
        value = np.where(labels[f] > 0, 150.0, 90.0) + 25 * (0.77 * moving + 0.63 * rng.normal(0, 1, (size, size)))
        image[f] = np.clip(value, 0, 255).astype(np.uint8)
    return image, labels


def test_align_masks_finds_the_rotation_between_two_drawn_crescents():
    from medannot.interpolation.motion import RigidState, align_masks

    _, labels = turning_crescent(frames=7)
    matrix, dice_after, unique = align_masks(labels[0] > 0, labels[6] > 0)
    assert unique
    ys, xs = np.nonzero(labels[0])
    state = RigidState.from_matrix(matrix, (float(xs.mean()), float(ys.mean())))
    # Frame 6 is frame 0 turned 1.5 rad; the map goes from frame 6 back to frame 0, so it turns the other way.
    assert state.angle == pytest.approx(-1.5, abs=0.05)  # 0.05 rad: 1 px at the rim, the pixel grid of the masks
    assert dice_after > 0.97


def test_a_turning_crescent_is_tracked_as_a_rigid_body_and_keeps_its_shape():
    from medannot.interpolation import FlowSettings

    image, labels = turning_crescent()
    keys = {0: labels[0], 10: labels[10]}
    rigid = Interpolator(keys, 11, image=image, method="motion").run().labels
    dense = Interpolator(keys, 11, image=image, method="motion",
                         flow_settings=FlowSettings(rigid_labels=False)).run().labels
    rigid_dice = [dice(rigid[t] > 0, labels[t] > 0) for t in range(1, 10)]
    dense_dice = [dice(dense[t] > 0, labels[t] > 0) for t in range(1, 10)]
    assert min(rigid_dice) > 0.95, rigid_dice
    assert np.mean(rigid_dice) > np.mean(dense_dice) + 0.015, (rigid_dice, dense_dice)


def test_a_label_touching_another_is_not_taken_for_a_rigid_body():
    image, labels = turning_crescent(frames=5)
    touching = labels.copy()
    touching[:, :, :4] = 2  # a second label along the edge, nowhere near: the crescent stays rigid
    interp = Interpolator({0: touching[0], 4: touching[4]}, 5, image=image, method="motion")
    assert 1 in interp._rigid_poses(0, 4, interp._weights(0, 4))
    ring = labels.copy()
    ring[(ring == 0) & (np.roll(ring, 3, axis=2) == 1)] = 2  # a rim drawn against the crescent
    interp = Interpolator({0: ring[0], 4: ring[4]}, 5, image=image, method="motion")
    assert interp._rigid_poses(0, 4, interp._weights(0, 4)) == {}


def test_shapes_that_look_the_same_turned_are_not_spun_and_flat_images_leave_no_copies():
    from medannot.interpolation.motion import align_masks

    yy, xx = np.mgrid[0:64, 0:64]
    ellipse = (((yy - 32) / 6.0) ** 2 + ((xx - 30) / 14.0) ** 2 < 1).astype(np.uint8)
    _, dice_after, unique = align_masks(ellipse > 0, ellipse > 0)
    assert dice_after > 0.99 and not unique  # 0 and 180 degrees fit equally: not a rigid body to track
    rng = np.random.default_rng(2)
    textured = np.repeat(rng.integers(0, 255, (1, 64, 64)), 7, axis=0).astype(np.uint8)
    flat = np.full((7, 64, 64), 90, np.uint8)
    disc = disk((64, 64), 30, 30, 8)
    for image, shape in ((textured, ellipse), (flat, disc)):
        labels = Interpolator({0: shape, 6: shape}, 7, image=image, method="motion").run().labels
        for t in range(1, 6):  # nothing moves: every frame is the keyframe, one piece, not turned or copied
            assert np.count_nonzero(labels[t] != shape) <= 2, (t, np.count_nonzero(labels[t] != shape))


def test_the_rigid_layer_is_measured_in_pixels_whatever_the_pixel_spacing():
    image, labels = turning_crescent(frames=5)
    shift = np.zeros((*labels.shape[1:], 2), np.float32)
    shift[..., 0] = 5.0  # a rigid displacement: 5 px to the right
    footprints = []
    for spacing in ((1.0, 1.0), (0.25, 0.25)):
        interp = Interpolator({0: labels[0], 4: labels[4]}, 5, image=image, method="motion", spacing=spacing)
        layered = interp._layer(np.zeros((*labels.shape[1:], 2), np.float32), 0, 1, shift)
        footprints.append(int(np.count_nonzero(layered[..., 0])))
    # the layer covers the label plus margin and fade in pixels; in mm at 0.25 mm/px it would be 4 times wider
    assert footprints[1] == pytest.approx(footprints[0], rel=0.05), footprints


def test_flow_without_the_keyframe_correction_still_follows_every_frame():
    from medannot.interpolation import FlowSettings

    image, labels = moving_bean()
    keys = {0: labels[0], 20: labels[20]}
    plain = Interpolator(keys, 21, image=image, method="motion",
                         flow_settings=FlowSettings(anchor=False, rigid_labels=False)).run().labels
    assert min(dice(plain[t] > 0, labels[t] > 0) for t in range(1, 20)) > 0.9


def test_flow_settings_that_cannot_work_are_refused_with_their_name():
    from medannot.interpolation import FlowSettings

    with pytest.raises(InterpolationError, match="rigid_frames_per_degree must be positive"):
        FlowSettings(rigid_frames_per_degree=0)
    with pytest.raises(InterpolationError, match="preset must be"):
        FlowSettings(preset="slow")


def test_smoothed_poses_ignore_a_track_that_lost_the_label():
    from medannot.interpolation.motion import RigidState, pose_distance, smooth_poses

    centre = (50.0, 50.0)
    n = 9
    weights = np.arange(1, n + 1) / (n + 1)
    truth = [RigidState(0.6 * w, (8.0 * w, -3.0 * w)).matrix(centre) for w in weights]
    end = RigidState(0.6, (8.0, -3.0)).matrix(centre)
    rng = np.random.default_rng(0)
    noisy = [RigidState(0.6 * w + rng.normal(0, 0.02), (8.0 * w + rng.normal(0, 0.3), -3.0 * w)).matrix(centre)
             for w in weights]
    lost = list(noisy)
    for i in range(4):  # the right keyframe's track lost the label on the first four frames
        lost[i] = RigidState(0.6 * weights[i] - 0.5, (8.0 * weights[i] + 12.0, 9.0)).matrix(centre)
    scores = ([0.5] * n, [0.3] * 4 + [0.5] * (n - 4))
    kept = smooth_poses(noisy, lost, end, weights, centre, 2, scores=scores, radius=10.0)
    pulled = smooth_poses(noisy, lost, end, weights, centre, 2, radius=10.0)
    kept_error = max(pose_distance(p, t, centre, 10.0) for p, t in zip(kept, truth, strict=True))
    pulled_error = max(pose_distance(p, t, centre, 10.0) for p, t in zip(pulled, truth, strict=True))
    assert kept_error < 1.0
    assert pulled_error > 2 * kept_error


def test_spans_computed_side_by_side_equal_spans_computed_one_by_one():
    image, labels = cine_phantom(frames=21, rows=64, cols=80)
    keys = {k: labels[k] for k in (0, 5, 10, 15, 20)}
    together = Interpolator(keys, 21, image=image, method="motion")
    assert together.workers == min(2, __import__("os").cpu_count() or 1)
    together.workers = 2
    alone = Interpolator(keys, 21, image=image, method="motion")
    alone.workers = 1
    np.testing.assert_array_equal(together.run().labels, alone.run().labels)


# ---------------------------------------------------------------------------- incremental updates
def test_editing_a_keyframe_recomputes_only_the_two_spans_beside_it(monkeypatch):
    image, labels = cine_phantom(frames=21, rows=64, cols=80)
    interp = Interpolator({k: labels[k] for k in (0, 5, 10, 15, 20)}, 21, image=image, method="motion")
    before = interp.run().labels.copy()
    computed: list[tuple[int, int]] = []
    original = Interpolator._interpolate_span

    def spy(self, a, b):
        computed.append((a, b))
        return original(self, a, b)

    monkeypatch.setattr(Interpolator, "_interpolate_span", spy)
    edited = labels[10].copy()
    edited[edited == 1] = 0  # the reader removes the cavity on frame 10
    changed = interp.update_keyframe(10, edited)
    assert changed == range(6, 15)
    assert sorted(computed) == [(5, 10), (10, 15)]
    after = interp.result().labels
    untouched = [t for t in range(21) if t not in changed]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    np.testing.assert_array_equal(after[10], edited)
    fresh_keys = {k: labels[k] for k in (0, 5, 15, 20)} | {10: edited}
    fresh = Interpolator(fresh_keys, 21, image=image, method="motion").run().labels
    np.testing.assert_array_equal(after, fresh)


def test_adding_and_removing_a_keyframe_touch_one_span():
    _, labels = cine_phantom(frames=21, rows=48, cols=48)
    interp = Interpolator({0: labels[0], 10: labels[10], 20: labels[20]}, 21, method="shape")
    interp.run()
    assert interp.update_keyframe(14, labels[14]) == range(11, 20)
    assert interp.keyframes == [0, 10, 14, 20]
    assert interp.remove_keyframe(14) == range(11, 20)
    assert interp.spans == [(0, 10), (10, 20)]
    np.testing.assert_array_equal(
        interp.result().labels,
        Interpolator({0: labels[0], 10: labels[10], 20: labels[20]}, 21, method="shape").run().labels)


# ---------------------------------------------------------------------------- outlines and points
def test_polygons_are_matched_by_arc_length_whatever_their_vertices():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    # The same square drawn the other way round, from another corner, with extra vertices on its edges.
    dense = np.array([[30, 30], [30, 25], [30, 20], [25, 20], [20, 20], [20, 25], [20, 30], [25, 30]], float)
    track = interpolate_track({0: square, 4: dense}, kind="polygon", count=16)
    middle = track[2]
    assert sorted(track) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(track[0], square)
    # Halfway, the square has moved by (10, 10) and kept its size and shape: each vertex moved by the same amount.
    np.testing.assert_allclose(middle.min(axis=0), [10, 10], atol=1e-6)
    np.testing.assert_allclose(middle.max(axis=0), [20, 20], atol=1e-6)
    side_lengths = np.linalg.norm(np.diff(np.vstack([middle, middle[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(side_lengths, 2.5, atol=1e-6)


def test_points_move_linearly_in_time():
    track = interpolate_track({0: [[0.0, 0.0], [5.0, 5.0]], 10: [[10.0, 20.0], [5.0, 5.0]]}, kind="points",
                              frame_times=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20])
    np.testing.assert_allclose(track[5], [[2.5, 5.0], [5.0, 5.0]])
    with pytest.raises(InterpolationError, match="same number"):
        interpolate_track({0: [[0.0, 0.0]], 4: [[1.0, 1.0], [2.0, 2.0]]}, kind="points")


# ---------------------------------------------------------------------------- cine input
def textured_disc_on_a_curve(frames: int = 11, size: int = 96, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc (radius 14) that moves 40 px right along an arc 16 px high; returns image and centres."""
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 1, (3 * size, 3 * size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((frames, size, size), np.uint8)
    centres = []
    for f in range(frames):
        u = f / (frames - 1)
        cx, cy = 25 + 40 * u, 48 - 16 * np.sin(np.pi * u)
        centres.append((cx, cy))
        disc = np.hypot(xx - cx, yy - cy) < 14
        moving = texture[(yy - cy).astype(int) + size, (xx - cx).astype(int) + size]
        still = texture[yy.astype(int), xx.astype(int)]
        value = np.where(disc, 150 + 30 * moving, 80 + 20 * still) + rng.normal(0, 8, (size, size))
        image[f] = np.clip(value, 0, 255).astype(np.uint8)
    return image, np.asarray(centres)


def test_points_and_outlines_follow_the_image_motion_when_the_image_is_given():
    image, centres = textured_disc_on_a_curve()
    offsets = np.array([[0.0, 0.0], [5.0, 3.0]])
    keys = {0: centres[0] + offsets, 10: centres[10] + offsets}
    guided = interpolate_track(keys, "points", image=image)
    linear = interpolate_track(keys, "points")
    guided_error = max(float(np.abs(guided[t] - (centres[t] + offsets)).max()) for t in range(11))
    linear_error = max(float(np.abs(linear[t] - (centres[t] + offsets)).max()) for t in range(11))
    assert guided_error < 1.0
    assert linear_error > 15.0  # the arc's height: a straight line misses it
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.column_stack([np.cos(angles), np.sin(angles)]) * 12.0
    outlines = interpolate_track({0: centres[0] + ring, 10: centres[10] + ring}, "polygon", image=image)
    for t in range(1, 10):
        radius = np.hypot(*(outlines[t] - centres[t]).T)
        assert np.abs(radius - 12.0).max() < 1.5, (t, radius)


@pytest.mark.parametrize(("turn", "scale"), [(0.3, 1.0), (1.2, 1.0), (2.5, 1.0), (0.0, 2.2), (0.0, 0.7)])
def test_points_are_placed_by_inverting_the_motion_even_for_large_turns_and_stretches(turn, scale):
    from medannot.interpolation.contours import _carry_points

    gy, gx = np.mgrid[0:128, 0:128].astype(np.float64)
    centre = np.array([64.0, 64.0])
    matrix = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    to_key_x = centre[0] + matrix[0, 0] * (gx - centre[0]) + matrix[0, 1] * (gy - centre[1])
    to_key_y = centre[1] + matrix[1, 0] * (gx - centre[0]) + matrix[1, 1] * (gy - centre[1])
    displacement = np.stack([to_key_x - gx, to_key_y - gy], axis=-1).astype(np.float32)
    on_key = np.array([[70.0, 60.0], [50.0, 80.0], [64.0, 40.0]])
    expected = centre + (np.linalg.inv(matrix) @ (on_key - centre).T).T
    np.testing.assert_allclose(_carry_points(on_key, displacement), expected, atol=0.05)


def test_image_guided_tracks_need_2d_pixel_coordinates_and_a_covering_image():
    image, centres = textured_disc_on_a_curve(frames=5)
    with pytest.raises(InterpolationError, match="covering frame 6"):
        interpolate_track({0: centres[:1], 6: centres[:1]}, "points", image=image)
    with pytest.raises(InterpolationError, match="2D pixel coordinates"):
        interpolate_track({0: np.zeros((1, 3)), 4: np.ones((1, 3))}, "points", image=image)


def test_real_colour_jpeg_ultrasound_loads_as_a_grey_cine():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("examples_ybr_color.dcm")
    cine = load_cine(path)
    assert cine.shape == (30, 240, 320)
    assert cine.frames.dtype == np.float32
    assert cine.frame_times_ms is not None and cine.frame_times_ms[1] == pytest.approx(33.333)
    rgb = dcmread(path).pixel_array[7].astype(float)
    np.testing.assert_allclose(cine.frames[7], rgb @ [0.299, 0.587, 0.114], atol=1e-3)
    assert cine.frames.std() > 10  # real picture content, not a blank decode


def test_synthetic_grey_dicom_and_nrrd_cines_load_with_their_frame_times(tmp_path):
    dicom = load_cine(make_us_cine(tmp_path / "cine.dcm", frames=6, rows=32, cols=40, frame_time_ms=40.0))
    assert dicom.shape == (6, 32, 40)
    assert dicom.frame_times_ms == pytest.approx([0, 40, 80, 120, 160, 200])
    image, _ = cine_phantom(frames=6, rows=32, cols=40)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "cine.nrrd"))
    nrrd = load_cine(tmp_path / "cine.nrrd")
    np.testing.assert_array_equal(nrrd.frames, image.astype(np.float32))
    assert nrrd.frame_times_ms is None
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(image[f][np.newaxis]) for f in range(6)])  # x, y, 1, t
    sitk.WriteImage(four_d, str(tmp_path / "cine.nii.gz"))
    assert load_cine(tmp_path / "cine.nii.gz").shape == (6, 32, 40)


# ---------------------------------------------------------------------------- command line
@pytest.fixture()
def cine_files(tmp_path):
    _, labels = cine_phantom(frames=12, rows=48, cols=64)
    cine = make_us_cine(tmp_path / "cine.dcm", frames=12, rows=48, cols=64)
    keyed = np.zeros_like(labels)
    keyed[[0, 5, 11]] = labels[[0, 5, 11]]  # only the keyframes are drawn
    return {"cine": cine, "labels": write_label_map(keyed, None, tmp_path / "labels.nrrd"), "truth": labels,
            "out": tmp_path / "out.nrrd"}


def test_cli_interpolates_a_cine_and_lists_frames_per_segment_as_json(cine_files):
    proc = medannot_interpolate("--labels", cine_files["labels"], "--keyframes", "0,5,11", "--image",
                                cine_files["cine"], "--output", cine_files["out"], "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["method"] == "motion" and summary["frame_times_used"] is True
    assert summary["keyframes"] == [0, 5, 11]
    assert summary["segments"] == [
        {"label": label, "keyframes": [0, 5, 11], "interpolated_frames": [1, 2, 3, 4, 6, 7, 8, 9, 10]}
        for label in (1, 2)]
    written, _ = read_label_map(cine_files["out"])
    assert np.mean([dice(written[t] == 1, cine_files["truth"][t] == 1) for t in (2, 8)]) > 0.95


def test_cli_prints_a_readable_summary(cine_files):
    runner = CliRunner()
    from medannot.cli import main

    result = runner.invoke(main, ["interpolate", "--labels", str(cine_files["labels"]), "--keyframes", "0,5",
                                  "--output", str(cine_files["out"])])
    assert result.exit_code == 0, result.output
    assert "shape-based interpolation of 12 frames" in result.output
    assert "label 1: drawn on 0, 5; interpolated 1-4" in result.output
    assert "left empty (outside the keyframes): 6-11" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--keyframes", "0,12"], "keyframe 12 is out of range: the label map has 12 frames"),
    (["--keyframes", ","], "--keyframes is empty"),
    (["--keyframes", "0,5", "--method", "motion"], "method motion estimates motion from the image"),
    (["--keyframes", "0,5", "--image", "SMALL"], "but the label map is 12 x 48 x 64"),
])
def test_cli_user_errors_exit_1_with_one_line(cine_files, tmp_path, args, message):
    if "SMALL" in args:
        args[args.index("SMALL")] = str(make_us_cine(tmp_path / "small.dcm", frames=12, rows=40, cols=64))
    proc = medannot_interpolate("--labels", cine_files["labels"], "--output", cine_files["out"], *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not cine_files["out"].exists()


def test_cli_an_empty_keyframe_makes_the_segments_shrink_towards_it_and_claims_only_frames_holding_them(cine_files):
    proc = medannot_interpolate("--labels", cine_files["labels"], "--keyframes", "0,5,8,11", "--image",
                                cine_files["cine"], "--output", cine_files["out"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert "no label on keyframe 8" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    written, _ = read_label_map(cine_files["out"])
    assert not written[8].any()
    for segment in summary["segments"]:
        label = segment["label"]
        assert segment["keyframes"] == [0, 5, 11]
        areas = [int(np.count_nonzero(written[t] == label)) for t in (5, 6, 7, 8, 9, 10, 11)]
        assert areas[0] > areas[1] > areas[2] >= areas[3] == 0 and areas[4] < areas[5] < areas[6]
        computed = segment["interpolated_frames"] + segment.get("empty_frames", [])
        assert sorted(computed) == [1, 2, 3, 4, 6, 7, 9, 10]
        assert all(np.any(written[t] == label) for t in segment["interpolated_frames"])
        assert not any(np.any(written[t] == label) for t in segment.get("empty_frames", []))


def test_a_computed_frame_the_segment_has_left_is_listed_as_empty_not_interpolated():
    shape = (48, 48)
    result = Interpolator({0: disk(shape, 24, 24, 3), 10: np.zeros(shape, np.uint8)}, 11, method="shape").run()
    frames = result.segment(1)
    assert frames.empty_frames and frames.empty_frames[-1] == 9
    assert sorted(frames.interpolated_frames + frames.empty_frames) == list(range(1, 10))
    assert all(result.labels[t].any() for t in frames.interpolated_frames)
    assert not any(result.labels[t].any() for t in frames.empty_frames)
    assert result.summary()["segments"][0]["empty_frames"] == frames.empty_frames


def test_cli_refuses_keyframes_that_all_hold_no_label(cine_files):
    proc = medannot_interpolate("--labels", cine_files["labels"], "--keyframes", "3,8", "--output", cine_files["out"])
    assert proc.returncode == 1
    assert "keyframes 3, 8 hold no label" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not cine_files["out"].exists()


def test_cli_on_frames_too_small_for_optical_flow_falls_back_to_shape_based_and_says_so(tmp_path):
    _, labels = cine_phantom(frames=6, rows=16, cols=16)
    keyed = np.zeros_like(labels)
    keyed[[0, 5]] = labels[[0, 5]]
    cine = make_us_cine(tmp_path / "tiny.dcm", frames=6, rows=16, cols=16)
    drawn = write_label_map(keyed, None, tmp_path / "tiny.nrrd")
    proc = medannot_interpolate("--labels", drawn, "--keyframes", "0,5", "--image", cine, "--output",
                                tmp_path / "out.nrrd", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "16 x 16 pixels are too small for optical flow" in proc.stderr
    assert "OpenCV" not in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["method"] == "shape"
    written, _ = read_label_map(tmp_path / "out.nrrd")
    assert written[2].any()


def test_large_frames_are_matched_on_reduced_frames_and_still_follow_the_motion():
    from medannot.interpolation import FlowField

    image, labels = moving_bean(frames=11, size=96)
    big_image = np.kron(image, np.ones((1, 5, 5), np.uint8))  # 480 x 480: flow on 320 x 320 frames
    big_labels = np.kron(labels, np.ones((1, 5, 5), np.uint8))
    assert FlowField(big_image).flow_shape == (320, 320)
    result = Interpolator({0: big_labels[0], 10: big_labels[10]}, 11, image=big_image).run()
    assert result.method == "motion"
    assert np.mean([dice(result.labels[t] == 1, big_labels[t] == 1) for t in (3, 5, 7)]) > 0.95


def test_cli_help():
    proc = medannot_interpolate("--help")
    assert proc.returncode == 0
    for option in ("--labels", "--keyframes", "--image", "--method", "--axis", "--output", "--json"):
        assert option in proc.stdout


def test_export_records_an_interpolation_as_semiautomatic_with_its_keyframes(tmp_path):
    import pydicom

    from medannot.demo_data import cine_phantom, make_us_cine
    from medannot.imaging import write_label_map

    root = Path(__file__).resolve().parents[2]
    cine = make_us_cine(tmp_path / "cine.dcm")
    _, truth = cine_phantom()
    labels = write_label_map(truth, None, tmp_path / "drawn.nii.gz")
    done = medannot_interpolate("--labels", labels, "--keyframes", "0,8,16,23", "--image", cine,
                                "--output", tmp_path / "filled.nii.gz", "--json")
    assert done.returncode == 0, done.stderr
    (tmp_path / "interp.json").write_text(done.stdout)
    export = subprocess.run(
        [sys.executable, "-m", "medannot.cli", "seg", "export", "--source", str(cine), "--labels",
         str(tmp_path / "filled.nii.gz"), "--guideline", str(root / "MedAnnotExtension/medannot/data/echo-lv.yaml"),
         "--reader-name", "Doe^Jane", "--reader-id", "jdoe", "--interpolation", str(tmp_path / "interp.json"),
         "--output", str(tmp_path / "out")], capture_output=True, text=True, env=CLI_ENV, timeout=300)
    assert export.returncode == 0, export.stderr
    seg_path, sr_path = export.stdout.split()
    segments = pydicom.dcmread(seg_path).SegmentSequence
    assert [s.SegmentAlgorithmType for s in segments] == ["SEMIAUTOMATIC", "SEMIAUTOMATIC"]
    assert segments[0].SegmentAlgorithmName == f"MedAnnot keyframe interpolation ({json.loads(done.stdout)['method']})"
    text = str(pydicom.dcmread(sr_path))
    assert "1,9,17,24" in text  # keyframes, 1-based, listed in the SR


def test_shape_interpolation_keeps_the_echo_wall_one_ring_between_keyframes():
    """A thin ring interpolated by shape stays one piece (OpenCV's distance transform, tried for speed, split it)."""
    import SimpleITK as sitk

    from medannot.demo_data import cine_phantom

    _, truth = cine_phantom(24, 96, 128)
    result = interpolate_labels(truth, [1, 8, 15, 22], method="shape")
    for frame in range(1, 23):
        for label in (1, 2):
            mask = (result.labels[frame] == label).astype(np.uint8)
            pieces = int(sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask))).max())
            assert pieces == 1, f"frame {frame}: label {label} in {pieces} pieces"
