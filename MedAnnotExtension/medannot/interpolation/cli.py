"""``medannot interpolate``: fill the frames between hand-drawn keyframes of a label map."""

from __future__ import annotations

import json
import logging
from itertools import pairwise
from pathlib import Path

import click
import numpy as np

from medannot.cli_common import CONTEXT
from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.masks import METHODS, resolve_method

logger = logging.getLogger(__name__)

_METHOD_NAMES = {"motion": "motion-guided", "shape": "shape-based", "morphological": "morphological contour"}


def parse_keyframes(text: str) -> list[int]:
    """``"0,10,20"`` -> ``[0, 10, 20]`` (sorted, duplicates dropped); raises on an empty list or a non-number."""
    keys: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            keys.add(int(part))
        except ValueError:
            raise InterpolationError(f"--keyframes: {part!r} is not a frame number; list 0-based frame numbers "
                                     "separated by commas, e.g. 0,10,20") from None
    if not keys:
        raise InterpolationError("--keyframes is empty: list the frames you drew, e.g. 0,10,20")
    return sorted(keys)


def _ranges(frames: list[int]) -> str:
    if not frames:
        return "none"
    parts, start = [], frames[0]
    for prev, cur in zip(frames, [*frames[1:], None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur  # type: ignore[assignment]
    return ", ".join(parts)


def _check_drawn(labels: np.ndarray, keys: list[int], axis: int, path: Path) -> None:
    """Refuse keyframes that are all empty; say which keyframes are empty, as segments shrink away towards them."""
    n = labels.shape[axis] if 0 <= axis < labels.ndim else 0
    empty = [k for k in keys if 0 <= k < n and not np.take(labels, k, axis=axis).any()]
    if empty and len(empty) == len(keys):
        raise InterpolationError(f"{path}: keyframe{'s' if len(empty) > 1 else ''} {_ranges(empty)} hold no label; "
                                 "draw the segments on them or list the frames you drew in --keyframes")
    if empty:
        logger.warning("%s: no label on keyframe%s %s: the segments next to %s shrink away towards %s (leave a "
                       "frame out of --keyframes unless the structures are truly absent there)", path,
                       "s" if len(empty) > 1 else "", _ranges(empty), *(["them"] * 2 if len(empty) > 1 else ["it"] * 2))


@click.command("interpolate", context_settings=CONTEXT)
@click.option("--labels", "labels_path", required=True, type=click.Path(path_type=Path),
              help="Label map (NIfTI/NRRD/MHA), frames x rows x cols; only the keyframes are read from it.")
@click.option("--keyframes", required=True, metavar="0,10,20,...",
              help="Frames drawn by hand (0-based, comma-separated); every other frame is recomputed.")
@click.option("--image", "image_path", type=click.Path(path_type=Path),
              help="Cine or volume the labels were drawn on: DICOM multi-frame file or series folder, NIfTI, NRRD "
                   "or MHA. Enables motion-guided interpolation; DICOM frame times set the time weights.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="auto: motion with --image, else shape. motion: keyframes carried along the image's optical "
                   "flow. shape: signed-distance blend. morphological: ITK morphological contour interpolation.")
@click.option("--axis", type=click.IntRange(0, 2), default=0, show_default=True,
              help="Label-map axis (numpy order) to interpolate along: 0 is frames or slices.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Label map to write, with the geometry of --labels.")
@click.option("--json", "as_json", is_flag=True, help="Print keyframes and interpolated frames per segment as JSON.")
def interpolate(labels_path: Path, keyframes: str, image_path: Path | None, method: str, axis: int,
                output: Path, as_json: bool) -> None:
    """Interpolate a label map between keyframes along time (cine) or slices (volume).

    Keyframes come back unchanged and labels stay exclusive. Frames before the first or after the last keyframe
    are left empty.
    """
    from medannot.imaging import read_label_map, write_label_map
    from medannot.interpolation.cine import load_cine
    from medannot.interpolation.masks import interpolate_labels

    keys = parse_keyframes(keyframes)
    resolved = resolve_method(method, image_path is not None)
    labels, geometry = read_label_map(labels_path)
    _check_drawn(labels, keys, axis, labels_path)
    image = None
    frame_times = None
    if image_path is not None:
        cine = load_cine(image_path)
        image = cine.frames  # checked against the label map's size even when the method ignores pixels
        if cine.frame_times_ms is not None and axis == 0 and len(cine.frame_times_ms) == labels.shape[0]:
            if np.all(np.diff(cine.frame_times_ms) > 0):
                frame_times = cine.frame_times_ms
            else:
                logger.warning("%s: frame times do not increase; weighting by frame number", image_path)
    total = sum(b - a for a, b in pairwise(keys))
    stderr = click.get_text_stream("stderr")
    if stderr.isatty():
        with click.progressbar(length=total, label="interpolating", file=stderr) as bar:
            result = interpolate_labels(labels, keys, image=image, method=resolved, frame_times=frame_times,
                                        axis=axis, progress=bar.update)
    else:
        result = interpolate_labels(labels, keys, image=image, method=resolved, frame_times=frame_times, axis=axis)
    write_label_map(result.labels.astype(labels.dtype, copy=False), geometry, output)
    if as_json:
        summary = result.summary()
        summary.update(labels=str(labels_path), image=None if image_path is None else str(image_path),
                       output=str(output))
        click.echo(json.dumps(summary, indent=2))
        return
    n = labels.shape[axis]
    click.echo(f"{output}: {_METHOD_NAMES[result.method]} interpolation of {n} frames along axis {axis} "
               f"from keyframes {_ranges(result.keyframes)}"
               + (" (weighted by frame time)" if result.frame_times_used else ""))
    for segment in result.segments:
        click.echo(f"  label {segment.label}: drawn on {_ranges(segment.keyframes)}; "
                   f"interpolated {_ranges(segment.interpolated_frames)}"
                   + (f"; shrunk away, none of it in {_ranges(segment.empty_frames)}" if segment.empty_frames else ""))
    if result.frames_outside_keyframes:
        click.echo(f"  left empty (outside the keyframes): {_ranges(result.frames_outside_keyframes)}")
