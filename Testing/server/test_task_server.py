"""The task server on SQLite and PostgreSQL: login, roles, claims and leases, idempotent submit, audit trail."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import PASSWORD, Lab, db_url, make_lab, medannot  # noqa: F401
from sqlalchemy import create_engine, text

from medannot.server.app import create_app
from medannot.server.config import resolve_settings


def client_for(lab: Lab, tmp_path: Path, lease_seconds: int = 1800) -> TestClient:
    return TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data", lease_seconds)))


def auth(client: TestClient, user: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"username": user, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def submit(client: TestClient, headers: dict[str, str], task: dict, seg: Path, sr: Path, key: str):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/tasks/{task['task_id']}/submit",
                       headers={**headers, "X-Lease-Token": task["lease_token"], "Idempotency-Key": key},
                       files={"seg": seg.read_bytes(), "sr": sr.read_bytes()})


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab", extra_users={"rev": "reviewer"})


def test_login_gives_the_same_401_for_unknown_user_and_wrong_password_and_throttles(lab, tmp_path):
    client = client_for(lab, tmp_path)
    unknown = client.post("/api/v1/auth/login", json={"username": "nobody", "password": PASSWORD})
    wrong = client.post("/api/v1/auth/login", json={"username": "r1", "password": "wrong password!"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    # guesses spread over many computers lock the account (one computer alone is throttled first: see
    # test_security_login.py)
    for i in range(10):
        TestClient(client.app, client=(f"198.51.100.{i + 1}", 40000)).post(
            "/api/v1/auth/login", json={"username": "r2", "password": "still the wrong one"})
    locked = TestClient(client.app, client=("198.51.100.99", 40000)).post(
        "/api/v1/auth/login", json={"username": "r2", "password": PASSWORD})
    assert locked.status_code == 401 and locked.json() == wrong.json()  # throttled, even with the right password
    ok = client.post("/api/v1/auth/login", json={"username": "r1", "password": PASSWORD})
    assert ok.status_code == 200 and ok.json()["expires_at"].endswith("Z")


def test_admin_commands_set_up_a_lab_from_the_command_line(db_url, tmp_path):  # noqa: F811
    lab = make_lab(db_url, tmp_path / "cli-lab", cases=2, via_cli=True)
    client = client_for(lab, tmp_path)
    projects = client.get("/api/v1/projects", headers=auth(client, "r1")).json()
    assert [(p["id"], p["cases"], p["tasks_total"], p["guideline_version"]) for p in projects] == [
        (lab.project_id, 2, 4, "1.0.0")]
    duplicate = medannot("admin", "cases", "import", lab.project_id, lab.root / "manifest.csv", db=db_url)
    assert duplicate.returncode == 1 and "manifest.csv:2" in duplicate.stderr and "already" in duplicate.stderr


def test_short_passwords_are_refused(lab):
    proc = medannot("admin", "user", "add", "shorty", "--role", "annotator", "--password-stdin",
                    stdin="elevenchars\n", db=lab.db_url)
    assert proc.returncode == 1 and "at least 12 characters" in proc.stderr


def test_token_is_unusable_after_logout(lab, tmp_path):
    client = client_for(lab, tmp_path)
    headers = auth(client, "r1")
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert client.get("/api/v1/projects", headers=headers).status_code == 401
    assert client.get("/api/v1/projects").status_code == 401


@pytest.mark.parametrize(("role_user", "expected"), [
    ("admin", {"projects": 200, "claim": 403, "audit": 200}),
    ("r1", {"projects": 200, "claim": 200, "audit": 403}),
    ("rev", {"projects": 200, "claim": 403, "audit": 403}),
    (None, {"projects": 401, "claim": 401, "audit": 401}),
])
def test_role_by_endpoint_access_matrix(lab, tmp_path, role_user, expected):
    client = client_for(lab, tmp_path)
    headers = auth(client, role_user) if role_user else {}
    got = {
        "projects": client.get("/api/v1/projects", headers=headers).status_code,
        "claim": client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=headers).status_code,
        "audit": client.get("/api/v1/audit", headers=headers).status_code,
    }
    assert got == expected


def test_claims_give_each_reader_one_slot_per_case_and_return_the_held_lease(lab, tmp_path):
    client = client_for(lab, tmp_path)
    r1, r2 = auth(client, "r1"), auth(client, "r2")
    first = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    again = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    # the held slot comes back; only the token's digest is stored, so it comes with a new token and the old one
    # stops working (#14 I5)
    assert again["task_id"] == first["task_id"] and again["lease_token"] != first["lease_token"]
    beat = f"/api/v1/tasks/{first['task_id']}/heartbeat"
    assert client.post(beat, headers={**r1, "X-Lease-Token": first["lease_token"]}).status_code == 409
    assert client.post(beat, headers={**r1, "X-Lease-Token": again["lease_token"]}).status_code == 200
    assert first["case_id"] == "case-001" and first["guideline_id"] == "liver-ct"
    other = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r2).json()
    assert other["case_id"] == "case-001" and other["task_id"] != first["task_id"]  # second slot, other reader

    seen: dict[str, list[str]] = {"r1": [], "r2": []}
    for name, headers in (("r1", r1), ("r2", r2)):
        while True:
            task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=headers)
            if task.status_code == 204:
                break
            body = task.json()
            seen[name].append(body["case_id"])
            seg, sr = lab.export_for(body["case_id"], tmp_path / name / body["case_id"], reader=name)
            assert submit(client, headers, body, seg, sr, str(uuid.uuid4())).status_code == 201
    assert sorted(seen["r1"]) == sorted(seen["r2"]) == ["case-001", "case-002", "case-003"]
    projects = client.get("/api/v1/projects", headers=r1).json()
    assert projects[0]["tasks_submitted"] == projects[0]["tasks_total"] == 6


def test_expired_lease_returns_the_slot_and_the_stale_token_is_refused(lab, tmp_path):
    client = client_for(lab, tmp_path, lease_seconds=2)
    r1, r2 = auth(client, "r1"), auth(client, "r2")
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    beat = client.post(f"/api/v1/tasks/{task['task_id']}/heartbeat", headers={**r1, "X-Lease-Token": task["lease_token"]})
    assert beat.status_code == 200
    time.sleep(2.5)
    stale = client.post(f"/api/v1/tasks/{task['task_id']}/heartbeat", headers={**r1, "X-Lease-Token": task["lease_token"]})
    assert stale.status_code == 409 and "expired" in stale.json()["detail"]
    # r2 already... takes case-001's first free slot: the expired one is back in the queue
    taken = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r2).json()
    assert taken["task_id"] == task["task_id"]
    seg, sr = lab.export_for(task["case_id"], tmp_path / "late")
    late = submit(client, r1, task, seg, sr, "late-key")
    assert late.status_code == 409
    wrong_token = client.post(f"/api/v1/tasks/{taken['task_id']}/release", headers={**r2, "X-Lease-Token": "forged"})
    assert wrong_token.status_code == 409
    audit = client.get("/api/v1/audit", headers=auth(client, "admin")).json()
    assert any(r["action"] == "lease.expire" and r["entity"] == f"task:{task['task_id']}" for r in audit)


def test_submit_is_idempotent_and_stored_content_addressed(lab, tmp_path):
    client = client_for(lab, tmp_path)
    r1 = auth(client, "r1")
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    seg, sr = lab.export_for(task["case_id"], tmp_path / "out")
    first = submit(client, r1, task, seg, sr, "key-1")
    replay = submit(client, r1, task, seg, sr, "key-1")
    assert first.status_code == replay.status_code == 201
    assert replay.json()["submission_id"] == first.json()["submission_id"] and replay.json()["replayed"] is True
    import hashlib

    digest = hashlib.sha256(seg.read_bytes()).hexdigest()
    stored = tmp_path / "data" / "objects" / digest[:2] / digest
    assert stored.read_bytes() == seg.read_bytes()
    engine = create_engine(lab.db_url.replace("sqlite:///", "sqlite:///"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM submissions")).scalar() == 1
    # a correction is a new submission that points at the first; nothing is overwritten
    seg2, sr2 = lab.export_for(task["case_id"], tmp_path / "out2")
    correction = submit(client, r1, task, seg2, sr2, "key-2")
    assert correction.status_code == 201 and correction.json()["replaces"] == first.json()["submission_id"]
    assert stored.exists()


def test_submit_checks_series_and_guideline(lab, tmp_path):
    client = client_for(lab, tmp_path)
    r1 = auth(client, "r1")
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    other_case = "case-002" if task["case_id"] != "case-002" else "case-003"
    seg, sr = lab.export_for(other_case, tmp_path / "wrong-series")
    wrong = submit(client, r1, task, seg, sr, "k1")
    assert wrong.status_code == 422 and "series" in wrong.json()["detail"]
    changed = tmp_path / "g2.yaml"
    from harness import GUIDELINE

    changed.write_text(GUIDELINE.read_text().replace('version: "1.0.0"', 'version: "9.9.9"'))
    seg, sr = lab.export_for(task["case_id"], tmp_path / "wrong-guideline", guideline=changed)
    wrong = submit(client, r1, task, seg, sr, "k2")
    assert wrong.status_code == 422 and "9.9.9" in wrong.json()["detail"]
    assert submit(client, r1, task, seg, sr, "").status_code in (400, 422)


def _tamper(db: str, sql: str) -> None:
    engine = create_engine(db, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":  # a DBA going around the append-only trigger
            connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"))
        connection.execute(text(sql))
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only"))
    engine.dispose()


def test_audit_chain_catches_an_edited_and_a_deleted_record(lab, tmp_path):
    client = client_for(lab, tmp_path)
    auth(client, "r1")
    client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=auth(client, "r2"))
    ok = medannot("audit", "verify", db=lab.db_url)
    assert ok.returncode == 0 and "intact" in ok.stdout
    _tamper(lab.db_url, "UPDATE audit_records SET \"user\" = 'mallory' WHERE seq = 3")
    edited = medannot("audit", "verify", db=lab.db_url)
    assert edited.returncode == 1 and "audit record 3" in edited.stderr and "changed" in edited.stderr
    _tamper(lab.db_url, "DELETE FROM audit_records WHERE seq = 3")
    deleted = medannot("audit", "verify", db=lab.db_url)
    assert deleted.returncode == 1 and "audit record 3" in deleted.stderr and "missing" in deleted.stderr


def test_an_anchor_catches_records_cut_from_the_end_of_the_trail(lab, tmp_path):
    client = client_for(lab, tmp_path)
    auth(client, "r1")
    anchors = tmp_path / "worm" / "audit-anchors.jsonl"
    first = medannot("audit", "anchor", "--output", anchors, db=lab.db_url)
    assert first.returncode == 0, first.stderr
    head = json.loads(first.stdout)["seq"]
    auth(client, "r2")  # more records after the anchor
    second = medannot("audit", "anchor", "--output", anchors, db=lab.db_url)
    assert second.returncode == 0 and len(anchors.read_text().splitlines()) == 2
    ok = medannot("audit", "verify", "--anchor", anchors, db=lab.db_url)
    assert ok.returncode == 0 and "2 anchor(s) hold" in ok.stdout, ok.stderr
    # Removing the last records leaves a valid, shorter chain: only the anchor shows it.
    _tamper(lab.db_url, f"DELETE FROM audit_records WHERE seq > {head}")
    assert medannot("audit", "verify", db=lab.db_url).returncode == 0
    cut = medannot("audit", "verify", "--anchor", anchors, db=lab.db_url)
    assert cut.returncode == 1 and "missing" in cut.stderr and f"ends at record {head}" in cut.stderr, cut.stderr
    assert str(anchors) in cut.stderr and "Traceback" not in cut.stderr
    bad = tmp_path / "not-anchors.txt"
    bad.write_text("hello\n")
    refused = medannot("audit", "verify", "--anchor", bad, db=lab.db_url)
    assert refused.returncode == 1 and f"{bad}:1" in refused.stderr and "Traceback" not in refused.stderr


def test_audit_rows_cannot_be_updated_or_deleted_by_the_server_role_on_postgresql(lab):
    engine = create_engine(lab.db_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no roles")
    from sqlalchemy.exc import DBAPIError

    for sql in ("UPDATE audit_records SET reason = 'x'", "DELETE FROM audit_records"):
        with engine.connect() as connection, pytest.raises(DBAPIError, match="append-only"):
            connection.execute(text(sql))
    engine.dispose()


def test_every_state_change_is_in_the_audit_trail(lab, tmp_path):
    client = client_for(lab, tmp_path)
    r1 = auth(client, "r1")
    client.post("/api/v1/auth/login", json={"username": "r1", "password": "not the password"})
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    client.post(f"/api/v1/tasks/{task['task_id']}/release", headers={**r1, "X-Lease-Token": task["lease_token"]})
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    seg, sr = lab.export_for(task["case_id"], tmp_path / "o")
    submit(client, r1, task, seg, sr, "k")
    client.post("/api/v1/auth/logout", headers=r1)
    actions = [r["action"] for r in client.get("/api/v1/audit", headers=auth(client, "admin")).json()]
    for action in ("user.create", "project.create", "guideline.version", "case.import", "login.ok", "login.failed",
                   "task.claim", "task.release", "task.submit", "logout"):
        assert action in actions, action


def test_parallel_wrong_passwords_all_count_towards_the_lock(lab, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from medannot.server.db import make_engine, session_factory
    from medannot.server.security import login

    factory = session_factory(make_engine(lab.db_url))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: login(factory, "r2", f"wrong guess {i:04d}"), range(16)))
    assert results == [None] * 16
    engine = create_engine(lab.db_url)
    with engine.connect() as connection:
        failed, locked = connection.execute(
            text("SELECT failed_logins, locked_until FROM users WHERE username = 'r2'")).one()
    engine.dispose()
    assert failed >= 5 and locked is not None  # five failures lock it; later guesses meet the lock
    assert login(factory, "r2", PASSWORD) is None  # locked: the right password is refused too


def test_an_idempotency_key_belongs_to_one_task_and_malformed_uploads_are_422(lab, tmp_path):
    client = client_for(lab, tmp_path)
    r1 = auth(client, "r1")
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    seg, sr = lab.export_for(task["case_id"], tmp_path / "a")
    assert submit(client, r1, task, seg, sr, "same-key").status_code == 201
    second = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).json()
    seg2, sr2 = lab.export_for(second["case_id"], tmp_path / "b")
    reused = submit(client, r1, second, seg2, sr2, "same-key")
    assert reused.status_code == 409 and "already used for task" in reused.json()["detail"]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file")
    assert submit(client, r1, second, junk, sr2, "k-junk").status_code == 422
    assert submit(client, r1, second, sr2, seg2, "k-swapped").status_code == 422  # SEG and SR swapped
    beat = client.post(f"/api/v1/tasks/{second['task_id']}/heartbeat",
                       headers={**r1, "X-Lease-Token": second["lease_token"]})
    assert beat.status_code == 200
    audit = client.get("/api/v1/audit", headers=auth(client, "admin")).json()
    assert any(r["action"] == "lease.extend" and r["entity"] == f"task:{second['task_id']}" for r in audit)


def test_the_server_role_cannot_change_or_remove_audit_rows_nor_switch_off_the_trigger(lab, tmp_path):
    engine = create_engine(lab.db_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no roles")
    engine.dispose()
    role = "medannot_server_test"
    proc = medannot("admin", "grant-server-role", role, db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    server_url = lab.db_url.replace("postgres@", f"{role}@")
    client = TestClient(create_app(resolve_settings(server_url, tmp_path / "data")))  # the server works as ROLE
    r1 = auth(client, "r1")
    assert client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=r1).status_code == 200
    from sqlalchemy.exc import DBAPIError

    as_server = create_engine(server_url)
    for sql in ("UPDATE audit_records SET reason = 'x'", "DELETE FROM audit_records",
                "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"):
        with as_server.connect() as connection, pytest.raises(DBAPIError, match="permission denied|must be owner"):
            connection.execute(text(sql))
    as_server.dispose()
    assert medannot("audit", "verify", db=lab.db_url).returncode == 0


def test_api_docs_work_without_internet(lab, tmp_path):
    import re

    client = client_for(lab, tmp_path)
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/openapi.json").json()["paths"]["/api/v1/projects/{project_id}/claim"]


def test_a_guideline_with_crlf_line_ends_is_served_byte_for_byte(db_url, tmp_path):  # noqa: F811
    from harness import GUIDELINE

    from medannot.guideline import parse_guideline

    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(GUIDELINE.read_bytes().replace(b"\n", b"\r\n"))
    lab = make_lab(db_url, tmp_path / "lab", cases=1)
    proc = medannot("admin", "project", "create", "--guideline", crlf, db=db_url)
    assert proc.returncode == 0, proc.stderr
    project_id = int(proc.stdout.strip().splitlines()[-1])
    assert medannot("admin", "project", "members", project_id, "--add", "r1", db=db_url).returncode == 0
    client = client_for(lab, tmp_path)
    served = client.get(f"/api/v1/projects/{project_id}/guideline", headers=auth(client, "r1"))
    assert served.content == crlf.read_bytes()
    assert parse_guideline(served.content).sha256 == served.headers["X-Guideline-Sha256"]
