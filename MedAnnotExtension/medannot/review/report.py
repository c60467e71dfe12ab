"""The agreement report of a project: figures (PNG, matplotlib) and a JSON twin holding every number they show.

Input is plain rows (one per case, segment and compared pair, as the server stores them), so the CLI, the package
builder and the dashboard build the same report from the same numbers:

- **per structure**: the distribution of reader-pair Dice, HD95 and NSD per segment (box plots);
- **per reader**: each reader's mean Dice / HD95 / NSD against the consensus and, on gold cases, the reference;
- **Bland-Altman** of volumes, reader minus consensus, per segment: bias (mean difference) and 95 % limits of
  agreement (bias +- 1.96 SD of the differences, sample SD), with the points.

HD95 is the larger of the two directed 95th percentiles of surface distances (MetricsReloaded, DeepMind
surface-distance, MONAI); a missing HD95 (a segment empty in one read) is left out of its statistics and counted.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medannot.review.agreement import HD95_DEFINITION

logger = logging.getLogger(__name__)

CONSENSUS = "consensus"
GOLD = "gold"
METRICS = ("dice", "hd95_mm", "nsd")


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    present = np.asarray([v for v in values if v is not None], dtype=float)
    out: dict[str, Any] = {"n": int(present.size), "missing": int(len(values) - present.size)}
    if present.size:
        q1, median, q3 = np.percentile(present, [25, 50, 75])
        out.update(mean=float(present.mean()), median=float(median), q1=float(q1), q3=float(q3),
                   min=float(present.min()), max=float(present.max()))
    return out


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Bland-Altman of paired measurements: differences ``a - b`` against means; bias, sample SD and the 95 %
    limits of agreement (bias +- 1.96 SD). With one pair the SD and limits are None."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff, mean = a_arr - b_arr, (a_arr + b_arr) / 2
    bias = float(diff.mean()) if diff.size else None
    sd = float(diff.std(ddof=1)) if diff.size > 1 else None
    return {"n": int(diff.size), "means": mean.tolist(), "differences": diff.tolist(), "bias": bias, "sd": sd,
            "loa_low": None if sd is None or bias is None else bias - 1.96 * sd,
            "loa_high": None if sd is None or bias is None else bias + 1.96 * sd}


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Every number of the report from metric rows with keys ``case, segment, a, b`` (reader names, or
    "consensus" / "gold") and ``dice, hd95_mm, nsd, volume_a_ml, volume_b_ml``."""
    rows = list(rows)
    per_structure: dict[str, dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    per_reader: dict[str, dict[str, dict[str, dict[str, list[float | None]]]]] = {
        CONSENSUS: defaultdict(lambda: defaultdict(lambda: defaultdict(list))),
        GOLD: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))}
    volumes: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        a, b, segment = str(row["a"]), str(row["b"]), str(row["segment"])
        if b in (CONSENSUS, GOLD) and a not in (CONSENSUS, GOLD):
            for metric in METRICS:
                per_reader[b][a][segment][metric].append(row[metric])
            if b == CONSENSUS and row.get("volume_a_ml") is not None and row.get("volume_b_ml") is not None:
                volumes[segment]["reader"].append(float(row["volume_a_ml"]))
                volumes[segment]["consensus"].append(float(row["volume_b_ml"]))
                volumes[segment]["labels"].append(f"{row['case']}/{a}")
        elif CONSENSUS not in (a, b) and GOLD not in (a, b):
            for metric in METRICS:
                per_structure[segment][metric].append(row[metric])
    return {
        "hd95_definition": HD95_DEFINITION,
        "cases": sorted({str(r["case"]) for r in rows}),
        "per_structure": {seg: {m: _stats(v) for m, v in metrics.items()} for seg, metrics in per_structure.items()},
        "per_reader": {against: {reader: {seg: {m: _stats(v) for m, v in metrics.items()}
                                          for seg, metrics in segments.items()}
                                 for reader, segments in readers.items()}
                       for against, readers in per_reader.items()},
        "bland_altman_volume_ml": {seg: {**bland_altman(v["reader"], v["consensus"]), "points": v["labels"],
                                         "difference": "reader minus consensus"}
                                   for seg, v in volumes.items()},
    }


def build_report(rows: Iterable[Mapping[str, Any]], output: str | Path, title: str = "Agreement") -> Path:
    """Write ``report.json`` and the figures into ``output``; returns the JSON's path. Every figure's numbers are
    in the JSON (``figures`` lists each PNG with the key of its numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    summary = summarise(rows)
    figures: list[dict[str, str]] = []

    pairs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if CONSENSUS not in (row["a"], row["b"]) and GOLD not in (row["a"], row["b"]):
            for metric in METRICS:
                if row[metric] is not None:
                    pairs[str(row["segment"])][metric].append(float(row[metric]))
    if pairs:
        segments = sorted(pairs)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        for ax, metric, label in zip(axes, METRICS, ("Dice", "HD95 (mm)", "NSD")):
            data = [pairs[s][metric] for s in segments]
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(segments) + 1), segments, rotation=20)
            for i, values in enumerate(data, start=1):
                ax.plot(np.full(len(values), i), values, "o", alpha=0.5, color="tab:blue")
            ax.set_title(f"{label}, reader pairs")
        fig.suptitle(f"{title}: agreement per structure (HD95: larger directed 95th percentile)")
        fig.tight_layout()
        fig.savefig(out / "agreement_per_structure.png", dpi=100)
        plt.close(fig)
        figures.append({"file": "agreement_per_structure.png", "numbers": "per_structure"})

    for against in (CONSENSUS, GOLD):
        readers = summary["per_reader"][against]
        if not readers:
            continue
        names = sorted(readers)
        segments = sorted({s for r in readers.values() for s in r})
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        width = 0.8 / max(len(segments), 1)
        for ax, metric, label in zip(axes, METRICS, ("Dice", "HD95 (mm)", "NSD")):
            for k, segment in enumerate(segments):
                means = [readers[n].get(segment, {}).get(metric, {}).get("mean", np.nan) for n in names]
                ax.bar(np.arange(len(names)) + k * width, means, width, label=segment)
            ax.set_xticks(np.arange(len(names)) + width * (len(segments) - 1) / 2, names, rotation=20)
            ax.set_title(f"mean {label} vs {against}")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title}: each reader against the {against}")
        fig.tight_layout()
        name = f"per_reader_vs_{against}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figures.append({"file": name, "numbers": f"per_reader.{against}"})

    for segment, ba in summary["bland_altman_volume_ml"].items():
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ba["means"], ba["differences"], "o")
        if ba["bias"] is not None:
            ax.axhline(ba["bias"], color="k", label=f"bias {ba['bias']:.3g} ml")
        if ba["loa_low"] is not None:
            for value in (ba["loa_low"], ba["loa_high"]):
                ax.axhline(value, color="k", linestyle="--")
            ax.plot([], [], "k--", label=f"95% limits {ba['loa_low']:.3g} .. {ba['loa_high']:.3g} ml")
        ax.set_xlabel("mean of reader and consensus volume (ml)")
        ax.set_ylabel("reader minus consensus (ml)")
        # wrapped: a 6 in wide figure cuts a long project name off otherwise
        ax.set_title(textwrap.fill(f"{title}: Bland-Altman, {segment}", 60), fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = "bland_altman_" + "".join(c if c.isalnum() else "_" for c in segment) + ".png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figures.append({"file": name, "numbers": f"bland_altman_volume_ml.{segment}"})

    report = out / "report.json"
    report.write_text(json.dumps({"title": title, **summary, "figures": figures}, indent=2, allow_nan=False) + "\n")
    return report
