"""What an interpolation produced: the label map and, per segment, which frames were drawn and which computed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SegmentFrames:
    """One segment (label value) of an interpolated label map.

    ``keyframes`` are the keyframes on which the segment is drawn. ``interpolated_frames`` are the frames
    between two keyframes, at least one of which holds the segment, that were computed and hold some of it.
    ``empty_frames`` are such frames computed to hold none of it: the segment shrinks away towards a keyframe
    that does not hold it (a structure that ends between slices, an empty keyframe). Frame numbers are 0-based
    indices along the interpolation axis.
    """

    label: int
    keyframes: list[int]
    interpolated_frames: list[int]
    empty_frames: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "keyframes": self.keyframes,
                               "interpolated_frames": self.interpolated_frames}
        if self.empty_frames:
            out["empty_frames"] = self.empty_frames
        return out


@dataclass
class InterpolationResult:
    """A label map whose non-key frames between the first and last keyframe were interpolated.

    Frames before the first or after the last keyframe are listed in ``frames_outside_keyframes`` and left
    empty: interpolation does not extrapolate.
    """

    labels: np.ndarray
    method: str
    axis: int
    keyframes: list[int]
    segments: list[SegmentFrames]
    frames_outside_keyframes: list[int] = field(default_factory=list)
    frame_times_used: bool = False
    seconds: float = 0.0  # computation time of all spans (morphological: without the child process start-up)

    @property
    def interpolated_frames(self) -> list[int]:
        """Every frame computed rather than drawn, whatever the segment (and whether or not it holds any)."""
        return sorted({f for s in self.segments for f in (*s.interpolated_frames, *s.empty_frames)})

    def segment(self, label: int) -> SegmentFrames:
        for s in self.segments:
            if s.label == label:
                return s
        raise KeyError(f"label {label} is on no keyframe")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what ``medannot interpolate --json`` prints)."""
        return {
            "method": self.method,
            "axis": self.axis,
            "frames": int(self.labels.shape[self.axis]),
            "keyframes": self.keyframes,
            "frame_times_used": self.frame_times_used,
            "seconds": round(self.seconds, 3),
            "frames_outside_keyframes": self.frames_outside_keyframes,
            "segments": [s.as_dict() for s in self.segments],
        }
