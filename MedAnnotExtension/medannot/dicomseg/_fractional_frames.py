"""FRACTIONAL SEG pixel data written one frame at a time from per-segment probability maps.

highdicom 0.28 wants every map in one float (frames, rows, cols, segments) array and then copies it whole
(``np.unique`` in its pixel checks), so the maps would be held three times over. Instead highdicom builds the SEG
from a small array that only says which frames exist, and the quantised frames are written here, in the order of
the Per-Frame Functional Groups highdicom made, with highdicom's own arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from medannot.errors import DicomSegError

MAX_FRACTIONAL_VALUE = 255


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """Stored fractions of ``probabilities`` in [0, 1]: round(p * 255) to uint8, computed as highdicom does."""
    return np.around(probabilities * float(MAX_FRACTIONAL_VALUE)).astype(np.uint8)


def frame_peaks(maps: Sequence[np.ndarray]) -> np.ndarray:
    """(segments, frames) largest probability of each frame of each map (reduced in place, no copy of a map)."""
    return np.stack([np.asarray(m).max(axis=(1, 2)) for m in maps])


@dataclass(frozen=True)
class FrameLayout:
    """Which frames a FRACTIONAL SEG from highdicom holds, and the array that makes highdicom lay them out.

    Attributes
    ----------
    frames
        (segment number, source plane index) of each frame the SEG must hold: those with a stored fraction
        above 0. Their order is the one highdicom gives the Per-Frame Functional Groups.
    proxy
        (planes, rows, cols) read-only label map for highdicom: segment ``s`` is present on plane ``f`` exactly
        when highdicom must make a frame for (s, f), and a plane is non-empty exactly when some probability on it
        is above 0 (highdicom numbers the planes it keeps; a plane whose probabilities all round to 0 keeps its
        number but has no frame).
    placeholders
        Pairs present in ``proxy`` only to keep such a plane; their frames are removed after highdicom is done.
    """

    frames: frozenset[tuple[int, int]]
    proxy: np.ndarray
    placeholders: frozenset[tuple[int, int]]


def frame_layout(peaks: np.ndarray, rows: int, cols: int) -> FrameLayout:
    """Lay out the frames of a FRACTIONAL SEG from :func:`frame_peaks` (segment numbers are 1..segments)."""
    n_segments, n_planes = peaks.shape
    stored = quantise(peaks) > 0
    nonzero_planes = (peaks > 0).any(axis=0)
    present = stored.copy()
    for plane in np.flatnonzero(nonzero_planes & ~stored.any(axis=0)):
        present[int(np.argmax(peaks[:, plane])), plane] = True
    placeholders = {(int(s) + 1, int(f)) for s, f in zip(*np.nonzero(present & ~stored))}
    frames = {(int(s) + 1, int(f)) for s, f in zip(*np.nonzero(stored))}

    # One segment: bool, because highdicom scales a one-segment uint8 label map by 255 in place (read-only here).
    dtype = np.bool_ if n_segments == 1 else np.uint8 if n_segments < 256 else np.uint16
    # Each present segment marks its own pixel of the plane; with enough columns one row is enough and the
    # rows are a broadcast view, so the proxy costs planes x columns bytes.
    width = cols if n_segments <= cols else rows * cols
    if n_segments > width:
        raise DicomSegError(f"{n_segments} segments cannot be written into frames of {rows} x {cols} pixels")
    base = np.zeros((n_planes, width), dtype=dtype)
    for s, f in zip(*np.nonzero(present)):
        base[f, s] = s + 1
    if width == cols:
        proxy = np.broadcast_to(base[:, np.newaxis, :], (n_planes, rows, cols))
    else:
        proxy = base.reshape(n_planes, rows, cols)
        proxy.flags.writeable = False
    return FrameLayout(frozenset(frames), proxy, frozenset(placeholders))


def source_plane_index(source_datasets: Sequence[Dataset]) -> dict[tuple[str, int], int]:
    """(SOP Instance UID, frame number) -> index of that plane on the label map's first axis."""
    if len(source_datasets) == 1 and int(source_datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        uid = str(source_datasets[0].SOPInstanceUID)
        return {(uid, number): number - 1 for number in range(1, int(source_datasets[0].NumberOfFrames) + 1)}
    return {(str(ds.SOPInstanceUID), 1): index for index, ds in enumerate(source_datasets)}


def frame_source(item: Dataset, shared: Dataset, planes: dict[tuple[str, int], int]) -> tuple[int, int]:
    """(segment number, source plane index) of one Per-Frame Functional Groups item.

    ``shared`` is the Shared Functional Groups item, where highdicom puts the segment of a one-segment SEG.
    """
    holder = item if "SegmentIdentificationSequence" in item else shared
    segment = int(holder.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    if len(planes) == 1:
        return segment, 0
    try:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        return segment, planes[(str(ref.ReferencedSOPInstanceUID), int(ref.get("ReferencedFrameNumber", 1)))]
    except (AttributeError, IndexError, KeyError) as exc:
        raise DicomSegError("a SEG frame made by highdicom does not reference exactly one source plane; the "
                            "FRACTIONAL frames cannot be placed (please report this)") from exc


def quantised_pixel_data(maps: Sequence[np.ndarray], frames: Sequence[tuple[int, int]]) -> bytes:
    """Native 8-bit PixelData of ``frames`` ((segment number, plane index) pairs), padded to even length."""
    rows, cols = maps[0].shape[1:]
    size = len(frames) * rows * cols
    buffer = np.zeros(size + size % 2, dtype=np.uint8)  # the pad byte is 00H; allocated once, no concatenation
    planes = buffer[:size].reshape(len(frames), rows, cols)
    for index, (segment, plane) in enumerate(frames):
        planes[index] = quantise(maps[segment - 1][plane])
    return buffer.tobytes()
