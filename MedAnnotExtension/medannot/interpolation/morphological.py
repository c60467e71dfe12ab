"""Morphological contour interpolation (ITK, Albu et al. 2008), kept for comparison with the other methods.

The ``itk-morphologicalcontourinterpolation`` wheel runs in a child process: in one process with SimpleITK
(which MedAnnot always imports) it corrupts the heap and aborts the interpreter at exit (seen in 3 to 8 runs of
20), which would take a Slicer session or a server worker down with it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medannot.interpolation.errors import InterpolationError

logger = logging.getLogger(__name__)

_WORKER = Path(__file__).with_name("_morphological_worker.py")
PACKAGE = "itk-morphologicalcontourinterpolation"


def is_available() -> bool:
    """Whether the ``itk-morphologicalcontourinterpolation`` package is installed (checked without importing ITK)."""
    import importlib.metadata
    import importlib.util

    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("itk") is not None


def interpolate_spans(masks: Mapping[int, np.ndarray], spans: list[tuple[int, int]],
                      dtype: np.dtype) -> tuple[dict[tuple[int, int], np.ndarray], float]:
    """Interpolate the frames strictly inside each span from the keyframe ``masks`` at its two ends.

    Each span is given to the filter alone (its two keyframes and the empty frames between), so a keyframe
    without a segment stops that segment instead of being skipped over. Returns the frames of every span and
    the seconds the filter itself took (the child process spends several more seconds loading ITK).
    """
    if not spans:
        return {}, 0.0
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    shape = next(iter(masks.values())).shape
    top = max(int(m.max()) for m in masks.values())
    if top > 65535:
        raise InterpolationError(f"morphological interpolation handles labels up to 65535; found {top}")
    work_type = np.uint8 if top < 256 else np.uint16
    volume = np.zeros((last - first + 1, *shape), dtype=work_type)
    for frame, mask in masks.items():
        if first <= frame <= last:
            volume[frame - first] = mask
    local = np.array([(a - first, b - first) for a, b in spans], dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="medannot-mci-") as tmp:
        source, target = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(source, volume=volume, spans=local)
        try:
            done = subprocess.run([sys.executable, str(_WORKER), str(source), str(target)],
                                  capture_output=True, text=True, timeout=3600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InterpolationError(f"morphological interpolation could not run: {exc}") from exc
        if done.returncode != 0 or not target.exists():
            tail = (done.stderr or "").strip().splitlines()[-1:] or ["no message"]
            if "No module named 'itk'" in (done.stderr or ""):
                tail = [f"the {PACKAGE} package is not installed; choose another method"]
            raise InterpolationError(f"morphological interpolation failed (exit {done.returncode}): {tail[0]}")
        with np.load(target) as found:
            frames = {(a, b): found[f"span_{a - first}_{b - first}"].astype(dtype) for a, b in spans}
            return frames, float(found["compute_seconds"])
