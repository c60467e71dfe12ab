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

from medannot.interpolation import Interpolator  # noqa: E402 - after the sys.path line

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
    """Label map and seconds of computation."""
    if method == "nearest":
        started = time.perf_counter()
        return nearest_keyframe(truth, keyframes), time.perf_counter() - started
    interp = Interpolator({k: truth[k] for k in keyframes}, truth.shape[0],
                          image=image if method == "motion" else None, method=method)
    result = interp.run()
    return result.labels, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="standard,hard", help="Comma-separated: standard, hard.")
    parser.add_argument("--spacing", default="5,10,20", help="Keyframe spacings (frames), comma-separated.")
    parser.add_argument("--methods", default="nearest,shape,morphological,motion",
                        help="Comma-separated: nearest, shape, morphological, motion.")
    parser.add_argument("--size", type=int, default=256, help="Rows and columns of the cine.")
    parser.add_argument("--frames", type=int, default=61, help="Frames of the cine.")
    parser.add_argument("--seed", default="7", help="Seeds of the phantom's noise, comma-separated (one cine each).")
    parser.add_argument("--save", type=Path, help="Folder to write each cine and truth as NRRD.")
    args = parser.parse_args()

    variants = args.variant.split(",")
    spacings = [int(v) for v in args.spacing.split(",")]
    methods = args.methods.split(",")
    print(f"# keyframe interpolation, {args.frames} frames x {args.size} x {args.size}, "
          f"{os.cpu_count()} CPUs; Dice on non-key frames (mean over labels per frame)")
    header = (f"{'variant':9} {'seed':>4} {'spacing':>7} {'method':14} {'mean Dice':>9} {'worst':>7} {'ms/frame':>9}   "
              "mean Dice per label: cavity / wall / crescent")
    print(header)
    print("-" * len(header))
    verdicts = []
    for variant, seed in [(v, int(s)) for v in variants for s in args.seed.split(",")]:
        image, truth = make_cine(variant, args.frames, args.size, seed)
        if args.save:
            import SimpleITK as sitk

            args.save.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(image), str(args.save / f"{variant}_{seed}_image.nrrd"))
            sitk.WriteImage(sitk.GetImageFromArray(truth), str(args.save / f"{variant}_{seed}_truth.nrrd"))
        for spacing in spacings:
            keyframes = list(range(0, args.frames, spacing))
            if keyframes[-1] != args.frames - 1 and (args.frames - 1) % spacing == 0:
                keyframes.append(args.frames - 1)
            inner = [t for t in range(keyframes[0], keyframes[-1] + 1) if t not in keyframes]
            for method in methods:
                labels, seconds = run_method(method, image, truth, keyframes)
                per_frame = [label_dice(labels[t], truth[t]) for t in inner]
                dice = [float(np.mean(list(d.values()))) for d in per_frame]
                mean, worst = float(np.mean(dice)), float(np.min(dice))
                per_label = " / ".join(f"{np.mean([d[k] for d in per_frame if k in d]):.3f}" for k in (1, 2, 3))
                ms = 1000 * seconds / max(len(inner), 1)
                print(f"{variant:9} {seed:>4} {spacing:>7} {method:14} {mean:9.3f} {worst:7.3f} {ms:9.1f}   {per_label}",
                      flush=True)
                if variant == "hard" and method == "motion" and spacing in TARGETS:
                    want_mean, want_worst = TARGETS[spacing]
                    ok = mean >= want_mean and (want_worst is None or worst >= want_worst) and ms <= 50
                    verdicts.append(f"hard, seed {seed}, spacing {spacing}: mean {mean:.4f} (>= {want_mean})"
                                    + (f", worst {worst:.4f} (>= {want_worst})" if want_worst else "")
                                    + f", {ms:.1f} ms/frame (<= 50): {'met' if ok else 'NOT met'}")
    if "morphological" in methods:
        started = time.perf_counter()
        Interpolator({0: truth[0], 2: truth[2]}, 3, method="morphological").run()
        print(f"\nmorphological: each call also starts a child process that loads ITK "
              f"(~{time.perf_counter() - started:.1f} s here, not in ms/frame)")
    for line in verdicts:
        print("target " + line)


if __name__ == "__main__":
    main()
