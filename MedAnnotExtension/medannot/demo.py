"""``medannot demo``: the main job on generated data, end to end, printing where everything is."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medannot.demo_data import cine_phantom, ct_geometry, ct_phantom, make_ct_series, make_us_cine
from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation, read_segmentation
from medannot.dicomseg.validate import dciodvfy_path, validate_files
from medannot.errors import MedAnnotError
from medannot.guideline import load_guideline
from medannot.guideline.qa import check_labels
from medannot.imaging import load_source, read_label_map, write_label_map
from medannot.interpolation import interpolate_labels, load_cine
from medannot.interpolation.provenance import segment_provenance

MARKER = ".medannot-demo"
CT_SHAPE = (24, 96, 96)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


def _prepare(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).exists():
            raise MedAnnotError(f"{output}: exists and is not a MedAnnot demo folder; choose another --output")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("made by medannot demo; safe to delete\n")


def _bundled_guideline(name: str, output: Path) -> Path:
    target = output / "guidelines" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(resources.files("medannot.data").joinpath(name).read_bytes())
    return target


def _task_server_part(output: Path, console: Console) -> dict[str, Path]:
    """Start a local server, set up a lab, and let two readers work through the queue."""
    try:
        from medannot.demo_server import (package_projects, read_cases, review_cases, set_up_lab, start_local_server,
                                          verify_audit)
    except ImportError as exc:
        console.print(f"Task server part skipped: {exc.name} is not installed (pip install 'medannot[server]')")
        return {}

    root = output / "server"
    with console.status("Task server: users, projects, cases ...") as status:
        projects, passwords, deidentified = set_up_lab(root, _bundled_guideline("liver-ct.yaml", output),
                                         cine_guideline_path=_bundled_guideline("echo-lv.yaml", output))
        server = start_local_server(root)
        try:
            status.update(f"Task server at {server.url}: two readers claim, segment (the cine: keyframes, "
                          "interpolation), export and submit ...")
            rows = []
            for seed, reader in enumerate(("reader1", "reader2")):
                for kind, project_id in projects.items():
                    rows += read_cases(server.url, project_id, reader, passwords[reader],
                                       output / "readers" / reader / kind, seed)
            status.update(f"Task server at {server.url}: a reviewer decides and signs each case, the admin "
                          "approves ...")
            reviews = []
            for kind, project_id in projects.items():
                reviews += review_cases(server.url, project_id, "reviewer1", passwords["reviewer1"], "admin",
                                        passwords["admin"], output / "reviewer" / kind)
        finally:
            server.stop()
        count, problem = verify_audit(root)
        status.update("Submission packages: build, verify offline, change one byte and verify again ...")
        packages = package_projects(root, projects, output / "packages")
    names = {project_id: kind for kind, project_id in projects.items()}
    table = Table(title=f"Task server {server.url} (SQLite)", title_justify="left")
    for column in ("reader", "project", "task", "case", "QA", "submit", "submission"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["reader"]), f"{row['project']} ({names[row['project']].upper()})", str(row["task"]),
                      str(row["case"]), str(row["qa"]).split(" ")[0], str(row["status"]), str(row["submission"]))
    console.print(table)
    _print_reviews(console, reviews, names)
    console.print(f"  audit trail: {count} records, " + ("hash chain intact" if problem is None else problem))
    console.print(f"  de-identified before import: {deidentified} source file(s) (PS3.15 Basic Profile, dates "
                  f"shifted, keyed UIDs; key {root / 'deid.key'})", soft_wrap=True)
    _print_packages(console, packages)
    if any(p["caught"] is None for p in packages):
        raise MedAnnotError("package verify accepted a package with a changed byte; see above")
    if problem is not None or any(row["status"] != "sent" for row in rows) or not all(r["final"] for r in reviews):
        raise MedAnnotError("the task-server part of the demo did not complete; see above")
    console.print(f"  log in yourself: medannot serve --db sqlite:///{root / 'medannot.db'} "
                  f"(users reader1 / reader2 / reviewer1 / admin, passwords in {root / 'passwords.txt'})", soft_wrap=True)
    (root / "passwords.txt").write_text("".join(f"{k} {v}\n" for k, v in passwords.items()))
    return {"server db": root / "medannot.db", "results": root / "data",
            **{f"{p['kind']} package": Path(str(p["folder"])) for p in packages}}


def _print_packages(console: Console, packages: list[dict]) -> None:
    for p in packages:
        n, v = p["numbers"], p["verified"]
        console.print(f"  package {p['folder']}: {n['cases']} case(s), {n['reads']} reads, {n['consensus']} "
                      f"consensus, {n['signatures']} signatures, {n['images']} de-identified images; verify: "
                      f"intact, {v.dicom_files} SEG/SR valid, signed by {v.signed_by}", soft_wrap=True)
        console.print(f"    one byte of {p['victim']} changed in {p['tampered']}: verify says "
                      f"{p['caught'] or 'NOTHING (a bug)'}", soft_wrap=True)


def _print_reviews(console: Console, reviews: list[dict], names: dict[int, str]) -> None:
    """The agreement table of every reviewed case (reader pairs and each reader vs the consensus) and what the
    reviewer decided."""
    table = Table(title="Review: agreement per segment (HD95: the larger directed 95th percentile, mm)",
                  title_justify="left")
    for column in ("case", "segment", "a", "b", "Dice", "HD95 mm", "NSD", "note"):
        table.add_column(column, no_wrap=column in ("case", "segment"))
    for review in reviews:
        for m in review["metrics"]:
            table.add_row(str(review["case"]), str(m["segment"]), str(m["a"]),
                          str(m["b"]), f"{m['dice']:.3f}", "-" if m["hd95_mm"] is None else f"{m['hd95_mm']:.2f}",
                          f"{m['nsd']:.3f}", (m["note"] or "").split(":")[0])
    console.print(table)
    for review in reviews:
        how = "the STAPLE consensus" if review["decision"] == "consensus" else f"{review['accepted']}'s read"
        console.print(f"  {review['case']}: reviewer1 accepted {how}; signed "
                      f"{' + '.join(review['signatures'])}: {'final' if review['final'] else 'NOT final'}", soft_wrap=True)


def run_demo(output: Path) -> dict[str, Path]:
    """Generate a CT series and an ultrasound cine, export SEG + SR with provenance for both, validate, read back.

    Returns the paths made, by name.
    """
    console = Console()
    output = Path(output)
    _prepare(output)
    reader = ReaderInfo(name="Demo^Radiologist", reader_id="reader1", role="Radiologist",
                        institution="MedAnnot Demo Hospital")
    made: dict[str, Path] = {}
    finished = datetime.now(timezone.utc)
    with console.status("Generating a CT series and an ultrasound cine ...") as status:
        ct_dir = make_ct_series(output / "images" / "ct", CT_SHAPE)
        _, ct_labels = ct_phantom(CT_SHAPE)
        made["ct labels"] = write_label_map(ct_labels, ct_geometry(CT_SHAPE), output / "labels" / "ct-labels.nii.gz")
        us_file = make_us_cine(output / "images" / "us-cine.dcm")
        _, us_labels = cine_phantom()
        made["us labels"] = write_label_map(us_labels, None, output / "labels" / "us-labels.nii.gz")

        status.update("Exporting CT DICOM-SEG + SR ...")
        ct_guideline = _bundled_guideline("liver-ct.yaml", output)
        labels, geometry = read_label_map(made["ct labels"])
        ct = export_segmentation(
            load_source(ct_dir), labels, geometry, load_guideline(ct_guideline), reader, output / "results" / "ct",
            segments={
                "Liver": SegmentProvenance(confidence=95, started=finished - timedelta(minutes=14),
                                           ended=finished - timedelta(minutes=4), active_seconds=540),
                "Lesion": SegmentProvenance("SEMIAUTOMATIC", "Fill between slices", "5.12", confidence=70,
                                            keyframes=(9, 13, 17), interpolated_frames=(10, 11, 12, 14, 15, 16),
                                            started=finished - timedelta(minutes=4), ended=finished,
                                            active_seconds=180),
            },
            task_id="demo-ct-1", content_datetime=finished, labels_name=str(made["ct labels"]),
        )
        status.update("Interpolating the ultrasound cine from keyframes (motion-guided) ...")
        us_guideline = _bundled_guideline("echo-lv.yaml", output)
        cine = load_cine(us_file)
        keyframes = list(range(0, us_labels.shape[0], 6)) + [us_labels.shape[0] - 1]
        filled = interpolate_labels(us_labels, keyframes, image=cine.frames, frame_times=cine.frame_times_ms)
        made["us labels"] = write_label_map(filled.labels, None, output / "labels" / "us-labels-interpolated.nii.gz")
        inner = filled.interpolated_frames
        interpolation_dice = {name: _dice(filled.labels[inner] == label, us_labels[inner] == label)
                              for label, name in ((1, "LV cavity"), (2, "LV wall"))}
        status.update("Exporting ultrasound cine DICOM-SEG + SR ...")
        confidences = {1: 85, 2: 60}
        us = export_segmentation(
            load_source(us_file), filled.labels, None, load_guideline(us_guideline), reader,
            output / "results" / "us",
            segments={s.label: segment_provenance(s, filled.method, confidences[s.label]) for s in filled.segments},
            task_id="demo-us-1", content_datetime=finished, labels_name=str(made["us labels"]),
        )
        status.update("Checking the label maps against the guidelines' QA rules ...")
        qa = {"CT": check_labels(*read_label_map(made["ct labels"]), load_guideline(ct_guideline)),
              "Ultrasound cine": check_labels(read_label_map(made["us labels"])[0], None,
                                              load_guideline(us_guideline), is_cine=True,
                                              calibration=cine.calibration)}
        status.update("Validating with dciodvfy and MedAnnot's checks ...")
        files = [ct.seg_path, ct.sr_path, us.seg_path, us.sr_path]
        findings = validate_files(files)
    errors = [f for f in findings if f.severity == "error"]
    made.update({"CT SEG": ct.seg_path, "CT SR": ct.sr_path, "US SEG": us.seg_path, "US SR": us.sr_path})

    console.print(f"Cine interpolation ({filled.method}) from keyframes {', '.join(str(k + 1) for k in keyframes)}: "
                  + ", ".join(f"{name} Dice {d:.3f}" for name, d in interpolation_dice.items())
                  + " against the truth on the interpolated frames", soft_wrap=True)
    for name, report in qa.items():
        console.print(f"QA rules, {name}: {'passed' if report.passed else 'FAILED'} "
                      f"({len(report.errors)} error(s), {len(report.warnings)} warning(s))")
        for finding in report.findings:
            console.print(f"  {finding.severity} {finding.rule} {finding.segment}: {finding.message}", soft_wrap=True)
    for name, result in (("CT", ct), ("Ultrasound cine", us)):
        summary = read_segmentation(result.seg_path).summary
        g = summary["guideline"]
        table = Table(title=f"{name}: provenance read back from the SEG + SR", title_justify="left")
        for column in ("segment", "how", "algorithm", "confidence", "voxels"):
            table.add_column(column)
        for s in summary["segments"]:
            table.add_row(s["name"], s["algorithm_type"], s["algorithm_name"] or "",
                          "" if s["confidence"] is None else f"{s['confidence']}%", str(s["voxels"]))
        console.print(table)
        console.print(f"  reader {summary['reader_name']} ({summary['reader_id']}), task {summary['task_id']}, "
                      f"guideline {g['id']} {g['version']} sha256 {g['sha256'][:16]}...", soft_wrap=True)
    checker = "dciodvfy + MedAnnot checks" if dciodvfy_path() else "MedAnnot checks (dciodvfy not installed)"
    console.print(f"Validation ({checker}): {len(errors)} error(s), {len(findings) - len(errors)} warning(s)")
    for finding in findings:
        console.print(f"  {finding}")
    made.update(_task_server_part(output, console))
    console.print("\nWhere everything is:")
    for name, path in made.items():
        console.print(f"  {name:10s} {path}", soft_wrap=True)
    console.print(f"\nNext: medannot seg read {ct.seg_path} --json", soft_wrap=True)
    if not all(report.passed for report in qa.values()):
        raise MedAnnotError("the demo's label maps failed the guidelines' QA rules; see above")
    if errors:
        raise MedAnnotError(f"demo output failed validation with {len(errors)} error(s); see above")
    return made
