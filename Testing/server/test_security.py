"""Issue #14's findings against a real `medannot serve` process (SQLite and PostgreSQL): each hostile request is
refused with a one-line reason and leaves nothing stored, and the honest reader still submits."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from harness import GUIDELINE, SHAPE, Lab, ServerProcess, db_url, login, make_lab, medannot  # noqa: F401
from hostile import deflate_bomb, deflated
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, text

from medannot.demo_data import ct_geometry, ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source


@dataclass
class Served:
    lab: Lab
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def claim(self, user: str) -> tuple[dict[str, str], dict]:
        headers = login(self.url, user)
        task = requests.post(f"{self.url}/api/v1/projects/{self.lab.project_id}/claim", headers=headers, timeout=30)
        assert task.status_code == 200, task.text
        return headers, task.json()

    def export(self, case_id: str, out: Path, reader: ReaderInfo, task_id: object = None) -> tuple[Path, Path]:
        _, labels = ct_phantom(SHAPE)
        result = export_segmentation(load_source(self.lab.series[case_id]), labels, ct_geometry(SHAPE),
                                     load_guideline(GUIDELINE), reader, out,
                                     task_id=None if task_id is None else str(task_id))
        return result.seg_path, result.sr_path

    def submit(self, headers: dict[str, str], task_id: object, lease: str | None, seg: bytes, sr: bytes,
               **extra: bytes) -> requests.Response:
        send = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        if lease is not None:
            send["X-Lease-Token"] = lease
        return requests.post(f"{self.url}/api/v1/tasks/{task_id}/submit", headers=send, timeout=120,
                             files={"seg": ("seg.dcm", seg), "sr": ("sr.dcm", sr), **extra})

    def stored(self) -> tuple[set[str], int]:
        """The stored objects and the number of submission rows: what a refusal must leave unchanged."""
        objects = self.server.data_dir / "objects"
        files = {p.name for p in objects.rglob("*") if p.is_file()} if objects.exists() else set()
        engine = create_engine(self.lab.db_url)
        with engine.connect() as connection:
            rows = int(connection.execute(text("SELECT count(*) FROM submissions")).scalar_one())
        engine.dispose()
        return files, rows


def _serve(db: str, root: Path, env: dict[str, str] | None = None, **lab_options: object) -> Iterator[Served]:
    lab = make_lab(db, root / "lab", **lab_options)  # type: ignore[arg-type]
    server = ServerProcess(db, root / "data", env=env).start()
    try:
        yield Served(lab, server)
    finally:
        server.stop()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:  # noqa: F811
    yield from _serve(db_url, tmp_path)


def refused(response: requests.Response, status: int, *words: str) -> str:
    """Assert a clean refusal: the status, a one-line detail naming ``words``; returns the detail."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


def honest_submit(served: Served, headers: dict[str, str], task: dict, user: str, out: Path) -> requests.Response:
    seg, sr = served.export(task["case_id"], out, ReaderInfo(f"{user}^Test", user), task["task_id"])
    response = served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), sr.read_bytes())
    assert response.status_code == 201, response.text
    return response


def test_h1_a_deflated_sr_that_inflates_past_the_cap_is_refused_and_nothing_is_stored(served, tmp_path):
    headers, task = served.claim("r1")
    seg, sr = served.export(task["case_id"], tmp_path / "honest", ReaderInfo("r1^Test", "r1"), task["task_id"])
    bomb = deflate_bomb(sr, 64 * 1024 * 1024)  # 64 KB on the wire, 64 MiB inflated; the SR cap is 16 MiB
    assert len(bomb) < 100_000
    before = served.stored()
    # with no lease, to a task that does not exist: refused before a byte of it is read
    refused(served.submit(headers, 99999, None, seg.read_bytes(), bomb), 409, "99999")
    refused(served.submit(headers, task["task_id"], None, seg.read_bytes(), bomb), 409, "lease")
    refused(served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), bomb), 413, "'sr'",
            "inflates")
    assert served.stored() == before
    # an honest deflated SR (the transfer syntax is legal) is read, checked and stored as sent
    honest = deflated(dcmread(sr))
    response = served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), honest)
    assert response.status_code == 201, response.text
    assert response.json()["sr_sha256"] == hashlib.sha256(honest).hexdigest()


def _raw_post(url: str, path: str, headers: dict[str, str], declared: int, body: bytes = b"") -> tuple[int, str]:
    """POST with a declared Content-Length but only ``body`` sent: the answer shows whether the server waited for
    the body (it times out) or answered from the headers."""
    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", f"Content-Length: {declared}",
             "Content-Type: multipart/form-data; boundary=xyz", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        received = b""
        try:
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if not received:
        return 0, "no answer within 10 s: the server was waiting for the body"
    answer = received.decode(errors="replace")
    return int(answer.split(" ", 2)[1]), answer.split("\r\n\r\n", 1)[-1]


def test_m2_login_task_lease_and_size_are_checked_before_the_upload_is_read(served, tmp_path):
    path = "/api/v1/tasks/{}/submit"
    headers, task = served.claim("r1")
    before = served.stored()
    hundred_mb = 100 * 1024 * 1024  # under the default limit: only the order of the checks refuses these
    assert _raw_post(served.url, path.format(task["task_id"]), {}, hundred_mb)[0] == 401
    assert _raw_post(served.url, path.format(99999), {**headers, "Idempotency-Key": "k"}, hundred_mb)[0] == 409
    assert _raw_post(served.url, path.format(task["task_id"]), {**headers, "Idempotency-Key": "k"}, hundred_mb)[0] == 409
    status, body = _raw_post(served.url, path.format(task["task_id"]),
                             {**headers, "Idempotency-Key": "k", "X-Lease-Token": task["lease_token"]},
                             2 * 1024 ** 3)  # 2 GiB declared: over the 512 MiB default, refused unread
    assert status == 413 and "512 MiB" in json.loads(body)["detail"], body
    # files of another task are not stored before the task and lease are checked
    seg, sr = served.export(task["case_id"], tmp_path / "other", ReaderInfo("r1^Test", "r1"))
    refused(served.submit(headers, 99999, task["lease_token"], seg.read_bytes(), sr.read_bytes()), 409)
    assert served.stored() == before
    honest_submit(served, headers, task, "r1", tmp_path / "honest")


def test_m2_the_upload_limit_is_configurable_and_holds_while_the_body_streams_in(db_url, tmp_path):  # noqa: F811
    for served in _serve(db_url, tmp_path, env={"MEDANNOT_MAX_UPLOAD_MB": "1"}, cases=1):
        headers, task = served.claim("r1")
        seg, sr = served.export(task["case_id"], tmp_path / "e", ReaderInfo("r1^Test", "r1"), task["task_id"])
        before = served.stored()
        padding = ("padding.bin", b"\0" * (3 * 1024 * 1024))
        refused(served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), sr.read_bytes(),
                              padding=padding[1]), 413, "1 MiB")

        def chunked() -> Iterator[bytes]:  # no Content-Length: only the streaming limit can stop it
            boundary = b"--b0undary\r\n"
            yield boundary + b'Content-Disposition: form-data; name="seg"; filename="seg.dcm"\r\n\r\n'
            yield seg.read_bytes() + b"\r\n"
            yield boundary + b'Content-Disposition: form-data; name="sr"; filename="sr.dcm"\r\n\r\n'
            for _ in range(3):
                yield b"\0" * (1024 * 1024)
            yield b"\r\n--b0undary--\r\n"

        response = requests.post(f"{served.url}/api/v1/tasks/{task['task_id']}/submit", data=chunked(), timeout=60,
                                 headers={**headers, "X-Lease-Token": task["lease_token"], "Idempotency-Key": "c",
                                          "Content-Type": "multipart/form-data; boundary=b0undary"})
        refused(response, 413, "1 MiB")
        assert served.stored() == before
        honest_submit(served, headers, task, "r1", tmp_path / "honest")


def test_m1_a_local_case_whose_uid_climbs_out_of_the_folder_is_refused(served, tmp_path):
    outside = f"medannot-escaped-{uuid.uuid4().hex[:8]}"
    folder = make_ct_series(tmp_path / "evil", SHAPE)
    victim = sorted(folder.glob("*.dcm"))[0]

    def climb(path: Path) -> None:
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"../../../../../../tmp/{outside}"
        ds.save_as(path, enforce_file_format=True)

    climb(victim)
    manifest = tmp_path / "evil.csv"
    manifest.write_text(f"case_id,source\nevil,{folder}\n")
    proc = medannot("admin", "cases", "import", served.lab.project_id, manifest, db=served.lab.db_url)
    assert proc.returncode == 1 and "not a DICOM UID" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medannot: error")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr  # pydicom warns first
    # a file changed after its case was imported: the download is refused and writes nothing outside its folder
    headers, task = served.claim("r1")
    climb(sorted(served.lab.series[task["case_id"]].glob("*.dcm"))[0])
    response = requests.get(f"{served.url}/api/v1/tasks/{task['task_id']}/instances", timeout=60,
                            headers={**headers, "X-Lease-Token": task["lease_token"]})
    # the reader sees a reference (L3: no server paths); the server log has the reason under it
    reference = response.json().get("reference", "")
    refused(response, 502, "reference", reference)
    logged = [line for line in served.server.log.read_text().splitlines() if reference in line]
    assert logged and "not a DICOM UID" in logged[0], logged
    assert not (Path("/tmp") / f"{outside}.dcm").exists()
    assert not list(Path("/tmp").glob(f"{outside}*"))


def test_h3_the_reader_and_task_inside_the_seg_must_be_the_submitters(served, tmp_path):
    proc = medannot("admin", "user", "update", "r2", "--printed-name", "Jane Roe, MD", db=served.lab.db_url)
    assert proc.returncode == 0, proc.stderr
    headers, task = served.claim("r2")
    before = served.stored()
    attempts = {
        "reader id": ReaderInfo("Impostor^Chief", "r1"),  # the finding: another reader, task 999
        "task 999": ReaderInfo("Roe^Jane", "r2"),
        "Impostor": ReaderInfo("Impostor^Chief", "r2"),  # the right login, someone else's name
    }
    for word, reader in attempts.items():
        seg, sr = served.export(task["case_id"], tmp_path / uuid.uuid4().hex[:6], reader,
                                999 if word != "Impostor" else task["task_id"])
        refused(served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), sr.read_bytes()),
                422, word, "nothing was stored")
    seg, sr = served.export(task["case_id"], tmp_path / "ok", ReaderInfo("Roe^Jane", "r2"), task["task_id"])
    sr_ds = dcmread(sr)
    for item in sr_ds.ContentSequence:  # the SR alone names another reader
        if item.ValueType == "PNAME":
            item.PersonName = "Impostor^Chief"
    buffer = io.BytesIO()
    sr_ds.save_as(buffer, enforce_file_format=True)
    refused(served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), buffer.getvalue()), 422,
            "Impostor")
    assert served.stored() == before
    seg, sr = served.export(task["case_id"], tmp_path / "honest", ReaderInfo("Roe^Jane", "r2"), task["task_id"])
    response = served.submit(headers, task["task_id"], task["lease_token"], seg.read_bytes(), sr.read_bytes())
    assert response.status_code == 201, response.text
    objects = served.server.data_dir / "objects"
    seg_sha, sr_sha = response.json()["seg_sha256"], response.json()["sr_sha256"]
    shown = subprocess.run([sys.executable, "-m", "medannot.cli", "seg", "read", str(objects / seg_sha[:2] / seg_sha),
                            "--sr", str(objects / sr_sha[:2] / sr_sha), "--json"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert (summary["reader_name"], summary["reader_id"], summary["task_id"]) == ("Roe^Jane", "r2",
                                                                                  str(task["task_id"]))


def _saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_h4_the_seg_references_exactly_the_case_and_the_sr_this_seg_with_the_guideline_sha(served, tmp_path):
    headers, task = served.claim("r1")
    mine = task["case_id"]
    other = next(key for key in served.lab.series if key != mine)
    reader = ReaderInfo("r1^Test", "r1")
    seg_path, sr_path = served.export(mine, tmp_path / "mine", reader, task["task_id"])
    other_seg, other_sr = served.export(other, tmp_path / "other", reader, task["task_id"])
    foreign = dcmread(other_seg, stop_before_pixels=True)
    foreign_series = foreign.ReferencedSeriesSequence[0]
    foreign_instance = foreign_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    seg_bytes, sr_bytes = seg_path.read_bytes(), sr_path.read_bytes()

    also_other_series = dcmread(seg_path)
    also_other_series.ReferencedSeriesSequence.append(foreign_series)
    frame_elsewhere = dcmread(seg_path)
    source = frame_elsewhere.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    source.ReferencedSOPInstanceUID = foreign_instance
    no_sha = dcmread(seg_path)
    no_sha.DerivationDescription = no_sha.DerivationDescription.replace(" sha256 ", " sha ")
    sr_no_sha = dcmread(sr_path)
    sr_no_sha.ContentSequence = [i for i in sr_no_sha.ContentSequence
                                 if i.ConceptNameCodeSequence[0].CodeValue != "GUIDELINE_SHA"]
    attempts = [
        ("series", _saved(also_other_series), sr_bytes),
        ("SourceImageSequence", _saved(frame_elsewhere), sr_bytes),
        ("does not reference this SEG", seg_bytes, other_sr.read_bytes()),
        ("sha256", _saved(no_sha), sr_bytes),
        ("sha256", seg_bytes, _saved(sr_no_sha)),
    ]
    before = served.stored()
    for word, seg, sr in attempts:
        refused(served.submit(headers, task["task_id"], task["lease_token"], seg, sr), 422, word, "nothing was stored")
    assert served.stored() == before
    honest_submit(served, headers, task, "r1", tmp_path / "honest")


def _post_as(served: Served, headers: dict[str, str], task_id: object, lease: str, key: str, seg: bytes,
             sr: bytes) -> requests.Response:
    return requests.post(f"{served.url}/api/v1/tasks/{task_id}/submit", timeout=120,
                         headers={**headers, "Idempotency-Key": key, "X-Lease-Token": lease},
                         files={"seg": ("seg.dcm", seg), "sr": ("sr.dcm", sr)})


def _audit_actions(served: Served, entity: str) -> list[str]:
    records = requests.get(f"{served.url}/api/v1/audit", headers=login(served.url, "admin"), timeout=30,
                           params={"limit": 1000}).json()
    return [r["action"] for r in records if r["entity"] == entity]


def test_i1_a_replayed_idempotency_key_must_carry_the_same_files_and_lease(served, tmp_path):
    headers, task = served.claim("r1")
    reader = ReaderInfo("r1^Test", "r1")
    seg, sr = served.export(task["case_id"], tmp_path / "first", reader, task["task_id"])
    first = _post_as(served, headers, task["task_id"], task["lease_token"], "key-1", seg.read_bytes(), sr.read_bytes())
    assert first.status_code == 201 and first.json()["replayed"] is False, first.text
    before = served.stored()
    other_seg, other_sr = served.export(task["case_id"], tmp_path / "second", reader, task["task_id"])
    changed = _post_as(served, headers, task["task_id"], task["lease_token"], "key-1", other_seg.read_bytes(),
                       other_sr.read_bytes())
    refused(changed, 422, "key-1", f"submission {first.json()['submission_id']}", "seg and sr", "nothing was stored")
    wrong_lease = _post_as(served, headers, task["task_id"], "not-the-lease", "key-1", seg.read_bytes(),
                           sr.read_bytes())
    refused(wrong_lease, 409, "lease token is not")
    assert served.stored() == before
    replay = _post_as(served, headers, task["task_id"], task["lease_token"], "key-1", seg.read_bytes(), sr.read_bytes())
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true", replay.text
    assert replay.json()["submission_id"] == first.json()["submission_id"]
    assert served.stored() == before


def test_i2_submit_pressed_twice_offline_makes_one_submission_not_a_correction(served, tmp_path):
    headers, task = served.claim("r1")
    seg, sr = served.export(task["case_id"], tmp_path / "once", ReaderInfo("r1^Test", "r1"), task["task_id"])
    first = _post_as(served, headers, task["task_id"], task["lease_token"], "press-1", seg.read_bytes(),
                     sr.read_bytes())
    assert first.status_code == 201, first.text
    before = served.stored()
    second = _post_as(served, headers, task["task_id"], task["lease_token"], "press-2", seg.read_bytes(),
                      sr.read_bytes())
    assert second.status_code == 201 and second.json()["replayed"] is True, second.text
    assert second.json()["submission_id"] == first.json()["submission_id"] and second.json()["replaces"] is None
    assert served.stored() == before
    assert _audit_actions(served, f"task:{task['task_id']}").count("task.submit") == 1
    assert "task.correct" not in _audit_actions(served, f"task:{task['task_id']}")
    # a real correction (other files) is still a correction
    fixed_seg, fixed_sr = served.export(task["case_id"], tmp_path / "fixed", ReaderInfo("r1^Test", "r1"),
                                        task["task_id"])
    fixed = _post_as(served, headers, task["task_id"], task["lease_token"], "press-3", fixed_seg.read_bytes(),
                     fixed_sr.read_bytes())
    assert fixed.status_code == 201 and fixed.json()["replaces"] == first.json()["submission_id"], fixed.text


def test_i3_a_task_that_does_not_exist_is_refused_as_one_that_is_not_yours(served, tmp_path):
    headers, task = served.claim("r1")
    other_headers, other_task = served.claim("r2")
    answers = []
    for task_id in (other_task["task_id"], 999999):
        for method, path in (("post", "heartbeat"), ("post", "release"), ("get", "instances")):
            response = requests.request(method, f"{served.url}/api/v1/tasks/{task_id}/{path}", timeout=30,
                                        headers={**headers, "X-Lease-Token": task["lease_token"]})
            answers.append((path, response.status_code, response.json()["detail"].replace(str(task_id), "N")))
        submit = served.submit(headers, task_id, task["lease_token"], b"x", b"y")
        answers.append(("submit", submit.status_code, submit.json()["detail"].replace(str(task_id), "N")))
    half = len(answers) // 2
    assert answers[:half] == answers[half:], answers
    assert {status for _, status, _ in answers} == {409}
    honest_submit(served, other_headers, other_task, "r2", tmp_path / "r2")


def test_i5_the_database_keeps_only_digests_of_lease_tokens(served, tmp_path):
    headers, task = served.claim("r1")
    honest_submit(served, headers, task, "r1", tmp_path / "r1")
    token = task["lease_token"]
    engine = create_engine(served.lab.db_url)
    with engine.connect() as connection:
        digest = connection.execute(text("SELECT lease_sha256 FROM tasks WHERE id = :i"),
                                    {"i": task["task_id"]}).scalar_one()
        held = connection.execute(text("SELECT lease_sha256 FROM idempotency_keys")).scalars().all()
        everything = [str(row) for table in ("tasks", "reviews", "idempotency_keys", "review_decisions",
                                             "audit_records", "auth_tokens")
                      for row in connection.execute(text(f"SELECT * FROM {table}")).all()]
    engine.dispose()
    assert digest == hashlib.sha256(token.encode()).hexdigest() and held == [digest]
    assert not any(token in row for row in everything)


def test_i6_corrections_are_accepted_only_within_the_correction_window(db_url, tmp_path):  # noqa: F811
    for served in _serve(db_url, tmp_path, env={"MEDANNOT_CORRECTION_SECONDS": "3600"}):
        headers, task = served.claim("r1")
        honest_submit(served, headers, task, "r1", tmp_path / "first")
        fix_seg, fix_sr = served.export(task["case_id"], tmp_path / "fix", ReaderInfo("r1^Test", "r1"),
                                        task["task_id"])
        fix = (fix_seg.read_bytes(), fix_sr.read_bytes())
        inside = _post_as(served, headers, task["task_id"], task["lease_token"], "fix-1", *fix)
        assert inside.status_code == 201 and inside.json()["replaces"] is not None, inside.text
        engine = create_engine(served.lab.db_url)
        with engine.begin() as connection:
            submitted, closes = connection.execute(text("SELECT submitted_at, lease_expires_at FROM tasks "
                                                        "WHERE id = :i"), {"i": task["task_id"]}).one()
            # the window runs from the first submit (the correction did not extend it)
            assert 3600 - 120 <= (_as_time(closes) - _as_time(submitted)).total_seconds() <= 3600
            connection.execute(text("UPDATE tasks SET lease_expires_at = submitted_at WHERE id = :i"),
                               {"i": task["task_id"]})  # ... and now it has closed
        engine.dispose()
        before = served.stored()
        late_seg, late_sr = served.export(task["case_id"], tmp_path / "late", ReaderInfo("r1^Test", "r1"),
                                          task["task_id"])
        late = _post_as(served, headers, task["task_id"], task["lease_token"], "fix-2", late_seg.read_bytes(),
                        late_sr.read_bytes())
        refused(late, 409, "correction window", "closed", "return the case")
        beat = requests.post(f"{served.url}/api/v1/tasks/{task['task_id']}/heartbeat", timeout=30,
                             headers={**headers, "X-Lease-Token": task["lease_token"]})
        assert beat.status_code == 409
        assert served.stored() == before
        # the answer to the correction made in time, if it was lost, is still given
        again = _post_as(served, headers, task["task_id"], task["lease_token"], "fix-1", *fix)
        assert again.status_code == 201 and again.json()["submission_id"] == inside.json()["submission_id"]


def _as_time(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
