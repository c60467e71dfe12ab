"""``medannot review``: offline agreement and consensus of reader SEGs (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from medannot.cli_common import CONTEXT, MedAnnotGroup


@click.group("review", cls=MedAnnotGroup, context_settings=CONTEXT)
def review() -> None:
    """Multi-reader review of SEGs on your disk: agreement between reads, consensus of reads."""


def _source(path: Path | None):  # type: ignore[no-untyped-def]
    from medannot.imaging import load_source

    return load_source(path) if path is not None else None


@review.command("agreement", context_settings=CONTEXT)
@click.argument("segs", metavar="SEG.dcm SEG.dcm...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Source series the SEGs were drawn on, to read them onto its grid (default: the SEGs' own).")
@click.option("--tolerance-mm", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="Tolerance of the normalised surface distance (NSD), in mm.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON (tolerance_mm, hd95, pairs).")
def review_agreement(segs: tuple[Path, ...], source: Path | None, tolerance_mm: float, as_json: bool) -> None:
    """Dice, HD95, NSD and volumes for every segment and every pair of SEGs (segments matched by label).

    HD95 is the larger of the two directed 95th percentiles of surface distances (MetricsReloaded, DeepMind
    surface-distance, MONAI), not the pooled percentile (MedPy, seg-metrics). A segment one SEG lacks counts as
    empty there: Dice 0, NSD 0, HD95 null with a note; empty in both: Dice 1, HD95 0, NSD 1.
    """
    from medannot.review.agreement import HD95_DEFINITION, agreement_table
    from medannot.review.reads import load_reads, missing_segments, segment_names

    if len(segs) < 2:
        raise click.UsageError("give at least two SEGs to compare")
    reads = load_reads(list(segs), _source(source))
    by_name = {str(r.path): r.masks for r in reads}
    if len(by_name) < len(reads):
        raise click.UsageError("a SEG is given twice; give each SEG once")
    rows = agreement_table(by_name, segment_names(reads), tolerance_mm)
    notes = missing_segments(reads)
    if as_json:
        pairs = [{"a": row.a, "b": row.b, "segment": row.segment, **_rounded(row.agreement.to_dict())}
                 for row in rows]
        for item in pairs:
            item.pop("tolerance_mm")
        click.echo(json.dumps({"tolerance_mm": tolerance_mm, "hd95": HD95_DEFINITION, "pairs": pairs}, indent=2))
        for note in notes:
            click.echo(f"note: {note}", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    table = Table("segment", "a", "b", "Dice", "HD95 mm", f"NSD@{tolerance_mm:g}mm", "vol a ml", "vol b ml", "note")
    for row in rows:
        ag = row.agreement
        table.add_row(row.segment, Path(row.a).name, Path(row.b).name, f"{ag.dice:.3f}",
                      "-" if ag.hd95_mm is None else f"{ag.hd95_mm:.2f}", f"{ag.nsd:.3f}",
                      *("-" if v is None else f"{v:.2f}" for v in (ag.volume_a_ml, ag.volume_b_ml)),
                      (ag.note or "").split(":")[0])
    console.print(table)
    console.print(HD95_DEFINITION + ".", markup=False)
    for note in notes:
        console.print(f"note: {note}", markup=False)


def _rounded(values: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}


@review.command("consensus", context_settings=CONTEXT)
@click.argument("segs", metavar="SEG.dcm SEG.dcm...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["staple", "majority"]), required=True,
              help="STAPLE (SimpleITK, per segment) or majority vote (more than half of the readers).")
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Source series the SEGs were drawn on.")
@click.option("--guideline", "guideline_path", type=click.Path(path_type=Path), default=None,
              help="Guideline YAML for the consensus SEG (default: the readers' segments, names, codes and colours "
                   "from the first SEG that has each, under the guideline the SEGs record).")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Folder to write the consensus SEG and SR into (use one apart from the reader SEGs).")
def review_consensus(segs: tuple[Path, ...], method: str, source: Path, guideline_path: Path | None,
                     output: Path) -> None:
    """Write the consensus of reader SEGs as one SEG + SR (AUTOMATIC, algorithm STAPLE or majority vote);
    the SR lists every reader SEG with, for STAPLE, each reader's sensitivity and specificity. Prints the paths."""
    from medannot.review.export import export_consensus
    from medannot.review.reads import (check_required_segments, guideline_from_reads, load_reads, missing_segments,
                                       segment_names)

    if len(segs) < 2:
        raise click.UsageError("give at least two SEGs to make a consensus of")
    src = _source(source)
    reads = load_reads(list(segs), src)
    if len({r.seg_uid for r in reads}) < len(reads):
        raise click.UsageError("a SEG is given twice; give each reader's SEG once")
    if guideline_path is not None:
        from medannot.guideline import load_guideline

        guideline = load_guideline(guideline_path)
        for name in segment_names(reads):
            guideline.segment(name)  # a reader segment the guideline does not define is refused here
        check_required_segments(reads, guideline)
    else:
        guideline = guideline_from_reads(reads)
    result = export_consensus(reads, src, guideline, method, output).result
    for note in missing_segments(reads):
        click.echo(f"note: {note}", err=True)
    click.echo(str(result.seg_path))
    click.echo(str(result.sr_path))
