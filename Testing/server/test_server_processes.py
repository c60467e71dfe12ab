"""Real `medannot serve` processes: concurrent claimers on two processes, a server killed mid-submit,
and a case served by a real Orthanc over DICOMweb."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pydicom
import requests
from harness import PASSWORD, ServerProcess, db_url, login, make_lab  # noqa: F401
from sqlalchemy import create_engine, text

from medannot.client import Outbox, TaskServerClient
from medannot.demo_data import make_ct_series


def test_50_concurrent_claimers_across_two_server_processes_never_share_a_slot(db_url, tmp_path):  # noqa: F811
    lab = make_lab(db_url, tmp_path / "lab", cases=25, annotators=50)
    servers = [ServerProcess(db_url, tmp_path / "data").start(), ServerProcess(db_url, tmp_path / "data").start()]
    try:
        readers = [f"r{i}" for i in range(1, 51)]
        headers = {name: login(servers[i % 2].url, name) for i, name in enumerate(readers)}
        barrier = threading.Barrier(len(readers))
        claims: dict[str, dict] = {}
        errors: list[str] = []

        def claim(i: int, name: str) -> None:
            barrier.wait()
            response = requests.post(f"{servers[i % 2].url}/api/v1/projects/{lab.project_id}/claim",
                                     headers=headers[name], timeout=120)
            if response.status_code != 200:
                errors.append(f"{name}: {response.status_code} {response.text}")
            else:
                claims[name] = response.json()

        threads = [threading.Thread(target=claim, args=(i, name)) for i, name in enumerate(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    finally:
        for server in servers:
            server.stop()
    assert not errors, errors
    tasks = [c["task_id"] for c in claims.values()]
    assert len(tasks) == 50 and len(set(tasks)) == 50  # 25 cases x 2 slots: every reader one slot, none shared
    assert all(n == 2 for n in Counter(c["case_id"] for c in claims.values()).values())
    engine = create_engine(db_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT case_id, reader_id FROM tasks WHERE status = 'leased'")).all()
    engine.dispose()
    assert len(rows) == 50 and len({r.reader_id for r in rows}) == 50
    assert len(set(rows)) == 50  # no reader holds two slots of one case


def _submissions(db: str) -> int:
    engine = create_engine(db)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM submissions")).scalar()
    engine.dispose()
    return int(count or 0)


def test_server_killed_during_a_submit_the_outbox_delivers_exactly_once_after_restart(tmp_path):
    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab")
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    outbox = Outbox(tmp_path / "outbox")
    try:
        client = TaskServerClient(server.url, timeout=3, retries=0)
        client.login("r1", PASSWORD)
        task = client.claim(lab.project_id)
        assert task is not None
        seg, sr = lab.export_for(str(task.case_id), tmp_path / "result")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # the server hangs mid-request ...
        result = outbox.submit(client, task.task_id, task.lease_token, seg, sr)
        assert result.status == "queued"
        os.kill(server.process.pid, signal.SIGKILL)  # ... and then dies
        server.process.wait(timeout=30)
        assert len(outbox.pending()) == 1 and _submissions(lab.db_url) == 0

        server = ServerProcess(lab.db_url, tmp_path / "data", port=server.port).start()
        delivered = outbox.flush(client)
        assert [r.status for r in delivered] == ["sent"]
        assert outbox.flush(client) == [] and _submissions(lab.db_url) == 1

        # the response to a stored submit is lost: the same item (same Idempotency-Key) is sent again
        sent = outbox.sent()[0]
        replay = client.submit(task.task_id, task.lease_token, sent.seg_path, sent.sr_path,
                               sent.manifest["idempotency_key"])
        assert replay.replayed and replay.submission_id == delivered[0].submission_id
        assert _submissions(lab.db_url) == 1
    finally:
        server.stop()


def test_a_case_served_by_orthanc_over_dicomweb_reaches_the_lease_holder(orthanc, tmp_path):
    series = make_ct_series(tmp_path / "pacs-series", (4, 24, 24))
    files = sorted(series.glob("*.dcm"))
    orthanc.upload(files)
    first = pydicom.dcmread(files[0])
    url = f"{orthanc.dicomweb_url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab", cases=1)
    manifest = tmp_path / "pacs.csv"
    manifest.write_text(f"case_id,source\npacs-case,{url}\n")
    from harness import medannot

    assert medannot("admin", "cases", "import", lab.project_id, manifest, db=lab.db_url).returncode == 0
    # only the server process holds the PACS account
    server = ServerProcess(lab.db_url, tmp_path / "data", env={"MEDANNOT_DICOMWEB_USER": orthanc.user,
                                                               "MEDANNOT_DICOMWEB_PASSWORD": orthanc.password}).start()
    try:
        clients = {name: TaskServerClient(server.url) for name in ("r1", "r2")}
        for name, client in clients.items():
            client.login(name, PASSWORD)
        tasks = {}
        for name, client in clients.items():  # the local case first, then the PACS case, for both readers
            while True:
                task = client.claim(lab.project_id)
                assert task is not None
                if task.case_id == "pacs-case":
                    tasks[name] = task
                    break
                seg, sr = lab.export_for(str(task.case_id), tmp_path / name, reader=name)
                client.submit(task.task_id, task.lease_token, seg, sr, f"{name}-{task.task_id}")
        folder = clients["r1"].download_instances(tasks["r1"].task_id, tasks["r1"].lease_token, tmp_path / "got")
        got = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in Path(folder).rglob("*.dcm")}
        assert set(got) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
        for f in files:
            original = pydicom.dcmread(f)
            np.testing.assert_array_equal(got[original.SOPInstanceUID].pixel_array, original.pixel_array)
        # the PACS credentials never reach a reader: r2's stale token for r1's task is refused
        refused = requests.get(f"{server.url}/api/v1/tasks/{tasks['r1'].task_id}/instances",
                               headers={"Authorization": f"Bearer {clients['r2'].token}",
                                        "X-Lease-Token": tasks["r2"].lease_token}, timeout=30)
        assert refused.status_code == 409 and orthanc.password not in refused.text
    finally:
        server.stop()


def _guideline_with_a_reference_image(folder: Path, version: str, image: str = "figures/liver outline#1.png") -> Path:
    """The bundled liver guideline as a new version whose instructions show a reference image."""
    import yaml

    from harness import GUIDELINE

    doc = yaml.safe_load(GUIDELINE.read_text())
    doc["version"] = version
    doc["instructions"] = {"text": doc["instructions"], "reference_images": [image]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "liver-ct.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_reference_images_travel_with_the_guideline_and_are_checked(db_url, tmp_path):  # noqa: F811
    from medannot.guideline import load_guideline
    from harness import medannot

    lab = make_lab(db_url, tmp_path / "lab", cases=1)
    guideline = _guideline_with_a_reference_image(tmp_path / "g", "1.1.0")
    picture = bytes(range(256)) * 40  # any bytes: the server keeps and serves them as they are
    (tmp_path / "g" / "figures").mkdir()
    (tmp_path / "g" / "figures" / "liver outline#1.png").write_bytes(picture)  # a name that needs URL quoting
    added = medannot("admin", "project", "guideline", lab.project_id, "--guideline", guideline, db=db_url)
    assert added.returncode == 0, added.stderr
    outside = _guideline_with_a_reference_image(tmp_path / "g2", "1.2.0", image="../g/figures/liver outline#1.png")
    refused = medannot("admin", "project", "guideline", lab.project_id, "--guideline", outside, db=db_url)
    assert refused.returncode == 1 and "outside the guideline's folder" in refused.stderr, refused.stderr

    server = ServerProcess(db_url, tmp_path / "data").start()
    try:
        client = TaskServerClient(server.url)
        client.login("r1", PASSWORD)
        path = client.download_guideline(lab.project_id, tmp_path / "reader")
        assert path.read_bytes() == guideline.read_bytes()  # byte for byte: its sha256 is what results record
        assert (tmp_path / "reader" / "figures" / "liver outline#1.png").read_bytes() == picture
        loaded = load_guideline(path)  # requires the images to be there
        assert loaded.version == "1.1.0" and loaded.reference_images[0].read_bytes() == picture
        listing = requests.get(f"{server.url}/api/v1/projects/{lab.project_id}/guideline/files",
                               headers=login(server.url, "r1"), timeout=30).json()
        assert [(f["name"], f["size"]) for f in listing] == [("figures/liver outline#1.png", len(picture))]
        missing = requests.get(f"{server.url}/api/v1/projects/{lab.project_id}/guideline/files/nope.png",
                               headers=login(server.url, "r1"), timeout=30)
        assert missing.status_code == 404 and "has no file 'nope.png'" in missing.text
        engine = create_engine(db_url)
        with engine.begin() as connection:  # the stored image no longer matches its recorded sha256
            connection.execute(text("UPDATE guideline_files SET content = :c"), {"c": b"not the picture"})
        engine.dispose()
        from medannot.client.errors import TaskServerError

        with pytest.raises(TaskServerError, match="does not match its sha256"):
            client.download_guideline(lab.project_id, tmp_path / "second")
        assert not (tmp_path / "second" / "guideline.yaml").exists()  # nothing half-done is left to load
    finally:
        server.stop()


def test_a_sqlite_server_keeps_its_writes_visible_after_another_process_opens_and_closes_the_database(tmp_path):
    # `medannot serve` once opened and closed the database file after its first connections were open, which
    # dropped their POSIX locks: the next process to close the database (any `medannot admin` command) deleted
    # the -wal file under the server, and every later write of the server was lost to other processes.
    import sqlite3

    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab")
    server = ServerProcess(lab.db_url, tmp_path / "data").start()

    def failed_logins() -> int:
        connection = sqlite3.connect(tmp_path / "s.db")  # another process reads, then closes
        try:
            return int(connection.execute("SELECT failed_logins FROM users WHERE username = 'r1'").fetchone()[0])
        finally:
            connection.close()

    try:
        for expected in (1, 2, 3):
            assert requests.post(f"{server.url}/api/v1/auth/login", json={"username": "r1", "password": "not it, no"},
                                 timeout=30).status_code == 401
            assert failed_logins() == expected
        assert (tmp_path / "s.db-wal").exists()
    finally:
        server.stop()
