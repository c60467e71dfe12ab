"""The submission package, built from a real server database (reads, consensus, signatures through the API) and
checked offline: any changed byte, added or removed file, cut audit record or swapped signature is named."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import PASSWORD, db_url  # noqa: F401
from medannot_testing import run_medannot
from test_review_server import ReviewLab, auth, client_for, lab, new_version, read_and_submit  # noqa: F401

from harness import make_lab
from medannot.package import PackageBuildError, PackageInvalid, build_package, verify_package
from medannot.server.db import make_engine, session_factory, transaction

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class Built:
    lab: ReviewLab
    data_dir: Path
    package: Path
    tmp: Path
    key: Path
    cert: Path


def make_signer(folder: Path, name: str = "Lab QA") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-out", str(cert), "-days", "30",
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    return key, cert


def run_lab(lab: ReviewLab, tmp_path: Path) -> Path:  # noqa: F811
    """case-001: two reads, consensus signed reviewed + approved (final); case-002: one read (open)."""
    new_version(lab, "1.2.0", {"adjudication: always": "adjudication: on_disagreement",
                               "dice_min: 0.99": "dice_min: 0.5"})
    client = client_for(lab, tmp_path)
    first = read_and_submit(client, lab, "r1", tmp_path)
    read_and_submit(client, lab, "r2", tmp_path, grow=1)
    r1 = auth(client, "r1")
    assert client.post(f"/api/v1/submissions/{first['submission_id']}/sign", headers=r1,
                       json={"password": PASSWORD, "meaning": "authored"}).status_code == 201
    rev = auth(client, "rev")
    review = client.get(f"/api/v1/projects/{lab.project_id}/reviews", headers=rev).json()[0]
    for meaning in ("reviewed", "approved"):
        signed = client.post(f"/api/v1/reviews/{review['review_id']}/consensus/sign", headers=rev,
                             json={"password": PASSWORD, "meaning": meaning, "printed_name": "Rev Iewer, MD"})
        assert signed.status_code == 201, signed.text
    read_and_submit(client, lab, "r1", tmp_path)  # case-002's first read: the case stays open
    return tmp_path / "data"


def build(lab: ReviewLab, data_dir: Path, out: Path, **options: object) -> dict:  # noqa: F811
    engine = make_engine(lab.db_url)
    try:
        with transaction(session_factory(engine)) as session:
            return build_package(session, data_dir, lab.project_id, out, **options)
    finally:
        engine.dispose()


@pytest.fixture
def built(lab: ReviewLab, tmp_path: Path) -> Built:  # noqa: F811
    data_dir = run_lab(lab, tmp_path)
    proc = run_medannot("admin", "user", "update", "rev", "--printed-name", "Rev Iewer, MD", "--qualification",
                        "radiologist", "--trained-on", "2026-01-05", env={"MEDANNOT_DB": lab.db_url})
    assert proc.returncode == 0, proc.stderr
    key, cert = make_signer(tmp_path / "pki")
    out = tmp_path / "package"
    build(lab, data_dir, out, sign_key=key, certificate=cert)
    return Built(lab, data_dir, out, tmp_path, key, cert)


def copy_of(b: Built, name: str) -> Path:
    target = b.tmp / f"copy-{name}"
    shutil.copytree(b.package, target)
    return target


def verify_fails(folder: Path) -> str:
    proc = run_medannot("package", "verify", folder, "--no-dciodvfy")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr.strip()


def test_a_package_built_from_the_lab_database_verifies_offline_and_holds_every_piece(built: Built):
    root = built.package
    proc = run_medannot("package", "verify", root, "--certificate", built.cert)
    assert proc.returncode == 0, proc.stderr
    assert "package intact" in proc.stdout and "signed by CN=Lab QA" in proc.stdout
    assert (root / "bagit.txt").read_text() == "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    import bagit

    bagit.Bag(str(root)).validate()  # any BagIt tool accepts it
    lineage = json.loads((root / "data/results/lineage.json").read_text())
    kinds = sorted((row["case"], row["kind"]) for row in lineage)
    assert kinds == [("case-001", "consensus"), ("case-001", "read"), ("case-001", "read"), ("case-002", "read")]
    consensus = next(row for row in lineage if row["kind"] == "consensus")
    assert len(consensus["derived_from"]) == 2 and consensus["final"] is True
    summary = json.loads((root / "data/package.json").read_text())
    assert summary["open_cases"] == ["case-002"]
    html = (root / "data/SUMMARY.html").read_text()
    assert "case-002" in html and "Rev Iewer, MD" in html
    assert '<img src="agreement/report/agreement_per_structure.png"' in html
    assert (root / "data/SUMMARY.pdf").read_bytes().startswith(b"%PDF-")
    readers = {r["user"]: r for r in json.loads((root / "data/readers.json").read_text())}
    assert readers["r1"]["cases_read"] == ["case-001", "case-002"]
    assert (readers["rev"]["qualification"], readers["rev"]["trained_on"]) == ("radiologist", "2026-01-05")
    guidelines = json.loads((root / "data/guidelines/guidelines.json").read_text())
    assert [g["version"] for g in guidelines] == ["1.0.0", "1.1.0", "1.2.0"]
    import hashlib

    assert all(hashlib.sha256((root / "data" / g["file"]).read_bytes()).hexdigest() == g["sha256"]
               for g in guidelines)
    signatures = json.loads((root / "data/signatures.json").read_text())
    assert sorted(s["meaning"] for s in signatures) == ["approved", "authored", "reviewed"]
    deid = json.loads((root / "data/deid-report.json").read_text())
    assert deid["status"] == "passed" and len(deid["files"]) == len(list((root / "data").rglob("*.dcm")))
    audit = (root / "data/audit/audit.jsonl").read_text().splitlines()
    assert json.loads((root / "data/audit/head.json").read_text())["seq"] == len(audit)
    # openssl, not our code, accepts the detached signature over the tag manifest
    check = subprocess.run(["openssl", "cms", "-verify", "-binary", "-content", str(root / "tagmanifest-sha256.txt"),
                            "-in", str(root / "manifest.p7s"), "-inform", "PEM", "-CAfile", str(root / "signer-cert.pem"),
                            "-purpose", "any", "-out", "/dev/null"], capture_output=True, text=True)
    assert check.returncode == 0 and "Verification successful" in check.stderr, check.stderr


@SQLITE_ONLY
def test_any_change_addition_removal_cut_record_or_swapped_signature_fails_verify_naming_it(built: Built):
    lineage = json.loads((built.package / "data/results/lineage.json").read_text())
    seg = f"data/{lineage[0]['file']}"

    changed = copy_of(built, "byte")
    data = bytearray((changed / seg).read_bytes())
    data[-10] ^= 0x01  # one bit of pixel data
    (changed / seg).write_bytes(bytes(data))
    assert seg in verify_fails(changed) and "changed" in verify_fails(changed)

    added = copy_of(built, "added")
    (added / "data/results/case-001/extra.txt").write_text("not on record")
    assert "data/results/case-001/extra.txt: added" in verify_fails(added)

    removed = copy_of(built, "removed")
    (removed / seg).unlink()
    assert f"{seg}: removed" in verify_fails(removed)

    cut = copy_of(built, "cut")
    trail = cut / "data/audit/audit.jsonl"
    records = trail.read_text().splitlines()
    trail.write_text("\n".join(records[:-1]) + "\n")
    message = verify_fails(cut)
    assert "data/audit/audit.jsonl" in message and f"audit record {len(records)} missing" in message

    swapped = copy_of(built, "swapped")
    rows = json.loads((swapped / "data/signatures.json").read_text())
    rows[0]["file"], rows[-1]["file"] = rows[-1]["file"], rows[0]["file"]
    assert rows[0]["file"] != rows[-1]["file"]
    (swapped / "data/signatures.json").write_text(json.dumps(rows))
    message = verify_fails(swapped)
    assert f"signature {rows[0]['signature_id']}" in message and "not over this file" in message

    tagged = copy_of(built, "tag")
    (tagged / "notes.txt").write_text("an extra tag file")
    assert "notes.txt: added" in verify_fails(tagged)
    (tagged / "notes.txt").unlink()
    info = tagged / "bag-info.txt"
    info.write_text(info.read_text().replace("MedAnnot-Project: ", "MedAnnot-Project: 9"))
    assert "bag-info.txt: changed" in verify_fails(tagged)

    # the tag manifest signature: another signer's CMS in its place, or a pinned certificate that did not sign
    other_key, other_cert = make_signer(built.tmp / "other", "Someone Else")
    resigned = copy_of(built, "resigned")
    from medannot.package.cms import load_signer, sign_detached

    (resigned / "manifest.p7s").write_bytes(sign_detached(b"another manifest", *load_signer(other_key, other_cert)))
    assert "manifest.p7s" in verify_fails(resigned)
    proc = run_medannot("package", "verify", built.package, "--certificate", other_cert, "--no-dciodvfy")
    assert proc.returncode == 1 and "not by the given certificate" in proc.stderr
    # and the original still passes: each failure above came from its own change
    assert run_medannot("package", "verify", built.package, "--no-dciodvfy").returncode == 0


def rebag(folder: Path, relative: str) -> None:
    """What an insider could do without the signing key: re-hash a changed file into both manifests, drop the
    signature."""
    from medannot.package import bag

    manifest = folder / "manifest-sha256.txt"
    lines = [line for line in manifest.read_text().splitlines() if not line.endswith(f"  {relative}")]
    lines.append(f"{bag.sha256_file(folder / relative)}  {relative}")
    manifest.write_text("\n".join(lines) + "\n")
    bag.write_tagmanifest(folder)
    (folder / "manifest.p7s").unlink()


@SQLITE_ONLY
def test_a_rehashed_seg_that_claims_another_guideline_or_reader_is_caught_by_what_it_says(built: Built):
    from pydicom import dcmread

    lineage = json.loads((built.package / "data/results/lineage.json").read_text())
    signed = {s["file_sha256"] for s in json.loads((built.package / "data/signatures.json").read_text())}
    read = next(row for row in lineage if row["kind"] == "read" and row["seg_sha256"] not in signed)
    relative = f"data/{read['file']}"  # not e-signed: only what it says about itself can give it away
    for name, change, expected in (
            ("guideline", lambda ds: setattr(ds, "DerivationDescription", ds.DerivationDescription.replace(
                "sha256 ", "sha256 0000000000")[:len(ds.DerivationDescription)]), "differs from the stored"),
            ("reader", lambda ds: [setattr(p, "CodeValue", "intruder") for item in ds.SegmentSequence
                                   for c in item.ContentCreatorIdentificationCodeSequence
                                   for p in c.PersonIdentificationCodeSequence], "names reader(s) intruder")):
        folder = copy_of(built, name)
        ds = dcmread(folder / relative)
        change(ds)
        ds.save_as(folder / relative)
        rebag(folder, relative)
        message = verify_fails(folder)
        assert relative in message and expected in message, message
        # the insider's package still fails a verifier who pins the lab's certificate
        proc = run_medannot("package", "verify", folder, "--certificate", built.cert, "--no-dciodvfy")
        assert proc.returncode == 1 and "not signed" in proc.stderr


@SQLITE_ONLY
def test_build_refuses_open_cases_under_require_final_a_missing_stored_file_and_a_foreign_key(lab, tmp_path):  # noqa: F811
    data_dir = run_lab(lab, tmp_path)
    proc = run_medannot("package", "build", lab.project_id, "--output", tmp_path / "p1", "--data-dir", data_dir,
                        "--require-final", env={"MEDANNOT_DB": lab.db_url})
    assert proc.returncode == 1 and "case-002" in proc.stderr and "not final" in proc.stderr, proc.stderr
    assert not (tmp_path / "p1").exists()

    key, cert = make_signer(tmp_path / "pki")
    other_key, _ = make_signer(tmp_path / "pki2")
    with pytest.raises(Exception, match="does not match the public key of certificate"):
        build(lab, data_dir, tmp_path / "p2", sign_key=other_key, certificate=cert)

    objects = sorted((data_dir / "objects").rglob("*"))
    victim = next(p for p in objects if p.is_file())
    victim.unlink()
    with pytest.raises(PackageBuildError, match=f"stored file .*{victim.name} is missing"):
        build(lab, data_dir, tmp_path / "p3")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".p", "p"))) == ["pki", "pki2"]


@SQLITE_ONLY
def test_the_admin_endpoint_streams_the_package_as_a_zip(lab, tmp_path):  # noqa: F811
    run_lab(lab, tmp_path)
    client = client_for(lab, tmp_path)
    assert client.post(f"/api/v1/projects/{lab.project_id}/package", headers=auth(client, "rev")).status_code == 403
    response = client.post(f"/api/v1/projects/{lab.project_id}/package", headers=auth(client, "admin"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    unpacked = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(unpacked)
    verify_package(unpacked, use_dciodvfy=False)
    with pytest.raises(PackageInvalid):
        (unpacked / "data/readers.csv").write_text("tampered\n")
        verify_package(unpacked, use_dciodvfy=False)


@SQLITE_ONLY
def test_the_gate_refuses_reads_of_identified_sources_and_verify_names_phi_put_back(built: Built, tmp_path):
    # PHI put back into one SEG by someone who re-hashes the bag: verify names the file and the attribute
    from pydicom import dcmread

    lineage = json.loads((built.package / "data/results/lineage.json").read_text())
    signed = {s["file_sha256"] for s in json.loads((built.package / "data/signatures.json").read_text())}
    read = next(row for row in lineage if row["kind"] == "read" and row["seg_sha256"] not in signed)
    relative = f"data/{read['file']}"
    folder = copy_of(built, "phi")
    ds = dcmread(folder / relative)
    ds.PatientName = "Doe^Jane"
    ds.save_as(folder / relative)
    rebag(folder, relative)
    message = verify_fails(folder)
    assert relative in message and "de-identification gate" in message and "PatientName" in message, message

    # a lab that imported identified images: its reads carry the patient's name; the build refuses them
    raw = make_lab("sqlite:///" + str(tmp_path / "raw.db"), tmp_path / "rawlab", cases=1, deidentified=False)
    raw_lab = ReviewLab(**vars(raw))
    client = client_for(raw_lab, tmp_path / "rawclient")
    read_and_submit(client, raw_lab, "r1", tmp_path / "rawclient")
    proc = run_medannot("package", "build", raw.project_id, "--output", tmp_path / "p-phi", "--data-dir",
                        tmp_path / "rawclient" / "data", env={"MEDANNOT_DB": raw.db_url})
    assert proc.returncode == 1, proc.stdout
    assert "fail the de-identification gate" in proc.stderr and "PatientIdentityRemoved(0012,0062)" in proc.stderr
    assert "medannot deid apply" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p-phi").exists()


@SQLITE_ONLY
def test_include_images_ships_the_deidentified_sources_and_verify_checks_them(lab, tmp_path):  # noqa: F811
    data_dir = run_lab(lab, tmp_path)
    out = tmp_path / "with-images"
    numbers = build(lab, data_dir, out, include_images=True)
    images = sorted((out / "data/images").rglob("*.dcm"))
    assert numbers["images"] == len(images) > 0
    from pydicom import dcmread

    assert all(dcmread(p).PatientIdentityRemoved == "YES" for p in images)
    report = json.loads((out / "data/deid-report.json").read_text())
    assert {f"images/{p.relative_to(out / 'data/images').as_posix()}" for p in images} <= \
        {row["file"] for row in report["files"]}
    verify_package(out, use_dciodvfy=False)


@SQLITE_ONLY
def test_slicer_build_and_verify_package_buttons_run_the_core(lab, tmp_path):  # noqa: F811
    """MedAnnotExport's "Build package" / "Verify package" logic (the widget only passes its fields through; the
    Slicer GUI cannot run here): same package, same verdicts as the CLI."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedAnnotExtension" / "MedAnnotExport"))
    from MedAnnotExportLib.logic import MedAnnotPackageLogic

    from medannot.errors import MedAnnotError

    data_dir = run_lab(lab, tmp_path)
    logic = MedAnnotPackageLogic()
    numbers = logic.buildPackage(lab.db_url, data_dir, lab.project_id, tmp_path / "from-slicer")
    assert numbers["open_cases"] == ["case-002"] and numbers["reads"] == 3
    assert logic.verifyPackage(tmp_path / "from-slicer").startswith("package intact:")
    (tmp_path / "from-slicer" / "data/readers.csv").write_text("tampered\n")
    with pytest.raises(PackageInvalid, match="data/readers.csv: changed"):
        logic.verifyPackage(tmp_path / "from-slicer")
    with pytest.raises(MedAnnotError, match="database URL"):
        logic.buildPackage("", data_dir, lab.project_id, tmp_path / "nowhere")
