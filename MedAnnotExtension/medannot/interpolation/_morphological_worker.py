"""Run ITK's MorphologicalContourInterpolator on spans of a keyframe volume; executed as a separate process.

Usage: python _morphological_worker.py INPUT.npz OUTPUT.npz

This file imports nothing from MedAnnot (and never SimpleITK): with SimpleITK and ITK's Python wrapping in one
process the heap gets corrupted (aborts at exit), so the parent keeps this filter out of its own process.
"""

import os
import sys

import numpy as np


def main() -> None:
    import time

    import itk

    itk.MorphologicalContourInterpolator  # noqa: B018 - load the wrapping now, outside the timed part
    started = time.perf_counter()
    data = np.load(sys.argv[1])
    volume, spans = data["volume"], data["spans"]
    results: dict[str, np.ndarray] = {}
    for a, b in spans.tolist():
        sub = np.ascontiguousarray(volume[a:b + 1])
        mci = itk.MorphologicalContourInterpolator.New(itk.image_view_from_array(sub))
        mci.SetAxis(2)  # numpy axis 0 (frames) is ITK's third axis
        mci.Update()
        results[f"span_{a}_{b}"] = np.array(itk.array_from_image(mci.GetOutput()))[1:-1]
    results["compute_seconds"] = np.array(time.perf_counter() - started)
    np.savez(sys.argv[2], **results)  # type: ignore[arg-type]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip C++ static destructors: the exit path is where ITK's wrapping has crashed


if __name__ == "__main__":
    main()
