"""The task-server part of ``medannot demo``: a local server (SQLite, loopback), users, a project, cases, and two
readers working through claim -> download -> export -> submit."""

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
from medannot.demo_data import ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source

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


def set_up_lab(root: Path, guideline_path: Path, cases: int = 2) -> tuple[int, dict[str, str]]:
    """Users (an admin and two readers with generated passwords), a project and CT cases; returns the project id
    and the passwords."""
    from medannot.server.config import resolve_settings
    from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
    from medannot.server.projects import create_project, import_cases
    from medannot.server.security import create_user

    settings = resolve_settings(f"sqlite:///{root / 'medannot.db'}", root / "data")
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    passwords = {name: secrets.token_urlsafe(12) for name in ("admin", "reader1", "reader2")}
    lines = ["case_id,source"]
    for i in range(1, cases + 1):
        hu, _ = ct_phantom(SHAPE)
        folder = make_ct_series(root / "pacs" / f"case-{i}", SHAPE, hu=hu)
        lines.append(f"case-{i},{Path(folder).resolve()}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    with transaction(session_factory(engine)) as session:
        for name, password in passwords.items():
            create_user(session, name, "admin" if name == "admin" else "annotator", password, actor="demo")
        project_id = create_project(session, guideline_path, actor="demo").id
        import_cases(session, project_id, manifest, actor="demo")
    engine.dispose()
    return project_id, passwords


def read_cases(url: str, project_id: int, reader: str, password: str, work: Path, seed: int) -> list[dict[str, object]]:
    """One reader's session: claim until nothing is left; for each task download, segment, export, submit."""
    client = TaskServerClient(url)
    client.login(reader, password)
    guideline_path = work / "guideline.yaml"
    guideline_path.parent.mkdir(parents=True, exist_ok=True)
    guideline_path.write_text(client.guideline(project_id))
    guideline = load_guideline(guideline_path)
    outbox = Outbox(work / "outbox")
    rng = np.random.default_rng(seed)
    done: list[dict[str, object]] = []
    while (task := client.claim(project_id)) is not None:
        images = client.download_instances(task.task_id, task.lease_token, work / f"task-{task.task_id}" / "images")
        source = load_source(images)
        _, labels = ct_phantom(source.shape)
        labels = labels.copy()
        # a reader's own hand: this reader misses a few liver voxels at the border
        border = np.argwhere(labels == 1)
        drop = border[rng.choice(len(border), size=len(border) // 50, replace=False)]
        labels[tuple(drop.T)] = 0
        client.heartbeat(task.task_id, task.lease_token)
        result = export_segmentation(
            source, labels, source.geometry, guideline, ReaderInfo(f"Demo^{reader.capitalize()}", reader),
            work / f"task-{task.task_id}" / "result",
            segments={"Liver": SegmentProvenance(confidence=int(rng.integers(70, 99)))}, task_id=str(task.task_id))
        delivery = outbox.submit(client, task.task_id, task.lease_token, result.seg_path, result.sr_path)
        done.append({"reader": reader, "task": task.task_id, "case": task.case_id, "status": delivery.status,
                     "submission": delivery.submission_id, "seg": result.seg_path})
    client.logout()
    return done


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
