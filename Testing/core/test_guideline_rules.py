"""Guideline QA rules on small generated volumes and 2D+t cines: each rule kind passes and fails as a reader expects,
with the slice or frame, voxel and LPS point a viewer jumps to; malformed rules are refused with the key path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medannot.demo_data import cine_phantom, ct_geometry, ct_phantom
from medannot.errors import GuidelineError, LabelMapError
from medannot.guideline import load_guideline, parse_guideline
from medannot.guideline.qa import QAReport, check_labels, check_masks
from medannot.imaging.geometry import Geometry

CODES = """\
    category: {scheme: SCT, code: "91723000", meaning: Anatomical Structure}
    type: {scheme: SCT, code: "10200004", meaning: Liver}
"""


def guideline(rules_a: str = "{}", rules_b: str = "{}", required_b: bool = False):
    """Required segment A (label 1, the container) and segment B (label 2), with the given rules (YAML flow
    mappings)."""
    text = (
        'id: test\nversion: "1"\ntitle: Test\nsegments:\n'
        f"  - label: 1\n    name: A\n{CODES}    rules: {rules_a}\n"
        f"  - label: 2\n    name: B\n{CODES}    required: {str(required_b).lower()}\n    rules: {rules_b}\n"
    )
    return parse_guideline(text.encode(), origin="test.yaml")


def geometry(shape: tuple[int, int, int], spacing_xyz=(1.0, 1.0, 1.0), origin=(10.0, 20.0, 30.0)) -> Geometry:
    return Geometry(size=(shape[2], shape[1], shape[0]), spacing=spacing_xyz, origin=origin,
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def only(report: QAReport, rule: str):
    found = [f for f in report.findings if f.rule == rule]
    assert len(found) == 1, report.findings
    return found[0]


# ---------------------------------------------------------------- components
def test_one_component_passes_and_a_stray_island_fails_at_the_island():
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 2:10, 2:10] = 1
    g = guideline("{components: {max: 1}}")
    assert check_labels(labels, geometry(labels.shape), g).passed

    labels[4, 15:17, 15:17] = 1  # a 4-voxel island
    report = check_labels(labels, geometry(labels.shape), g)
    finding = only(report, "components")
    assert not report.passed and finding.severity == "error" and finding.segment == "A"
    assert "2 connected component(s)" in finding.message and "at most 1" in finding.message
    assert "4 voxels" in finding.message
    k, j, i = finding.location.voxel
    assert labels[k, j, i] == 1 and k == 4 and 15 <= j <= 16 and 15 <= i <= 16
    assert finding.location.axis == "slice" and finding.location.index == 4
    assert finding.location.point_mm == (10.0 + i, 20.0 + j, 30.0 + k)


def test_components_use_face_connectivity_in_3d():
    labels = np.zeros((3, 5, 5), np.uint8)
    labels[1, 1, 1] = labels[1, 2, 2] = 1  # touching only at an edge
    report = check_labels(labels, geometry(labels.shape), guideline("{components: {max: 1}}"))
    assert "2 connected component(s)" in only(report, "components").message


def test_too_few_components_fail_at_the_largest_one():
    labels = np.zeros((4, 12, 12), np.uint8)
    labels[1:3, 1:6, 1:6] = 1
    report = check_labels(labels, geometry(labels.shape), guideline("{components: {min: 2}}"))
    finding = only(report, "components")
    assert "at least 2" in finding.message and labels[finding.location.voxel] == 1


def test_cine_components_are_counted_per_frame_where_present():
    labels = np.zeros((5, 16, 16), np.uint8)
    labels[0, 2:5, 2:5] = 1
    labels[1, 10:13, 10:13] = 1  # another place on the next frame: one component per frame, two in 3D
    g = guideline("{components: {max: 1}}")
    assert check_labels(labels, None, g, is_cine=True).passed
    assert not check_labels(labels, geometry(labels.shape), g).passed

    labels[3, 2:4, 2:4] = labels[3, 8:10, 8:10] = 1  # frame 3 has two; frame 2 and 4 are empty, not checked
    report = check_labels(labels, None, g, is_cine=True)
    finding = only(report, "components")
    assert finding.location.axis == "frame" and finding.location.index == 3
    assert "on frame 3" in finding.message and "4 px" in finding.message
    assert finding.location.point_mm is None  # no geometry: nothing to map to millimetres


# ---------------------------------------------------------------- volume_ml and area_mm2
def test_volume_in_millilitres_uses_the_voxel_spacing():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:11, 1:11, 1:11] = 1  # 1000 voxels of 1 x 1 x 2 mm = 2 ml
    geo = geometry(labels.shape, spacing_xyz=(1.0, 1.0, 2.0))
    assert check_labels(labels, geo, guideline("{volume_ml: {min: 1.5, max: 2.5}}")).passed
    finding = only(check_labels(labels, geo, guideline("{volume_ml: {max: 1.5}}")), "volume_ml")
    assert finding.message == "A volume is 2 ml (1000 voxels); expected at most 1.5 ml."
    assert labels[finding.location.voxel] == 1
    finding = only(check_labels(labels, geo, guideline("{volume_ml: {min: 3}}")), "volume_ml")
    assert "at least 3 ml" in finding.message


def test_volume_is_not_checked_on_a_cine_and_says_so():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 1
    report = check_labels(labels, geometry(labels.shape), guideline("{volume_ml: {max: 0.001}}"), is_cine=True)
    assert report.passed and any("volume_ml" in note for note in report.notes)


def test_cine_area_is_checked_on_every_frame_in_square_millimetres():
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[0, 0:10, 0:10] = 1  # 100 px of 0.5 x 0.5 mm = 25 mm2
    labels[1, 0:10, 0:10] = 1
    labels[3, 0:4, 0:4] = 1  # 16 px = 4 mm2: too small; frame 2 is empty and not checked
    geo = geometry(labels.shape, spacing_xyz=(0.5, 0.5, 1.0))
    report = check_labels(labels, geo, guideline("{area_mm2: {min: 20, max: 30}}"), is_cine=True)
    finding = only(report, "area_mm2")
    assert finding.location.index == 3
    assert finding.message == "A area on frame 3 is 4 mm² (16 px); expected between 20 and 30 mm²."
    assert labels[finding.location.voxel] == 1


def test_area_without_pixel_spacing_is_one_warning_in_pixels_that_does_not_fail():
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[:, 0:3, 0:3] = 1
    report = check_labels(labels, None, guideline("{area_mm2: {min: 1000, message: Too small.}}"))
    finding = only(report, "area_mm2")
    assert report.passed and finding.severity == "warning" and finding.location is None
    assert finding.message == ("A: area_mm2 (at least 1000 mm²) cannot be checked in mm² because no pixel size was "
                               "given (no geometry, no ultrasound calibration); its area is 9-9 px per frame.")
    assert report.pixel_size["unit"] == "px" and report.to_dict()["pixel_size"]["unit"] == "px"


def test_area_on_a_volume_is_checked_per_slice():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0:2, 0:5, 0:5] = 1
    labels[2, 0:2, 0:2] = 1
    finding = only(check_labels(labels, geometry(labels.shape), guideline("{area_mm2: {min: 10}}")), "area_mm2")
    assert finding.location.axis == "slice" and finding.location.index == 2


# ---------------------------------------------------------------- inside
def ct_with_lesion() -> np.ndarray:
    """A 'liver' box (1) with an enclosed 'lesion' (2) carved out of it, as a label map has it."""
    labels = np.zeros((10, 30, 30), np.uint8)
    labels[1:9, 5:25, 5:25] = 1
    labels[3:6, 10:15, 10:15] = 2
    return labels


def test_a_lesion_carved_out_of_the_container_is_inside_it():
    labels = ct_with_lesion()
    assert check_labels(labels, geometry(labels.shape), guideline(rules_b="{inside: A}")).passed


def test_a_lesion_at_the_container_surface_enclosed_on_its_slices_is_inside():
    labels = ct_with_lesion()
    labels[6:9, 10:15, 10:15] = 2  # reaches the top slice of the box: open in 3D, enclosed on every slice
    assert check_labels(labels, geometry(labels.shape), guideline(rules_b="{inside: A}")).passed


def test_a_lesion_sticking_out_fails_beyond_the_tolerance():
    labels = ct_with_lesion()
    labels[4, 12, 25:28] = 2  # 3 voxels outside the box, 1, 2 and 3 mm from it
    geo = geometry(labels.shape)
    strict = only(check_labels(labels, geo, guideline(rules_b="{inside: A}")), "inside:A")
    assert "3 voxels (0.003 ml) of B lie outside A" in strict.message and "slice(s) 4" in strict.message
    assert strict.location.voxel == (4, 12, 27)  # the farthest one

    tolerant = check_labels(labels, geo, guideline(rules_b="{inside: {segment: A, tolerance_mm: 2}}"))
    finding = only(tolerant, "inside:A")
    assert "1 voxels" in finding.message and "by more than 2 mm" in finding.message
    assert check_labels(labels, geo, guideline(rules_b="{inside: {segment: A, tolerance_mm: 3}}")).passed


def test_inside_tolerance_is_measured_in_millimetres_with_anisotropic_spacing():
    labels = ct_with_lesion()
    labels[9, 12, 12] = 2  # one slice above the box
    coarse = geometry(labels.shape, spacing_xyz=(1.0, 1.0, 3.0))  # 3 mm slices
    g = guideline(rules_b="{inside: {segment: A, tolerance_mm: 2}}")
    assert only(check_labels(labels, coarse, g), "inside:A").location.voxel == (9, 12, 12)
    fine = geometry(labels.shape, spacing_xyz=(1.0, 1.0, 1.5))
    assert check_labels(labels, fine, g).passed


def test_inside_an_empty_container_fails():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 2
    g = guideline(rules_b="{inside: A}")
    report = check_labels(labels, geometry(labels.shape), g)
    assert "A is empty" in only(report, "inside:A").message
    assert only(report, "required").segment == "A"


def test_cine_inside_is_checked_frame_by_frame():
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[:, 2:18, 2:18] = 1
    labels[:, 8:12, 8:12] = 2
    labels[2, 2:18, 2:18] = 0  # on frame 2 the container is missing; the container on frames 0-1 does not count
    labels[2, 8:12, 8:12] = 2
    report = check_labels(labels, geometry(labels.shape), guideline(rules_b="{inside: A}"), is_cine=True)
    finding = only(report, "inside:A")
    assert finding.location.index == 2 and "16 px (16 mm²)" in finding.message and "frame(s) 2" in finding.message


# ---------------------------------------------------------------- no_overlap
def test_label_maps_never_overlap_but_masks_may():
    labels = ct_with_lesion()
    g = guideline(rules_b="{no_overlap: [A]}")
    assert check_labels(labels, geometry(labels.shape), g).passed

    a = np.zeros((4, 10, 10), bool)
    b = np.zeros_like(a)
    a[1:3, 0:5, 0:5] = True
    b[2:4, 4:8, 4:8] = True
    report = check_masks({"A": a, 2: b}, geometry(a.shape), g)
    finding = only(report, "no_overlap:A")
    assert finding.segment == "B" and "overlap in 1 voxels" in finding.message and "slice(s) 2" in finding.message
    assert finding.location.voxel == (2, 4, 4)
    b[2, 4, 4] = False
    assert check_masks({"A": a, "B": b}, geometry(a.shape), g).passed


def test_masks_for_a_label_map_report_every_overlap_as_a_located_error_without_a_rule():
    g = guideline()  # no no_overlap rule: the overlap matters because the result is one label per voxel
    a = np.zeros((5, 12, 12), bool)
    b = np.zeros_like(a)
    a[1:4, 0:6, 0:6] = True
    b[3:5, 5:9, 4:9] = True  # shares slice 3, rows 5, columns 4-5 with A
    assert check_masks({"A": a, "B": b}, geometry(a.shape), g).passed
    report = check_masks({"A": a, "B": b}, geometry(a.shape), g, one_label_per_voxel=True)
    finding = only(report, "overlap")
    assert finding.severity == "error" and finding.segment == "A"
    assert "A and B overlap in 2 voxels" in finding.message and "slice(s) 3" in finding.message
    assert "Subtract" in finding.message
    assert a[finding.location.voxel] and b[finding.location.voxel]
    b[3, 5, 4:6] = False
    assert check_masks({"A": a, "B": b}, geometry(a.shape), g, one_label_per_voxel=True).passed
    b[3, 5, 4:6] = True  # with a no_overlap rule as well, the overlap is still said once
    ruled = check_masks({"A": a, "B": b}, geometry(a.shape), guideline(rules_b="{no_overlap: [A]}"),
                        one_label_per_voxel=True)
    assert [f.rule for f in ruled.findings] == ["overlap"]


def test_masks_keyed_by_an_unknown_segment_are_refused():
    with pytest.raises(GuidelineError, match="has no segment 'Spleen'"):
        check_masks({"Spleen": np.zeros((1, 2, 2), bool)}, None, guideline())


# ---------------------------------------------------------------- min_slices
def test_min_slices_counts_frames_where_the_segment_is_drawn():
    labels = np.zeros((10, 8, 8), np.uint8)
    labels[4, 2:5, 2:5] = 1
    g = guideline("{min_slices: {count: 2, message: Segment end-diastole and end-systole.}}")
    finding = only(check_labels(labels, None, g, is_cine=True), "min_slices")
    assert finding.message == "Segment end-diastole and end-systole."
    assert finding.detail == "A is drawn on 1 frame(s) (4); at least 2 required."
    labels[7:9, 2:5, 2:5] = 1
    assert check_labels(labels, None, g, is_cine=True).passed
    assert "3 slice(s) (4, 7-8)" in only(check_labels(labels, geometry(labels.shape), guideline("{min_slices: 5}")),
                                         "min_slices").message


# ---------------------------------------------------------------- required, severity, unknown labels
def test_empty_required_segment_is_an_error_and_empty_optional_one_skips_its_rules():
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[0, 1:3, 1:3] = 2
    report = check_labels(labels, geometry(labels.shape), guideline(required_b=True))
    finding = only(report, "required")
    assert finding.segment == "A" and finding.severity == "error" and "is empty" in finding.message

    labels[:] = 0
    labels[0, 1:3, 1:3] = 1
    optional = guideline(rules_b="{components: {min: 1}, volume_ml: {min: 5}}", required_b=False)
    assert check_labels(labels, geometry(labels.shape), optional).findings == ()


def test_a_warning_rule_does_not_fail_the_check_and_shows_the_guideline_message():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1, 1:3, 1:3] = labels[1, 6:8, 6:8] = 1
    g = guideline("{components: {max: 1, severity: warning, message: Check for islands.}}")
    report = check_labels(labels, geometry(labels.shape), g)
    finding = only(report, "components")
    assert report.passed and finding.severity == "warning" and report.warnings == [finding]
    assert finding.message == "Check for islands." and "2 connected component(s)" in finding.detail
    assert report.to_dict() == {"passed": True, "findings": [finding.to_dict()]}
    assert set(finding.to_dict()) == {"rule", "severity", "segment", "message", "detail", "location"}


def test_a_label_value_the_guideline_does_not_define_is_an_error():
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[0, 1:3, 1:3] = 1
    labels[1, 5, 4] = 9
    finding = only(check_labels(labels, geometry(labels.shape), guideline(required_b=False)), "unknown_label")
    assert finding.segment == "label 9" and finding.location.voxel == (1, 5, 4)
    assert "label value 9 on 1 voxels" in finding.message and "A (1), B (2)" in finding.message


def test_label_maps_that_do_not_fit_are_refused():
    g = guideline()
    with pytest.raises(LabelMapError, match="geometry describes"):
        check_labels(np.zeros((2, 6, 6), np.uint8), geometry((3, 6, 6)), g)
    with pytest.raises(LabelMapError, match="whole label values"):
        check_labels(np.zeros((2, 6, 6), np.float32), None, g)
    with pytest.raises(LabelMapError, match="negative"):
        check_labels(np.full((2, 6, 6), -1, np.int16), None, g)
    # a cine's geometry describes one frame's plane; any number of frames fits
    assert check_labels(np.ones((5, 6, 6), np.uint8), geometry((1, 6, 6)), guideline(required_b=False),
                        is_cine=True).passed


# ---------------------------------------------------------------- shipped guidelines on the demo's phantoms
@pytest.mark.parametrize("shape", [(24, 96, 96), (12, 64, 64), (12, 48, 40)])
def test_the_demo_ct_phantoms_pass_the_shipped_liver_guideline(liver_guideline_path: Path, shape):
    _, labels = ct_phantom(shape)
    report = check_labels(labels, ct_geometry(shape), load_guideline(liver_guideline_path))
    assert report.passed and report.findings == () and report.notes == ()


def test_the_shipped_liver_guideline_catches_an_island_and_an_escaped_lesion(liver_guideline_path: Path):
    shape = (24, 96, 96)
    _, labels = ct_phantom(shape)
    labels[2, 85:88, 85:88] = 1
    labels[12, 2:6, 2:6] = 2
    report = check_labels(labels, ct_geometry(shape), load_guideline(liver_guideline_path))
    assert [(f.rule, f.severity) for f in report.findings] == [("components", "error"), ("inside:Liver", "error")]


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 1.0), (0.3, 0.3, 1.0)])
def test_the_demo_cine_phantom_passes_the_shipped_echo_guideline(echo_guideline_path: Path, spacing):
    _, labels = cine_phantom()
    geo = None if spacing is None else geometry((1, *labels.shape[1:]), spacing_xyz=spacing)
    report = check_labels(labels, geo, load_guideline(echo_guideline_path), is_cine=True)
    if spacing == (0.3, 0.3, 1.0):  # the phantom's cavity is 1219-2532 px: at 0.09 mm2 per px far too small
        assert {f.rule for f in report.findings} == {"area_mm2"} and len(report.findings) == labels.shape[0]
    elif spacing is None:  # the cavity's area rule cannot be checked without a pixel size: one warning says so
        [finding] = report.findings
        assert report.passed and (finding.rule, finding.severity, finding.segment) == ("area_mm2", "warning",
                                                                                       "LV cavity")
    else:
        assert report.passed and report.findings == ()


def test_the_shipped_echo_guideline_finds_a_split_cavity_on_its_frame(echo_guideline_path: Path):
    _, labels = cine_phantom()
    labels[5, :, 60:62] = 0  # a gap cuts the cavity (and the wall) in two on frame 5
    report = check_labels(labels, None, load_guideline(echo_guideline_path), is_cine=True)
    assert {(f.rule, f.segment, f.location.index) for f in report.errors} == {
        ("components", "LV cavity", 5), ("components", "LV wall", 5)}


# ---------------------------------------------------------------- malformed rules
@pytest.mark.parametrize(
    ("rules_a", "rules_b", "expected"),
    [
        ("{convexity: {max: 1}}", "{}",
         r"segments\[0\]\.rules: unknown rule kind 'convexity'; rule kinds are: components, volume_ml"),
        ("{components: {max: one}}", "{}", r"segments\[0\]\.rules\.components\.max: 'one' is not of type 'integer'"),
        ("{components: {maximum: 1}}", "{}", r"segments\[0\]\.rules\.components: .*'maximum' was unexpected"),
        ("{volume_ml: {min: 5, max: 1}}", "{}", r"segments\[0\]\.rules\.volume_ml: min 5 is greater than max 1"),
        ("{area_mm2: {severity: warning}}", "{}", r"segments\[0\]\.rules\.area_mm2: give min, max or both"),
        ("{components: {max: 1, severity: fatal}}", "{}",
         r"segments\[0\]\.rules\.components\.severity: 'fatal' is not one of"),
        ("{}", "{inside: Livr}",
         r"segments\[1\]\.rules\.inside: 'Livr' is not a segment of this guideline; it defines: A, B"),
        ("{}", "{inside: {segment: C, tolerance_mm: 2}}", r"segments\[1\]\.rules\.inside\.segment: 'C' is not a"),
        ("{}", "{inside: {segment: A, tolerance_mm: two}}",
         r"segments\[1\]\.rules\.inside\.tolerance_mm: 'two' is not of type 'number'"),
        ("{}", "{no_overlap: [A, Z]}", r"segments\[1\]\.rules\.no_overlap\[1\]: 'Z' is not a segment"),
        ("{}", "{no_overlap: {segments: [Q]}}", r"segments\[1\]\.rules\.no_overlap\.segments\[0\]: 'Q' is not"),
        ("{}", "{inside: B}", r"segments\[1\]\.rules\.inside: a rule of segment 'B' cannot name the segment itself"),
        ("{min_slices: 0}", "{}", r"segments\[0\]\.rules\.min_slices: 0 is less than the minimum of 1"),
        ("[components]", "{}", r"segments\[0\]\.rules: \['components'\] is not of type 'object'"),
    ],
)
def test_malformed_rules_name_the_file_and_key_path(rules_a: str, rules_b: str, expected: str):
    with pytest.raises(GuidelineError, match=r"^test\.yaml: " + expected):
        guideline(rules_a, rules_b)


def test_rule_segment_names_match_case_insensitively_and_keep_the_guideline_spelling():
    g = guideline(rules_b="{inside: {segment: a, tolerance_mm: 1.5, severity: warning}, no_overlap: [a]}")
    inside, no_overlap = g.segment("B").qa_rules
    assert (inside.rule_id, inside.tolerance_mm, inside.severity) == ("inside:A", 1.5, "warning")
    assert no_overlap.segments == ("A",) and no_overlap.describe() == "no overlap with A"
