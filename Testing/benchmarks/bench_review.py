#!/usr/bin/env python
"""Benchmark multi-reader agreement and consensus: MedAnnot against DeepMind's ``surface-distance``.

Run on demand (this is not a pytest file)::

    python Testing/benchmarks/bench_review.py [--slices 300 --size 512 --segments 5 --readers 3] [--no-peer]

Synthetic CT-sized label maps (default 300 x 512 x 512, 0.7 x 0.7 x 1.5 mm): five organ-like ellipsoids of
different sizes, each reader's a known shift and scale of the truth with a noisy boundary. Measured, one run each:

* MedAnnot agreement: every reader pair and every reader against the STAPLE consensus, every segment
  (``medannot.review``: crop to each mask's box, surface and distance map once per mask);
* the same pairs with ``surface_distance.compute_surface_distances`` + ``compute_robust_hausdorff`` /
  ``compute_surface_dice_at_tolerance`` (the peer; skipped when not installed, or with ``--no-peer``), with the
  largest difference in Dice, HD95 and NSD between the two;
* STAPLE (SimpleITK, per segment) seconds and the process's peak resident memory before and after it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedAnnotExtension"))

from medannot.review.agreement import PreparedMask, SegmentSurfaces, compare_in  # noqa: E402
from medannot.review.consensus import segment_consensus  # noqa: E402

# (centre z, y, x as a fraction of the grid, radii in mm)
ORGANS = [((0.5, 0.45, 0.35), (90, 80, 70)), ((0.45, 0.5, 0.72), (50, 45, 35)), ((0.55, 0.62, 0.3), (45, 28, 25)),
          ((0.55, 0.62, 0.7), (45, 28, 25)), ((0.5, 0.4, 0.4), (12, 12, 12))]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ellipsoid(shape: tuple[int, int, int], spacing: np.ndarray, centre: np.ndarray, radii: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid mask with a slightly noisy boundary, computed inside its box only."""
    mask = np.zeros(shape, dtype=bool)
    lo = np.maximum(0, np.floor((centre - radii * 1.1) / spacing)).astype(int)
    hi = np.minimum(shape, np.ceil((centre + radii * 1.1) / spacing) + 1).astype(int)
    axes = [np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    r = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
    wobble = rng.normal(0, 0.02, r.shape)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = r + wobble <= 1
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    parser.add_argument("--no-peer", action="store_true", help="Skip surface-distance.")
    args = parser.parse_args()
    shape = (args.slices, args.size, args.size)
    spacing = np.asarray([1.5, 0.7, 0.7])  # numpy order: slice, row, column
    extent = np.asarray(shape) * spacing
    rng = np.random.default_rng(3)
    t0 = time.perf_counter()
    truth_masks: dict[int, dict[str, np.ndarray]] = {}
    readers = [f"reader{i + 1}" for i in range(args.readers)]
    for s in range(args.segments):
        frac, radii = ORGANS[s % len(ORGANS)]
        truth_masks[s] = {}
        for k, reader in enumerate(readers):
            shift = np.asarray([1.5 * (k - 1), 0.7 * k, -0.7 * k])
            scale = 1.0 + 0.03 * (k - 1)
            truth_masks[s][reader] = ellipsoid(shape, spacing, np.asarray(frac) * extent + shift,
                                               np.asarray(radii) * scale, rng)
    print(f"grid {shape}, spacing (z, y, x) {tuple(spacing.tolist())} mm, {args.readers} readers, {args.segments} segments; "
          f"masks made in {time.perf_counter() - t0:.1f} s; peak {peak_mb():.0f} MB")

    # MedAnnot: prepare (crop + surface) once per mask, STAPLE per segment, then all comparisons
    t_start = time.perf_counter()
    prepared = {s: {r: PreparedMask(m, tuple(spacing)) for r, m in by_reader.items()}
                for s, by_reader in truth_masks.items()}
    t_prepared = time.perf_counter()
    before_staple = peak_mb()
    consensus = {s: segment_consensus(str(s), prepared[s], "staple") for s in prepared}
    t_staple = time.perf_counter()
    after_staple = peak_mb()
    pairs = list(combinations(readers, 2)) + [(r, "consensus") for r in readers]
    results = {}
    for s in prepared:
        surfaces = SegmentSurfaces({**prepared[s], "consensus": consensus[s].mask})
        for a, b in pairs:
            results[(s, a, b)] = compare_in(surfaces, a, b, args.tolerance_mm)
    t_done = time.perf_counter()
    ours = (t_prepared - t_start) + (t_done - t_staple)
    print(f"medannot agreement: {len(results)} comparisons in {ours:.2f} s "
          f"(crops {t_prepared - t_start:.2f} s, surfaces + distances {t_done - t_staple:.2f} s)")
    print(f"STAPLE ({args.segments} segments, SimpleITK): {t_staple - t_prepared:.2f} s; peak RSS "
          f"{before_staple:.0f} MB before, {after_staple:.0f} MB after")
    print(f"medannot total incl. STAPLE: {t_done - t_start:.2f} s")

    if args.no_peer:
        return
    try:
        import surface_distance as sd
    except ImportError:
        print("peer skipped: pip install surface-distance==0.1 (DeepMind) to compare")
        return
    t_peer = time.perf_counter()
    worst = {"dice": 0.0, "hd95": 0.0, "nsd": 0.0}
    for (s, a, b), ours_row in results.items():
        mask_a = truth_masks[s][a]
        mask_b = truth_masks[s][b] if b != "consensus" else _full(consensus[s].mask, shape)
        dist = sd.compute_surface_distances(mask_a, mask_b, spacing.tolist())
        hd95 = sd.compute_robust_hausdorff(dist, 95)
        nsd = sd.compute_surface_dice_at_tolerance(dist, args.tolerance_mm)
        dice = sd.compute_dice_coefficient(mask_a, mask_b)
        worst["dice"] = max(worst["dice"], abs(dice - ours_row.dice))
        worst["hd95"] = max(worst["hd95"], abs(hd95 - (ours_row.hd95_mm or 0.0)))
        worst["nsd"] = max(worst["nsd"], abs(nsd - ours_row.nsd))
    peer = time.perf_counter() - t_peer
    print(f"surface-distance (DeepMind) on the same {len(results)} comparisons: {peer:.2f} s")
    print(f"ratio surface-distance / medannot agreement: {peer / ours:.1f}x")
    print(f"largest difference: Dice {worst['dice']:.2e}, HD95 {worst['hd95']:.3f} mm, NSD {worst['nsd']:.4f}")


def _full(mask: PreparedMask, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    if mask.box is not None:
        full[mask.box] = mask.crop
    return full


if __name__ == "__main__":
    main()
