"""Project membership (issue #14, M3): an annotator claims and a reviewer reviews only in the projects an admin
made them a member of; the worklist lists only one's projects; existing projects keep their readers on upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import GUIDELINE, PASSWORD, Lab, db_url, make_lab, medannot  # noqa: F401
from sqlalchemy import text

from medannot.server.app import create_app
from medannot.server.config import resolve_settings


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab", extra_users={"rev": "reviewer", "outsider": "annotator"})


def _auth(client: TestClient, user: str) -> dict[str, str]:
    token = client.post("/api/v1/auth/login", json={"username": user, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def test_only_members_claim_review_or_read_the_guideline_and_the_worklist_lists_only_theirs(lab: Lab,
                                                                                           tmp_path: Path) -> None:
    proc = medannot("admin", "project", "create", "--guideline", GUIDELINE, "--name", "Second", db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    second = int(proc.stdout.strip().splitlines()[-1])
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    r1, rev, admin = _auth(client, "r1"), _auth(client, "rev"), _auth(client, "admin")
    assert [p["id"] for p in client.get("/api/v1/projects", headers=r1).json()] == [lab.project_id]
    assert [p["id"] for p in client.get("/api/v1/projects", headers=admin).json()] == [lab.project_id, second]
    for method, path, headers in (("post", f"/api/v1/projects/{second}/claim", r1),
                                  ("get", f"/api/v1/projects/{second}/guideline", r1),
                                  ("get", f"/api/v1/projects/{second}/guideline/files", rev),
                                  ("post", f"/api/v1/projects/{second}/reviews/claim", rev),
                                  ("get", f"/api/v1/projects/{second}/reviews", rev)):
        answer = getattr(client, method)(path, headers=headers)
        assert answer.status_code == 403, (path, answer.text)
        assert f"not a member of project {second}" in answer.json()["detail"]
        assert "medannot admin project members" in answer.json()["detail"]
    assert client.get(f"/api/v1/projects/{second}/guideline", headers=admin).status_code == 200

    proc = medannot("admin", "project", "members", second, "--add", "r1", "--add", "rev", db=lab.db_url)
    assert proc.returncode == 0 and "r1, rev" in proc.stdout, proc.stderr
    assert client.get(f"/api/v1/projects/{second}/guideline", headers=r1).status_code == 200
    assert client.post(f"/api/v1/projects/{second}/claim", headers=r1).status_code == 204  # member; no cases yet
    assert client.post(f"/api/v1/projects/{second}/reviews/claim", headers=rev).status_code == 204
    # an outsider of the first project (never added) cannot claim there, and removal takes effect at once
    outsider = _auth(client, "outsider")
    assert client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=outsider).status_code == 200  # harness added
    proc = medannot("admin", "project", "members", lab.project_id, "--remove", "outsider", db=lab.db_url)
    assert proc.returncode == 0 and "outsider" not in proc.stdout
    assert client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=outsider).status_code == 403
    proc = medannot("admin", "project", "members", second, "--add", "nobody", db=lab.db_url)
    assert proc.returncode == 1 and "no user 'nobody'" in proc.stderr
    records = client.get("/api/v1/audit", headers=admin).json()
    assert {"project.member.add", "project.member.remove"} <= {r["action"] for r in records}


def test_upgrading_a_lab_keeps_its_readers_in_its_existing_projects(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    from importlib import resources

    from alembic import command
    from alembic.config import Config

    from medannot.server.db import make_engine, upgrade_database

    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(resources.files("medannot.server") / "migrations"))
    with engine.begin() as connection:  # a lab database as it was before membership existed
        config.attributes["connection"] = connection
        command.upgrade(config, "0008")
        connection.execute(text("INSERT INTO users (username, role, password_hash, created_at, failed_logins) "
                                "VALUES ('old_reader', 'annotator', 'x', CURRENT_TIMESTAMP, 0), "
                                "('old_admin', 'admin', 'x', CURRENT_TIMESTAMP, 0)"))
        connection.execute(text("INSERT INTO projects (name, guideline_id, readers_per_case, created_at) "
                                "VALUES ('old project', 'liver-ct', 2, CURRENT_TIMESTAMP)"))
    upgrade_database(engine)
    with engine.begin() as connection:
        members = connection.execute(text("SELECT u.username FROM project_members m JOIN users u ON "
                                          "u.id = m.user_id")).scalars().all()
    engine.dispose()
    assert members == ["old_reader"]


def test_upgrading_hashes_the_lease_tokens_in_place_so_held_leases_keep_working(db_url: str,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    """Migration 0012 (#14 I5): a token stored in clear before the upgrade is replaced by its digest, and the
    reader holding it can still beat and submit with it."""
    import hashlib
    from datetime import timedelta
    from importlib import resources

    from alembic import command
    from alembic.config import Config

    from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
    from medannot.server.models import User, utcnow
    from medannot.server.queue import heartbeat

    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(resources.files("medannot.server") / "migrations"))
    with engine.begin() as connection:  # a lab database as it was before digests, with a lease held
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
        connection.execute(text("INSERT INTO users (username, role, password_hash, created_at, failed_logins) "
                                "VALUES ('reader', 'annotator', 'x', CURRENT_TIMESTAMP, 0)"))
        connection.execute(text("INSERT INTO projects (name, guideline_id, readers_per_case, created_at) "
                                "VALUES ('p', 'liver-ct', 1, CURRENT_TIMESTAMP)"))
        connection.execute(text("INSERT INTO cases (project_id, case_key, source, study_uid, series_uid) "
                                "VALUES (1, 'case-1', '{}', '1.2.3', '1.2.3.4')"))
        connection.execute(text("INSERT INTO tasks (project_id, case_id, slot, status, reader_id, lease_token, "
                                "lease_expires_at) VALUES (1, 1, 0, 'leased', 1, 'old-clear-token', :t)"),
                           {"t": utcnow() + timedelta(hours=1)})
    upgrade_database(engine)
    with engine.begin() as connection:
        columns = connection.execute(text("SELECT * FROM tasks")).mappings().one()
    assert "lease_token" not in columns
    assert columns["lease_sha256"] == hashlib.sha256(b"old-clear-token").hexdigest()
    factory = session_factory(engine)
    with transaction(factory) as session:
        reader = session.query(User).filter_by(username="reader").one()
        assert heartbeat(session, reader, columns["id"], "old-clear-token", 600).id == columns["id"]
    engine.dispose()
