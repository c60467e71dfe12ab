"""Server time and SQL statements of the dashboard's projects, cases, agreement and audit pages for a generated
project of 5,000 cases x 3 readers (run on demand, not a pytest file).

Run: ``PYTHONPATH=MedAnnotExtension python Testing/benchmarks/bench_dashboard.py [--cases 5000] [--db URL]
[--audit-records 100000]``

The database is filled directly (no SEG files: the pages read rows only): 40 % of the cases final (decided by the
consensus, signed reviewed and approved), 20 % in review, 20 % in reading (one read in, one slot leased), the rest
open; reads took 20-50 minutes from claim to submit, and cases became final over the last 60 days. The audit trail
gets ``--audit-records`` generated, correctly chained records (the audit page verifies the whole chain on every
view). Each page is asked through the app in process (the ASGI app ``medannot serve`` runs), signed in with a real
session cookie; the time is the request's wall time, the SQL count is what the engine executed for it. The cases
page shows 100 cases: sorted by case or status it reads only those cases' slots and Dice; a reader filter or a sort
by reader or agreement reads every case's.
Target (issue #13): under 300 ms per page at the server.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import event

from medannot.server.app import create_app
from medannot.server.config import resolve_settings
from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
from medannot.server.models import (
    REVIEW_DECIDED, REVIEW_OPEN, TASK_LEASED, TASK_OPEN, TASK_SUBMITTED, Case, Review, ReviewDecision, ReviewMetric,
    Signature, Submission, Task, utcnow,
)
from medannot.server.projects import create_project
from medannot.server.security import create_user

GUIDELINE = Path(__file__).resolve().parents[2] / "MedAnnotExtension" / "medannot" / "data" / "liver-ct.yaml"
PASSWORD = "correct horse battery"


def fill(db_url: str, cases: int, readers: int = 3) -> int:
    """The generated project; returns its id."""
    engine = make_engine(db_url)
    upgrade_database(engine)
    now = utcnow()
    with transaction(session_factory(engine)) as session:
        create_user(session, "admin", "admin", PASSWORD, actor="bench")
        rev = create_user(session, "rev", "reviewer", PASSWORD, actor="bench")
        users = [create_user(session, f"r{i}", "annotator", PASSWORD, actor="bench") for i in range(1, readers + 4)]
        project = create_project(session, GUIDELINE, actor="bench")
        project.readers_per_case = readers
        session.flush()
        for c in range(cases):
            case = Case(project_id=project.id, case_key=f"case-{c + 1:05d}", source="/nowhere", study_uid="1.2",
                        series_uid=f"1.2.{c}")
            session.add(case)
            session.flush()
            share = c % 10  # 0-3 final, 4-5 review, 6-7 reading, 8-9 open
            who = [users[(c + k) % len(users)] for k in range(readers)]
            tasks = [Task(project_id=project.id, case_id=case.id, slot=k + 1, status=TASK_OPEN) for k in range(readers)]
            session.add_all(tasks)
            session.flush()
            submitted = readers if share < 6 else (1 if share < 8 else 0)
            subs = []
            for k, task in enumerate(tasks):
                if k < submitted:
                    task.status, task.reader_id, task.submitted_at = TASK_SUBMITTED, who[k].id, now
                    task.claimed_at = now - timedelta(minutes=20 + (c + k) % 30)
                    subs.append(Submission(task_id=task.id, user_id=who[k].id, seg_sha256=f"{c:060d}{k:04d}",
                                           sr_sha256=f"{c:060d}{k:04d}", seg_sop_uid=f"2.25.{c}.{k}",
                                           guideline_version="1.0.0", created_at=now))
                elif share in (6, 7) and k == submitted:
                    task.status, task.reader_id = TASK_LEASED, who[k].id
                    task.lease_sha256, task.lease_expires_at = f"t{c}", now + timedelta(hours=1)
                    task.claimed_at = now - timedelta(minutes=5)
            session.add_all(subs)
            session.flush()
            if share >= 6:
                continue
            consensus = f"{c:063d}c"
            final_at = now - timedelta(days=c % 60)
            review = Review(project_id=project.id, case_id=case.id, round=1,
                            status=REVIEW_DECIDED if share < 4 else REVIEW_OPEN,
                            submission_ids=json.dumps([s.id for s in subs]), consensus_method="staple",
                            consensus_seg_sha256=consensus, reviewer_id=rev.id if share < 4 else None,
                            decided_at=final_at if share < 4 else None)
            session.add(review)
            session.flush()
            session.add_all(ReviewMetric(review_id=review.id, segment="Liver", a=str(subs[i].id), b=str(subs[j].id),
                                         dice=0.9 + (c % 7) / 100, hd95_mm=1.0 + (c % 5) / 10, nsd=0.95,
                                         tolerance_mm=2.0, volume_a_ml=100.0 + c % 9, volume_b_ml=100.0 + c % 7)
                            for i in range(readers) for j in range(i + 1, readers))
            if share < 4:
                session.add(ReviewDecision(review_id=review.id, user_id=rev.id, action="consensus",
                                           idempotency_key=f"k{c}", created_at=now))
                session.add_all(Signature(review_id=review.id, subject="consensus", file_sha256=consensus,
                                          user_id=rev.id, username="rev", printed_name="Rev", meaning=meaning,
                                          signed_at=final_at) for meaning in ("reviewed", "approved"))
        project_id = project.id
    engine.dispose()
    return project_id


def fill_audit(db_url: str, records: int) -> None:
    """Append ``records`` generated records to the trail, chained as append_audit chains them (in bulk)."""
    from medannot.audit import record_hash
    from medannot.server.models import AuditRecord

    engine = make_engine(db_url)
    with transaction(session_factory(engine)) as session:
        last = session.query(AuditRecord).order_by(AuditRecord.seq.desc()).first()
        seq, prev = (last.seq, last.hash) if last else (0, "0" * 64)
        batch = []
        for i in range(records):
            seq += 1
            when = f"2026-11-{1 + i * 28 // records:02d}T10:00:00.{i % 1000000:06d}Z"
            entity, new = f"task:{i % 15000 + 1}", '{"status": "leased"}'
            digest = record_hash(seq, when, "r1", "task.claim", entity, None, new, None, prev)
            batch.append({"seq": seq, "time": when, "user": "r1", "action": "task.claim", "entity": entity,
                          "old_value": None, "new_value": new, "reason": None, "prev_hash": prev, "hash": digest})
            prev = digest
            if len(batch) == 5000:
                session.execute(AuditRecord.__table__.insert(), batch)
                batch = []
        if batch:
            session.execute(AuditRecord.__table__.insert(), batch)
    engine.dispose()


def measure(db_url: str, data_dir: Path, project_id: int, repeat: int) -> None:
    app = create_app(resolve_settings(db_url, data_dir))
    statements = [0]

    @event.listens_for(app.state.engine, "before_cursor_execute")
    def count(*_args: object) -> None:
        statements[0] += 1

    with TestClient(app, base_url="http://127.0.0.1") as client:
        form = client.get("/signin")
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signed = client.post("/signin", data={"username": "admin", "password": PASSWORD, "csrf": nonce},
                             follow_redirects=False)
        assert signed.status_code == 303, signed.text
        for name, path in (("projects", "/"), ("cases", f"/projects/{project_id}"),
                           ("cases, status=final", f"/projects/{project_id}?status=final&sort=agreement"),
                           ("cases, reader, page 3", f"/projects/{project_id}?reader=r2&sort=reader&page=3"),
                           ("completions chart", f"/projects/{project_id}/completions.png"),
                           ("agreement", f"/projects/{project_id}/agreement"),
                           ("audit", "/audit"), ("audit, actor+action", "/audit?actor=r1&action=task.*&before=5000")):
            statements[0] = 0
            start = time.perf_counter()
            response = client.get(path)  # the first view (the agreement report and the chart are drawn here)
            first = time.perf_counter() - start
            assert response.status_code == 200, response.text[:500]
            times, cpu = [], []
            for _ in range(repeat):
                statements[0] = 0
                start, start_cpu = time.perf_counter(), time.process_time()
                response = client.get(path)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)  # this process's CPU: less swayed by other loads
                assert response.status_code == 200, response.text[:500]
            print(f"{name:22s} {statistics.median(times) * 1000:8.0f} ms (median of {repeat}, "
                  f"min {min(times) * 1000:.0f}; CPU median {statistics.median(cpu) * 1000:.0f} ms; first view "
                  f"{first * 1000:.0f}), {statements[0]} SQL statements, {len(response.content) / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--audit-records", type=int, default=100_000, help="generated audit records")
    parser.add_argument("--db", default=None, help="an empty database URL (default: a new SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medannot-bench-dashboard-") as tmp:
        db_url = args.db or f"sqlite:///{Path(tmp) / 'server.db'}"
        start = time.perf_counter()
        project_id = fill(db_url, args.cases)
        fill_audit(db_url, args.audit_records)
        print(f"generated {args.cases} cases x 3 readers and {args.audit_records} audit records in {time.perf_counter() - start:.0f} s ({db_url.split('@')[-1]})")
        measure(db_url, Path(tmp) / "data", project_id, args.repeat)


if __name__ == "__main__":
    main()
