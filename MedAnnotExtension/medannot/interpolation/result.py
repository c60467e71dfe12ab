"""What an interpolation produced: the label map and, per segment, which frames were drawn and which computed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SegmentFrames:
    """One segment (label value) of an interpolated label map.

    ``keyframes`` are the keyframes on which the segment is drawn. ``interpolated_frames`` are the frames
    between two keyframes, at least one of which holds the segment, whose content for this segment was computed
    (where the segment shrinks to nothing these frames may hold none of it). Frame numbers are 0-based indices
    along the interpolation axis.
    """

    label: int
    keyframes: list[int]
    interpolated_frames: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "keyframes": self.keyframes, "interpolated_frames": self.interpolated_frames}


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
        """Every frame computed rather than drawn, whatever the segment."""
        return sorted({f for s in self.segments for f in s.interpolated_frames})

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
