#!/usr/bin/env python
"""Peak memory of one SEG export alone, over the inputs already loaded (run on demand, not a pytest file).

``bench_seg_export.py`` reports the peak of a whole process; when loading the inputs peaks higher than the
export (five float32 probability maps read with SimpleITK do), the export's own cost is hidden. This script loads
the inputs of a ``bench_seg_export.py --workdir`` folder, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``, Linux), runs ``export_segmentation`` and prints the new peak over the resident size
before the export::

    python Testing/benchmarks/bench_seg_export.py --workdir /tmp/bench --only floor   # makes the inputs
    python Testing/benchmarks/bench_export_peak.py /tmp/bench --fractional
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="folder written by bench_seg_export.py --workdir")
    parser.add_argument("--fractional", action="store_true", help="export the probability maps (default: labels)")
    args = parser.parse_args()

    import medannot
    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source, read_label_map, read_probability_map

    guideline = load_guideline(args.workdir / "guideline.yaml")
    source = load_source(args.workdir / "ct")
    labels = maps = None
    if args.fractional:
        maps = {}
        for spec in guideline.segments:
            maps[spec.name], geometry = read_probability_map(args.workdir / f"prob-{spec.label}.nii.gz")
        loaded = sum(m.nbytes for m in maps.values())
    else:
        labels, geometry = read_label_map(args.workdir / "labels.nii.gz")
        loaded = labels.nbytes
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = export_segmentation(source, labels, geometry, guideline, ReaderInfo("Doe^Jane", "j"), out,
                                     probabilities=maps)
        seconds = time.perf_counter() - start
        peak = _status_mb("VmHWM")
        size = result.seg_path.stat().st_size / 2**20
    print(f"medannot from {Path(medannot.__file__).parent}")
    print(f"{'FRACTIONAL' if args.fractional else 'BINARY'}: inputs {loaded / 2**20:.0f} MB in arrays, resident "
          f"{before:.0f} MB before the export; peak during it {peak:.0f} MB = +{peak - before:.0f} MB; "
          f"{seconds:.2f} s; SEG {size:.1f} MB")


if __name__ == "__main__":
    main()
