"""The ``medannot`` command line.

Exit codes: 0 success, 1 a user error (one line on stderr saying what and where), 2 wrong usage.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

import medannot
from medannot._gc import keep_until_exit, with_paused_gc
from medannot.cli_common import CONTEXT, MedAnnotGroup

logger = logging.getLogger(__name__)

def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"{value!r} must be SEGMENT=VALUE", param_hint=option)
        key, _, rest = value.partition("=")
        pairs.append((key.strip(), rest.strip()))
    return pairs


# Commands whose modules are imported only when they run (see MedAnnotGroup), with their docstring's first paragraph.
LAZY_COMMANDS = {
    "interpolate": ("medannot.interpolation.cli:interpolate",
                    "Interpolate a label map between keyframes along time (cine) or slices (volume)."),
    "serve": ("medannot.server.cli:serve", "Run the task-queue server (REST API under /api/v1, OpenAPI docs at /docs, "
              "the lab dashboard at /)."),
    "admin": ("medannot.server.cli:admin", "Administer users, projects and cases directly on the database."),
    "audit": ("medannot.server.cli:audit", "The tamper-evident audit trail."),
    "package": ("medannot.package.cli:package",
                "The regulatory submission package: build it from the server database, verify it offline."),
    "deid": ("medannot.deid.cli:deid", "De-identification gate: find PHI in DICOM files, de-identify them (PS3.15 "
             "Basic Profile, keyed UIDs)."),
    "review": ("medannot.review.cli:review",
               "Multi-reader review of SEGs on your disk: agreement between reads, consensus of reads."),
    "client": ("medannot.client.cli:client_group", "The lab's task server: log in, claim the next case, keep the "
               "lease, submit (kept in an outbox until sent)."),
}


@click.group(cls=MedAnnotGroup, context_settings=CONTEXT, lazy_commands=LAZY_COMMANDS)
@click.version_option(medannot.__version__, prog_name="medannot")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """MedAnnot: expert medical-image annotation with provenance that holds up in a regulatory submission."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    if verbose == 0:
        # library warnings (highdicom, pydicom on odd values, urllib3 retries) are for -v; a user sees our one-line
        # messages
        logging.captureWarnings(True)
        for name in ("py.warnings", "urllib3", "highdicom", "pydicom"):
            logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------- guideline
@main.group(cls=MedAnnotGroup, context_settings=CONTEXT)
def guideline() -> None:
    """Guidelines: the versioned rules of an annotation project."""


@guideline.command("validate", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
def guideline_validate(file: Path) -> None:
    """Check a guideline YAML FILE against the schema (exit 0 valid, 1 invalid)."""
    from medannot.guideline import load_guideline

    g = load_guideline(file)
    click.echo(f"{file}: valid guideline {g.id} {g.version} ({len(g.segments)} segments, sha256 {g.sha256})")


@guideline.command("show", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
def guideline_show(file: Path) -> None:
    """Summarise a guideline FILE: version, segments with codes, colours and rules, tools, checklist, review."""
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table

    from medannot.guideline import SEGMENT_EDITOR_TOOLS, load_guideline

    g = load_guideline(file)
    console = Console(soft_wrap=True)
    console.print(f"[bold]{g.title}[/bold]")
    console.print(f"guideline   {g.id} {g.version}")
    console.print(f"sha256      {g.sha256}")
    console.print(f"modality    {g.modality or '-'}, {g.readers_per_case} reader(s) per case")
    console.print(f"confidence  {g.confidence} for every segment")
    gold = ", ".join(g.review.gold_standard_cases) or "none"
    console.print(f"review      {g.review.senior_share:.0%} of cases by a senior; gold-standard cases: {gold}")
    allowed = "all" if set(g.tools) == set(SEGMENT_EDITOR_TOOLS) else ", ".join(g.tools)
    console.print(f"tools       {allowed}")
    segments = Table("label", "segment", "category / type", "rules", title="Segments", title_justify="left")
    for s in g.segments:
        name = f"[{s.color}]██[/] {s.name}\n{s.color}" + ("" if s.required else "\noptional")
        codes = (f"{s.category.meaning} ({s.category.scheme} {s.category.code})\n"
                 f"{s.type.meaning} ({s.type.scheme} {s.type.code})")
        segments.add_row(str(s.label), name, codes, "\n".join(r.describe() for r in s.qa_rules) or "-")
    console.print(segments)
    if g.checklist:
        checklist = Table("id", "question", "answer", "required", title="Checklist (per case)", title_justify="left")
        for item in g.checklist:
            answer = "yes / no" if item.type == "yes_no" else " / ".join(item.choices)
            checklist.add_row(item.id, item.question, answer, "yes" if item.required else "no")
        console.print(checklist)
    if g.instructions:
        console.print("[bold]Instructions[/bold]")
        console.print(Markdown(g.instructions), soft_wrap=False)
    for image in g.reference_images:
        console.print(f"reference image: {image}")


@guideline.command("check", context_settings=CONTEXT)
@click.option("--guideline", "guideline_path", required=True, type=click.Path(path_type=Path),
              help="Guideline YAML whose required segments and rules to check.")
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Label map (NIfTI/NRRD/MHA); for a 2D+t cine frames x rows x cols.")
@click.option("--json", "as_json", is_flag=True, help='Print {"passed": ..., "findings": [...]} as JSON.')
@click.option("--cine", is_flag=True, help="The label map is a 2D+t cine: check each frame in 2D.")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="With --cine: the DICOM cine the labels were drawn on; its calibration (SequenceOfUltrasoundRegions "
                   "in cm, else PixelSpacing) gives sizes in mm. Without it, the label map's header spacing, else px.")
def guideline_check(guideline_path: Path, labels: Path, as_json: bool, cine: bool, source: Path | None) -> None:
    """Run a guideline's QA rules on a label map.

    Exit 0 when no finding is an error (warnings allowed), 1 when any is. A cine without a pixel size is checked
    in pixels: its area_mm2 rules are then warnings that say they could not be checked.
    """
    from medannot.guideline import load_guideline
    from medannot.guideline.qa import check_labels
    from medannot.errors import GeometryMismatchError
    from medannot.imaging import load_source, read_label_map
    from medannot.imaging.calibration import calibration_from_dataset, calibration_from_geometry

    if source is not None and not cine:
        raise click.UsageError("--source gives a cine's calibration; add --cine (a volume's label map carries its "
                               "own geometry)")
    g = load_guideline(guideline_path)
    array, geometry = read_label_map(labels)
    if cine:
        # A cine has no patient coordinate system: its pixel size is the scanner's calibration, or the label map's
        # header spacing when it states one; the label map's origin and direction mean nothing.
        if source is not None:
            cine_source = load_source(source)
            if cine_source.shape != array.shape:
                raise GeometryMismatchError(
                    f"{labels}: size {array.shape} (frames, rows, columns) but the cine {source} has "
                    f"{cine_source.shape}; check the labels drawn on this cine")
            calibration = calibration_from_dataset(cine_source.first, source.name)
        else:
            calibration = calibration_from_geometry(geometry, labels.name)
        report = check_labels(array, None, g, is_cine=True, calibration=calibration)
    else:
        report = check_labels(array, geometry, g)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
    else:
        _print_qa_report(report, labels)
    if not report.passed:
        sys.exit(1)


def _print_qa_report(report: Any, labels: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if report.findings:
        table = Table("severity", "rule", "segment", "where", "message")
        for f in report.findings:
            where = "-"
            if f.location is not None and f.location.axis == "frame":  # no patient coordinates: frame, row, col
                _, row, col = f.location.voxel
                where = f"frame {f.location.index}\nrow {row}, col {col}"
            elif f.location is not None:
                where = f"{f.location.axis} {f.location.index}\nvoxel {tuple(f.location.voxel)}"
                if f.location.point_mm is not None and f.location.patient:
                    where += "\nLPS " + ", ".join(f"{v:.1f}" for v in f.location.point_mm) + " mm"
            style = "red" if f.severity == "error" else "yellow"
            message = f.message if f.message == f.detail else f"{f.message}\n[dim]{f.detail}[/dim]"
            table.add_row(f"[{style}]{f.severity}[/]", f.rule, f.segment, where, message)
        console.print(table)
    if report.pixel_size is not None:
        console.print(f"pixel size: {report.pixel_size['text']}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    verdict = "[green]PASSED[/]" if report.passed else "[red]FAILED[/]"
    console.print(f"{verdict} {labels} against {report.guideline}: {len(report.errors)} error(s), "
                  f"{len(report.warnings)} warning(s)")


# ---------------------------------------------------------------- seg
@main.group(cls=MedAnnotGroup, context_settings=CONTEXT)
def seg() -> None:
    """DICOM-SEG + SR: export with provenance, read back, validate."""


@seg.command("export", context_settings=CONTEXT)
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Folder with one DICOM series, or one multi-frame DICOM file.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Label map (NIfTI/NRRD/MHA) on the source grid; for a 2D+t cine frames x rows x cols.")
@click.option("--probability", "probabilities", multiple=True, metavar="SEGMENT=PATH",
              help="Probability map in [0,1] for a segment; writes a FRACTIONAL SEG instead of --labels.")
@click.option("--guideline", "guideline_path", required=True, type=click.Path(path_type=Path),
              help="Guideline YAML the segmentation follows.")
@click.option("--reader-name", required=True, help='Reader as a DICOM person name, "Last^First".')
@click.option("--reader-id", required=True, help="Reader's identifier in the lab (1-16 characters).")
@click.option("--reader-role", default="Annotator", show_default=True, help="Reader's role, e.g. Radiologist.")
@click.option("--institution", default=None, help="Reader's institution.")
@click.option("--confidence", multiple=True, metavar="SEGMENT=0-100",
              help="Reader's confidence for a segment (name or label value). Repeatable.")
@click.option("--algorithm", multiple=True, metavar="SEGMENT=TYPE[:NAME[:VERSION]]",
              help="How a segment was made: MANUAL, SEMIAUTOMATIC or AUTOMATIC, with algorithm name and version.")
@click.option("--task-id", default=None, help="Task-queue task this result answers.")
@click.option("--interpolation", "interpolation_json", type=click.Path(path_type=Path), default=None,
              help="Saved `medannot interpolate --json` output: interpolated segments become SEMIAUTOMATIC with "
                   "the method, and the SR lists keyframes and interpolated frames.")
@click.option("--answer", "answers", multiple=True, metavar="ITEM=ANSWER",
              help="Answer to the guideline's per-case checklist item (yes/no or one of its choices). Repeatable.")
@click.option("--replaces", type=click.Path(path_type=Path), default=None,
              help="Earlier SEG this one corrects (it is referenced, never overwritten).")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Folder to write the SEG and SR into.")
@with_paused_gc  # one short run that allocates a lot: the collector would cost more than it frees
def seg_export(source: Path, labels: Path | None, probabilities: tuple[str, ...], guideline_path: Path,
               reader_name: str, reader_id: str, reader_role: str, institution: str | None,
               confidence: tuple[str, ...], algorithm: tuple[str, ...], task_id: str | None,
               interpolation_json: Path | None, answers: tuple[str, ...], replaces: Path | None,
               output: Path) -> None:
    """Export a label map as one DICOM-SEG and one companion SR with provenance; prints their paths."""
    if (labels is None) == (not probabilities):
        raise click.UsageError("give either --labels or one or more --probability SEGMENT=PATH")
    import numpy  # noqa: F401 - needed here anyway; imported before the fork, the helper need not import it again

    from medannot._parallel import InChildProcess
    from medannot.dicomseg._highdicom_setup import module_table_index
    from medannot.guideline import load_guideline

    # A helper process on the other core loads the guideline (with its schema validator), indexes highdicom's table
    # of the standard and reads the label map (with SimpleITK), while this process imports pydicom and highdicom and
    # reads the source headers. Errors are raised where they were raised before: the guideline's first, then those
    # of the options and the source, then the label map's.
    calls = {"guideline": (load_guideline, (guideline_path,)), "highdicom": (module_table_index, ())}
    if labels is not None:
        calls["labels"] = (_read_label_map, (labels,))
    helper = InChildProcess(calls)
    try:
        _seg_export(helper, source, labels, probabilities, reader_name, reader_id, reader_role, institution,
                    confidence, algorithm, task_id, interpolation_json, answers, replaces, output)
    finally:
        helper.close()


def _read_label_map(path: Path) -> Any:
    from medannot._parallel import KeepInChild
    from medannot.imaging.labelmap import read_label_map_view

    array, geometry, image = read_label_map_view(path)  # no copy: the helper shares the image's own buffer
    return array, geometry, KeepInChild(image)


def _seg_export(helper: Any, source: Path, labels: Path | None, probabilities: tuple[str, ...], reader_name: str,
                reader_id: str, reader_role: str, institution: str | None, confidence: tuple[str, ...],
                algorithm: tuple[str, ...], task_id: str | None, interpolation_json: Path | None,
                answers: tuple[str, ...], replaces: Path | None, output: Path) -> None:
    from medannot._parallel import InThread

    label_map = None
    if labels is not None and not helper.running:
        # No helper process here (not Linux): SimpleITK reads (and inflates) the label map without holding the
        # GIL, so it is read in a thread on the other core instead.
        from medannot.imaging.labelmap import read_label_map

        label_map = InThread(read_label_map, labels)
    _import_pydicom_offline()
    from medannot.dicomseg._highdicom_setup import prepare_highdicom
    from medannot.imaging import load_source

    from dataclasses import replace

    from medannot.dicomseg import (
        ReaderInfo,
        SegmentProvenance,
        export_segmentation,
        parse_algorithm,
    )
    from medannot.errors import ProvenanceError

    g = helper.value("guideline")
    reader = ReaderInfo(name=reader_name, reader_id=reader_id, role=reader_role, institution=institution)
    provenance: dict[int, SegmentProvenance] = {}
    if interpolation_json is not None:
        from medannot.interpolation.provenance import read_summary

        for label, prov in read_summary(interpolation_json).items():
            provenance[g.segment(label).label] = prov
    for key, spec_text in _pairs(algorithm, "--algorithm"):
        provenance[g.segment(key).label] = parse_algorithm(spec_text)
    for key, value in _pairs(confidence, "--confidence"):
        label = g.segment(key).label
        try:
            number = int(value)
        except ValueError:
            raise ProvenanceError(f"--confidence {key}={value}: confidence must be a whole number 0-100") from None
        provenance[label] = replace(provenance.get(label, SegmentProvenance()), confidence=number)
    src = load_source(source)
    array = geometry = None
    maps = None
    if labels is not None:
        if label_map is not None:
            array, geometry = label_map.value()
        else:
            array, geometry, _kept = helper.value("labels")  # _kept: the image the array views, if read here
    else:
        from medannot.imaging.labelmap import read_probability_map

        maps = {}
        for key, path in _pairs(probabilities, "--probability"):
            maps[key], geometry = read_probability_map(Path(path))
    try:
        index = helper.value("highdicom")
    except Exception as exc:  # noqa: BLE001 - the index only saves time: without it highdicom's table is indexed here
        logger.debug("highdicom's table was not indexed by the helper: %s", exc)
        index = None
    prepare_highdicom(index)
    result = export_segmentation(
        src, array, geometry, g, reader, output,
        segments=provenance, task_id=task_id, probabilities=maps, replaces=replaces,
        labels_name=str(labels or "probability maps"), checklist=dict(_pairs(answers, "--answer")),
    )
    keep_until_exit()
    click.echo(str(result.seg_path))
    click.echo(str(result.sr_path))


def _import_pydicom_offline() -> None:
    """Import pydicom without ``requests`` and ``tqdm``, which only its test-file downloader uses.

    ``import pydicom`` imports ``pydicom.data`` (palette files), whose downloader imports ``requests`` (about
    0.1 s, a tenth of a whole ``seg export``) when it is installed and falls back to ``urllib`` when it is not.
    A SEG export downloads nothing, so for this one process the two are reported missing while pydicom is
    imported; afterwards they can be imported again as usual.
    """
    if "pydicom" in sys.modules:
        return
    hidden = [name for name in ("requests", "tqdm") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes ``import name`` raise ImportError
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


@seg.command("read", context_settings=CONTEXT)
@click.argument("seg_file", metavar="SEG.dcm", type=click.Path(path_type=Path))
@click.option("--labels-out", type=click.Path(path_type=Path),
              help="Write the label map (NIfTI/NRRD/MHA) here; refused when segments overlap (see --segments-out).")
@click.option("--segments-out", type=click.Path(path_type=Path),
              help="Write one mask per segment into this folder (segment-<number>.nrrd); keeps overlapping voxels.")
@click.option("--json", "as_json", is_flag=True, help="Print the provenance summary as JSON.")
@click.option("--sr", "sr_file", type=click.Path(path_type=Path), help="Companion SR (default: found next to the SEG).")
@click.option("--source", type=click.Path(path_type=Path), help="Source series, to read onto its exact grid.")
def seg_read(seg_file: Path, labels_out: Path | None, segments_out: Path | None, as_json: bool,
             sr_file: Path | None, source: Path | None) -> None:
    """Read a DICOM-SEG (and its SR): who made it, how, how sure, under which guideline."""
    from medannot.dicomseg import read_segmentation
    from medannot.errors import DicomSegError
    from medannot.imaging import load_source, write_label_map

    record = read_segmentation(seg_file, sr_file, load_source(source) if source else None)
    if labels_out and record.overlaps:
        (first, second), voxels = max(record.overlaps.items(), key=lambda kv: kv[1])
        more = f" (and {len(record.overlaps) - 1} other pair(s))" if len(record.overlaps) > 1 else ""
        raise DicomSegError(
            f"{seg_file}: segments {first} and {second} overlap in {voxels} voxels{more}, which one label map "
            "cannot hold; use --segments-out DIR for one mask per segment")
    written = []
    if labels_out:
        written.append(f"label map: {write_label_map(record.labels, record.geometry, labels_out)}")
    if segments_out:
        for s in record.summary["segments"]:
            mask = record.segment_mask(s["number"]).astype("uint8")
            path = write_label_map(mask, record.geometry, segments_out / f"segment-{s['number']}.nrrd")
            written.append(f"segment {s['number']} ({s['name']}): {path}")
    if as_json:
        click.echo(json.dumps(record.summary, indent=2))
        return
    _print_summary(record.summary, record.sr_path)
    for line in written:
        click.echo(line)


def _print_summary(summary: dict[str, Any], sr_path: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    g = summary["guideline"]
    console.print(f"reader      {summary['reader_name']} ({summary['reader_id']})")
    console.print(f"finished    {summary['content_datetime']}")
    console.print(f"guideline   {g['id']} {g['version']} sha256 {g['sha256']}")
    console.print(f"task        {summary['task_id'] or '-'}")
    console.print(f"source      series {summary['source']['series_uid']}")
    console.print(f"SR          {sr_path or 'not found (confidence and timing unknown)'}")
    table = Table("#", "label", "segment", "how", "algorithm", "confidence", "voxels")
    for s in summary["segments"]:
        table.add_row(str(s["number"]), str(s["label"]), s["name"], s["algorithm_type"], s["algorithm_name"] or "",
                      "" if s["confidence"] is None else f"{s['confidence']}%", str(s["voxels"]))
    console.print(table)


@seg.command("validate", context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-dciodvfy", is_flag=True, help="Skip dciodvfy even if installed.")
def seg_validate(files: tuple[Path, ...], no_dciodvfy: bool) -> None:
    """Validate SEG and SR FILES with dciodvfy (when installed) and MedAnnot's consistency checks.

    Exit 1 on any error.
    """
    from medannot.dicomseg.validate import dciodvfy_path, validate_files

    findings = validate_files(list(files), use_dciodvfy=not no_dciodvfy)
    for finding in findings:
        click.echo(str(finding))
    errors = [f for f in findings if f.severity == "error"]
    checker = ("medannot (dciodvfy skipped)" if no_dciodvfy else
               "dciodvfy + medannot" if dciodvfy_path() else "medannot (dciodvfy not installed)")
    click.echo(f"{len(files)} file(s) checked by {checker}: {len(errors)} error(s), "
               f"{len(findings) - len(errors)} warning(s)")
    if errors:
        sys.exit(1)


# ---------------------------------------------------------------- demo
@main.command("demo", context_settings=CONTEXT)
@click.option("--output", type=click.Path(path_type=Path), default=Path("medannot-demo"), show_default=True,
              help="Folder for everything the demo makes.")
def demo(output: Path) -> None:
    """Run the main job end to end on generated data and print where everything is."""
    from medannot.demo import run_demo

    run_demo(output)


if __name__ == "__main__":  # pragma: no cover
    main()
