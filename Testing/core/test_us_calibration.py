"""Ultrasound physical units in the QA rules: areas and distances use SequenceOfUltrasoundRegions (cm) when a cine
has them, and say "px" where it has none; positions on a cine are frame, row and column, never LPS.

Real calibrated files: pydicom-data's OBXXXX1A_2frame.dcm, gdcm-US-ALOKA-16.dcm, color3d_jpeg_baseline.dcm and
JPGLosslessP14SV1_1s_1f_8b.dcm, pydicom's examples_ybr_color.dcm; US1_UNCR.dcm has no calibration. Expected mm
are computed here from each file's own tags, independently of the code under test.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from medannot_testing import run_medannot

from medannot.demo_data import cine_phantom, make_us_cine, us_region
from medannot.guideline import load_guideline, parse_guideline
from medannot.guideline.qa import check_labels
from medannot.imaging import write_label_map
from medannot.imaging.calibration import calibration_from_file
from medannot.interpolation import load_cine

try:  # pydicom-data is not a dev dependency: the tests on its files skip without it, the others still run
    import data_store
except ImportError:
    data_store = None
PYDICOM_DATA = Path(os.path.dirname(data_store.__file__)) / "data" if data_store is not None else None
needsPydicomData = pytest.mark.skipif(data_store is None, reason="needs real scanner files: pip install pydicom-data")

CODES = """\
    category: {scheme: SCT, code: "91723000", meaning: Anatomical Structure}
    type: {scheme: SCT, code: "87878005", meaning: Left ventricle}
"""


def guideline_text(rules: str) -> str:
    return f'id: us\nversion: "1"\ntitle: US\nsegments:\n  - label: 1\n    name: A\n{CODES}    rules: {rules}\n'


def guideline(rules: str):
    return parse_guideline(guideline_text(rules).encode(), origin="us.yaml")


def tissue_delta_mm(path: Path, item: int = 0) -> tuple[float, float]:
    """(row, column) mm of one region, read with pydicom here: PhysicalDeltaY/X in cm times 10."""
    region = pydicom.dcmread(path, stop_before_pixels=True).SequenceOfUltrasoundRegions[item]
    assert (region.RegionSpatialFormat, region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (1, 3, 3)
    return float(region.PhysicalDeltaY) * 10, float(region.PhysicalDeltaX) * 10


def area_in(detail: str) -> str:
    return re.search(r"is ([0-9.e+]+) mm²", detail).group(1)


def medannot(*args: object) -> object:
    return run_medannot(*args, env={"COLUMNS": "160"}, timeout=120)


# ---------------------------------------------------------------- which real files are calibrated
@needsPydicomData
@pytest.mark.parametrize(("name", "regions_used"), [
    ("OBXXXX1A_2frame.dcm", [1]),  # region 2 is a waveform (RegionSpatialFormat 4, seconds): not tissue
    ("gdcm-US-ALOKA-16.dcm", [1, 2]),  # dual view, same pixel size; region 3 has no units
    ("color3d_jpeg_baseline.dcm", [1]),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", [1]),
])
def test_real_scanner_files_are_calibrated_by_their_2d_regions_in_cm(name: str, regions_used: list[int]) -> None:
    path = PYDICOM_DATA / name
    calibration = calibration_from_file(path)
    assert calibration.known and [r.number for r in calibration.regions] == regions_used
    assert calibration.is_uniform and calibration.notes == ()  # OBXXXX1A's MaxX1 800 of 800 columns is clipped quietly
    row_mm, col_mm = tissue_delta_mm(path)
    assert (calibration.default.row_mm, calibration.default.col_mm) == pytest.approx((row_mm, col_mm), rel=1e-12)


@needsPydicomData
def test_a_file_without_calibration_says_so() -> None:
    calibration = calibration_from_file(PYDICOM_DATA / "US1_UNCR.dcm")
    assert not calibration.known
    assert calibration.reason == "US1_UNCR.dcm has neither SequenceOfUltrasoundRegions nor PixelSpacing"


def test_a_resized_copy_whose_region_overruns_the_image_is_clipped_with_a_warning_note() -> None:
    path = Path(pydicom.data.get_testdata_file("examples_ybr_color.dcm"))  # 320 x 240, region up to 595 x 414
    calibration = calibration_from_file(path)
    region = calibration.default
    assert (region.rows, region.cols) == ((31, 239), (84, 319))
    [note] = calibration.notes
    assert "reaches row 414, column 595, beyond the 240 x 320 image" in note and "resized" in note


# ---------------------------------------------------------------- areas in mm² from the file's own deltas
def test_cli_area_of_a_real_calibrated_cine_is_its_pixel_count_times_the_regions_deltas(tmp_path: Path) -> None:
    source = Path(pydicom.data.get_testdata_file("examples_ybr_color.dcm"))  # 30-frame colour US cine
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    frames, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    labels = np.zeros((frames, rows, cols), np.uint8)
    labels[4, 100:130, 150:190] = 1  # 30 x 40 px inside the tissue region
    labels[9, 100:110, 150:160] = 1  # 100 px
    path = write_label_map(labels, None, tmp_path / "labels.nii.gz")
    rules = guideline_text("{area_mm2: {min: 500, message: Too small.}}")
    (tmp_path / "g.yaml").write_text(rules)
    proc = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                    "--source", source, "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    region = ds.SequenceOfUltrasoundRegions[0]
    mm2_per_px = float(region.PhysicalDeltaX) * float(region.PhysicalDeltaY) * 100  # cm² -> mm²
    assert report["pixel_size"]["unit"] == "mm"
    assert report["pixel_size"]["source"] == "SequenceOfUltrasoundRegions of examples_ybr_color.dcm"
    by_frame = {f["location"]["index"]: f for f in report["findings"]}
    assert set(by_frame) == {4, 9}  # 1200 px = 31.3 mm² and 100 px = 2.6 mm² are both under 500 mm²
    assert area_in(by_frame[4]["detail"]) == f"{1200 * mm2_per_px:.4g}" and "(1200 px)" in by_frame[4]["detail"]
    assert area_in(by_frame[9]["detail"]) == f"{100 * mm2_per_px:.4g}"
    assert by_frame[4]["message"] == "Too small." and by_frame[4]["location"]["point_mm"] is None
    assert "resized" in proc.stderr  # the clipped region is said, on stderr with the JSON

    human = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                     "--source", source)
    assert human.returncode == 1
    assert "LPS" not in human.stdout and "frame 4" in human.stdout and re.search(r"row 1\d\d, col 1\d\d", human.stdout)
    assert f"{1200 * mm2_per_px:.4g} mm²" in human.stdout
    assert "pixel size: ultrasound region 1 (rows 31-239, columns 84-319)" in human.stdout


@needsPydicomData
def test_cli_uncalibrated_cine_says_px_and_that_the_mm_rule_was_not_checked(tmp_path: Path) -> None:
    source = PYDICOM_DATA / "US1_UNCR.dcm"  # one frame, 480 x 640, no calibration
    labels = np.zeros((1, 480, 640), np.uint8)
    labels[0, 200:230, 300:340] = 1
    path = write_label_map(labels, None, tmp_path / "labels.nii.gz")
    (tmp_path / "g.yaml").write_text(guideline_text("{area_mm2: {min: 500}}"))
    proc = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                    "--source", source, "--json")
    assert proc.returncode == 0, proc.stderr  # a warning: the reader cannot fix a missing calibration
    report = json.loads(proc.stdout)
    [finding] = report["findings"]
    assert report["pixel_size"]["unit"] == "px" and finding["severity"] == "warning" and finding["location"] is None
    assert finding["message"] == ("A: area_mm2 (at least 500 mm²) cannot be checked in mm² because US1_UNCR.dcm has "
                                  "neither SequenceOfUltrasoundRegions nor PixelSpacing; its area is 1200-1200 px "
                                  "per frame.")
    human = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                     "--source", source)
    assert human.returncode == 0 and "1200-1200 px" in human.stdout and "mm² (" not in human.stdout
    assert "pixel size: unknown, sizes in px" in human.stdout


@needsPydicomData
def test_cli_source_must_match_the_label_maps_frame_size(tmp_path: Path) -> None:
    path = write_label_map(np.zeros((2, 10, 10), np.uint8), None, tmp_path / "labels.nii.gz")
    (tmp_path / "g.yaml").write_text(guideline_text("{area_mm2: {min: 5}}"))
    proc = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                    "--source", PYDICOM_DATA / "US1_UNCR.dcm")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "size (2, 10, 10)" in proc.stderr and "has (1, 480, 640)" in proc.stderr
    # the frame count is checked as well as the frame size
    path = write_label_map(np.zeros((3, 480, 640), np.uint8), None, tmp_path / "frames.nii.gz")
    proc = medannot("guideline", "check", "--guideline", tmp_path / "g.yaml", "--labels", path, "--cine",
                    "--source", PYDICOM_DATA / "US1_UNCR.dcm")
    assert proc.returncode == 1 and "frames.nii.gz: size (3, 480, 640)" in proc.stderr


# ---------------------------------------------------------------- the generated cine and region cases
def test_demo_cine_is_calibrated_and_passes_the_echo_guideline_in_mm(tmp_path: Path,
                                                                    echo_guideline_path: Path) -> None:
    path = make_us_cine(tmp_path / "cine.dcm")
    cine = load_cine(path)
    row_mm, col_mm = tissue_delta_mm(path)
    assert (cine.calibration.default.row_mm, cine.calibration.default.col_mm) == pytest.approx((row_mm, col_mm))
    _, labels = cine_phantom()
    report = check_labels(labels, None, load_guideline(echo_guideline_path), is_cine=True,
                          calibration=cine.calibration)
    assert report.passed and report.findings == () and report.pixel_size["unit"] == "mm"
    uncalibrated = load_cine(make_us_cine(tmp_path / "plain.dcm", regions=None))
    assert not uncalibrated.calibration.known


def test_regions_of_different_pixel_sizes_measure_each_pixel_with_its_own_region(tmp_path: Path) -> None:
    regions = [us_region(0, 0, 63, 95, delta_cm=(0.1, 0.1)), us_region(64, 0, 127, 95, delta_cm=(0.2, 0.2))]
    calibration = calibration_from_file(make_us_cine(tmp_path / "duplex.dcm", regions=regions))
    labels = np.zeros((24, 96, 128), np.uint8)
    labels[3, 10:20, 54:74] = 1  # 10 rows x 10 columns in each region: 100 x 1 mm² + 100 x 4 mm²
    report = check_labels(labels, None, guideline("{area_mm2: {max: 10}}"), is_cine=True, calibration=calibration)
    [finding] = report.findings
    assert area_in(finding.detail) == "500" and "(200 px)" in finding.detail
    assert any("different pixel sizes" in note for note in report.notes)


def test_inside_tolerance_is_in_mm_of_the_region_holding_the_segment(tmp_path: Path) -> None:
    text = (guideline_text("{}") + f"  - label: 2\n    name: B\n{CODES}"
            "    rules: {inside: {segment: A, tolerance_mm: 3}}\n")
    g = parse_guideline(text.encode(), origin="us.yaml")
    labels = np.zeros((24, 96, 128), np.uint8)
    labels[2, 20:60, 20:60] = 1
    labels[2, 40, 60:62] = 2  # 1 and 2 px outside A (its last column is 59)
    fine = calibration_from_file(make_us_cine(tmp_path / "fine.dcm", regions=[us_region(0, 0, 127, 95, (0.1, 0.1))]))
    coarse = calibration_from_file(make_us_cine(tmp_path / "coarse.dcm",
                                                regions=[us_region(0, 0, 127, 95, (0.2, 0.2))]))
    assert check_labels(labels, None, g, is_cine=True, calibration=fine).passed  # 1-2 mm: within 3 mm
    report = check_labels(labels, None, g, is_cine=True, calibration=coarse)  # 2-4 mm: one pixel beyond
    [finding] = report.findings
    assert "1 px (4 mm²) of B lie outside A by more than 3 mm" in finding.message
    assert str(finding.location) == "frame 2, row 40, col 61"


def test_a_region_in_other_units_is_not_a_calibration(tmp_path: Path) -> None:
    doppler = us_region(0, 0, 127, 95, delta_cm=(0.01, 0.0), spatial_format=3, units=(4, 7))  # seconds, cm/s
    calibration = calibration_from_file(make_us_cine(tmp_path / "doppler.dcm", regions=[doppler]))
    assert not calibration.known
    assert calibration.reason == ("doppler.dcm has SequenceOfUltrasoundRegions but no 2D region in cm (region 1 is "
                                  "not a 2D view (RegionSpatialFormat 3))")
