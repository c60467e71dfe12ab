"""What an admin does to existing accounts (issue #14, M4): disable (sessions revoked), enable, reset a password,
unlock a throttled user, change a role, list users; each audited, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import PASSWORD, Lab, db_url, make_lab, medannot  # noqa: F401

from medannot.server.app import create_app
from medannot.server.config import resolve_settings

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab")


def _login(client: TestClient, user: str, password: str = PASSWORD) -> int:
    return client.post("/api/v1/auth/login", json={"username": user, "password": password}).status_code


def _audit_actions(client: TestClient) -> list[str]:
    token = client.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}).json()
    records = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
    return [r["action"] for r in records]


def test_disabling_revokes_open_sessions_and_refuses_login_until_enabled(lab: Lab, tmp_path: Path) -> None:
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    token = client.post("/api/v1/auth/login", json={"username": "r1", "password": PASSWORD}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    proc = medannot("admin", "user", "disable", "r1", "--reason", "left the lab", db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    assert client.get("/api/v1/projects", headers=headers).status_code == 401  # the open session ended
    assert _login(client, "r1") == 401
    listed = json.loads(medannot("admin", "user", "list", "--json", db=lab.db_url).stdout)
    assert next(u for u in listed if u["user"] == "r1")["disabled"] is True
    assert "hash" not in json.dumps(listed) and "token" not in json.dumps(listed)
    again = medannot("admin", "user", "disable", "r1", db=lab.db_url)
    assert again.returncode == 1 and "already disabled" in again.stderr
    assert medannot("admin", "user", "enable", "r1", db=lab.db_url).returncode == 0
    assert _login(client, "r1") == 200
    actions = _audit_actions(client)
    assert "user.disable" in actions and "user.enable" in actions


def test_a_throttled_user_is_unlocked_and_a_reset_password_replaces_the_old(lab: Lab, tmp_path: Path) -> None:
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    for i in range(11):  # from many computers: one alone is throttled before it can lock the account
        _login(TestClient(client.app, client=(f"198.51.100.{i + 1}", 40000)), "r2", "someone guessing here")
    assert _login(client, "r2") == 401  # throttled, even with the right password
    assert medannot("admin", "user", "unlock", "r2", db=lab.db_url).returncode == 0
    assert _login(client, "r2") == 200
    weak = medannot("admin", "user", "reset-password", "r2", "--password-stdin", stdin="password1234\n",
                    db=lab.db_url)
    assert weak.returncode == 1 and "too common" in weak.stderr
    reset = medannot("admin", "user", "reset-password", "r2", "--password-stdin", stdin=NEW_PASSWORD + "\n",
                     db=lab.db_url)
    assert reset.returncode == 0, reset.stderr
    assert _login(client, "r2") == 401 and _login(client, "r2", NEW_PASSWORD) == 200
    actions = _audit_actions(client)
    assert "user.unlock" in actions and "user.password_reset" in actions


def test_a_role_change_applies_at_the_next_login_and_the_last_admin_stays(lab: Lab, tmp_path: Path) -> None:
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    token = client.post("/api/v1/auth/login", json={"username": "r1", "password": PASSWORD}).json()["access_token"]
    assert medannot("admin", "user", "set-role", "r1", "--role", "reviewer", db=lab.db_url).returncode == 0
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    new = client.post("/api/v1/auth/login", json={"username": "r1", "password": PASSWORD}).json()["access_token"]
    claim = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers={"Authorization": f"Bearer {new}"})
    assert claim.status_code == 403  # reviewers do not claim reads
    last = medannot("admin", "user", "set-role", "admin", "--role", "annotator", db=lab.db_url)
    assert last.returncode == 1 and "last enabled admin" in last.stderr
    assert medannot("admin", "user", "disable", "admin", db=lab.db_url).returncode == 1
    unknown = medannot("admin", "user", "unlock", "nobody", db=lab.db_url)
    assert unknown.returncode == 1 and "no user 'nobody'" in unknown.stderr
