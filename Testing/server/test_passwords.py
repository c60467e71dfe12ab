"""Accounts and their secrets (issue #14, L1 and L6): what a password may be, one password however Unicode
spells it, a database file only the server reads, and no patient images left behind by a failed download."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import Lab, db_url, make_lab, medannot  # noqa: F401

from medannot.server.app import create_app
from medannot.server.config import resolve_settings


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab")


@pytest.mark.parametrize(("password", "why"), [
    ("password1234", "too common"),
    (" " * 12, "too short"),
    ("   elevenchar   ", "too short"),  # spaces at the ends do not count
    ("aaaaaaaaaaaaaaaa", "different characters"),
    ("123456789012", "digit run"),
    ("x" * 2000, "too long"),
    ("my-name-is-newuser!", "user name"),
])
def test_weak_passwords_are_refused_with_the_reason(lab: Lab, password: str, why: str) -> None:
    proc = medannot("admin", "user", "add", "newuser", "--role", "annotator", "--password-stdin",
                    stdin=password + "\n", db=lab.db_url)
    assert proc.returncode == 1 and why in proc.stderr and "Traceback" not in proc.stderr


def test_a_passphrase_is_accepted_and_nfc_and_nfd_spellings_are_one_password(lab: Lab, tmp_path: Path) -> None:
    composed = unicodedata.normalize("NFC", "crème brûlée au café")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    proc = medannot("admin", "user", "add", "chef", "--role", "annotator", "--password-stdin",
                    stdin=decomposed + "\n", db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    for spelling in (composed, decomposed):
        response = client.post("/api/v1/auth/login", json={"username": "chef", "password": spelling})
        assert response.status_code == 200, response.text
    wrong = client.post("/api/v1/auth/login", json={"username": "chef", "password": "creme brulee au cafe"})
    assert wrong.status_code == 401


def test_a_huge_password_at_login_is_refused_like_a_wrong_one(lab: Lab, tmp_path: Path) -> None:
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    wrong = client.post("/api/v1/auth/login", json={"username": "r1", "password": "not the password at all"})
    huge = client.post("/api/v1/auth/login", json={"username": "r1", "password": "y" * 5_000_000})
    assert huge.status_code == wrong.status_code == 401 and huge.json() == wrong.json()


def test_the_sqlite_database_is_readable_by_the_server_user_only(tmp_path: Path) -> None:
    import stat

    from medannot.server.db import make_engine, upgrade_database

    engine = make_engine(f"sqlite:///{tmp_path / 'lab' / 'medannot.db'}")
    upgrade_database(engine)
    engine.dispose()
    for path in (tmp_path / "lab").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_failed_case_download_leaves_no_patient_images_in_the_temporary_folder(lab: Lab, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    import shutil
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    client = TestClient(create_app(resolve_settings(lab.db_url, tmp_path / "data")))
    token = client.post("/api/v1/auth/login", json={"username": "r1", "password": "correct horse battery"})
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=headers).json()
    shutil.rmtree(lab.series[task["case_id"]])  # the case's images vanish from the archive
    failed = client.get(f"/api/v1/tasks/{task['task_id']}/instances",
                        headers={**headers, "X-Lease-Token": task["lease_token"]})
    assert failed.status_code == 502
    assert not list(scratch.glob("medannot-instances-*"))
