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
               cine_guideline_path: Path | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """Users (an admin, two readers and a reviewer with generated passwords), a CT project with ``cases`` cases and, with
    ``cine_guideline_path``, an ultrasound cine project with one cine; returns the project ids by kind ("ct",
    "cine") and the passwords."""
    from medannot.server.config import resolve_settings
    from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
    from medannot.server.projects import create_project, import_cases
    from medannot.server.security import create_user

    settings = resolve_settings(f"sqlite:///{root / 'medannot.db'}", root / "data")
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    passwords = {name: secrets.token_urlsafe(12) for name in ("admin", "reader1", "reader2", "reviewer1")}
    lines = ["case_id,source"]
    for i in range(1, cases + 1):
        hu, _ = ct_phantom(SHAPE)
        folder = make_ct_series(root / "pacs" / f"case-{i}", SHAPE, hu=hu)
        lines.append(f"case-{i},{Path(folder).resolve()}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    projects: dict[str, int] = {}
    with transaction(session_factory(engine)) as session:
        for name, password in passwords.items():
            role = {"admin": "admin", "reviewer1": "reviewer"}.get(name, "annotator")
            create_user(session, name, role, password, actor="demo")
        projects["ct"] = create_project(session, guideline_path, actor="demo").id
        import_cases(session, projects["ct"], manifest, actor="demo")
        if cine_guideline_path is not None:
            cine = make_us_cine(root / "pacs" / "echo-1" / "cine.dcm")
            cine_manifest = root / "manifest-echo.csv"
            cine_manifest.write_text(f"case_id,source\necho-1,{cine.resolve()}\n")
            projects["cine"] = create_project(session, cine_guideline_path, actor="demo").id
            import_cases(session, projects["cine"], cine_manifest, actor="demo")
    engine.dispose()
    return projects, passwords


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
