"""`medannot guideline check | show | validate` as a script or a person uses them: exit codes, JSON shape, tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from medannot_testing import run_medannot

from medannot.demo_data import cine_phantom, ct_geometry, ct_phantom
from medannot.imaging import write_label_map

SHAPE = (24, 96, 96)


def medannot(*args: object, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return run_medannot(*args, env={"COLUMNS": str(columns)}, timeout=120)


@pytest.fixture(scope="module")
def ct_labels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's CT label map as it is (passes), with 11 small lesions (a warning) and with a stray island."""
    folder = tmp_path_factory.mktemp("qa")
    _, labels = ct_phantom(SHAPE)
    geometry = ct_geometry(SHAPE)
    many = labels.copy()
    many[many == 2] = 1
    for n in range(11):  # 11 one-voxel lesions inside the liver: more than the 10 the guideline warns about
        many[12, 40 + 2 * (n % 4), 25 + 2 * (n // 4)] = 2
    island = labels.copy()
    island[2, 88:91, 88:91] = 1
    return {
        "good": write_label_map(labels, geometry, folder / "good.nii.gz"),
        "warning": write_label_map(many, geometry, folder / "warning.nii.gz"),
        "island": write_label_map(island, geometry, folder / "island.nrrd"),
    }


@pytest.mark.parametrize("command", [["guideline", "check"], ["guideline", "show"]])
def test_new_commands_have_help(command: list[str]) -> None:
    proc = medannot(*command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_check_passes_the_demo_labels_with_exit_0(ct_labels: dict[str, Path], liver_guideline_path: Path) -> None:
    proc = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", ct_labels["good"],
                    "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"passed": True, "findings": []}
    human = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", ct_labels["good"])
    assert human.returncode == 0 and "PASSED" in human.stdout and "0 error(s), 0 warning(s)" in human.stdout


def test_warnings_alone_exit_0(ct_labels: dict[str, Path], liver_guideline_path: Path) -> None:
    proc = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", ct_labels["warning"],
                    "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True
    [finding] = report["findings"]
    assert (finding["rule"], finding["severity"], finding["segment"]) == ("components", "warning", "Lesion")
    assert finding["location"]["axis"] == "slice" and finding["location"]["index"] == 12


def test_an_error_finding_exits_1_with_the_json_shape_a_script_reads(ct_labels: dict[str, Path],
                                                                      liver_guideline_path: Path) -> None:
    proc = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", ct_labels["island"],
                    "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"passed", "findings"} and report["passed"] is False
    [finding] = report["findings"]
    assert set(finding) == {"rule", "severity", "segment", "message", "detail", "location"}
    assert finding["rule"].startswith("components") and finding["severity"] == "error"
    assert finding["segment"] == "Liver" and "one connected region" in finding["message"]
    location = finding["location"]
    assert set(location) == {"axis", "index", "voxel", "point_mm"}
    k, j, i = location["voxel"]
    assert (location["axis"], location["index"], k) == ("slice", 2, 2) and 88 <= j <= 90 and 88 <= i <= 90
    # LPS from the CT geometry: origin (-25.6, -25.6, -40) mm, spacing (0.8, 0.8, 2.5) mm
    assert location["point_mm"] == pytest.approx([-25.6 + 0.8 * i, -25.6 + 0.8 * j, -40.0 + 2.5 * k])


def test_human_output_is_a_table_with_the_finding_and_the_verdict(ct_labels: dict[str, Path],
                                                                  liver_guideline_path: Path) -> None:
    proc = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", ct_labels["island"])
    assert proc.returncode == 1
    for text in ("severity", "components", "Liver", "slice 2", "FAILED", "1 error(s), 0 warning(s)"):
        assert text in proc.stdout, proc.stdout


def test_cine_labels_are_checked_per_frame(tmp_path: Path, echo_guideline_path: Path) -> None:
    _, labels = cine_phantom()
    good = write_label_map(labels, None, tmp_path / "cine.nii.gz")
    proc = medannot("guideline", "check", "--guideline", echo_guideline_path, "--labels", good, "--cine", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    labels[7, :, 60:62] = 0  # splits cavity and wall on frame 7
    bad = write_label_map(labels, None, tmp_path / "split.nii.gz")
    proc = medannot("guideline", "check", "--guideline", echo_guideline_path, "--labels", bad, "--cine", "--json")
    assert proc.returncode == 1
    findings = json.loads(proc.stdout)["findings"]
    assert {(f["segment"], f["location"]["axis"], f["location"]["index"]) for f in findings
            if f["severity"] == "error"} == {("LV cavity", "frame", 7), ("LV wall", "frame", 7)}
    # no calibration given and the label map's spacing is a placeholder: the area rule says it was not checked
    assert [(f["rule"], f["severity"]) for f in findings if f["severity"] == "warning"] == [("area_mm2", "warning")]


def test_usage_errors_exit_2_and_user_errors_exit_1_with_one_line(tmp_path: Path, liver_guideline_path: Path,
                                                                  ct_labels: dict[str, Path]) -> None:
    assert medannot("guideline", "check", "--guideline", liver_guideline_path).returncode == 2
    assert medannot("guideline", "check", "--labels", ct_labels["good"], "--bogus").returncode == 2
    missing = medannot("guideline", "check", "--guideline", liver_guideline_path, "--labels", tmp_path / "no.nii")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("medannot: error:") and "no such file" in missing.stderr


def test_validate_names_the_key_path_of_a_bad_rule_without_a_traceback(tmp_path: Path,
                                                                       liver_guideline_path: Path) -> None:
    text = liver_guideline_path.read_text().replace("inside: {segment: Liver", "inside: {segment: Livr")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = medannot("guideline", "validate", bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"medannot: error: {bad}: segments[1].rules.inside.segment: 'Livr' is not a "
                                   "segment of this guideline; it defines: Liver, Lesion")
    check = medannot("guideline", "check", "--guideline", bad, "--labels", tmp_path / "whatever.nii.gz")
    assert check.returncode == 1 and "segments[1].rules.inside.segment" in check.stderr


def test_show_summarises_the_guideline(echo_guideline_path: Path) -> None:
    proc = medannot("guideline", "show", echo_guideline_path, columns=160)  # wide enough not to wrap a question
    assert proc.returncode == 0, proc.stderr
    for text in ("Left ventricle cavity and wall on echocardiography cine", "echo-lv 1.0.0", "sha256",
                 "LV cavity", "#c83232", "87878005", "49848007", "components at most 1", "no overlap with LV cavity",
                 "Paint", "Hollow", "Standard apical four-chamber view?", "good / acceptable / poor",
                 "confidence  required", "10% of cases by a senior", "Instructions"):
        assert text in proc.stdout, (text, proc.stdout)
