"""Bad input gets a clear one-line error naming what and where, exit code 1, and nothing is written."""

from __future__ import annotations

import shutil
import subprocess

from medannot_testing import run_medannot
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medannot.demo_data import make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.errors import LabelMapError
from medannot.guideline import load_guideline
from medannot.imaging import Geometry, load_source, write_label_map


def medannot(*args: object) -> subprocess.CompletedProcess[str]:
    return run_medannot(*args, timeout=120)


def export_args(source: Path, labels: Path, guideline: Path, out: Path) -> list[str]:
    return ["seg", "export", "--source", source, "--labels", labels, "--guideline", guideline,
            "--reader-name", "Doe^Jane", "--reader-id", "jdoe", "--output", out]


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("medannot: error:") and "\n" not in line, line
    for needle in needles:
        assert needle in line, line


def shifted(geometry: Geometry, **changes: object) -> Geometry:
    values = dict(size=geometry.size, spacing=geometry.spacing, origin=geometry.origin,
                  direction=geometry.direction)
    values.update(changes)
    return Geometry(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"spacing": (0.8, 0.8, 3.0)}, "spacing"),
        ({"origin": (-25.6, -25.6, -30.0)}, "origin"),
        ({"direction": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)}, "direction"),
    ],
)
def test_label_map_off_the_source_grid_is_refused_and_nothing_written(ct_case, liver_guideline_path, tmp_path,
                                                                      change, needle):
    labels = write_label_map(ct_case["labels"], shifted(ct_case["geometry"], **change), tmp_path / "l.nii.gz")
    out = tmp_path / "out"
    proc = medannot(*export_args(ct_case["folder"], labels, liver_guideline_path, out))
    assert_user_error(proc, str(labels), needle, "does not lie on the source image grid")
    assert not out.exists() or not any(out.iterdir())


def test_label_map_of_the_wrong_size_is_refused(ct_case, liver_guideline_path, tmp_path):
    labels = write_label_map(ct_case["labels"][:-1], ct_case["geometry"], tmp_path / "l.nrrd")
    proc = medannot(*export_args(ct_case["folder"], labels, liver_guideline_path, tmp_path / "out"))
    assert_user_error(proc, "size (11, 48, 40)", "(12, 48, 40)")


def test_label_values_the_guideline_does_not_define_are_named(ct_case, liver_guideline_path, tmp_path):
    array = ct_case["labels"].copy()
    array[0, 0, :5] = 7
    labels = write_label_map(array, ct_case["geometry"], tmp_path / "l.mha")
    proc = medannot(*export_args(ct_case["folder"], labels, liver_guideline_path, tmp_path / "out"))
    assert_user_error(proc, "label value(s) 7 (5 voxels)", "1=Liver")
    assert not (tmp_path / "out").exists()


def test_empty_required_segment_is_refused_but_an_empty_optional_one_is_fine(ct_case, liver_guideline_path,
                                                                           tmp_path):
    empty_liver = np.where(ct_case["labels"] == 1, 0, ct_case["labels"]).astype(np.uint8)
    labels = write_label_map(empty_liver, ct_case["geometry"], tmp_path / "a.nii.gz")
    assert_user_error(medannot(*export_args(ct_case["folder"], labels, liver_guideline_path, tmp_path / "o1")),
                      "required segment(s) Liver (label 1) are empty")
    no_lesion = np.where(ct_case["labels"] == 2, 1, ct_case["labels"]).astype(np.uint8)
    labels = write_label_map(no_lesion, ct_case["geometry"], tmp_path / "b.nii.gz")
    proc = medannot(*export_args(ct_case["folder"], labels, liver_guideline_path, tmp_path / "o2"))
    assert proc.returncode == 0, proc.stderr
    assert len(pydicom.dcmread(proc.stdout.split()[0]).SegmentSequence) == 1


def test_mixed_series_folder_is_refused(ct_case, liver_guideline_path, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(ct_case["folder"], mixed)
    make_ct_series(tmp_path / "other", (2, 48, 40))
    for f in (tmp_path / "other").iterdir():
        shutil.copy(f, mixed / f"other_{f.name}")
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "l.nii.gz")
    proc = medannot(*export_args(mixed, labels, liver_guideline_path, tmp_path / "out"))
    assert_user_error(proc, str(mixed), "holds 2 series", "(2 files)")


def test_unreadable_source_and_label_files_are_named(ct_case, liver_guideline_path, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "l.nii.gz")
    assert_user_error(medannot(*export_args(junk, labels, liver_guideline_path, tmp_path / "o")), str(junk))
    bad_labels = tmp_path / "labels.nii.gz"
    bad_labels.write_bytes(b"garbage")
    assert_user_error(medannot(*export_args(ct_case["folder"], bad_labels, liver_guideline_path, tmp_path / "o")),
                      str(bad_labels), "cannot read image")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(medannot(*export_args(empty, labels, liver_guideline_path, tmp_path / "o")),
                      "no DICOM image files found")


def test_floating_point_label_map_with_fractions_is_refused(ct_case, liver_guideline_path, tmp_path):
    image = sitk.GetImageFromArray(ct_case["labels"].astype(np.float32) * 0.5)
    ct_case["geometry"].apply_to(image)
    path = tmp_path / "f.nii.gz"
    sitk.WriteImage(image, str(path))
    assert_user_error(medannot(*export_args(ct_case["folder"], path, liver_guideline_path, tmp_path / "o")),
                      "non-integer values")


def test_invalid_guideline_is_refused_with_key_path(ct_case, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nversion: '1'\ntitle: t\nsegments: []\n")
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "l.nii.gz")
    assert_user_error(medannot(*export_args(ct_case["folder"], labels, bad, tmp_path / "o")), str(bad), "segments")
    proc = medannot("guideline", "validate", bad)
    assert_user_error(proc, "segments")


def test_bad_reader_name_confidence_and_algorithm_are_user_errors(ct_case, liver_guideline_path, tmp_path):
    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "l.nii.gz")
    base = export_args(ct_case["folder"], labels, liver_guideline_path, tmp_path / "o")
    assert_user_error(medannot(*base, "--confidence", "Liver=150"), "between 0 and 100")
    assert_user_error(medannot(*base, "--confidence", "Spleen=50"), "no segment 'Spleen'")
    assert_user_error(medannot(*base, "--algorithm", "Liver=ROBOT"), "ROBOT")
    assert_user_error(medannot(*base, "--algorithm", "Liver=AUTOMATIC"), "needs an algorithm name")
    assert_user_error(medannot(*base, "--answer", "image-quality=superb"), "takes one of good, acceptable, poor")
    assert_user_error(medannot(*base, "--answer", "weather=sunny"), "checklist item 'weather' is not in guideline")
    bad_name = [a if a != "Doe^Jane" else "x" * 70 for a in base]
    assert_user_error(medannot(*bad_name), "DICOM person name")


def test_usage_errors_exit_2(tmp_path):
    proc = medannot("seg", "export", "--source", tmp_path)
    assert proc.returncode == 2 and "Missing option" in proc.stderr



def test_probability_map_all_below_one_step_is_refused_naming_it(ct_case, liver_guideline_path, tmp_path):
    faint = write_label_map((ct_case["labels"] >= 1).astype(np.float32) * 0.001, ct_case["geometry"],
                            tmp_path / "faint.nii.gz")
    proc = medannot("seg", "export", "--source", ct_case["folder"], "--probability", f"Liver={faint}",
                    "--guideline", liver_guideline_path, "--reader-name", "Doe^Jane", "--reader-id", "jdoe",
                    "--output", tmp_path / "o")
    assert_user_error(proc, "probability maps", "below 1/510", "no frame")
    assert not (tmp_path / "o").exists()


def test_probability_map_holding_nan_is_refused_naming_the_segment(ct_case, liver_guideline_path, tmp_path):
    liver = (ct_case["labels"] >= 1).astype(np.float32)
    liver[3, 4, 5] = np.nan
    with pytest.raises(LabelMapError, match=r"^liver\.nii\.gz \(Liver\): probabilities must lie in \[0, 1\]"):
        export_segmentation(load_source(ct_case["folder"]), None, ct_case["geometry"],
                            load_guideline(liver_guideline_path), ReaderInfo("Doe^Jane", "jdoe"), tmp_path / "o",
                            probabilities={"Liver": liver}, labels_name="liver.nii.gz")
    assert not (tmp_path / "o").exists()
