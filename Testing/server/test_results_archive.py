"""Final results into the lab's PACS (a real Orthanc): queued when a case becomes final, sent with STOW-RS, counted
as sent only when the archive lists the instance and a WADO read-back matches byte for byte; a refusing or
unreachable archive leaves the file queued with its error, and it is sent later, also after a server restart."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import requests
from harness import db_url  # noqa: F401
from medannot_testing import run_medannot
from test_package import SQLITE_ONLY, run_lab
from test_review_server import auth, client_for, lab  # noqa: F401

from medannot.server.archive import ArchiveCredentials, outbox_rows, send_due, set_archive
from medannot.server.db import make_engine, session_factory, transaction
from medannot.server.models import utcnow
from medannot.server.storage import ObjectStore


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rows(lab) -> list[dict]:  # noqa: ANN001
    engine = make_engine(lab.db_url)
    try:
        with transaction(session_factory(engine)) as session:
            return outbox_rows(session, lab.project_id)
    finally:
        engine.dispose()


def test_a_final_case_lands_in_the_archive_byte_for_byte_and_a_refusal_is_kept_and_retried(lab, orthanc,  # noqa: F811
                                                                                        tmp_path):
    data_dir = tmp_path / "data"
    store = ObjectStore(data_dir)
    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        assert set_archive(session, store, lab.project_id, orthanc.dicomweb_url, actor="test") == 0
    engine.dispose()
    run_lab(lab, tmp_path)  # case-001 becomes final (consensus signed reviewed + approved); case-002 stays open
    rows = _rows(lab)
    assert {r["case"] for r in rows} == {"case-001"}
    assert sorted(r["kind"] for r in rows) == ["seg", "sr", "verified-sr"]  # the consensus, its SR, the approved SR
    assert all(r["status"] == "pending" for r in rows)

    # the archive refuses (wrong password): nothing is marked sent, the error is kept, a retry is scheduled
    engine = make_engine(lab.db_url)
    factory = session_factory(engine)
    refused = send_due(factory, store, ArchiveCredentials("medannot", "wrong password", 10))
    assert len(refused) == 3 and not any(r.sent for r in refused)
    assert all("401" in (r.error or "") for r in refused)
    assert "wrong password" not in " ".join(r.error or "" for r in refused)
    assert send_due(factory, store, ArchiveCredentials(*orthanc.auth, 10)) == []  # not due yet
    engine.dispose()
    rows = _rows(lab)
    assert all(r["status"] == "pending" and r["attempts"] == 1 and "401" in r["last_error"] for r in rows)

    # a new server process (new engine) picks up where the old one stopped
    engine = make_engine(lab.db_url)
    sent = send_due(session_factory(engine), store, ArchiveCredentials(*orthanc.auth, 10),
                    now=utcnow() + timedelta(minutes=1))
    engine.dispose()
    assert len(sent) == 3 and all(r.sent for r in sent), [r.error for r in sent]
    rows = _rows(lab)
    assert all(r["status"] == "sent" and r["attempts"] == 2 and r["last_error"] is None for r in rows)
    # what the archive holds is what the server stored, byte for byte (checked here independently of the sender)
    for row in rows:
        listed = requests.post(f"{orthanc.url}/tools/lookup", data=row["sop_uid"], auth=orthanc.auth, timeout=10)
        assert listed.status_code == 200 and listed.json(), row
        orthanc_id = listed.json()[0]["ID"]
        stored = requests.get(f"{orthanc.url}/instances/{orthanc_id}/file", auth=orthanc.auth, timeout=10).content
        assert stored == store.get(row["sha256"]), row
    # the admin sees the outbox through the API; an annotator may not
    client = client_for(lab, tmp_path)
    listing = client.get(f"/api/v1/projects/{lab.project_id}/archive", headers=auth(client, "admin"))
    assert listing.status_code == 200 and listing.json()["results_dicomweb"] == orthanc.dicomweb_url
    assert len(listing.json()["files"]) == 3
    assert client.get(f"/api/v1/projects/{lab.project_id}/archive", headers=auth(client, "r1")).status_code == 403


@SQLITE_ONLY
def test_an_unreachable_archive_keeps_the_files_queued_and_the_cli_says_why(lab, tmp_path):  # noqa: F811
    data_dir = run_lab(lab, tmp_path)  # final before any archive is named: naming one queues what is final
    down = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    proc = run_medannot("admin", "project", "archive", lab.project_id, down, "--data-dir", data_dir,
                        env={"MEDANNOT_DB": lab.db_url})
    assert proc.returncode == 0 and "3 file(s) of final cases queued" in proc.stdout, proc.stderr
    proc = run_medannot("admin", "archive", "send", "--data-dir", data_dir, env={"MEDANNOT_DB": lab.db_url})
    assert proc.returncode == 1 and "NOT sent" in proc.stdout and "cannot reach the archive" in proc.stdout
    listed = run_medannot("admin", "archive", "list", "--pending", env={"MEDANNOT_DB": lab.db_url})
    assert listed.returncode == 0 and listed.stdout.count("pending") == 3 and "cannot reach" in listed.stdout
    for bad in ("ftp://pacs/dicom-web", "https://user:secret@pacs.example.org/dicom-web"):
        proc = run_medannot("admin", "project", "archive", lab.project_id, bad, "--data-dir", data_dir,
                            env={"MEDANNOT_DB": lab.db_url})
        assert proc.returncode == 1 and "DICOMweb root URL" in proc.stderr and "secret" not in proc.stderr, \
            proc.stderr
    assert all(r["status"] == "pending" for r in _rows(lab))


@SQLITE_ONLY
def test_the_servers_sender_sends_what_waits_and_a_renamed_archive_supersedes_the_old_queue(lab, orthanc,  # noqa: F811
                                                                                          tmp_path, monkeypatch):
    from medannot.server.archive import ArchiveWorker

    data_dir = run_lab(lab, tmp_path)
    store = ObjectStore(data_dir)
    engine = make_engine(lab.db_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        set_archive(session, store, lab.project_id, f"http://127.0.0.1:{_closed_port()}/dicom-web", actor="test")
    with transaction(factory) as session:
        assert set_archive(session, store, lab.project_id, orthanc.dicomweb_url, actor="test") == 3
    monkeypatch.setenv("MEDANNOT_RESULTS_DICOMWEB_USER", orthanc.auth[0])
    monkeypatch.setenv("MEDANNOT_RESULTS_DICOMWEB_PASSWORD", orthanc.auth[1])
    worker = ArchiveWorker(factory, store, 0.2).start()
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(r["status"] == "sent" for r in _rows(lab)) < 3:
            time.sleep(0.2)
    finally:
        worker.stop()
        engine.dispose()
    statuses = sorted(r["status"] for r in _rows(lab))
    assert statuses == ["sent"] * 3 + ["superseded"] * 3, statuses
