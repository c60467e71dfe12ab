"""Issue #14, the login and the edges of the API: a login flood is bounded (H2), guesses throttle the guessing
computer before the account (M5), malformed input is refused cleanly (L2), image-source failures do not show
server internals (L3), API answers are not cached and the docs cannot be framed (L4); on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient
from harness import PASSWORD, Lab, ServerProcess, db_url, login, make_lab, medannot  # noqa: F401
from sqlalchemy import create_engine, text

from medannot.server.app import create_app
from medannot.server.config import resolve_settings

ATTACKER = ("203.0.113.7", 40000)
READER_PC = ("198.51.100.20", 40000)


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab", cases=2)


def _app(lab: Lab, tmp_path: Path):  # type: ignore[no-untyped-def]
    return create_app(resolve_settings(lab.db_url, tmp_path / "data"))


def _login(client: TestClient, user: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/login", json={"username": user, "password": password})


def _audit(client: TestClient) -> list[dict]:
    token = _login(client, "admin").json()["access_token"]
    return client.get("/api/v1/audit", headers={"Authorization": f"Bearer {token}"}).json()


def test_a_login_flood_is_refused_with_503_and_a_signed_in_reader_is_not_stalled(lab: Lab, tmp_path: Path) -> None:
    """H2: unauthenticated logins beyond the bound on argon2 checks are told to come back (503 + Retry-After)
    instead of queueing without limit, and a signed-in reader's requests keep being answered."""
    server = ServerProcess(lab.db_url, tmp_path / "data", env={
        "MEDANNOT_PASSWORD_CHECKS": "1",
        "MEDANNOT_LOGIN_CLIENT_FAILURES": "100000",  # measure the bound on argon2 checks, not the client throttle
    }).start()
    try:
        reader = login(server.url, "r1")
        stop = threading.Event()
        statuses: list[int] = []
        retry_after: set[str] = set()

        def flood(i: int) -> None:
            session = requests.Session()
            while not stop.is_set():
                answer = session.post(f"{server.url}/api/v1/auth/login",
                                      json={"username": f"nobody{i}", "password": f"guess number {i:04d}"}, timeout=60)
                statuses.append(answer.status_code)
                if answer.status_code == 503:
                    retry_after.add(answer.headers.get("Retry-After", ""))

        latencies = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(16):
                pool.submit(flood, i)
            time.sleep(1.0)
            for _ in range(10):
                start = time.perf_counter()
                assert requests.get(f"{server.url}/api/v1/projects", headers=reader, timeout=60).status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.1)
            stop.set()
        assert 503 in statuses and retry_after == {"1"}, sorted(set(statuses))
        assert set(statuses) <= {401, 503}, sorted(set(statuses))  # never a 500
        assert max(latencies) < 5.0, latencies  # it was 31-37 s with 40 floods before the bound
        assert requests.post(f"{server.url}/api/v1/auth/login", json={"username": "r2", "password": PASSWORD},
                             timeout=60).status_code == 200  # once the flood stops, logins work
    finally:
        server.stop()


def test_guesses_from_one_computer_throttle_that_computer_not_the_real_user(lab: Lab, tmp_path: Path) -> None:
    """M5: five wrong guesses from one computer throttle that computer (429 + Retry-After, growing); the real user
    still logs in from their own; only guesses from many computers lock the account, which an admin unlocks."""
    app = _app(lab, tmp_path)
    attacker, reader_pc = TestClient(app, client=ATTACKER), TestClient(app, client=READER_PC)
    for i in range(5):
        assert _login(attacker, "r1", f"guess number {i:04d}").status_code == 401
    refused = _login(attacker, "r1", PASSWORD)  # even the right password: the computer is throttled
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "too many failed logins from this computer" in refused.json()["detail"]
    assert _login(reader_pc, "r1").status_code == 200  # the real user is not locked out
    time.sleep(1.1)
    assert _login(attacker, "r1", "one more guess 0005").status_code == 401
    again = _login(attacker, "r2", "and another one 0006")  # any user: the limit is the computer's
    assert again.status_code == 429 and again.headers["Retry-After"] == "2"
    assert _login(reader_pc, "r1").status_code == 200
    failed = [r for r in _audit(reader_pc) if r["action"] == "login.failed"]
    assert json_of(failed[-1])["client"] == ATTACKER[0]  # the trail names the guessing computer

    for i in range(10):  # guesses spread over many computers: the account lock is the second brake
        _login(TestClient(app, client=(f"192.0.2.{i + 1}", 40000)), "r2", f"spread guess {i:04d}")
    assert _login(reader_pc, "r2").status_code == 401  # locked, even with the right password
    assert medannot("admin", "user", "unlock", "r2", db=lab.db_url).returncode == 0
    assert _login(reader_pc, "r2").status_code == 200


def json_of(record: dict) -> dict:
    import json

    return json.loads(record["new_value"] or "{}")


def test_out_of_range_ids_a_nul_in_a_user_name_and_a_garbled_lease_token_are_refused_cleanly(
        lab: Lab, tmp_path: Path) -> None:
    """L2: no 500s: ids beyond the database's integer range are 422 naming the limit, a NUL byte in a user name is
    a 401 that is audited (and a NUL elsewhere a 422), a lease token with non-ASCII bytes is the 409 of any wrong
    token."""
    client = TestClient(_app(lab, tmp_path), raise_server_exceptions=False)
    reader = {"Authorization": f"Bearer {_login(client, 'r1').json()['access_token']}"}
    for big in (2**31, 2**63, 10**30):
        for method, path in (("post", f"/api/v1/tasks/{big}/heartbeat"), ("get", f"/api/v1/projects/{big}/guideline"),
                             ("get", f"/api/v1/submissions/{big}/seg"), ("post", f"/api/v1/tasks/{big}/release")):
            answer = client.request(method, path, headers={**reader, "X-Lease-Token": "x"})
            assert answer.status_code == 422, (path, answer.status_code, answer.text)
            assert "less than or equal to 2147483647" in answer.text
    nul = _login(client, "r1\x00admin", PASSWORD)
    assert nul.status_code == 401 and nul.json() == {"detail": "invalid user name or password"}
    record = [r for r in _audit(client) if r["action"] == "login.failed"][-1]
    assert record["entity"] == "user:r1\\x00admin" and record["reason"] == "malformed user name"
    named = client.get(f"/api/v1/projects/{lab.project_id}/guideline/files/a%00b.png", headers=reader)
    # PostgreSQL cannot hold a NUL in text (422, not a 500); SQLite can, and there is simply no such file (404)
    assert named.status_code == (422 if lab.db_url.startswith("postgresql") else 404), named.text
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=reader).json()
    garbled = client.post(f"/api/v1/tasks/{task['task_id']}/heartbeat",
                          headers={**reader, "X-Lease-Token": "lease-é".encode()})
    assert garbled.status_code == 409 and "lease token is not" in garbled.json()["detail"]


class _PacsAsking401(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="pacs"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_an_image_source_failure_shows_the_annotator_a_reference_not_paths_urls_or_accounts(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """L3: a 502 for a case whose images cannot be fetched says so with a reference id; the server path, the PACS
    URL and its service account are only in the server log, under that reference."""
    pacs = ThreadingHTTPServer(("127.0.0.1", 0), _PacsAsking401)
    threading.Thread(target=pacs.serve_forever, daemon=True).start()
    pacs_url = f"http://127.0.0.1:{pacs.server_port}/pacs-internal/dicom-web/studies/1.2.3/series/1.2.3.4"
    monkeypatch.setenv("MEDANNOT_DICOMWEB_USER", "svc-medannot-pacs")
    monkeypatch.setenv("MEDANNOT_DICOMWEB_PASSWORD", "not the right one")
    shutil.rmtree(lab.series["case-001"])  # the local series folder went away
    client = TestClient(_app(lab, tmp_path), raise_server_exceptions=False)
    reader = {"Authorization": f"Bearer {_login(client, 'r1').json()['access_token']}"}
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=reader).json()
    assert task["case_id"] == "case-001"
    try:
        for secrets in ([str(lab.series["case-001"]), str(tmp_path)],
                        [pacs_url, "127.0.0.1", "pacs-internal", "svc-medannot-pacs"]):
            if secrets[0] == pacs_url:  # then the case lives in the PACS, which refuses the service account
                engine = create_engine(lab.db_url)
                with engine.begin() as connection:
                    connection.execute(text("UPDATE cases SET source = :url WHERE case_key = 'case-001'"),
                                       {"url": pacs_url})
                engine.dispose()
            with caplog.at_level(logging.ERROR, logger="medannot.server.app"):
                answer = client.get(f"/api/v1/tasks/{task['task_id']}/instances",
                                    headers={**reader, "X-Lease-Token": task["lease_token"]})
            assert answer.status_code == 502, answer.text
            detail, reference = answer.json()["detail"], answer.json()["reference"]
            assert re.fullmatch(r"[0-9a-f]{12}", reference) and reference in detail
            for secret in secrets:
                assert secret not in answer.text, (secret, answer.text)
            logged = [r.getMessage() for r in caplog.records if reference in r.getMessage()]
            assert logged and secrets[0] in logged[0]  # the admin finds the detail under the reference
    finally:
        pacs.shutdown()


def test_api_answers_are_not_cached_or_sniffed_and_the_docs_cannot_be_framed(lab: Lab, tmp_path: Path) -> None:
    """L4: token, claim and zip answers (every API answer) carry Cache-Control no-store and nosniff; /docs has a
    CSP and X-Frame-Options DENY and still works offline (the page, its assets, the inline script's hash; and where
    Chromium is installed, the page as a browser builds it)."""
    client = TestClient(_app(lab, tmp_path))
    token = _login(client, "r1")
    reader = {"Authorization": f"Bearer {token.json()['access_token']}"}
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=reader)
    archive = client.get(f"/api/v1/tasks/{task.json()['task_id']}/instances",
                         headers={**reader, "X-Lease-Token": task.json()["lease_token"]})
    assert archive.headers["content-type"] == "application/zip"
    for answer in (token, task, archive, client.get("/api/v1/projects")):  # a 401 too
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    for page in ("/docs", "/redoc"):
        docs = client.get(page)
        assert docs.status_code == 200
        assert docs.headers["x-frame-options"] == "DENY" and docs.headers["x-content-type-options"] == "nosniff"
        policy = docs.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        import base64
        import hashlib

        for inline in re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL):
            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy  # Swagger UI's start-up script may run
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert assets and all(a.startswith("/") for a in assets)
        for asset in assets:
            assert client.get(asset).status_code == 200, asset

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is not None:  # a real browser builds Swagger UI's page under the policy
        server = ServerProcess(lab.db_url, tmp_path / "served").start()
        try:
            proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                                   "--v=0", "--virtual-time-budget=8000", "--dump-dom", f"{server.url}/docs"],
                                  capture_output=True, text=True, timeout=120)
        finally:
            server.stop()
        assert 'data-path="/api/v1/auth/login"' in proc.stdout, proc.stderr[-2000:]
        assert "Content Security Policy" not in proc.stderr, proc.stderr[-2000:]


def test_heartbeats_refused_logins_and_downloads_leave_a_readable_trail(lab: Lab, tmp_path: Path) -> None:
    """L5: a lease's heartbeats are audited once, not per call; a guessing computer's refused logins do not flood
    the trail; an image download is audited; /audit is read page by page."""
    app = _app(lab, tmp_path)
    client = TestClient(app)
    reader = {"Authorization": f"Bearer {_login(client, 'r1').json()['access_token']}"}
    task = client.post(f"/api/v1/projects/{lab.project_id}/claim", headers=reader).json()
    lease = {**reader, "X-Lease-Token": task["lease_token"]}
    for _ in range(5):
        assert client.post(f"/api/v1/tasks/{task['task_id']}/heartbeat", headers=lease).status_code == 200
    attacker = TestClient(app, client=ATTACKER)
    answers = [_login(attacker, "r2", f"guess number {i:04d}").status_code for i in range(10)]
    assert answers[:5] == [401] * 5 and 429 in answers[5:]
    archive = client.get(f"/api/v1/tasks/{task['task_id']}/instances", headers=lease)
    assert archive.status_code == 200

    admin = {"Authorization": f"Bearer {_login(client, 'admin').json()['access_token']}"}
    assert client.get("/api/v1/audit?limit=1000000", headers=admin).status_code == 422  # no unbounded page
    records, after = [], 0
    while True:
        page = client.get(f"/api/v1/audit?after={after}&limit=7", headers=admin).json()
        assert len(page) <= 7
        if not page:
            break
        records += page
        after = page[-1]["seq"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    entity = f"task:{task['task_id']}"
    assert [r["action"] for r in records if r["entity"] == entity].count("lease.extend") == 1
    guesses = [r for r in records if r["action"] == "login.failed" and json_of(r).get("client") == ATTACKER[0]]
    # only the checked guesses are written (the five free ones and those the doubling pauses let through); the
    # throttled attempts are refused before any record is written
    assert len(guesses) == answers.count(401) and answers.count(429) >= 3, answers
    downloads = [json_of(r) for r in records if r["action"] == "case.download" and r["entity"] == entity]
    assert len(downloads) == 1 and downloads[0]["case"] == task["case_id"] and downloads[0]["files"] == 4
    assert records[-1]["user"] == "admin"  # and who read the trail last logged in to do so
