"""How an interpolated segment is recorded in a SEG + SR: SEMIAUTOMATIC, with the method, MedAnnot's version and
which frames were drawn (keyframes) and which computed; frame numbers become 1-based as in DICOM."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import medannot
from medannot.dicomseg.provenance import SegmentProvenance
from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.result import SegmentFrames

ALGORITHM_NAME = "MedAnnot keyframe interpolation"


def segment_provenance(frames: SegmentFrames, method: str, confidence: int | None = None) -> SegmentProvenance:
    """SEMIAUTOMATIC with the interpolation method when frames were computed, else MANUAL; keyframes listed."""
    keyframes = tuple(f + 1 for f in frames.keyframes)
    interpolated = tuple(f + 1 for f in frames.interpolated_frames)
    if not interpolated:
        return SegmentProvenance("MANUAL", confidence=confidence, keyframes=keyframes)
    return SegmentProvenance("SEMIAUTOMATIC", f"{ALGORITHM_NAME} ({method})", medannot.__version__,
                             confidence=confidence, keyframes=keyframes, interpolated_frames=interpolated)


def provenance_from_summary(summary: Mapping[str, Any], origin: str = "interpolation summary"
                            ) -> dict[int, SegmentProvenance]:
    """Per label value, the provenance described by ``medannot interpolate --json`` output."""
    try:
        method = str(summary["method"])
        return {int(s["label"]): segment_provenance(
                    SegmentFrames(int(s["label"]), [int(f) for f in s["keyframes"]],
                                  [int(f) for f in s["interpolated_frames"]]), method)
                for s in summary["segments"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise InterpolationError(f"{origin}: not the JSON `medannot interpolate --json` prints ({exc!r})") from exc


def read_summary(path: str | Path) -> dict[int, SegmentProvenance]:
    """Read a saved ``medannot interpolate --json`` output file."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InterpolationError(f"{path}: cannot read the interpolation summary ({exc})") from exc
    return provenance_from_summary(summary, str(path))
