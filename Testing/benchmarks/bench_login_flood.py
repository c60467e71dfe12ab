#!/usr/bin/env python
"""Benchmark a signed-in reader's ``GET /api/v1/projects`` while unauthenticated clients flood the login (#14 H2).

Run on demand (this is not a pytest file)::

    python Testing/benchmarks/bench_login_flood.py [--backends sqlite,postgresql] [--floods 40] [--seconds 15]
                                                   [--before /tmp/main]

Per backend (an SQLite file, or a fresh schema in PostgreSQL's ``test`` database, dropped afterwards) one lab is
built with ``harness.make_lab`` and ONE real ``medannot serve`` process is started on loopback. The reader r1 logs
in first; then ``--floods`` threads, each with its own connection, post logins for unknown users with wrong
passwords back to back for ``--seconds``, while the reader asks for the project list every 50 ms. Runs:

* ``quiet``: the reader alone (the floor);
* ``flood, argon2 bound only``: the per-client throttle switched off (``MEDANNOT_LOGIN_CLIENT_FAILURES`` huge), so
  every flood request reaches the bound on concurrent password checks;
* ``flood, defaults``: the server as shipped (the flood, all from 127.0.0.1, is soon throttled as one client);
* with ``--before DIR`` (a checkout of the old code, e.g. ``git archive main | tar -x -C /tmp/main``) the same
  flood against it (the old server has neither brake).

Reported: the reader's p50 / p99 / max latency and failed requests, the flood's answers by status and per second,
and the server process's peak memory (VmHWM). Loopback only; every loop is bounded in time; requests time out
after 60 s.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "Testing", ROOT / "Testing" / "server", ROOT / "MedAnnotExtension"):
    sys.path.insert(0, str(_p))

import requests  # noqa: E402
from harness import PG_URL, ServerProcess, login, make_lab  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(name: str, db_url: str, work: Path, floods: int, seconds: float, env: dict[str, str]) -> None:
    server = ServerProcess(db_url, work / f"data-{uuid.uuid4().hex[:6]}", env=env).start()
    assert server.process is not None
    try:
        reader = login(server.url, "r1")
        stop = threading.Event()
        statuses: Counter[int | str] = Counter()
        lock = threading.Lock()

        def flood(i: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    status: int | str = session.post(f"{server.url}/api/v1/auth/login", timeout=60, json={
                        "username": f"intruder{i}", "password": f"guess {i:03d}-{n:06d}"}).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1

        latencies: list[float] = []
        failures: Counter[int | str] = Counter()
        with ThreadPoolExecutor(max_workers=max(1, floods)) as pool:
            for i in range(floods):
                pool.submit(flood, i)
            time.sleep(1.0 if floods else 0)  # let the flood build up
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    answer = requests.get(f"{server.url}/api/v1/projects", headers=reader, timeout=60)
                    if answer.status_code != 200:
                        failures[answer.status_code] += 1
                    else:
                        latencies.append((time.perf_counter() - start) * 1000)
                except requests.RequestException as exc:
                    failures[type(exc).__name__] += 1
                time.sleep(0.05)
            stop.set()
        total = sum(statuses.values())
        print(f"{name:<34} reader GET /projects: n={len(latencies):<4} p50 {percentile(latencies, 50):7.1f} ms  "
              f"p99 {percentile(latencies, 99):7.1f} ms  max {max(latencies, default=float('nan')):7.1f} ms  "
              f"failed {dict(failures) or 0}", flush=True)
        if floods:
            print(f"{'':<34} flood: {total / (seconds + 1):6.0f} answers/s  {dict(sorted(statuses.items(), key=str))}",
                  flush=True)
        print(f"{'':<34} server peak memory {peak_rss_mib(server.process.pid):6.0f} MiB", flush=True)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite", help="sqlite,postgresql")
    parser.add_argument("--floods", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the old code to compare with")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-login-"))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.floods} flood threads, "
          f"{args.seconds:g} s per run", flush=True)
    try:
        for backend in args.backends.split(","):
            schema = None
            if backend == "sqlite":
                db_url = f"sqlite:///{work / 'bench.db'}"
            else:
                schema = f"bench_{uuid.uuid4().hex[:10]}"
                with create_engine(PG_URL, isolation_level="AUTOCOMMIT").connect() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
            try:
                make_lab(db_url, work / f"lab-{backend}", cases=2)
                print(f"== {backend}", flush=True)
                run("quiet (reader alone)", db_url, work, 0, args.seconds, {})
                run("flood, argon2 bound only", db_url, work, args.floods, args.seconds,
                    {"MEDANNOT_LOGIN_CLIENT_FAILURES": "1000000000"})
                run("flood, defaults", db_url, work, args.floods, args.seconds, {})
                if args.before is not None:
                    old = args.before / "MedAnnotExtension" if (args.before / "MedAnnotExtension").is_dir() \
                        else args.before
                    run("flood, before (old code)", db_url, work, args.floods, args.seconds,
                        {"PYTHONPATH": str(old)})
            finally:
                if schema is not None:
                    with create_engine(PG_URL, isolation_level="AUTOCOMMIT").connect() as connection:
                        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
