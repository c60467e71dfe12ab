#!/usr/bin/env python
"""Benchmark keyframe interpolation of label maps on synthetic ultrasound cines with truth on every frame.

Run on demand (this is not a pytest file)::

    python Testing/benchmarks/bench_interpolation.py [--variant standard,hard --spacing 5,10,20 --size 256]

The cine is an echo-like apical view: a beating, drifting, rotating bean-shaped (non-convex) cavity (label 1)
inside a thin wall (label 2, 7-9 px at rest) that thickens as the cavity contracts, and a rotating crescent (label 3,
non-convex). Pixels are log-compressed echo amplitude: Rayleigh speckle that partly moves with the tissue and
partly decorrelates, depth attenuation, a lateral-wall dropout sector, and frame-to-frame gain flicker. The
``hard`` variant moves more per frame (faster heart, larger drift and rotation), decorrelates speckle more,
drops out deeper (plus random dropout blobs) and flickers more.

Keyframes are every S-th frame (0, S, 2S, ... 60 of 61 frames). For each method the label map's non-key frames
are compared with the truth: Dice per label, averaged over the labels present -> one number per frame; the
table shows the mean over frames and the worst frame, and milliseconds per interpolated frame (morphological:
the filter alone; its child process spends several seconds loading ITK first, shown below the table).
Baselines: ``nearest`` copies the nearest keyframe in time; ``shape`` is the signed-distance blend.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedAnnotExtension"))

from medannot.interpolation import FlowField, FlowSettings, Interpolator  # noqa: E402 - after the sys.path line
from medannot.interpolation.masks import _usable_cpus  # noqa: E402

TARGETS = {10: (0.97, 0.93), 20: (0.95, None)}  # spacing -> (mean Dice, worst frame) wanted on the hard cine


# ----------------------------------------------------------------------------------------------- phantom
def _complex_noise(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    import cv2

    re = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    im = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    z = re + 1j * im
    return z / np.sqrt(np.mean(np.abs(z) ** 2))


@dataclass(frozen=True)
class Phantom:
    """Motion and image-quality knobs of the synthetic cine (lengths in pixels at 256 x 256)."""

    period: float  # frames per heart beat
    drift: tuple[float, float]  # probe/breathing drift amplitude, rows and columns
    twist: float  # cavity rotation amplitude (rad)
    swing: float  # crescent rotation amplitude (rad)
    wall: float  # wall thickness at rest; +45 % at end-systole
    decorrelation: float  # share of the speckle that is new in every frame
    flicker: float  # sd of the log gain from frame to frame
    dropout: float  # depth of the lateral-wall dropout (1 = no echo)
    dropout_blobs: bool  # random dropout blobs in some frames
    crescent_echo: float = 0.8  # echogenicity of the crescent (wall 1.0, background ~0.34, blood 0.05)


PHANTOMS = {
    "standard": Phantom(period=40, drift=(6, 9), twist=0.15, swing=0.4, wall=9, decorrelation=0.3, flicker=0.08,
                        dropout=0.6, dropout_blobs=False),
    "hard": Phantom(period=28, drift=(12, 16), twist=0.35, swing=0.8, wall=7, decorrelation=0.55, flicker=0.22,
                    dropout=0.9, dropout_blobs=True),
}


def make_cine(variant: str | Phantom = "hard", frames: int = 61, size: int | tuple[int, int] = 256,
              seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8, truth labels uint8), both frames x rows x cols (``size``: rows, cols or one side).

    The scene is drawn for a square of ``rows`` pixels, centred in a wider frame (4:3 like a scanner's
    640 x 480): lengths scale with the rows, so motion per frame in pixels scales with them too.
    """
    import cv2

    p = PHANTOMS[variant] if isinstance(variant, str) else variant
    rng = np.random.default_rng(seed)
    rows, cols = (size, size) if isinstance(size, int) else size
    s = rows / 256.0
    ox = (cols - rows) / 2.0  # the square scene's left edge in the frame
    period, drift, twist, decorrelation, flicker = p.period, p.drift, p.twist, p.decorrelation, p.flicker

    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    big = int(max(rows, cols) * 1.6)
    tissue_speckle = _complex_noise(rng, (big, big), 1.1)
    background = cv2.GaussianBlur(rng.random((rows, cols)).astype(np.float32), (0, 0), 6 * s)
    background = 0.75 + 0.5 * (background - background.mean()) / (background.std() + 1e-6) * 0.3

    image = np.zeros((frames, rows, cols), dtype=np.uint8)
    labels = np.zeros((frames, rows, cols), dtype=np.uint8)
    for f in range(frames):
        phase = 2 * np.pi * f / period
        # Fast systole, slow diastole: contraction 0..1.
        contraction = 0.5 * (1 - np.cos(phase + 0.6 * np.sin(phase)))
        # Probe and breathing drift moves everything; the heart and the crescent add motion of their own.
        gy, gx = drift[0] * s * np.sin(phase + 0.4), drift[1] * s * np.sin(phase - 0.9)
        cy = 120 * s + gy
        cx = ox + 118 * s + gx
        rot = 0.3 + twist * np.sin(phase)
        radius = 50 * s * (1 - 0.24 * contraction)
        dy, dx = yy - cy, xx - cx
        r = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx) - rot
        cavity_r = radius * (1 + 0.26 * np.cos(2 * theta) + 0.09 * np.cos(3 * theta + 1.0))
        wall = p.wall * s * (1 + 0.45 * contraction)
        cavity = r < cavity_r
        myocardium = (r >= cavity_r) & (r < cavity_r + wall)

        # Crescent: a disc minus an offset disc, swinging about its own centre out of phase with the heart.
        ccy = 205 * s + gy + 6 * s * np.sin(phase + 2.0)
        ccx = ox + 200 * s + gx + 5 * s * np.cos(phase)
        swing = 1.2 + p.swing * np.sin(phase + 1.0)
        outer = np.hypot(yy - ccy, xx - ccx) < 24 * s
        inner = np.hypot(yy - (ccy + 11 * s * np.sin(swing)), xx - (ccx + 11 * s * np.cos(swing))) < 19 * s
        crescent = outer & ~inner & ~(cavity | myocardium)

        truth = np.zeros((rows, cols), dtype=np.uint8)
        truth[crescent] = 3
        truth[myocardium] = 2
        truth[cavity] = 1
        labels[f] = truth

        echo = background * 0.45
        echo = np.where(cavity, 0.05, echo)
        echo = np.where(myocardium, 1.0, echo)
        echo = np.where(crescent, p.crescent_echo, echo).astype(np.float32)
        echo = cv2.GaussianBlur(echo, (0, 0), 0.8)
        # Lateral wall dropout: a sector whose echo fades, deeper in systole for the hard cine.
        angle = np.arctan2(dy, dx)
        sector = np.exp(-((np.angle(np.exp(1j * (angle - 0.2)))) / 0.45) ** 2)
        depth = p.dropout * ((0.6 + 0.4 * contraction) if p.dropout_blobs else 1.0)
        echo *= (1 - depth * sector * (r > 0.6 * radius)).astype(np.float32)
        if p.dropout_blobs:
            for _ in range(rng.integers(0, 3)):
                by, bx = rng.uniform(40 * s, rows - 40 * s), rng.uniform(ox + 40 * s, ox + rows - 40 * s)
                blob = np.exp(-(((yy - by) / (25 * s)) ** 2 + ((xx - bx) / (15 * s)) ** 2))
                echo *= (1 - 0.7 * blob).astype(np.float32)
        # Speckle that moves with the tissue (sampled at each pixel's material point) plus a fresh part.
        # Wall: same angle and same relative depth in the wall as in a resting reference heart; crescent: its
        # own centre and swing; background: the heart's drift; blood: no persistent speckle.
        rest_r = 50 * s * (1 + 0.26 * np.cos(2 * theta) + 0.09 * np.cos(3 * theta + 1.0))
        depth_in_wall = np.clip((r - cavity_r) / wall, 0, 1)
        material_r = np.where(myocardium, rest_r + depth_in_wall * p.wall * s, r)
        my = np.where(myocardium, big / 2 + material_r * np.sin(theta), big / 2 + dy)
        mx = np.where(myocardium, big / 2 + material_r * np.cos(theta), big / 2 + dx)
        spin = swing - 1.2
        qy, qx = yy - ccy, xx - ccx
        my = np.where(crescent, 0.2 * big + np.cos(spin) * qy - np.sin(spin) * qx, my).astype(np.float32)
        mx = np.where(crescent, 0.8 * big + np.sin(spin) * qy + np.cos(spin) * qx, mx).astype(np.float32)
        moving = cv2.remap(tissue_speckle.real.astype(np.float32), mx, my, cv2.INTER_LINEAR) + \
            1j * cv2.remap(tissue_speckle.imag.astype(np.float32), mx, my, cv2.INTER_LINEAR)
        moving = np.where(cavity, 0, moving)
        fresh = _complex_noise(rng, (rows, cols), 1.1)
        keep = np.where(cavity, 0.0, np.sqrt(1 - decorrelation))
        speckle = np.abs(keep * moving + np.sqrt(1 - keep**2) * fresh)
        gain = np.exp(rng.normal(0, flicker))
        attenuation = np.exp(-yy / (320 * s))
        amplitude = gain * echo * speckle * attenuation + 0.01 * np.abs(rng.standard_normal((rows, cols)))
        image[f] = np.clip(255 * np.log1p(40 * amplitude) / np.log1p(40), 0, 255).astype(np.uint8)
    return image, labels


# ----------------------------------------------------------------------------------------------- scoring
def label_dice(result: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    """Dice of every label present in the truth frame."""
    scores = {}
    for label in np.unique(truth).tolist():
        if label == 0:
            continue
        a, b = result == label, truth == label
        scores[label] = 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    return scores


def nearest_keyframe(truth: np.ndarray, keyframes: list[int]) -> np.ndarray:
    keys = np.asarray(keyframes)
    out = truth.copy()
    for t in range(truth.shape[0]):
        out[t] = truth[keys[np.argmin(np.abs(keys - t))]]
    return out


def run_method(method: str, image: np.ndarray, truth: np.ndarray, keyframes: list[int]) -> tuple[np.ndarray, float]:
    """Label map and seconds of computation (``motion-full``: motion with the flow on full-size frames)."""
    if method == "nearest":
        started = time.perf_counter()
        return nearest_keyframe(truth, keyframes), time.perf_counter() - started
    settings = FlowSettings(flow_size=0) if method == "motion-full" else None
    interp = Interpolator({k: truth[k] for k in keyframes}, truth.shape[0],
                          image=image if method.startswith("motion") else None,
                          method="motion" if method.startswith("motion") else method, flow_settings=settings)
    result = interp.run()
    return result.labels, result.seconds


def flow_floor(image: np.ndarray, keyframes: list[int]) -> float:
    """Seconds of the dense flow alone that motion interpolation needs (every frame to the keyframe on either
    side, on the reduced frames), one thread: the part of its time no label-map work can remove."""
    field = FlowField(image)
    started = time.perf_counter()
    for a, b in zip(keyframes, keyframes[1:]):
        field.displacements(a, range(a + 1, b), full=False)
        field.displacements(b, range(b - 1, a, -1), full=False)
    return time.perf_counter() - started


def parse_size(text: str) -> tuple[int, int]:
    """``256`` -> (256, 256); ``640x480`` (columns x rows, as a scanner says) -> (480, 640) rows, columns."""
    if "x" in text:
        cols, rows = (int(v) for v in text.split("x"))
        return rows, cols
    return int(text), int(text)


# ----------------------------------------------------------------------------------------------- real cine
REAL_CINE = "color3d_jpeg_baseline.dcm"  # pydicom-data: US, 120 frames 640 x 480, JPEG baseline, colour


def real_cine() -> tuple[np.ndarray, Path] | None:
    """The grey frames of pydicom-data's colour ultrasound cine, or None without pydicom-data."""
    try:
        import data_store
    except ImportError:
        return None
    from medannot.interpolation import load_cine

    path = Path(data_store.__file__).parent / "data" / REAL_CINE
    return (load_cine(path).frames, path) if path.exists() else None


def drawn_by_threshold(frames: np.ndarray, reach: int = 90) -> np.ndarray:
    """Stand-in keyframe drawings for a cine without annotations: on every frame, the dark blood pool around the
    point of the echo sector that is darkest on average over the cine (label 1: the dark pixels connected to it
    within ``reach`` pixels, holes filled; dark: below the frame's 30th percentile in the sector, so gain changes
    do not matter) and a 6-pixel rim of tissue around it (label 2). Frames where the seed is not dark (a valve
    leaflet passing) are left undrawn and not used as keyframes.

    Only the keyframes of this are used; it is not truth, just shapes that sit on the image's structures.
    """
    import cv2

    n, rows, cols = frames.shape
    smooth = np.stack([cv2.GaussianBlur(f.astype(np.float32), (0, 0), 5) for f in frames])
    sector = (smooth.max(axis=0) > 20).astype(np.uint8)
    sector = cv2.erode(sector, np.ones((41, 41), np.uint8))
    mean = np.where(sector > 0, smooth.mean(axis=0), np.inf)
    sy, sx = np.unravel_index(int(np.argmin(mean)), mean.shape)
    yy, xx = np.mgrid[0:rows, 0:cols]
    near = (np.hypot(yy - sy, xx - sx) < reach) & (sector > 0)
    out = np.zeros(frames.shape, dtype=np.uint8)
    ring = np.ones((13, 13), np.uint8)
    for t in range(n):
        dark = ((smooth[t] < np.percentile(smooth[t][sector > 0], 30)) & near).astype(np.uint8)
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((9, 9), np.uint8))
        _, components = cv2.connectedComponents(dark)
        if components[sy, sx] == 0:
            continue  # the seed is not dark on this frame: nothing drawn
        pool = (components == components[sy, sx]).astype(np.uint8)
        contours, _ = cv2.findContours(pool, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pool = cv2.drawContours(np.zeros_like(pool), contours, -1, 1, thickness=-1).astype(bool)
        rim = cv2.dilate(pool.astype(np.uint8), ring).astype(bool) & ~pool & (sector > 0)
        out[t][rim] = 2
        out[t][pool] = 1
    return out


def bench_real(spacings: list[int], methods: list[str]) -> None:
    """Motion interpolation on the real cine: ms/frame, and agreement (Dice) with ``motion-full``, the same
    interpolation with the flow computed on the full-size frames (no truth exists for this cine)."""
    loaded = real_cine()
    if loaded is None:
        print(f"\nreal cine: pydicom-data ({REAL_CINE}) not installed; skipped")
        return
    image, path = loaded
    drawn = drawn_by_threshold(image)
    n, rows, cols = image.shape
    print(f"\n# real cine {path.name}: {n} frames x {cols} x {rows}; keyframes drawn by a threshold "
          "(drawn_by_threshold); no truth:")
    print("# Dice vs motion-full (flow on full-size frames, same keyframes) on the non-key frames")
    header = f"{'spacing':>7} {'method':14} {'Dice vs full':>12} {'worst':>7} {'ms/frame':>9}"
    print(header)
    print("-" * len(header))
    for spacing in spacings:
        keyframes = [k for k in range(0, n, spacing) if drawn[k].any()]
        inner = [t for t in range(keyframes[0], keyframes[-1] + 1) if t not in keyframes]
        reference, full_seconds = run_method("motion-full", image, drawn, keyframes)
        rows_out = {"motion-full": (reference, full_seconds)}
        for method in [m for m in methods if m not in ("motion-full", "morphological")]:
            rows_out[method] = run_method(method, image, drawn, keyframes)
        for method, (labels, seconds) in rows_out.items():
            per_frame = [label_dice(labels[t], reference[t]) for t in inner]
            dice = [float(np.mean(list(d.values()))) if d else 1.0 for d in per_frame]
            ms = 1000 * seconds / len(inner)
            print(f"{spacing:>7} {method:14} {np.mean(dice):12.4f} {np.min(dice):7.4f} {ms:9.1f}", flush=True)
        if "motion" in rows_out:
            ms = 1000 * rows_out["motion"][1] / len(inner)
            floor = 1000 * flow_floor(image, keyframes) / len(inner)
            print(f"{'':>7} motion: {ms / floor:.2f} x the flow floor ({floor:.1f} ms/frame, one thread), "
                  f"{full_seconds / rows_out['motion'][1]:.1f} x faster than motion-full; target <= 50 ms/frame: "
                  f"{'met' if ms <= 50 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="standard,hard", help="Comma-separated: standard, hard.")
    parser.add_argument("--spacing", default="5,10,20", help="Keyframe spacings (frames), comma-separated.")
    parser.add_argument("--methods", default="nearest,shape,morphological,motion",
                        help="Comma-separated: nearest, shape, morphological, motion, motion-full (motion with "
                             "the flow on full-size frames, the peer of motion's reduced frames).")
    parser.add_argument("--size", default="256",
                        help="Frame sizes, comma-separated: 256 (square) or 640x480 (columns x rows).")
    parser.add_argument("--frames", type=int, default=61, help="Frames of the cine.")
    parser.add_argument("--seed", default="7", help="Seeds of the phantom's noise, comma-separated (one cine each).")
    parser.add_argument("--real", action="store_true",
                        help=f"Also run on pydicom-data's {REAL_CINE} (640 x 480, 120 frames; no truth).")
    parser.add_argument("--real-only", action="store_true", help="Only the real cine.")
    parser.add_argument("--save", type=Path, help="Folder to write each cine and truth as NRRD.")
    args = parser.parse_args()

    variants = args.variant.split(",")
    spacings = [int(v) for v in args.spacing.split(",")]
    methods = args.methods.split(",")
    sizes = [parse_size(v) for v in args.size.split(",")]
    if not args.real_only:
        bench_synthetic(variants, spacings, methods, sizes, args)
    if args.real or args.real_only:
        bench_real(spacings, methods)


def bench_synthetic(variants: list[str], spacings: list[int], methods: list[str], sizes: list[tuple[int, int]],
                    args: argparse.Namespace) -> None:
    print(f"# keyframe interpolation, {args.frames} frames, {_usable_cpus()} CPUs; Dice on non-key frames "
          "(mean over labels per frame)")
    header = (f"{'size':8} {'variant':9} {'seed':>4} {'spacing':>7} {'method':14} {'mean Dice':>9} {'worst':>7} "
              f"{'ms/frame':>9}   mean Dice per label: cavity / wall / crescent")
    print(header)
    print("-" * len(header))
    verdicts = []
    truth = None
    for (rows, cols), variant, seed in [(z, v, int(s)) for z in sizes for v in variants for s in args.seed.split(",")]:
        size = f"{cols}x{rows}"
        image, truth = make_cine(variant, args.frames, (rows, cols), seed)
        if args.save:
            import SimpleITK as sitk

            args.save.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(image), str(args.save / f"{variant}_{size}_{seed}_image.nrrd"))
            sitk.WriteImage(sitk.GetImageFromArray(truth), str(args.save / f"{variant}_{size}_{seed}_truth.nrrd"))
        for spacing in spacings:
            keyframes = list(range(0, args.frames, spacing))
            if keyframes[-1] != args.frames - 1 and (args.frames - 1) % spacing == 0:
                keyframes.append(args.frames - 1)
            inner = [t for t in range(keyframes[0], keyframes[-1] + 1) if t not in keyframes]
            timings = {}
            for method in methods:
                labels, seconds = run_method(method, image, truth, keyframes)
                per_frame = [label_dice(labels[t], truth[t]) for t in inner]
                dice = [float(np.mean(list(d.values()))) for d in per_frame]
                mean, worst = float(np.mean(dice)), float(np.min(dice))
                per_label = " / ".join(f"{np.mean([d[k] for d in per_frame if k in d]):.3f}" for k in (1, 2, 3))
                ms = 1000 * seconds / max(len(inner), 1)
                timings[method] = ms
                print(f"{size:8} {variant:9} {seed:>4} {spacing:>7} {method:14} {mean:9.3f} {worst:7.3f} {ms:9.1f}   "
                      f"{per_label}", flush=True)
                if variant == "hard" and method == "motion" and spacing in TARGETS:
                    want_mean, want_worst = TARGETS[spacing]
                    ok = mean >= want_mean and (want_worst is None or worst >= want_worst) and ms <= 50
                    verdicts.append(f"{size}, hard, seed {seed}, spacing {spacing}: mean {mean:.4f} (>= {want_mean})"
                                    + (f", worst {worst:.4f} (>= {want_worst})" if want_worst else "")
                                    + f", {ms:.1f} ms/frame (<= 50): {'met' if ok else 'NOT met'}")
            if "motion" in timings:
                floor = 1000 * flow_floor(image, keyframes) / max(len(inner), 1)
                peer = (f", {timings['motion-full'] / timings['motion']:.1f} x faster than motion-full"
                        if "motion-full" in timings else "")
                print(f"{'':8} motion: {timings['motion'] / floor:.2f} x the flow floor ({floor:.1f} ms/frame, "
                      f"one thread){peer}")
    if "morphological" in methods and truth is not None:
        started = time.perf_counter()
        Interpolator({0: truth[0], 2: truth[2]}, 3, method="morphological").run()
        print(f"\nmorphological: each call also starts a child process that loads ITK "
              f"(~{time.perf_counter() - started:.1f} s here, not in ms/frame)")
    for line in verdicts:
        print("target " + line)


if __name__ == "__main__":
    main()
