"""The task-server client and the outbox against a small in-test HTTP server speaking the REST contract.

A submit made while the server is down waits on disk and is stored exactly once later, even when an answer is
lost or two processes flush at the same time; rejected submits are kept and not retried; zips cannot escape.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import socket
import stat
import threading
import time
import zipfile
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from medannot.client import (
    AuthenticationError,
    LeaseLostError,
    Outbox,
    ServerUnreachableError,
    TaskServerClient,
    UnsafeArchiveError,
)

PASSWORD = "correct horse battery staple"
TOKEN = "tok-rroe-1"
LEASE = "lease-42"
TASK = {"task_id": 42, "case_id": 7, "lease_token": LEASE, "lease_expires_at": "2099-01-01T00:00:00",
        "project_id": 3, "guideline_id": "liver-ct", "guideline_version": "1.0.0"}


class FakeTaskServer:
    """Just enough of /api/v1 for the client; remembers what it received and stores each Idempotency-Key once."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.stored: dict[str, dict[str, Any]] = {}  # idempotency key -> submission
        self.submit_requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.lease_headers: list[str | None] = []
        self.submit_delay = 0.0
        self.after_store: list[str] = []  # per submit request, in order: "503" or "drop" after storing
        self.reject_submit: str | None = None
        self.instances_zip = _zip({"series/1.dcm": b"DICM-1", "series/2.dcm": b"DICM-2"})
        self.tasks_left = 1
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeTaskServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: FakeTaskServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, code: int, body: Any = None, content_type: str = "application/json") -> None:
            data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def authorized(self) -> bool:
            server.auth_headers.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.reply(401, {"detail": "Not authenticated"})
                return False
            return True

        def leased(self) -> bool:
            server.lease_headers.append(self.headers.get("X-Lease-Token"))
            if self.headers.get("X-Lease-Token") != LEASE:
                self.reply(409, {"detail": "lease is stale: the task was released or expired"})
                return False
            return True

        def do_GET(self) -> None:
            if not self.authorized():
                return
            if self.path == "/api/v1/projects":
                self.reply(200, [{"id": 3, "name": "Liver", "guideline_id": "liver-ct", "guideline_version":
                                  "1.0.0", "readers_per_case": 2, "cases": 5, "tasks_total": 10,
                                  "tasks_submitted": 4}])
            elif self.path == "/api/v1/tasks/42/instances":
                if self.leased():
                    self.reply(200, server.instances_zip, "application/zip")
            elif self.path == "/api/v1/projects/3/guideline":
                self.reply(200, "id: liver-ct\nname: Leber und Läsionen\n".encode(), "text/yaml")
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = self.body()
            if self.path == "/api/v1/auth/login":
                login = json.loads(body)
                if login == {"username": "rroe", "password": PASSWORD}:
                    self.reply(200, {"access_token": TOKEN, "expires_at": "2099-01-01T00:00:00Z"})
                else:
                    self.reply(401, {"detail": "Incorrect username or password"})
                return
            if not self.authorized():
                return
            if self.path == "/api/v1/auth/logout":
                self.reply(204)
            elif self.path == "/api/v1/projects/3/claim":
                if server.tasks_left:
                    server.tasks_left -= 1
                    self.reply(200, TASK)
                else:
                    self.reply(204)
            elif self.path == "/api/v1/tasks/42/heartbeat":
                if self.leased():
                    self.reply(200, {"lease_expires_at": "2099-01-01T00:10:00"})
            elif self.path == "/api/v1/tasks/42/release":
                if self.leased():
                    self.reply(204)
            elif self.path == "/api/v1/tasks/42/submit":
                self.submit(body)
            else:
                self.reply(404, {"detail": "Not Found"})

        def submit(self, body: bytes) -> None:
            key = self.headers.get("Idempotency-Key")
            with server.lock:
                server.submit_requests.append({"key": key})
                then = server.after_store.pop(0) if server.after_store else None
            time.sleep(server.submit_delay)
            if not self.leased():
                return
            if server.reject_submit:
                self.reply(422, {"detail": server.reject_submit})
                return
            files = _multipart(self.headers["Content-Type"], body)
            with server.lock:
                replay = key in server.stored
                if not replay:
                    server.stored[key] = {"submission_id": 100 + len(server.stored), "task_id": 42, **files}
                submission = server.stored[key]
            if then == "drop":
                self.close_connection = True  # stored, but the answer never leaves
                return
            if then == "503":
                self.reply(503, {"detail": "Service Unavailable"})
                return
            self.reply(200 if replay else 201, {"submission_id": submission["submission_id"], "task_id": 42})

    return Handler


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    with FakeTaskServer() as running:
        yield running


@pytest.fixture
def seg_sr(tmp_path: Path) -> tuple[Path, Path]:
    seg, sr = tmp_path / "result-seg.dcm", tmp_path / "result-sr.dcm"
    seg.write_bytes(b"SEG-BYTES" * 100)
    sr.write_bytes(b"SR-BYTES" * 50)
    return seg, sr


def logged_in(url: str, retries: int = 0) -> TaskServerClient:
    return TaskServerClient(url, token=TOKEN, timeout=5, retries=retries, backoff_factor=0.01)


# ---------------------------------------------------------------- client
def test_login_keeps_the_token_and_sends_it_as_bearer(server):
    client = TaskServerClient(server.url + "/api/v1/", retries=0)
    session = client.login("rroe", PASSWORD)
    assert (session.token, session.expires_at, session.server_url) == (TOKEN, "2099-01-01T00:00:00Z", server.url)
    assert not session.expired
    assert [p["name"] for p in client.projects()] == ["Liver"]
    assert server.auth_headers[-1] == f"Bearer {TOKEN}"
    assert PASSWORD not in repr(vars(client)) and PASSWORD not in repr(session)
    assert client.guideline(3) == "id: liver-ct\nname: Leber und Läsionen\n"


def test_wrong_password_is_an_authentication_error_naming_the_server(server):
    with pytest.raises(AuthenticationError) as caught:
        TaskServerClient(server.url, retries=0).login("rroe", "hunter2-typo")
    message = str(caught.value)
    assert server.url in message and "Incorrect username or password" in message
    assert "check the username and password" in message and "hunter2" not in message
    assert caught.value.status_code == 401


def test_an_expired_token_tells_the_user_to_log_in_again(server):
    with pytest.raises(AuthenticationError, match=r"medannot client login --server http://127\.0\.0\.1"):
        TaskServerClient(server.url, token="revoked", retries=0).projects()


def test_closed_port_is_a_clear_unreachable_error_not_a_traceback():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServerUnreachableError) as caught:
        logged_in(url, retries=1).projects()
    assert str(caught.value).startswith(f"cannot reach the task server at {url} to list projects "
                                        "(connection refused")
    assert "HTTPConnectionPool" not in str(caught.value)


def test_claim_heartbeat_release_and_download(server, tmp_path):
    client = logged_in(server.url)
    task = client.claim(3)
    assert task is not None and (task.task_id, task.lease_token, task.guideline_version) == (42, LEASE, "1.0.0")
    assert client.claim(3) is None
    assert client.heartbeat(42, LEASE) == "2099-01-01T00:10:00"
    with pytest.raises(LeaseLostError, match="lease is stale"):
        client.heartbeat(42, "someone-elses-lease")
    dest = client.download_instances(42, LEASE, tmp_path / "case")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.dcm")) == ["series/1.dcm", "series/2.dcm"]
    assert (dest / "series" / "2.dcm").read_bytes() == b"DICM-2"
    client.release(42, LEASE)
    assert server.lease_headers[-1] == LEASE


def test_zip_entry_climbing_out_of_the_folder_is_refused_and_nothing_unpacked(server, tmp_path):
    server.instances_zip = _zip({"ok.dcm": b"fine", "../evil.txt": b"owned"})
    dest = tmp_path / "inside" / "case"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'"):
        logged_in(server.url).download_instances(42, LEASE, dest)
    assert not (tmp_path / "inside" / "evil.txt").exists()
    assert not (dest / "ok.dcm").exists()


def test_a_zip_bomb_or_an_archive_bigger_than_the_cap_is_refused_before_anything_is_written(server, tmp_path,
                                                                                          monkeypatch):
    import io
    import zipfile

    import medannot.client.api as api

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:  # 300 MiB of zeros packs into about 300 KiB
        with zf.open("series/1.dcm", "w") as entry:
            chunk = bytes(1 << 20)
            for _ in range(300):
                entry.write(chunk)
    assert len(bomb.getvalue()) < 1 << 20
    server.instances_zip = bomb.getvalue()
    dest = tmp_path / "bomb"
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        logged_in(server.url).download_instances(42, LEASE, dest)
    assert not list(tmp_path.glob("bomb/**/*.dcm"))
    server.instances_zip = _zip({"series/1.dcm": b"DICM" * 1000})
    monkeypatch.setattr(api, "MAX_CASE_BYTES", 1000)
    with pytest.raises(UnsafeArchiveError, match="MEDANNOT_MAX_CASE_BYTES"):
        logged_in(server.url).download_instances(42, LEASE, tmp_path / "capped")
    assert not list(tmp_path.glob("capped/**/*.dcm"))


# ---------------------------------------------------------------- outbox
def test_submit_while_server_down_is_queued_then_flushed_exactly_once(seg_sr, tmp_path):
    seg, sr = seg_sr
    port = _free_port()
    outbox = Outbox(tmp_path / "outbox")
    result = outbox.submit(logged_in(f"http://127.0.0.1:{port}"), 42, LEASE, seg, sr)

    assert result.status == "queued" and "connection refused" in result.detail
    [item] = outbox.pending()
    assert (item.path / "seg.dcm").read_bytes() == seg.read_bytes()
    assert (item.path / "sr.dcm").read_bytes() == sr.read_bytes()
    manifest = json.loads((item.path / "manifest.json").read_text())
    assert (manifest["task_id"], manifest["lease_token"], manifest["attempts"]) == (42, LEASE, 1)
    assert manifest["server_url"] == f"http://127.0.0.1:{port}" and "connection refused" in manifest["last_error"]
    assert re.fullmatch(r"[0-9a-f-]{36}", manifest["idempotency_key"])
    assert list((tmp_path / "outbox" / "staging").iterdir()) == []

    with FakeTaskServer(port) as server:
        client = logged_in(server.url)
        [delivered] = outbox.flush(client)
        assert outbox.flush(client) == []
    assert (delivered.status, delivered.submission_id) == ("sent", 100)
    assert [r["key"] for r in server.submit_requests] == [manifest["idempotency_key"]]
    [stored] = server.stored.values()
    assert (stored["seg"], stored["sr"]) == (seg.read_bytes(), sr.read_bytes())
    assert outbox.pending() == [] and [i.manifest["submission_id"] for i in outbox.sent()] == [100]
    assert (outbox.sent()[0].path / "seg.dcm").read_bytes() == seg.read_bytes()


def test_answer_lost_as_503_after_storing_is_retried_with_the_same_key_and_stored_once(server, seg_sr, tmp_path):
    server.after_store = ["503"]
    outbox = Outbox(tmp_path / "outbox")
    result = outbox.submit(logged_in(server.url, retries=2), 42, LEASE, *seg_sr)
    assert (result.status, result.submission_id) == ("sent", 100)
    keys = [r["key"] for r in server.submit_requests]
    assert len(keys) == 2 and len(set(keys)) == 1
    assert len(server.stored) == 1


def test_connection_dropped_after_storing_stays_queued_and_the_replay_is_stored_once(server, seg_sr, tmp_path):
    server.after_store = ["drop"]
    outbox = Outbox(tmp_path / "outbox")
    client = logged_in(server.url, retries=0)
    first = outbox.submit(client, 42, LEASE, *seg_sr)
    assert first.status == "queued" and "connection was cut" in first.detail
    assert len(server.stored) == 1 and len(outbox.pending()) == 1

    [second] = outbox.flush(client)
    assert (second.status, second.submission_id) == ("sent", 100)
    assert len(server.stored) == 1
    assert len({r["key"] for r in server.submit_requests}) == 1 and len(server.submit_requests) == 2
    assert outbox.sent()[0].manifest["attempts"] == 2


def test_rejected_submit_moves_to_rejected_with_the_reason_and_is_not_retried(server, seg_sr, tmp_path):
    server.reject_submit = "SEG references series 1.2.3, but task 42 is series 1.2.4"
    outbox = Outbox(tmp_path / "outbox")
    client = logged_in(server.url, retries=3)
    result = outbox.submit(client, 42, LEASE, *seg_sr)
    assert result.status == "rejected" and result.detail == server.reject_submit
    assert outbox.flush(client) == []
    assert len(server.submit_requests) == 1 and server.stored == {}
    [item] = outbox.rejected()
    assert item.manifest["detail"] == server.reject_submit and item.manifest["status_code"] == 422
    assert (item.path / "seg.dcm").read_bytes() == seg_sr[0].read_bytes()


def test_a_stale_lease_is_rejected_not_queued_forever(server, seg_sr, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    result = outbox.submit(logged_in(server.url), 42, "expired-lease", *seg_sr)
    assert result.status == "rejected" and "lease is stale" in result.detail


def test_a_readers_queued_result_waits_for_that_reader_on_a_shared_workstation(server, seg_sr, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    outbox.add(server.url, 42, LEASE, *seg_sr, reader="rroe")  # queued while rroe was logged in
    other = TaskServerClient(server.url, token=TOKEN, retries=0)
    other.username = "jdoe"  # another reader logged in on the same machine: not theirs to send (it would be refused)
    [waiting] = outbox.flush(other)
    assert waiting.status == "queued" and "queued for reader rroe" in waiting.detail
    assert len(outbox.pending()) == 1 and not outbox.rejected() and not server.submit_requests
    session = TaskServerClient(server.url, retries=0).login("rroe", PASSWORD)
    assert session.username == "rroe"
    [sent] = outbox.flush(TaskServerClient.from_session(session, retries=0))  # e.g. the CLI's saved login
    assert sent.status == "sent" and len(server.submit_requests) == 1


def test_flush_stops_trying_once_the_server_is_unreachable(seg_sr, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    client = logged_in(f"http://127.0.0.1:{_free_port()}")
    for _ in range(3):
        outbox.add(client.base_url, 42, LEASE, *seg_sr)
    results = outbox.flush(client)
    assert [r.status for r in results] == ["queued"] * 3
    assert [i.manifest["attempts"] for i in outbox.pending()] == [1, 0, 0]
    assert all(r.detail.startswith("not tried: cannot reach") for r in results[1:])


def _flush_in_child(folder: str, url: str, barrier: Any, answers: Any) -> None:
    barrier.wait()
    try:
        answers.put([(r.status, r.submission_id) for r in Outbox(folder).flush(logged_in(url))])
    except Exception as exc:  # noqa: BLE001 - the parent asserts on what happened
        answers.put(repr(exc))


def test_two_processes_flushing_at_once_send_each_item_once(server, seg_sr, tmp_path):
    server.submit_delay = 0.5  # wide window: without the lock both processes would send
    outbox = Outbox(tmp_path / "outbox")
    outbox.add(server.url, 42, LEASE, *seg_sr)
    spawn = multiprocessing.get_context("spawn")
    barrier, answers = spawn.Barrier(2), spawn.Queue()
    children = [spawn.Process(target=_flush_in_child, args=(str(outbox.folder), server.url, barrier, answers))
                for _ in range(2)]
    for child in children:
        child.start()
    results = [answers.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert len(server.submit_requests) == 1 and len(server.stored) == 1
    assert sorted(results) == [[("sent", 100)], [("sent", 100)]]
    assert outbox.pending() == [] and len(outbox.sent()) == 1


# ---------------------------------------------------------------- command line
@pytest.fixture
def cli(tmp_path, monkeypatch):
    from medannot.client.cli import client_group

    monkeypatch.setenv("MEDANNOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDANNOT_OUTBOX", raising=False)

    def run(*args: str, stdin: str | None = None):
        return CliRunner().invoke(client_group, list(map(str, args)), input=stdin)

    return run


def test_cli_login_keeps_only_token_server_expiry_and_username_readable_by_the_user(cli, server, tmp_path):
    result = cli("login", "--server", server.url, "--username", "rroe", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    session_file = tmp_path / "home" / "session.json"
    assert json.loads(session_file.read_text()) == {"server_url": server.url, "token": TOKEN,
                                                     "expires_at": "2099-01-01T00:00:00Z", "username": "rroe"}
    assert stat.S_IMODE(os.stat(session_file).st_mode) == 0o600

    projects = cli("projects", "--json")
    assert projects.exit_code == 0 and json.loads(projects.output)[0]["name"] == "Liver"
    nxt = cli("next", "3", "--download", tmp_path / "case")
    assert nxt.exit_code == 0, nxt.output
    task = json.loads(nxt.output)
    assert task["lease_token"] == LEASE and (Path(task["instances_dir"]) / "series" / "1.dcm").is_file()

    logout = cli("logout")
    assert logout.exit_code == 0 and not session_file.exists()


def test_cli_wrong_password_is_one_line_and_exit_1(cli, server):
    result = cli("login", "--server", server.url, "--username", "rroe", "--password-stdin", stdin="nope\n")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "Incorrect username or password" in result.output
    assert "Traceback" not in result.output


def test_cli_submit_queues_when_down_and_outbox_flush_delivers(cli, seg_sr, tmp_path):
    seg, sr = seg_sr
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    (home / "session.json").write_text(json.dumps({"server_url": f"http://127.0.0.1:{port}", "token": TOKEN,
                                                   "expires_at": "2099-01-01T00:00:00Z"}))
    queued = cli("submit", "42", "--lease-token", LEASE, "--seg", seg, "--sr", sr)
    assert queued.exit_code == 0 and queued.output.startswith("queued in outbox: ")
    listing = cli("outbox", "--json")
    assert [i["state"] for i in json.loads(listing.output)] == ["pending"]
    with FakeTaskServer(port) as server:
        flushed = cli("outbox", "--flush")
    assert flushed.exit_code == 0, flushed.output
    assert flushed.output.startswith("sent") and "100" in flushed.output
    assert len(server.stored) == 1
    assert [i["state"] for i in json.loads(cli("outbox", "--json").output)] == ["sent"]


@pytest.mark.parametrize("command", [[], ["login"], ["logout"], ["projects"], ["next"], ["submit"], ["outbox"],
                                     ["heartbeat"], ["release"]])
def test_every_client_command_has_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
