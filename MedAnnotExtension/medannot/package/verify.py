"""Check a submission package offline: every byte, the signature, the audit chain, every SEG/SR and what they claim."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medannot.errors import MedAnnotError
from medannot.package import bag as bagfile

logger = logging.getLogger(__name__)

_DERIVATION = re.compile(r"MedAnnot guideline (?P<id>\S+) version (?P<version>\S+) sha256 (?P<sha>[0-9a-f]{64})"
                         r"(?:; task (?P<task>\S+))?")


class PackageInvalid(MedAnnotError):
    """A submission package does not hold: the message names the first problem (file, record, what)."""


@dataclass
class Verification:
    """What a successful check covered."""

    payload_files: int = 0
    payload_bytes: int = 0
    dicom_files: int = 0
    audit_records: int = 0
    signatures: int = 0
    signed_by: str | None = None
    notes: list[str] = field(default_factory=list)


def _fail(message: str) -> PackageInvalid:
    return PackageInvalid(message)


def _load_json(root: Path, relative: str) -> Any:
    path = root / relative
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(f"{relative}: missing from the package") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"{relative}: not valid JSON ({exc})") from None


def verify_package(root: Path, certificate: Path | None = None, use_dciodvfy: bool = True,
                   workers: int | None = None) -> Verification:
    """Check the package in ``root``; raise ``PackageInvalid`` naming the first problem.

    Parameters
    ----------
    root
        The package folder (a BagIt bag).
    certificate
        PEM certificate the tag manifest must be signed with (pins the signer; a package without a signature
        then fails).
    use_dciodvfy
        Also run dciodvfy on every SEG/SR when it is installed.
    workers
        Processes validating SEG/SR files (default: one per core).
    """
    root = Path(root)
    result = Verification()
    if not root.is_dir():
        raise _fail(f"{root}: not a folder; give the package folder written by 'medannot package build'")
    declaration = root / bagfile.BAGIT_TXT
    if not declaration.is_file():
        raise _fail(f"{bagfile.BAGIT_TXT}: missing; {root} is not a BagIt bag")
    text = declaration.read_text(encoding="utf-8", errors="replace")
    if not re.match(r"BagIt-Version: (1\.0|0\.9[67])\r?\nTag-File-Character-Encoding: UTF-8\r?\n?$", text):
        raise _fail(f"{bagfile.BAGIT_TXT}: not a BagIt declaration (BagIt-Version, Tag-File-Character-Encoding)")
    for name in (bagfile.MANIFEST, bagfile.TAGMANIFEST):
        if not (root / name).is_file():
            raise _fail(f"{name}: missing; the bag has no SHA-256 manifest")

    _check_signature(root, certificate, result)
    _check_tag_manifest(root)
    try:
        manifest = bagfile.read_manifest(root / bagfile.MANIFEST)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    # hash every payload byte once; report problems below in the order that names them most precisely
    actual: dict[str, str] = {}
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*") if p.is_file())
    for relative in on_disk:
        if relative in manifest:
            actual[relative] = bagfile.sha256_file(root / relative)
            result.payload_bytes += (root / relative).stat().st_size
    result.payload_files = len(on_disk)

    _check_audit(root, result)
    for relative in on_disk:
        if relative not in manifest:
            raise _fail(f"{relative}: added: this file is not in {bagfile.MANIFEST}")
    for relative in manifest:
        if relative not in actual:
            raise _fail(f"{relative}: removed: listed in {bagfile.MANIFEST} but not in the package")
    signatures = _check_signatures(root, manifest, actual, result)
    for relative, digest in manifest.items():
        if actual[relative] != digest:
            raise _fail(f"{relative}: changed: sha256 {actual[relative][:12]}... but the manifest records "
                        f"{digest[:12]}...")
    _check_results(root, use_dciodvfy, result, workers if workers is not None else (os.cpu_count() or 1))
    _check_deid(root, result, workers if workers is not None else (os.cpu_count() or 1))
    result.signatures = len(signatures)
    return result


def _check_signature(root: Path, certificate: Path | None, result: Verification) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from medannot.package.cms import PackageSignatureError, verify_detached

    signature = root / bagfile.SIGNATURE
    pinned = None
    if certificate is not None:
        try:
            pinned = x509.load_pem_x509_certificate(Path(certificate).read_bytes())
        except (OSError, ValueError) as exc:
            raise PackageInvalid(f"{certificate}: not a PEM X.509 certificate ({exc})") from None
    if not signature.is_file():
        if pinned is not None:
            raise _fail(f"{bagfile.SIGNATURE}: missing: the package is not signed, but --certificate asks for "
                        "its signer")
        result.notes.append("the package is not signed (no manifest.p7s): its checksums prove integrity only "
                            "against accidental change")
        return
    try:
        signer = verify_detached(signature.read_bytes(), (root / bagfile.TAGMANIFEST).read_bytes(), pinned)
    except PackageSignatureError as exc:
        raise _fail(f"{bagfile.SIGNATURE}: signature over {bagfile.TAGMANIFEST} does not hold: {exc}") from None
    travelling = root / bagfile.CERTIFICATE
    if travelling.is_file():
        try:
            carried = x509.load_pem_x509_certificate(travelling.read_bytes())
        except ValueError as exc:
            raise _fail(f"{bagfile.CERTIFICATE}: not a PEM certificate ({exc})") from None
        if carried.fingerprint(hashes.SHA256()) != signer.fingerprint(hashes.SHA256()):
            raise _fail(f"{bagfile.CERTIFICATE}: is not the certificate that signed {bagfile.TAGMANIFEST} "
                        f"(signer {signer.subject.rfc4514_string()})")
    result.signed_by = signer.subject.rfc4514_string()


def _check_tag_manifest(root: Path) -> None:
    try:
        tags = bagfile.read_manifest(root / bagfile.TAGMANIFEST)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    for name in bagfile.tag_files(root):
        if name not in tags:
            raise _fail(f"{name}: added: this tag file is not in {bagfile.TAGMANIFEST}")
    for name, digest in tags.items():
        path = root / name
        if not path.is_file():
            raise _fail(f"{name}: removed: listed in {bagfile.TAGMANIFEST} but not in the package")
        if bagfile.sha256_file(path) != digest:
            raise _fail(f"{name}: changed: its sha256 differs from {bagfile.TAGMANIFEST}")


def _bag_info(root: Path) -> dict[str, str]:
    info = {}
    for line in (root / "bag-info.txt").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _check_audit(root: Path, result: Verification) -> None:
    from medannot.audit import AuditAnchor, AuditEntry, check_anchors, verify_chain

    relative = "data/audit/audit.jsonl"
    entries = []
    try:
        lines = (root / relative).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise _fail(f"{relative}: missing from the package") from None
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(AuditEntry(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise _fail(f"{relative}:{number}: not an audit record ({exc})") from None
    count, problem = verify_chain(entries)
    if problem is not None:
        raise _fail(f"{relative}: {problem}")
    head = _load_json(root, "data/audit/head.json")
    last = (entries[-1].seq, entries[-1].hash) if entries else (0, None)
    claims = [("data/audit/head.json", (head.get("seq"), head.get("hash")))]
    stated = _bag_info(root).get("MedAnnot-Audit-Head")
    if stated is None:
        raise _fail("bag-info.txt: no MedAnnot-Audit-Head (the audit head the package was built with)")
    seq_text, _, hash_text = stated.partition(" ")
    claims.append(("bag-info.txt MedAnnot-Audit-Head", (int(seq_text) if seq_text.isdigit() else seq_text,
                                                        None if hash_text == "None" else hash_text)))
    for where, (seq, digest) in claims:
        if (seq, digest) != last:
            if isinstance(seq, int) and seq > last[0]:
                raise _fail(f"{relative}: audit record {seq} missing: {where} says the trail ends at record {seq} "
                            f"but it ends at {last[0]} (records were cut from the end)")
            raise _fail(f"{relative}: the trail's last record ({last[0]}) is not the head {where} records "
                        f"(record {seq})")
    anchors = []
    anchor_file = root / "data/audit/anchors.jsonl"
    if anchor_file.is_file():
        for number, line in enumerate(anchor_file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                data = json.loads(line)
                anchors.append(AuditAnchor(int(data["seq"]), str(data["hash"]), str(data.get("time", "")),
                                           f"data/audit/anchors.jsonl:{number}"))
    problem = check_anchors(entries, anchors)
    if problem is not None:
        raise _fail(f"{relative}: {problem}")
    result.audit_records = count


def _check_signatures(root: Path, manifest: dict[str, str], actual: dict[str, str],
                      result: Verification) -> list[dict[str, Any]]:
    rows = _load_json(root, "data/signatures.json")
    for row in rows:
        what = f"data/signatures.json: signature {row.get('signature_id')} ({row.get('user')}, {row.get('meaning')})"
        for file_key, sha_key in (("file", "file_sha256"), ("verified_sr", "verified_sr_sha256")):
            if row.get(file_key) is None:
                if file_key == "file":
                    raise _fail(f"{what}: names no file of the package")
                continue
            relative = f"data/{row[file_key]}"
            digest = actual.get(relative) or (bagfile.sha256_file(root / relative)
                                              if (root / relative).is_file() else None)
            if digest is None:
                raise _fail(f"{what}: its file {relative} is not in the package")
            if relative in manifest and digest != manifest[relative]:
                continue  # the file itself changed: the payload check below names it
            if digest != row[sha_key]:
                raise _fail(f"{what}: signed sha256 {row[sha_key][:12]}... but {relative} hashes to "
                            f"{digest[:12]}... (the signature is not over this file)")
    return rows


def _creator_ids(seg: Any) -> set[str]:
    ids = set()
    for item in seg.get("SegmentSequence", []):
        for creator in item.get("ContentCreatorIdentificationCodeSequence", []):
            for person in creator.get("PersonIdentificationCodeSequence", []):
                ids.add(str(person.CodeValue))
    return ids


def _consensus_inputs(sr: Any) -> set[str]:
    """UIDs of the reader SEGs a consensus SR says it was made from (its CONSENSUS_IN items)."""
    from medannot.dicomseg import codes

    found: set[str] = set()
    stack = list(sr.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        names = item.get("ConceptNameCodeSequence", [])
        if item.get("ValueType") == "UIDREF" and names and names[0].CodeValue == codes.CONSENSUS_INPUT.value:
            found.add(str(item.UID))
    return found


def _validate_case(paths: list[Path], use_dciodvfy: bool) -> list[Any]:
    from medannot.dicomseg.validate import validate_files

    return validate_files(paths, use_dciodvfy=use_dciodvfy)


def _validate(dicoms: list[Path], use_dciodvfy: bool, workers: int) -> list[Any]:
    """MedAnnot's (and dciodvfy's) checks, one case folder per call (an SR is checked with its SEGs), on
    ``workers`` processes; findings come back in file order."""
    groups: dict[Path, list[Path]] = {}
    for path in dicoms:
        groups.setdefault(path.parent, []).append(path)
    batches = list(groups.values())
    if workers <= 1 or len(batches) < 2 * workers:
        return [f for batch in batches for f in _validate_case(batch, use_dciodvfy)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        results = pool.map(partial(_validate_case, use_dciodvfy=use_dciodvfy), batches,
                           chunksize=max(1, len(batches) // (workers * 4)))
        return [f for found in results for f in found]


def _check_results(root: Path, use_dciodvfy: bool, result: Verification, workers: int) -> None:
    from pydicom import dcmread

    from medannot.dicomseg.reader import referenced_instance_uids

    lineage = _load_json(root, "data/results/lineage.json")
    guidelines = {(g["guideline_id"], g["version"]): g for g in _load_json(root, "data/guidelines/guidelines.json")}
    roster = {r["user"] for r in _load_json(root, "data/readers.json")}
    audit = [json.loads(line) for line in (root / "data/audit/audit.jsonl").read_text(encoding="utf-8").splitlines()]
    submitted = {}
    for record in audit:
        if record["action"] in ("task.submit", "task.correct") and record["new_value"]:
            value = json.loads(record["new_value"])
            submitted[value.get("seg_sha256")] = (record["user"], record["entity"], record["seq"])
    listed = {f"data/{row[key]}" for row in lineage for key in ("file", "sr")}
    dicoms = sorted(p for p in (root / "data/results").rglob("*.dcm"))
    for path in dicoms:
        if path.relative_to(root).as_posix() not in listed and "-verified.sr" not in path.name:
            raise _fail(f"{path.relative_to(root).as_posix()}: not in data/results/lineage.json (a result of "
                        "unknown origin)")
    findings = [f for f in _validate(dicoms, use_dciodvfy, workers) if f.severity == "error"]
    if findings:
        first = findings[0]
        raise _fail(f"{first.path.relative_to(root).as_posix()}: does not validate ({first.source}): "
                    f"{first.message}")
    result.dicom_files = len(dicoms)
    files = {f"data/{row['file']}" for row in lineage}
    uid_of = {row["file"]: row["seg_uid"] for row in lineage}
    for row in lineage:
        relative = f"data/{row['file']}"
        seg = dcmread(root / relative, stop_before_pixels=True)
        if str(seg.SOPInstanceUID) != row["seg_uid"]:
            raise _fail(f"{relative}: SOP Instance UID {seg.SOPInstanceUID} is not the {row['seg_uid']} the "
                        "lineage table records")
        match = _DERIVATION.search(str(seg.get("DerivationDescription", "")))
        if row["kind"] == "read":
            if match is None:
                raise _fail(f"{relative}: DerivationDescription carries no MedAnnot guideline id/version/sha256")
            key = (match["id"], match["version"])
            if key not in guidelines:
                raise _fail(f"{relative}: made under guideline {key[0]} {key[1]}, which is not in "
                            "data/guidelines/guidelines.json")
            if guidelines[key]["sha256"] != match["sha"]:
                raise _fail(f"{relative}: guideline {key[0]} {key[1]} sha256 {match['sha'][:12]}... differs from the "
                            f"stored guideline's {guidelines[key]['sha256'][:12]}...")
            if match["version"] != row["guideline_version"]:
                raise _fail(f"{relative}: guideline version {match['version']} but the server recorded "
                            f"{row['guideline_version']}")
            creators = _creator_ids(seg)
            if row["reader"] not in roster:
                raise _fail(f"{relative}: reader {row['reader']} is not in data/readers.json")
            if creators and creators != {row["reader"]}:
                raise _fail(f"{relative}: the SEG names reader(s) {', '.join(sorted(creators))} but the server "
                            f"recorded {row['reader']} as its reader")
            if match["task"] and match["task"] not in (str(row["task_id"]), f"task:{row['task_id']}"):
                raise _fail(f"{relative}: made for task {match['task']} but submitted to task {row['task_id']}")
            who = submitted.get(row["seg_sha256"])
            if who is None:
                raise _fail(f"{relative}: no task.submit record in data/audit/audit.jsonl carries its sha256 "
                            f"{row['seg_sha256'][:12]}...")
            if who[0] != row["reader"] or who[1] != f"task:{row['task_id']}":
                raise _fail(f"{relative}: audit record {who[2]} says {who[0]} submitted it to {who[1]}, not "
                            f"{row['reader']} to task:{row['task_id']}")
        else:
            sr = dcmread(root / f"data/{row['sr']}", stop_before_pixels=True)
            refs = referenced_instance_uids(sr)
            if row["kind"] == "consensus":
                inputs = _consensus_inputs(sr)
                in_package = set(uid_of.values())
                for uid in sorted(inputs):
                    if uid not in in_package:
                        raise _fail(f"data/{row['sr']}: the consensus was made from SEG {uid}, which is not in "
                                    "the package")
                refs = refs | inputs
            for source in row["derived_from"]:
                if f"data/{source}" not in files:
                    raise _fail(f"{relative}: {row['kind']} made from {source}, which is not in the package")
                if uid_of[source] not in refs:
                    raise _fail(f"data/{row['sr']}: the {row['kind']} SR does not reference {source} "
                                f"(SEG {uid_of[source]}) it was made from")
            if not row["derived_from"]:
                raise _fail(f"{relative}: {row['kind']} SEG with no reader SEGs it was made from")


def _gate_findings(path: Path) -> list[str]:
    import medannot.package

    return medannot.package._deid_gate(path)


def _check_deid(root: Path, result: Verification, workers: int = 1) -> None:
    """Every DICOM file of the package through the de-identification gate, on ``workers`` processes (the gate
    parses every nested item of every SEG: the slowest check of a verify)."""
    from medannot.package.deid_seam import DEID_NOT_INSTALLED

    report = _load_json(root, "data/deid-report.json")
    if report.get("status") == "not-checked":
        result.notes.append(f"data/deid-report.json: {report.get('message')}")
        return
    paths = sorted((root / "data").rglob("*.dcm"))
    if workers <= 1 or len(paths) < 8 * workers:
        verdicts = map(_gate_findings, paths)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        verdicts = pool.map(_gate_findings, paths, chunksize=max(1, len(paths) // (workers * 8)))
    try:
        for path, findings in zip(paths, verdicts):
            if findings == [DEID_NOT_INSTALLED]:
                result.notes.append(f"the package was checked for PHI at build; {DEID_NOT_INSTALLED}")
                return
            if findings:
                raise _fail(f"{path.relative_to(root).as_posix()}: fails the de-identification gate: {findings[0]}")
    finally:
        if workers > 1 and len(paths) >= 8 * workers:
            pool.shutdown(cancel_futures=True)
