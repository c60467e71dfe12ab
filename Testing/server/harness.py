"""Test harness for the task server: a fresh database per test (SQLite file or a PostgreSQL schema), users,
a project with CT cases, SEG + SR exports for a task, and real `medannot serve` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from medannot_testing import CLI_ENV, require_tool, run_medannot
from medannot.client import TaskServerClient
from medannot.deid import DeidOptions, apply_tree
from medannot.demo_data import ct_geometry, ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source

ROOT = Path(__file__).resolve().parents[2]
GUIDELINE = ROOT / "MedAnnotExtension" / "medannot" / "data" / "liver-ct.yaml"
PG_URL = os.environ.get("MEDANNOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery"
SHAPE = (4, 24, 24)
LAB_DEID_KEY = bytes.fromhex("5a" * 32)  # the test lab's de-identification key


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc).splitlines()[0]}"
    return None


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty database of ``kind`` (sqlite: a file in ``folder``; postgresql: a new schema in the `test`
    database, dropped afterwards); for the fixtures of any scope."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'server.db'}"
        return
    require_tool(_pg_available())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a new schema in PostgreSQL's `test` database."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def medannot(*args: object, stdin: str | None = None, db: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_medannot(*args, stdin=stdin, env={**({"MEDANNOT_DB": db} if db else {}), **(env or {})})


@dataclass
class Lab:
    """A project with cases in a database, and the CT series behind each case."""

    db_url: str
    root: Path
    project_id: int
    series: dict[str, Path] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)

    def export_for(self, case_id: str, out: Path, guideline: Path = GUIDELINE, reader: str = "r1") -> tuple[Path, Path]:
        _, labels = ct_phantom(SHAPE)
        result = export_segmentation(load_source(self.series[case_id]), labels, ct_geometry(SHAPE),
                                     load_guideline(guideline), ReaderInfo(f"{reader}^Test", reader), out)
        return result.seg_path, result.sr_path


def as_reader(seg: bytes, sr: bytes, user: str) -> tuple[bytes, bytes]:
    """The exported SEG + SR with reader ``user`` (id, and name ``user^Test``) wherever they name their reader:
    the server accepts a result only from the reader it names."""
    import io

    from pydicom import dcmread

    from medannot.dicomseg.reader import _walk

    name = f"{user}^Test"
    seg_ds, sr_ds = dcmread(io.BytesIO(seg)), dcmread(io.BytesIO(sr))
    for holder in [seg_ds, *seg_ds.SegmentSequence]:
        holder.ContentCreatorName = name
        for creator in holder.get("ContentCreatorIdentificationCodeSequence", []):
            for person in creator.PersonIdentificationCodeSequence:
                person.CodeValue, person.CodeMeaning = user, name
    for item in _walk(sr_ds.ContentSequence):
        code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
        if code == "121008":
            item.PersonName = name
        elif code == "128774":
            item.TextValue = user
    out = []
    for ds in (seg_ds, sr_ds):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out[0], out[1]


def make_lab(db_url: str, root: Path, cases: int = 3, annotators: int = 2, extra_users: dict[str, str] | None = None,
             via_cli: bool = False, deidentified: bool = True) -> Lab:
    """Users (admin + annotators r1..rN + extras), a project from the liver guideline (2 readers/case), cases.

    In-process through the server's own functions (fast); ``via_cli`` does the same with `medannot admin ...`.
    The case series are de-identified before import (``medannot deid apply``), as a lab does; ``deidentified=False``
    imports them as generated (with a patient name and ID, which the package's de-identification gate refuses).
    """
    root.mkdir(parents=True, exist_ok=True)
    users = {"admin": "admin", **{f"r{i}": "annotator" for i in range(1, annotators + 1)}, **(extra_users or {})}
    lines = ["case_id,source"]
    series = {}
    for i in range(1, cases + 1):
        key = f"case-{i:03d}"
        if deidentified:
            apply_tree(make_ct_series(root / "raw" / key, SHAPE), root / "series" / key, DeidOptions(LAB_DEID_KEY))
            series[key] = root / "series" / key
        else:
            series[key] = make_ct_series(root / "series" / key, SHAPE)
        lines.append(f"{key},{series[key]}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    if via_cli:
        for name, role in users.items():
            proc = medannot("admin", "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n",
                            db=db_url)
            assert proc.returncode == 0, proc.stderr
        proc = medannot("admin", "project", "create", "--guideline", GUIDELINE, db=db_url)
        assert proc.returncode == 0, proc.stderr
        project_id = int(proc.stdout.strip().splitlines()[-1])
        proc = medannot("admin", "cases", "import", project_id, manifest, db=db_url)
        assert proc.returncode == 0, proc.stderr
        proc = medannot("admin", "project", "members", project_id,
                        *[f"--add={name}" for name, role in users.items() if role != "admin"], db=db_url)
        assert proc.returncode == 0, proc.stderr
    else:
        from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
        from medannot.server.projects import create_project, import_cases, set_members
        from medannot.server.security import create_user

        engine = make_engine(db_url)
        upgrade_database(engine)
        with transaction(session_factory(engine)) as session:
            for name, role in users.items():
                create_user(session, name, role, PASSWORD, actor="test")
            project_id = create_project(session, GUIDELINE, actor="test").id
            import_cases(session, project_id, manifest, actor="test")
            set_members(session, project_id, [n for n, r in users.items() if r != "admin"], [], actor="test")
        engine.dispose()
    return Lab(db_url, root, project_id, series=series, users=list(users))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A real `medannot serve` process on a loopback port."""

    def __init__(self, db_url: str, data_dir: Path, lease_seconds: int = 1800, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.db_url, self.data_dir, self.lease_seconds = db_url, data_dir, lease_seconds
        self.env = {**CLI_ENV, **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        env = dict(self.env)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medannot.cli", "serve", "--port", str(self.port), "--db", self.db_url,
                 "--data-dir", str(self.data_dir), "--lease-minutes", str(self.lease_seconds / 60)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start within 60 s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def login(url: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    response = requests.post(f"{url}/api/v1/auth/login", json={"username": username, "password": password},
                             timeout=30)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def reader(server: ServerProcess, name: str) -> TaskServerClient:
    """A task-server client logged in as ``name``."""
    client = TaskServerClient(server.url)
    client.login(name, PASSWORD)
    return client


def read_case(lab: Lab, server: ServerProcess, name: str, tmp_path: Path) -> int:
    """``name`` claims the next slot and submits a result for it; returns the submission id."""
    client = reader(server, name)
    task = client.claim(lab.project_id)
    assert task is not None
    seg, sr = lab.export_for(str(task.case_id), tmp_path / f"{name}-{task.task_id}", reader=name)
    return client.submit(task.task_id, task.lease_token, seg, sr, str(uuid.uuid4())).submission_id


def make_final(lab: Lab, server: ServerProcess) -> int:
    """The reviewer decides the next review by the consensus and signs it reviewed; the admin signs it approved."""
    rev, admin = reader(server, "rev"), reader(server, "admin")
    claimed = rev.claim_review(lab.project_id)
    assert claimed is not None
    rev.decide(claimed["review_id"], claimed["lease_token"], str(uuid.uuid4()), "consensus")
    rev.sign_review(claimed["review_id"], "consensus", PASSWORD, "reviewed", "Rita Reviewer")
    admin.sign_review(claimed["review_id"], "consensus", PASSWORD, "approved", "Ada Admin")
    return int(claimed["review_id"])
