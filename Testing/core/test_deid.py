"""The de-identification gate: PHI planted in many places is found by ``deid check`` and gone after ``deid apply``;
UIDs are remapped by a keyed map, so a de-identified SEG still reads back onto its de-identified source."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from medannot.demo_data import make_ct_series, make_us_cine, us_region
from medannot.deid import DeidOptions, check_file, deidentify, find_phi, remap_uid
from medannot_testing import run_medannot

KEY = bytes(range(32))
PLANTED = {
    "name": "Doe^Jane",
    "id": "PHI-4711-0815",
    "birth": "19410203",
    "accession": "ACC98765",
    "institution": "St Elsewhere General",
    "other_id": "OTHER-ID-314",
    "physician": "House^Gregory",
    "request": "REQ-7777",
    "private": "Private Jane Note",
    "deep": "Cuddy",
    "station": "ELSEWHERE_CT1",
    "undated": "20240229",
}


def _plant(ds: Dataset) -> None:
    """PHI at the top level, in nested sequences, in a private block, in free text."""
    ds.PatientName = PLANTED["name"]
    ds.PatientID = PLANTED["id"]
    ds.PatientBirthDate = PLANTED["birth"]
    ds.AccessionNumber = PLANTED["accession"]
    ds.InstitutionName = PLANTED["institution"]
    ds.ReferringPhysicianName = PLANTED["physician"]
    ds.PatientAge = "093Y"
    other = Dataset()
    other.PatientID = PLANTED["other_id"]
    other.IssuerOfPatientID = "Hospital"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestedProcedureID = PLANTED["request"]
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = Sequence([request])
    ds.ImageComments = f"patient {PLANTED['id']} seen by Dr House"
    ds.ItemInventoryDateTime = "20240229101500"  # a date Table E.1-1 does not list
    ds.ContentLabel = "DOE"  # a free text the table does not list, holding part of the name
    ds.ImageType = ["DERIVED", "PRIMARY", "DOE"]  # multi-valued: each value cleaned, the others kept
    procedure = Dataset()
    performer = Dataset()
    performer.PerformingPhysicianName = "Cuddy^Lisa"
    performer.PerformedProcedureStepDescription = f"for {PLANTED['name']}"
    procedure.PerformedSeriesSequence = Sequence([performer])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([procedure])  # PHI three levels deep
    ds.StudyComments = f"uid {ds.StudyInstanceUID}"
    ds.file_meta.SourceApplicationEntityTitle = "ELSEWHERE_CT1"
    block = ds.private_block(0x0011, "ACME PHI", create=True)
    block.add_new(0x01, "LO", PLANTED["private"])


def _strings_in(path: Path, needles: list[str]) -> list[str]:
    data = path.read_bytes()
    return [n for n in needles if n.encode() in data]


@pytest.fixture
def planted_series(tmp_path: Path) -> Path:
    folder = make_ct_series(tmp_path / "ct", (4, 24, 20))
    for path in sorted(folder.glob("*.dcm")):
        ds = dcmread(path)
        _plant(ds)
        ds.save_as(path)
    return folder


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab.key"
    path.write_text(KEY.hex() + "\n")
    return path


def test_check_finds_every_planted_phi_and_apply_leaves_none(planted_series: Path, key_file: Path,
                                                            tmp_path: Path) -> None:
    before = run_medannot("deid", "check", planted_series, "--json")
    assert before.returncode == 1, before.stderr
    report = json.loads(before.stdout)
    paths = {f["path"] for r in report["results"] for f in r["findings"]}
    for expected in ("PatientName(0010,0010)", "PatientID(0010,0020)", "PatientBirthDate(0010,0030)",
                     "AccessionNumber(0008,0050)", "InstitutionName(0008,0080)", "ReferringPhysicianName(0008,0090)",
                     "OtherPatientIDsSequence(0010,1002)", "RequestAttributesSequence(0040,0275)",
                     "ImageComments(0020,4000)", "(0011,1001)", "PatientAge(0010,1010)",
                     "StudyInstanceUID(0020,000D)", "SOPInstanceUID(0008,0018)", "StudyDate(0008,0020)",
                     "ItemInventoryDateTime(0008,0404)", "StudyComments(0032,4000)",
                     "FileMeta.SourceApplicationEntityTitle(0002,0016)", "ContentLabel(0070,0080)",
                     "ReferencedPerformedProcedureStepSequence(0008,1111)",
                     "OtherPatientIDsSequence(0010,1002)[0].PatientID(0010,0020)",
                     "ReferencedPerformedProcedureStepSequence(0008,1111)[0].PerformedSeriesSequence(0040,0340)[0]"
                     ".PerformingPhysicianName(0008,1050)"):
        assert any(p.startswith(expected) for p in paths), f"{expected} not reported; got {sorted(paths)}"
    originals = [str(dcmread(p).SOPInstanceUID) for p in sorted(planted_series.glob("*.dcm"))]
    study = str(dcmread(next(planted_series.glob("*.dcm"))).StudyInstanceUID)

    out = tmp_path / "out"
    applied = run_medannot("deid", "apply", planted_series, "--output", out, "--key-file", key_file)
    assert applied.returncode == 0, applied.stderr
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 4
    for path in files:
        left = _strings_in(path, list(PLANTED.values()) + ["Doe", "Jane", "Elsewhere", study, *originals])
        assert left == [], f"{path.name} still holds {left}"
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
        assert ds.PatientID.startswith("MA-") and str(ds.PatientName).rstrip("^") == ds.PatientID
        assert "PatientAge" not in ds  # X in the Basic Profile
        assert "DOE" not in ds.ContentLabel.upper()  # part of the name, found ignoring case
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"] and "DOE" not in ds.ImageType[2]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    after = run_medannot("deid", "check", out)
    assert after.returncode == 0, after.stdout + after.stderr


def test_uids_are_keyed_consistent_across_runs_and_not_an_unkeyed_hash(planted_series: Path) -> None:
    ds = dcmread(next(planted_series.glob("*.dcm")))
    first, _ = deidentify(ds, DeidOptions(KEY))
    again, _ = deidentify(ds, DeidOptions(KEY))
    other, _ = deidentify(ds, DeidOptions(bytes(reversed(KEY))))
    assert first.SOPInstanceUID == again.SOPInstanceUID == remap_uid(str(ds.SOPInstanceUID), KEY)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    unkeyed = "2.25." + str(int.from_bytes(hashlib.sha256(str(ds.SOPInstanceUID).encode()).digest()[:16], "big"))
    assert first.SOPInstanceUID != unkeyed
    assert first.PatientID == again.PatientID != other.PatientID
    assert ds.PatientName == PLANTED["name"]  # the caller's dataset is untouched


def test_dates_shift_by_one_offset_per_patient_and_old_ages_become_90(planted_series: Path) -> None:
    paths = sorted(planted_series.glob("*.dcm"))
    a, b = dcmread(paths[0]), dcmread(paths[1])
    b.StudyDate = "20250110"
    a.StudyDate = "20250101"
    options = DeidOptions(KEY, profile="retain-dates-shifted", retain_patient_characteristics=True)
    out_a, _ = deidentify(a, options)
    out_b, _ = deidentify(b, options)
    from datetime import datetime

    def day(text: str) -> datetime:
        return datetime.strptime(text, "%Y%m%d")

    assert out_a.StudyDate != "20250101"
    assert (day(out_b.StudyDate) - day(out_a.StudyDate)).days == 9  # the interval holds
    assert (day("19410203") - day(out_a.PatientBirthDate)) == (day("20250101") - day(out_a.StudyDate))
    assert out_a.PatientAge == "090Y"
    assert {c.CodeValue for c in out_a.DeidentificationMethodCodeSequence} == {"113100", "113107", "113108"}
    assert out_a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert find_phi(out_a) == []
    basic, _ = deidentify(a, DeidOptions(KEY))
    assert basic.StudyDate == "" and basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_sr_free_text_and_names_are_found_and_removed(tmp_path: Path) -> None:
    folder = make_ct_series(tmp_path / "ct", (2, 16, 16))
    image = dcmread(next(folder.glob("*.dcm")))
    _plant(image)
    text = hd.sr.TextContentItem(name=codes.DCM.Finding, value=f"{PLANTED['name']} complains of pain",
                                 relationship_type="CONTAINS")
    observer = hd.sr.PnameContentItem(name=codes.DCM.PersonObserverName, value="Watson^John",
                                      relationship_type="HAS OBS CONTEXT")
    sr = hd.sr.ComprehensiveSR(
        evidence=[image], content=_container([observer, text]),
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Other vendor", institution_name=PLANTED["institution"])
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    findings = [str(f) for f in check_file(path)]
    assert any("TextValue" in f and "complains" in f for f in findings), findings
    assert any("PersonName(0040,A123)" in f for f in findings), findings
    assert any("ReferencedSOPInstanceUID" in f for f in findings), findings
    clean, _ = deidentify(dcmread(path), DeidOptions(KEY))
    out = tmp_path / "sr-clean.dcm"
    clean.save_as(out)
    assert _strings_in(out, ["Doe", "Jane", "Watson", "complains", "Elsewhere", str(image.SOPInstanceUID)]) == []
    assert "113104" in {c.CodeValue for c in clean.DeidentificationMethodCodeSequence}
    assert find_phi(clean) == []
    # the SR's evidence still names the image's new UID
    assert remap_uid(str(image.SOPInstanceUID), KEY) in out.read_bytes().decode("latin-1")


def _container(items: list) -> hd.sr.ContainerContentItem:
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def test_deidentified_seg_reads_back_onto_deidentified_source_voxel_for_voxel(
        planted_series: Path, key_file: Path, tmp_path: Path, liver_guideline_path: Path) -> None:
    shape = (4, 24, 20)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:3, 5:15, 4:12] = 1
    labels[2, 8:11, 6:9] = 2
    image = sitk.GetImageFromArray(labels)
    reference = sitk.ReadImage(sorted(str(p) for p in planted_series.glob("*.dcm")))
    image.CopyInformation(reference)
    labels_path = tmp_path / "labels.nrrd"
    sitk.WriteImage(image, str(labels_path))
    seg_dir = tmp_path / "seg"
    exported = run_medannot("seg", "export", "--source", planted_series, "--labels", labels_path, "--guideline",
                            liver_guideline_path, "--reader-name", "Reader^One", "--reader-id", "r1",
                            "--output", seg_dir)
    assert exported.returncode == 0, exported.stderr
    source_out, seg_out = tmp_path / "src-deid", tmp_path / "seg-deid"
    for src, dst in ((planted_series, source_out), (seg_dir, seg_out)):  # two runs, one key
        result = run_medannot("deid", "apply", src, "--output", dst, "--key-file", key_file)
        assert result.returncode == 0, result.stdout + result.stderr
    seg_file = next(seg_out.glob("seg-*.dcm"))
    assert _strings_in(seg_file, ["Doe", PLANTED["id"], PLANTED["accession"]]) == []
    back = tmp_path / "back.nrrd"
    read = run_medannot("seg", "read", seg_file, "--source", source_out, "--labels-out", back, "--json")
    assert read.returncode == 0, read.stderr
    summary = json.loads(read.stdout)
    assert summary["reader_name"].startswith("Reader^One") and summary["reader_id"] == "r1"  # provenance kept (staff, not PHI)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))), labels)
    # highdicom places the frames on the de-identified source instances by their new UIDs
    seg = hd.seg.segread(seg_file)
    sources = {str(dcmread(p).SOPInstanceUID) for p in source_out.glob("*.dcm")}
    referenced = {str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced == sources
    assert find_phi(dcmread(seg_file)) == []


def test_a_seg_made_on_a_deidentified_source_passes_the_gate(planted_series: Path, tmp_path: Path,
                                                           key_file: Path, liver_guideline_path: Path) -> None:
    source_out = tmp_path / "src-deid"
    assert run_medannot("deid", "apply", planted_series, "--output", source_out, "--key-file",
                        key_file).returncode == 0
    labels = np.zeros((4, 24, 20), dtype=np.uint8)
    labels[1:3, 5:15, 4:12] = 1
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(sitk.ReadImage(sorted(str(p) for p in source_out.glob("*.dcm"))))
    sitk.WriteImage(image, str(tmp_path / "l.nrrd"))
    exported = run_medannot("seg", "export", "--source", source_out, "--labels", tmp_path / "l.nrrd", "--guideline",
                            liver_guideline_path, "--reader-name", "Reader^One", "--reader-id", "r1",
                            "--output", tmp_path / "seg")
    assert exported.returncode == 0, exported.stderr
    checked = run_medannot("deid", "check", tmp_path / "seg")
    assert checked.returncode == 0, checked.stdout
    for path in (tmp_path / "seg").glob("*.dcm"):
        assert dcmread(path).PatientIdentityRemoved == "YES"
    # ... and a SEG of an identified source does not
    exported = run_medannot("seg", "export", "--source", planted_series, "--labels", tmp_path / "l.nrrd",
                            "--guideline", liver_guideline_path, "--reader-name", "Reader^One", "--reader-id", "r1",
                            "--output", tmp_path / "seg-phi")
    assert exported.returncode == 0, exported.stderr
    assert run_medannot("deid", "check", tmp_path / "seg-phi").returncode == 1


def test_ultrasound_is_flagged_until_blanked_outside_its_regions_or_confirmed(tmp_path: Path) -> None:
    path = make_us_cine(tmp_path / "cine.dcm", frames=3, rows=40, cols=50,
                        regions=[us_region(10, 5, 39, 34)])
    ds = dcmread(path)
    ds.PixelData = np.full((3, 40, 50), 200, dtype=np.uint8).tobytes() if ds.BitsAllocated == 8 else ds.PixelData
    flagged, _ = deidentify(ds, DeidOptions(KEY))
    assert any("ultrasound" in f.message for f in find_phi(flagged))
    blanked, _ = deidentify(ds, DeidOptions(KEY, us_pixels="blank-outside-regions"))
    pixels = blanked.pixel_array
    assert pixels[:, 5:35, 10:40].min() > 0 and pixels[:, :5, :].max() == 0 and pixels[:, :, 40:].max() == 0
    assert blanked.BurnedInAnnotation == "NO"
    assert "113101" in {c.CodeValue for c in blanked.DeidentificationMethodCodeSequence}
    assert find_phi(blanked) == []
    confirmed, _ = deidentify(ds, DeidOptions(KEY, us_pixels="confirmed-clean"))
    assert find_phi(confirmed) == [] and np.array_equal(confirmed.pixel_array, ds.pixel_array)
    no_regions = make_us_cine(tmp_path / "plain.dcm", frames=2, rows=20, cols=20, regions=None)
    result = run_medannot("deid", "apply", no_regions, "--output", tmp_path / "o", "--key-file", _key(tmp_path),
                          "--us-pixels", "blank-outside-regions")
    assert result.returncode == 1
    assert "plain.dcm" in result.stderr and "SequenceOfUltrasoundRegions" in result.stderr
    assert "Traceback" not in result.stderr


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "k.key"
    if not path.exists():
        path.write_text(KEY.hex())
    return path


def test_bad_keys_and_paths_are_one_clear_line(tmp_path: Path, planted_series: Path) -> None:
    # no key given: the per-user default is made once, said, and used again (same UIDs on the next run)
    env = {"MEDANNOT_DEID_KEY": "", "MEDANNOT_HOME": str(tmp_path / "home")}
    first = run_medannot("deid", "apply", planted_series, "--output", tmp_path / "o1", env=env)
    assert first.returncode == 0 and "deid.key" in first.stderr, first.stderr
    assert (tmp_path / "home" / "deid.key").stat().st_mode & 0o077 == 0
    second = run_medannot("deid", "apply", planted_series, "--output", tmp_path / "o2", env=env)
    assert second.returncode == 0
    def uids(folder: Path) -> list[str]:
        return sorted(str(dcmread(p).SOPInstanceUID) for p in folder.glob("*.dcm"))

    assert uids(tmp_path / "o1") == uids(tmp_path / "o2") and len(uids(tmp_path / "o1")) == 4
    (tmp_path / "home" / "deid.key").write_text("not hex")
    result = run_medannot("deid", "apply", planted_series, "--output", tmp_path / "o3", env=env)
    assert result.returncode == 1 and "deid.key" in result.stderr and "not hexadecimal" in result.stderr
    short = tmp_path / "short.key"
    short.write_text("abcd")
    result = run_medannot("deid", "apply", planted_series, "--output", tmp_path / "o", "--key-file", short)
    assert result.returncode == 1 and "short.key" in result.stderr and "16" in result.stderr
    result = run_medannot("deid", "apply", planted_series, "--output", planted_series / "inside",
                          "--key-file", _key(tmp_path))
    assert result.returncode == 1 and "another folder" in result.stderr
    result = run_medannot("deid", "check", tmp_path / "nothing-here")
    assert result.returncode == 1 and "nothing-here" in result.stderr
    made = run_medannot("deid", "keygen", "--output", tmp_path / "new.key")
    assert made.returncode == 0 and len(bytes.fromhex((tmp_path / "new.key").read_text())) == 32
    assert (tmp_path / "new.key").stat().st_mode & 0o077 == 0
    again = run_medannot("deid", "keygen", "--output", tmp_path / "new.key")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    for result in (again,):
        assert "Traceback" not in result.stderr


def test_real_files_of_other_tools_deidentify_without_new_dciodvfy_errors(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    dciodvfy = shutil.which("dciodvfy")
    names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "rtdose.dcm", "JPEG2000.dcm", "US1_RLE.dcm",
             "emri_small.dcm", "waveform_ecg.dcm"]
    checked = 0
    for name in names:
        source = get_testdata_file(name)
        if source is None:
            continue
        ds = dcmread(source)
        clean, _ = deidentify(ds, DeidOptions(KEY, us_pixels="confirmed-clean"), where=name)
        out = tmp_path / name
        clean.save_as(out, enforce_file_format=True)
        assert find_phi(dcmread(out)) == [], name
        assert _strings_in(out, [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]) == [], name
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            if len(value) >= 4:
                assert value.encode() not in out.read_bytes(), (name, value)
        if dciodvfy:
            def errors(path: str | Path) -> int:
                run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
                return sum(line.startswith("Error") for line in (run.stdout + run.stderr).splitlines())
            assert errors(out) <= errors(source), name
        checked += 1
    assert checked >= 6


def test_secondary_captures_are_flagged_for_burned_in_text_until_confirmed() -> None:
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("SC_rgb.dcm"))
    flagged, _ = deidentify(ds, DeidOptions(KEY))
    assert any("secondary capture" in f.message for f in find_phi(flagged))
    with pytest.raises(Exception, match="SC_rgb.dcm: no SequenceOfUltrasoundRegions"):
        deidentify(ds, DeidOptions(KEY, us_pixels="blank-outside-regions"), where="SC_rgb.dcm")
    confirmed, _ = deidentify(ds, DeidOptions(KEY, us_pixels="confirmed-clean"))
    assert find_phi(confirmed) == [] and confirmed.BurnedInAnnotation == "NO"
