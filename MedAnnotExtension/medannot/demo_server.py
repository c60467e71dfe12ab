"""The task-server part of ``medannot demo``: a local server (SQLite, loopback), users, a CT project and an
ultrasound cine project with their cases, and two readers working through claim -> download -> segment (the cine:
draw keyframes, interpolate) -> QA -> export -> submit, then a reviewer who decides each case (consensus or a
reader's result) and signs it, and the admin who approves it."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn

from medannot.client import Outbox, TaskServerClient
from medannot.demo_data import cine_phantom, ct_phantom, make_ct_series, make_us_cine
from medannot.dicomseg import ExportResult, ReaderInfo, SegmentProvenance, export_segmentation
from medannot.guideline import Guideline, load_guideline
from medannot.guideline.qa import QAReport, check_labels
from medannot.imaging import SourceImage, load_source
from medannot.interpolation import interpolate_labels, load_cine
from medannot.interpolation.provenance import segment_provenance

SHAPE = (12, 64, 64)


@dataclass
class DemoServer:
    """A server running in a thread of this process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_local_server(root: Path) -> DemoServer:
    """Start the task server on a free loopback port with an SQLite database under ``root``."""
    from medannot.server.app import create_app
    from medannot.server.config import resolve_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_app(resolve_settings(f"sqlite:///{root / 'medannot.db'}", root / "data"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return DemoServer(f"http://127.0.0.1:{port}", server, thread)


def set_up_lab(root: Path, guideline_path: Path, cases: int = 2,
               cine_guideline_path: Path | None = None) -> tuple[dict[str, int], dict[str, str], int]:
    """Users (an admin, two readers and a reviewer with generated passwords), a CT project with ``cases`` cases and, with
    ``cine_guideline_path``, an ultrasound cine project with one cine; returns the project ids by kind ("ct",
    "cine"), the passwords and how many source files were de-identified.

    As a lab should, the images are de-identified before import (``medannot deid apply`` with the lab's key in
    ``root/deid.key``: dates shifted, the cine blanked outside its ultrasound region): what "the scanner" wrote
    goes to ``root/scanner``, what the readers see to ``root/pacs``."""
    from medannot.deid import DeidOptions, apply_tree
    from medannot.deid.files import write_new_key, load_key
    from medannot.server.config import resolve_settings
    from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
    from medannot.server.projects import create_project, import_cases, set_members
    from medannot.server.security import create_user

    settings = resolve_settings(f"sqlite:///{root / 'medannot.db'}", root / "data")
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    passwords = {name: secrets.token_urlsafe(12) for name in ("admin", "reader1", "reader2", "reviewer1")}
    write_new_key(root / "deid.key")
    deid = DeidOptions(load_key(root / "deid.key"), profile="retain-dates-shifted", us_pixels="blank-outside-regions")
    deidentified = 0
    lines = ["case_id,source"]
    for i in range(1, cases + 1):
        hu, _ = ct_phantom(SHAPE)
        scanner = make_ct_series(root / "scanner" / f"case-{i}", SHAPE, hu=hu)
        deidentified += len(apply_tree(scanner, root / "pacs" / f"case-{i}", deid))
        lines.append(f"case-{i},{(root / 'pacs' / f'case-{i}').resolve()}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    projects: dict[str, int] = {}
    with transaction(session_factory(engine)) as session:
        for name, password in passwords.items():
            role = {"admin": "admin", "reviewer1": "reviewer"}.get(name, "annotator")
            create_user(session, name, role, password, actor="demo")
        projects["ct"] = create_project(session, guideline_path, actor="demo").id
        import_cases(session, projects["ct"], manifest, actor="demo")
        set_members(session, projects["ct"], ["reader1", "reader2", "reviewer1"], [], actor="demo")
        if cine_guideline_path is not None:
            scanner_cine = make_us_cine(root / "scanner" / "echo-1" / "cine.dcm")
            deidentified += len(apply_tree(scanner_cine.parent, root / "pacs" / "echo-1", deid))
            cine = root / "pacs" / "echo-1" / "cine.dcm"
            cine_manifest = root / "manifest-echo.csv"
            cine_manifest.write_text(f"case_id,source\necho-1,{cine.resolve()}\n")
            projects["cine"] = create_project(session, cine_guideline_path, actor="demo").id
            import_cases(session, projects["cine"], cine_manifest, actor="demo")
            set_members(session, projects["cine"], ["reader1", "reader2", "reviewer1"], [], actor="demo")
    engine.dispose()
    return projects, passwords, deidentified


def package_projects(root: Path, projects: dict[str, int], output: Path) -> list[dict[str, object]]:
    """Build the submission package of each project (signed with a demo certificate), verify it offline, then
    change one byte of one SEG in a copy and verify that: returns per project what verify said both times."""
    import shutil

    from medannot.package import PackageInvalid, build_package, verify_package
    from medannot.server.db import make_engine, session_factory, transaction

    key, cert = _demo_signer(output / "signer")
    engine = make_engine(f"sqlite:///{root / 'medannot.db'}")
    rows: list[dict[str, object]] = []
    try:
        for kind, project_id in projects.items():
            folder = output / f"{kind}-project-{project_id}"
            with transaction(session_factory(engine)) as session:
                numbers = build_package(session, root / "data", project_id, folder, sign_key=key, certificate=cert,
                                        include_images=True)
            result = verify_package(folder, cert)
            tampered = output / f"{kind}-project-{project_id}-one-byte-changed"
            shutil.copytree(folder, tampered)
            victim = sorted((tampered / "data" / "results").rglob("*.seg.dcm"))[0]
            data = bytearray(victim.read_bytes())
            data[-1] ^= 0x01
            victim.write_bytes(bytes(data))
            try:
                verify_package(tampered, cert, use_dciodvfy=False)
                caught = None
            except PackageInvalid as exc:
                caught = str(exc)
            rows.append({"kind": kind, "folder": folder, "numbers": numbers, "verified": result,
                         "tampered": tampered, "victim": victim.relative_to(tampered).as_posix(), "caught": caught})
    finally:
        engine.dispose()
    return rows


def _demo_signer(folder: Path) -> tuple[Path, Path]:
    """An EC P-256 key and a self-signed certificate for the demo lab's QA signer (a lab uses its own PKI)."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MedAnnot demo lab QA")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / "demo-qa-key.pem", folder / "demo-qa-cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def read_cases(url: str, project_id: int, reader: str, password: str, work: Path, seed: int) -> list[dict[str, object]]:
    """One reader's session: claim until nothing is left; for each task download, segment, export, submit.

    A CT is segmented directly; an ultrasound cine the way its guideline asks: keyframes drawn, the rest
    interpolated (motion-guided), exported with the interpolation's provenance.
    """
    client = TaskServerClient(url)
    client.login(reader, password)
    work.mkdir(parents=True, exist_ok=True)
    guideline = load_guideline(client.download_guideline(project_id, work / f"guideline-{project_id}"))
    outbox = Outbox(work / "outbox")
    rng = np.random.default_rng(seed)
    reader_info = ReaderInfo(f"Demo^{reader.capitalize()}", reader)
    done: list[dict[str, object]] = []
    while (task := client.claim(project_id)) is not None:
        images = client.download_instances(task.task_id, task.lease_token, work / f"task-{task.task_id}" / "images")
        source = load_source(images)
        client.heartbeat(task.task_id, task.lease_token)
        out = work / f"task-{task.task_id}" / "result"
        if source.is_multiframe and source.modality == "US":
            result, qa = _segment_cine(source, guideline, reader_info, out, rng, str(task.task_id))
        else:
            result, qa = _segment_ct(source, guideline, reader_info, out, rng, str(task.task_id))
        row = {"reader": reader, "project": project_id, "task": task.task_id, "case": task.case_id,
               "qa": f"{'passed' if qa.passed else 'FAILED'} ({len(qa.errors)} error(s), {len(qa.warnings)} "
                     "warning(s))", "status": "not submitted", "submission": None, "seg": result.seg_path}
        done.append(row)
        if not qa.passed:  # as in Slicer: a result with an error finding is not submitted; the case goes back
            client.release(task.task_id, task.lease_token)
            break  # claiming again would hand this reader the same case
        delivery = outbox.submit(client, task.task_id, task.lease_token, result.seg_path, result.sr_path)
        row.update(status=delivery.status, submission=delivery.submission_id)
    client.logout()
    return done


def _segment_ct(source: SourceImage, guideline: Guideline, reader: ReaderInfo, out: Path,
                rng: np.random.Generator, task_id: str) -> tuple[ExportResult, QAReport]:
    _, labels = ct_phantom(source.shape)
    labels = labels.copy()
    # a reader's own hand: this reader misses a few liver voxels at the border
    border = np.argwhere(labels == 1)
    drop = border[rng.choice(len(border), size=len(border) // 50, replace=False)]
    labels[tuple(drop.T)] = 0
    qa = check_labels(labels, source.geometry, guideline)
    return export_segmentation(source, labels, source.geometry, guideline, reader, out,
                               segments={"Liver": SegmentProvenance(confidence=int(rng.integers(70, 99)))},
                               task_id=task_id), qa


def _segment_cine(source: SourceImage, guideline: Guideline, reader: ReaderInfo, out: Path,
                  rng: np.random.Generator, task_id: str) -> tuple[ExportResult, QAReport]:
    cine = load_cine(source.paths[0])
    _, truth = cine_phantom(*cine.frames.shape)
    n = truth.shape[0]
    keyframes = sorted({0, *range(int(rng.integers(5, 8)), n - 1, 6), n - 1})
    drawn = np.zeros_like(truth)
    drawn[keyframes] = truth[keyframes]  # the reader draws the keyframes only
    filled = interpolate_labels(drawn, keyframes, image=cine.frames, frame_times=cine.frame_times_ms)
    confidences = {1: int(rng.integers(75, 95)), 2: int(rng.integers(55, 80))}
    qa = check_labels(filled.labels, None, guideline, is_cine=True, calibration=cine.calibration)
    return export_segmentation(
        source, filled.labels, None, guideline, reader, out,
        segments={s.label: segment_provenance(s, filled.method, confidences.get(s.label)) for s in filled.segments},
        task_id=task_id), qa


def verify_audit(root: Path) -> tuple[int, str | None]:
    """Verify the demo server's audit chain; returns the record count and the first problem, if any."""
    from medannot.audit import verify_chain
    from medannot.server.audit import audit_entries
    from medannot.server.db import make_engine, session_factory, transaction

    engine = make_engine(f"sqlite:///{root / 'medannot.db'}")
    with transaction(session_factory(engine)) as session:
        count, problem = verify_chain(audit_entries(session))
    engine.dispose()
    return count, str(problem) if problem else None


def review_cases(url: str, project_id: int, reviewer: str, password: str, approver: str, approver_password: str,
                 work: Path) -> list[dict[str, object]]:
    """A reviewer's session: claim each review round of a project, look at the readers' SEGs and their agreement,
    decide (the first case by the consensus, the next by accepting the first reader's result, alternately), and
    sign the result as ``reviewed``; the approver (who read none of the cases) signs it ``approved``. Returns one
    row per case with the agreement metrics the server stored."""
    import uuid

    client = TaskServerClient(url)
    client.login(reviewer, password)
    approving = TaskServerClient(url)
    approving.login(approver, approver_password)
    done: list[dict[str, object]] = []
    try:
        while (review := client.claim_review(project_id)) is not None:
            client.download_review(review, work / f"review-{review['review_id']}")
            by_consensus = len(done) % 2 == 0 and review.get("consensus") is not None
            if by_consensus:
                client.decide(review["review_id"], review["lease_token"], str(uuid.uuid4()), "consensus")
                signed = [c.sign_review(review["review_id"], "consensus", p, meaning)
                          for c, p, meaning in ((client, password, "reviewed"),
                                                (approving, approver_password, "approved"))]
            else:
                first = review["reads"][0]
                client.decide(review["review_id"], review["lease_token"], str(uuid.uuid4()), "accept",
                                         submission_id=first["submission_id"])
                signed = [c.sign(first["submission_id"], p, meaning)
                          for c, p, meaning in ((client, password, "reviewed"),
                                                (approving, approver_password, "approved"))]
            state = next(r for r in client.reviews(project_id) if r["review_id"] == review["review_id"])
            readers = {str(r["submission_id"]): str(r["reader"]) for r in review["reads"]}
            done.append({"project": project_id, "case": review["case_id"], "review": review["review_id"],
                         "decision": "consensus" if by_consensus else "accept",
                         "accepted": None if by_consensus else readers[str(review["reads"][0]["submission_id"])],
                         "signatures": [s["meaning"] for s in signed], "final": bool(state["final"]),
                         "metrics": [{**m, "a": readers.get(str(m["a"]), m["a"]), "b": readers.get(str(m["b"]), m["b"])}
                                     for m in review.get("metrics", [])]})
    finally:
        client.logout()
        approving.logout()
    return done
