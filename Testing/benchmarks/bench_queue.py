#!/usr/bin/env python
"""Benchmark the task queue of ``medannot serve``: concurrent readers looping claim -> submit over HTTP.

Run on demand (this is not a pytest file)::

    python Testing/benchmarks/bench_queue.py [--backends sqlite,postgresql] [--clients 10,100] [--cases 200]
                                             [--seconds 30]

Per backend (an SQLite file, or a fresh schema in PostgreSQL's ``test`` database that is dropped afterwards) the
script builds one lab with ``harness.make_lab`` (``--cases`` cases, 2 readers per case, as many annotators as the
largest client count), exports one SEG + SR per case (both slots of a case upload the same bytes), then for each
client count C:

* the floor: C threads, each with its own database connection, run the bare claim statement in a tight loop on
  a scratch table of the same database (PostgreSQL: ``UPDATE ... WHERE id = (SELECT id ... FOR UPDATE SKIP
  LOCKED LIMIT 1) RETURNING id``; SQLite: ``BEGIN IMMEDIATE`` + the same UPDATE), no HTTP, no ORM;
* the server: the queue is reset, ONE ``medannot serve`` process is started (PostgreSQL: also a run with two
  processes on two ports, clients split between them), C threads log in as r1..rC and each loops claim ->
  submit (with an Idempotency-Key) until the queue has nothing left for it or ``--seconds`` are up.

Reported: claims + submits per second, claim and submit latency (p50/p99, successful requests only), the HTTP
claim rate as a fraction of the floor, and CPU use over the run (this client process, the server processes, and
the rest of the machine -- mostly the database) as % of one core. Every run ends with checks on the database: no
task claimed by two readers, no reader with two slots of a case, one submission per submitted task and as many
as the clients saw accepted. Errors (5xx, 'database is locked', timeouts) are printed verbatim with the server
log tail. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "Testing", ROOT / "Testing" / "server", ROOT / "MedAnnotExtension"):
    sys.path.insert(0, str(_p))

FLOOR_ROWS = 100_000
CLK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- CPU accounting
def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process on this machine, by pid (read from /proc only)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = proc_cpu(int(entry.name))
            except OSError:
                continue
    return found


class CpuMeter:
    """CPU over a run: this process (the clients), the server processes, PostgreSQL, and the rest of the machine
    (anything else running, e.g. another test suite)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0, self.me0 = time.monotonic(), time.process_time()
        self.srv0, self.all0, self.db0 = sum(proc_cpu(p) for p in pids), machine_busy(), postgres_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        me = time.process_time() - self.me0
        srv = sum(proc_cpu(p) for p in self.pids) - self.srv0
        db = sum(cpu - self.db0.get(pid, 0.0) for pid, cpu in postgres_cpu().items())
        busy = machine_busy() - self.all0
        pct = lambda s: 100.0 * s / wall if wall > 0 else 0.0
        return {"client": pct(me), "server": pct(srv), "db": pct(db), "other": pct(max(0.0, busy - me - srv - db)),
                "busy": pct(busy)}


def pctl(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]  # nearest rank


# --------------------------------------------------------------------------------------------- databases
@dataclass
class Backend:
    name: str
    url: str  # SQLAlchemy URL the server uses
    schema: str | None = None  # PostgreSQL only

    def psycopg_kwargs(self) -> dict[str, object]:
        import harness
        from sqlalchemy.engine import make_url

        u = make_url(harness.PG_URL)
        kw: dict[str, object] = {"host": u.host or "127.0.0.1", "port": u.port or 5432, "dbname": u.database,
                                 "user": u.username}
        if u.password:
            kw["password"] = u.password
        if self.schema:
            kw["options"] = f"-csearch_path={self.schema}"
        return kw


def pg_create_schema() -> tuple[str, str]:
    import harness
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(harness.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return schema, f"{harness.PG_URL}?options=-csearch_path%3D{schema}"


def pg_drop_schema(schema: str) -> None:
    import harness
    from sqlalchemy import create_engine, text

    admin = create_engine(harness.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def pg_free_connections() -> tuple[int, int]:
    import psycopg

    with psycopg.connect(**Backend("postgresql", "").psycopg_kwargs(), autocommit=True) as conn:
        limit = conn.execute("SELECT current_setting('max_connections')::int").fetchone()[0]
        used = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
    return int(limit), int(limit) - int(used)


def sqlite_connect(path: str):  # type: ignore[no-untyped-def]
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "busy_timeout=60000", "foreign_keys=ON", "synchronous=FULL"):
        conn.execute(f"PRAGMA {pragma}")  # the server's own settings (medannot.server.db.make_engine)
    return conn


# --------------------------------------------------------------------------------------------- the floor
FLOOR_DDL = ("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, case_id INTEGER NOT NULL, "
             "slot INTEGER NOT NULL, status VARCHAR(16) NOT NULL, reader_id INTEGER, claimed_at TIMESTAMP)")
FLOOR_INDEX = "CREATE INDEX bench_floor_queue ON bench_floor (project_id, status, case_id, slot)"
FLOOR_PG = ("UPDATE bench_floor SET status = 'leased', reader_id = %s, claimed_at = now() WHERE id = "
            "(SELECT id FROM bench_floor WHERE project_id = 1 AND status = 'open' ORDER BY case_id, slot "
            "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id")
FLOOR_SQLITE = ("UPDATE bench_floor SET status = 'leased', reader_id = ?, claimed_at = CURRENT_TIMESTAMP WHERE id = "
                "(SELECT id FROM bench_floor WHERE project_id = 1 AND status = 'open' ORDER BY case_id, slot "
                "LIMIT 1) RETURNING id")


@dataclass
class FloorResult:
    conns: int
    rate: float
    p50: float
    p99: float
    cpu: dict[str, float]
    errors: Counter = field(default_factory=Counter)


def run_floor(backend: Backend, conns: int, seconds: float) -> FloorResult:
    """C connections claiming rows of a scratch table with the bare claim statement, for ``seconds``."""
    pg = backend.name == "postgresql"
    if pg:
        import psycopg

        kw = backend.psycopg_kwargs()
        connect = lambda: psycopg.connect(**kw)
        with psycopg.connect(**kw, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_floor")
            conn.execute(FLOOR_DDL)
            conn.execute("INSERT INTO bench_floor (id, project_id, case_id, slot, status) "
                         "SELECT g, 1, (g + 1) / 2, g %% 2, 'open' FROM generate_series(1, %s) g", (FLOOR_ROWS,))
            conn.execute(FLOOR_INDEX)
            conn.execute("ANALYZE bench_floor")
    else:
        path = backend.url.split("sqlite:///", 1)[1]
        connect = lambda: sqlite_connect(path)
        conn = connect()
        conn.execute("DROP TABLE IF EXISTS bench_floor")
        conn.execute(FLOOR_DDL)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
                     "INSERT INTO bench_floor (id, project_id, case_id, slot, status) "
                     "SELECT n, 1, (n + 1) / 2, n % 2, 'open' FROM g", (FLOOR_ROWS,))
        conn.execute(FLOOR_INDEX)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()

    connections = [connect() for _ in range(conns)]
    latencies: list[list[float]] = [[] for _ in range(conns)]
    errors: Counter = Counter()
    start = threading.Barrier(conns + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        conn, lat = connections[i], latencies[i]
        start.wait()
        try:
            for _ in range(FLOOR_ROWS):
                if time.monotonic() >= deadline[0]:
                    return
                t0 = time.perf_counter()
                if pg:
                    row = conn.execute(FLOOR_PG, (i + 1,)).fetchone()
                    conn.commit()
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    row = conn.execute(FLOOR_SQLITE, (i + 1,)).fetchone()
                    conn.execute("COMMIT")
                lat.append(time.perf_counter() - t0)
                if row is None:
                    return
        except Exception as exc:  # noqa: BLE001 - reported
            errors[f"floor: {type(exc).__name__}: {str(exc).splitlines()[0]}"] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    meter = CpuMeter([])
    deadline[0] = time.monotonic() + seconds
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - t_start
    cpu = meter.stop()
    for conn in connections:
        conn.close()
    if pg:
        with psycopg.connect(**kw, autocommit=True) as conn:
            conn.execute("DROP TABLE bench_floor")
    else:
        conn = connect()
        conn.execute("DROP TABLE bench_floor")
        conn.close()
    flat = [x for lat in latencies for x in lat]
    return FloorResult(conns, len(flat) / elapsed, 1000 * pctl(flat, 0.5), 1000 * pctl(flat, 0.99), cpu, errors)


# --------------------------------------------------------------------------------------------- HTTP clients
@dataclass
class ClientStats:
    claim_lat: list[float] = field(default_factory=list)
    submit_lat: list[float] = field(default_factory=list)
    claims: list[tuple[int, str]] = field(default_factory=list)  # (task_id, case_key) per successful claim
    submits: int = 0
    replayed: int = 0
    empty: int = 0
    errors: Counter = field(default_factory=Counter)
    last_done: float = 0.0


def client_loop(url: str, headers: dict[str, str], project_id: int, exports: dict[tuple[str, int | None], tuple[bytes, bytes]],
                max_rounds: int, deadline: list[float], start: threading.Barrier, stats: ClientStats,
                timeout: float, reader: str) -> None:
    import requests

    import harness

    session = requests.Session()
    session.headers.update(headers)
    start.wait()
    error_budget = 10
    try:
        for _ in range(max_rounds):
            if time.monotonic() >= deadline[0] or error_budget <= 0:
                return
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/api/v1/projects/{project_id}/claim", timeout=timeout)
            except requests.RequestException as exc:
                stats.errors[f"claim: {type(exc).__name__}: {exc}"] += 1
                error_budget -= 1
                continue
            t1 = time.perf_counter()
            if r.status_code == 204:
                stats.empty += 1
                stats.last_done = t1
                return
            if r.status_code != 200:
                stats.errors[f"claim HTTP {r.status_code}: {r.text[:300]}"] += 1
                error_budget -= 1
                continue
            stats.claim_lat.append(t1 - t0)
            task = r.json()
            stats.claims.append((task["task_id"], task["case_id"]))
            seg, sr = exports.get((task["case_id"], task["slot"])) or exports[(task["case_id"], None)]
            seg, sr = harness.as_reader(seg, sr, reader)  # the server takes a result only from the reader it names
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/api/v1/tasks/{task['task_id']}/submit", timeout=timeout,
                                 headers={"X-Lease-Token": task["lease_token"], "Idempotency-Key": str(uuid.uuid4())},
                                 files={"seg": ("seg.dcm", seg, "application/dicom"),
                                        "sr": ("sr.dcm", sr, "application/dicom")})
            except requests.RequestException as exc:
                stats.errors[f"submit: {type(exc).__name__}: {exc}"] += 1
                error_budget -= 1
                continue
            t1 = time.perf_counter()
            if r.status_code != 201:
                stats.errors[f"submit HTTP {r.status_code}: {r.text[:300]}"] += 1
                error_budget -= 1
                continue
            stats.submit_lat.append(t1 - t0)
            stats.submits += 1
            stats.replayed += r.json().get("replayed") is True
            stats.last_done = t1
    finally:
        session.close()


# --------------------------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    backend: str
    procs: int
    clients: int
    tasks: int
    elapsed: float
    ops: int
    claims: int
    claim_p50: float
    claim_p99: float
    submit_p50: float
    submit_p99: float
    floor: FloorResult
    cpu: dict[str, float]
    errors: Counter
    problems: list[str]
    empty: int


def reset_queue(engine, project_id: int) -> int:  # type: ignore[no-untyped-def]
    """Every task open again, no submissions; returns the last audit seq (claims after it belong to the run)."""
    from sqlalchemy import text

    with engine.begin() as c:
        c.execute(text("DELETE FROM idempotency_keys"))
        c.execute(text("DELETE FROM submissions"))
        c.execute(text("UPDATE tasks SET status = 'open', reader_id = NULL, lease_sha256 = NULL, "
                       "lease_expires_at = NULL, claimed_at = NULL, submitted_at = NULL WHERE project_id = :p"),
                  {"p": project_id})
        return int(c.execute(text("SELECT COALESCE(MAX(seq), 0) FROM audit_records")).scalar_one())


def check_database(engine, project_id: int, audit_from: int, stats: list[ClientStats]) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    problems = []
    with engine.connect() as c:
        q = lambda sql, **kw: c.execute(text(sql), kw).all()
        twice = q("SELECT entity, COUNT(DISTINCT \"user\"), COUNT(*) FROM audit_records WHERE action = 'task.claim' "
                  "AND seq > :s GROUP BY entity HAVING COUNT(*) > 1", s=audit_from)
        if twice:
            problems.append(f"task claimed more than once (entity, readers, claims): {twice[:5]}")
        two_slots = q("SELECT case_id, reader_id, COUNT(*) FROM tasks WHERE project_id = :p AND reader_id IS NOT NULL "
                      "GROUP BY case_id, reader_id HAVING COUNT(*) > 1", p=project_id)
        if two_slots:
            problems.append(f"reader holds two slots of a case (case, reader, slots): {two_slots[:5]}")
        n_sub = q("SELECT COUNT(*) FROM submissions")[0][0]
        n_done = q("SELECT COUNT(*) FROM tasks WHERE project_id = :p AND status = 'submitted'", p=project_id)[0][0]
        n_keys = q("SELECT COUNT(*) FROM idempotency_keys")[0][0]
        n_leased = q("SELECT COUNT(*) FROM tasks WHERE project_id = :p AND status = 'leased'", p=project_id)[0][0]
        dup_sub = q("SELECT task_id, COUNT(*) FROM submissions GROUP BY task_id HAVING COUNT(*) > 1")
        n_claim_audit = q("SELECT COUNT(*) FROM audit_records WHERE action = 'task.claim' AND seq > :s", s=audit_from)[0][0]
    seen = sum(s.submits for s in stats)
    if not (n_sub == n_done == n_keys == seen):
        problems.append(f"submissions {n_sub}, submitted tasks {n_done}, idempotency keys {n_keys}, "
                        f"201s seen by clients {seen} differ")
    if dup_sub:
        problems.append(f"task with several submissions: {dup_sub[:5]}")
    if n_leased:
        problems.append(f"{n_leased} task(s) still leased at the end")
    owner: dict[int, int] = {}
    for i, s in enumerate(stats):
        for task_id, _ in s.claims:
            if owner.setdefault(task_id, i) != i:
                problems.append(f"clients saw task {task_id} given to r{owner[task_id] + 1} and r{i + 1}")
        cases = Counter(case for _, case in dict(s.claims).items())
        doubled = [c for c, n in cases.items() if n > 1]
        if doubled:
            problems.append(f"r{i + 1} got two slots of {doubled[:3]}")
    distinct_claimed = len({t for s in stats for t, _ in s.claims})
    if n_claim_audit != distinct_claimed:
        problems.append(f"{n_claim_audit} claim audit records but clients saw {distinct_claimed} distinct tasks")
    return problems


def run_server(backend: Backend, lab, exports: dict[tuple[str, int | None], tuple[bytes, bytes]], work: Path, procs: int,  # type: ignore[no-untyped-def]
               clients: int, seconds: float, floor: FloorResult) -> RunResult:
    import harness
    from sqlalchemy import create_engine, text

    engine = create_engine(backend.url)
    audit_from = reset_queue(engine, lab.project_id)
    with engine.connect() as c:
        tasks = int(c.execute(text("SELECT COUNT(*) FROM tasks WHERE project_id = :p"), {"p": lab.project_id})
                    .scalar_one())
    run_dir = work / f"run-{backend.name}-{procs}p-{clients}c-{uuid.uuid4().hex[:6]}"
    # the processes share one data folder (as they must); ServerProcess names each log by its port
    servers = [harness.ServerProcess(backend.url, run_dir / "data") for _ in range(procs)]
    stats = [ClientStats() for _ in range(clients)]
    try:
        for s in servers:
            s.start()
        with ThreadPoolExecutor(8) as pool:
            headers = list(pool.map(lambda i: harness.login(servers[i % procs].url, f"r{i + 1}"), range(clients)))
        start = threading.Barrier(clients + 1)
        deadline = [float("inf")]  # set just before the barrier opens
        max_rounds = tasks + 5
        timeout = max(30.0, seconds + 30.0)
        def body(i: int) -> None:
            client_loop(servers[i % procs].url, headers[i], lab.project_id, exports, max_rounds,
                        deadline, start, stats[i], timeout, f"r{i + 1}")

        threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        meter = CpuMeter([s.process.pid for s in servers if s.process])
        deadline[0] = time.monotonic() + seconds
        t_start = time.perf_counter()
        start.wait()
        for t in threads:
            t.join(timeout=seconds + timeout + 30)
        t_end = max([s.last_done for s in stats if s.last_done] or [time.perf_counter()])
        cpu = meter.stop()
        hung = sum(t.is_alive() for t in threads)
    finally:
        for s in servers:
            s.stop()
    elapsed = max(1e-9, t_end - t_start)
    errors: Counter = Counter()
    for s in stats:
        errors.update(s.errors)
    if hung:
        errors[f"{hung} client thread(s) still running after the join timeout"] += 1
    problems = check_database(engine, lab.project_id, audit_from, stats)
    engine.dispose()
    log_tail = ""
    for s in servers:
        text_ = s.log.read_text(errors="replace") if s.log.exists() else ""
        if errors or any(k in text_ for k in ("Traceback", "locked", "ERROR")):
            log_tail += f"--- {s.log} (last 40 lines)\n" + "\n".join(text_.splitlines()[-40:]) + "\n"
    if log_tail:
        print(log_tail, flush=True)
    claim_lat = [x for s in stats for x in s.claim_lat]
    submit_lat = [x for s in stats for x in s.submit_lat]
    return RunResult(backend.name, procs, clients, tasks, elapsed, len(claim_lat) + len(submit_lat), len(claim_lat),
                     1000 * pctl(claim_lat, 0.5), 1000 * pctl(claim_lat, 0.99), 1000 * pctl(submit_lat, 0.5),
                     1000 * pctl(submit_lat, 0.99), floor, cpu, errors, problems, sum(s.empty for s in stats))


# --------------------------------------------------------------------------------------------- driver
def prepare_lab(backend: Backend, work: Path, cases: int, annotators: int, distinct: bool):  # type: ignore[no-untyped-def]
    import harness
    from sqlalchemy import create_engine, text

    t0 = time.perf_counter()
    lab = harness.make_lab(backend.url, work / f"lab-{backend.name}", cases=cases, annotators=annotators)
    engine = create_engine(backend.url)
    with engine.connect() as c:
        rpc = c.execute(text("SELECT readers_per_case FROM projects WHERE id = :p"), {"p": lab.project_id}).scalar_one()
    engine.dispose()
    assert rpc == 2, f"expected 2 readers per case, the project has {rpc}"
    t1 = time.perf_counter()
    exports: dict[tuple[str, int | None], tuple[bytes, bytes]] = {}
    for key in lab.series:
        for slot in ((1, 2) if distinct else (None,)):
            out = work / f"exports-{backend.name}" / key / str(slot)
            seg, sr = lab.export_for(key, out, reader=f"r{slot}" if distinct else "r1")
            exports[(key, slot)] = (seg.read_bytes(), sr.read_bytes())
    print(f"[{backend.name}] lab: {cases} cases, {annotators} annotators in {t1 - t0:.1f} s; "
          f"{len(exports)} SEG+SR exports in {time.perf_counter() - t1:.1f} s", flush=True)
    return lab, exports


def fmt_row(r: RunResult) -> str:
    ratio = r.claims / r.elapsed / r.floor.rate if r.floor.rate else float("nan")
    return (f"{r.backend:<10} {r.procs:>5} {r.clients:>7} {r.tasks:>5} {r.elapsed:>6.2f} {r.ops / r.elapsed:>7.1f} "
            f"{r.claims / r.elapsed:>7.1f} {r.claim_p50:>6.1f}/{r.claim_p99:<7.1f} {r.submit_p50:>6.1f}/{r.submit_p99:<7.1f}"
            f" {r.floor.rate:>8.0f} ({r.floor.conns:>3}) {ratio:>6.3f} {sum(r.errors.values()):>4}  "
            f"{r.cpu['client']:>3.0f}/{r.cpu['server']:>3.0f}/{r.cpu['db']:>3.0f}/{r.cpu['other']:>3.0f}")


HEADER = (f"{'backend':<10} {'procs':>5} {'clients':>7} {'tasks':>5} {'wall s':>6} {'ops/s':>7} {'claim/s':>7} "
          f"{'claim p50/p99 ms':>16} {'submit p50/p99 ms':>16} {'floor/s (conns)':>15} {'ratio':>6} {'errs':>4}  "
          f"cpu% cli/srv/pg/other")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="ops/s = successful claims + submits per second of wall time; claim "
                                            "latency counts 200s only (the final 204s are left out); ratio = HTTP "
                                            "claim rate / floor claim rate; cpu% is of one core over the run "
                                            "(cli = this process, srv = the server processes, pg = PostgreSQL "
                                            "processes, other = the rest of the machine).")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma list of sqlite, postgresql")
    parser.add_argument("--clients", default="10,100", help="comma list of concurrent client counts")
    parser.add_argument("--cases", type=int, default=200, help="cases in the project (2 tasks each)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time limit of each server run")
    parser.add_argument("--floor-seconds", type=float, default=5.0, help="duration of each floor run")
    parser.add_argument("--distinct-uploads", action="store_true",
                        help="export one SEG+SR per task instead of one per case (both slots of a case then upload "
                             "different bytes)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep series, exports, DB and logs here")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not clients or min(clients) < 1 or any(b not in ("sqlite", "postgresql") for b in backends):
        parser.error("--clients needs positive integers; --backends takes sqlite and/or postgresql")

    import harness

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medannot-bench-queue-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; {os.cpu_count()} CPUs; {args.cases} cases, clients {clients}, {args.seconds:g} s "
          f"per run", flush=True)
    results: list[RunResult] = []
    notes: list[str] = []
    try:
        for name in backends:
            schema = None
            if name == "sqlite":
                backend = Backend(name, f"sqlite:///{work / 'queue.db'}")
                if (work / "queue.db").exists():
                    for suffix in ("", "-wal", "-shm"):
                        (work / f"queue.db{suffix}").unlink(missing_ok=True)
            else:
                problem = harness._pg_available()
                if problem:
                    print(f"[postgresql] skipped: {problem}", flush=True)
                    continue
                schema, url = pg_create_schema()
                backend = Backend(name, url, schema)
            try:
                lab, exports = prepare_lab(backend, work, args.cases, max(clients), args.distinct_uploads)
                for c in clients:
                    conns = c
                    if name == "postgresql":
                        limit, free = pg_free_connections()
                        if c > free - 5:
                            conns = max(1, free - 5)
                            notes.append(f"postgresql floor for {c} clients used {conns} connections "
                                         f"(max_connections {limit})")
                    floor = run_floor(backend, conns, args.floor_seconds)
                    print(f"[{name}] floor {conns} conns: {floor.rate:.0f} claims/s, p50 {floor.p50:.2f} ms, "
                          f"p99 {floor.p99:.2f} ms, cpu% client {floor.cpu['client']:.0f} pg {floor.cpu['db']:.0f} "
                          f"other {floor.cpu['other']:.0f}" + (f", errors {dict(floor.errors)}" if floor.errors else ""),
                          flush=True)
                    for procs in ((1, 2) if name == "postgresql" else (1,)):
                        r = run_server(backend, lab, exports, work, procs, c, args.seconds, floor)
                        results.append(r)
                        print(f"[{name}] {procs} proc, {c} clients: {r.claims} claims, {r.ops - r.claims} "
                              f"submits, {r.empty} empty claims in {r.elapsed:.2f} s; machine busy "
                              f"{r.cpu['busy']:.0f}% of 1 core; checks {'OK' if not r.problems else 'FAILED'}", flush=True)
                        for problem in r.problems:
                            print(f"  CHECK FAILED: {problem}", flush=True)
                        for message, count in r.errors.most_common(10):
                            print(f"  ERROR x{count}: {message}", flush=True)
            finally:
                if schema:
                    pg_drop_schema(schema)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(HEADER)
    for r in results:
        print(fmt_row(r))
    for note in notes:
        print(f"note: {note}")
    bad = [r for r in results if r.problems or r.errors]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
