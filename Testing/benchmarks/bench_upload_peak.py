#!/usr/bin/env python
"""Peak memory of a real `medannot serve` process while it refuses a hostile upload (run on demand, not pytest).

Issue #14 H1: a deflated SR of ~1.5 MB inflates to 1.5 GB; the server must refuse it with memory under 100 MB over
idle. This starts a server (SQLite, loopback), logs a reader in and claims a task, then for each upload resets the
server's peak-RSS counter (``/proc/<pid>/clear_refs``, Linux) and prints its new peak (VmHWM) over its resident
size before the request (VmRSS), the answer and the time::

    python Testing/benchmarks/bench_upload_peak.py                 # the 1.5 GB bomb and an honest submit
    python Testing/benchmarks/bench_upload_peak.py --inflated-mb 4096
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "Testing" / "server"), str(ROOT / "Testing"), str(ROOT / "MedAnnotExtension")]


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflated-mb", type=int, default=1536, help="what the hostile SR inflates to (MiB)")
    parser.add_argument("--limit-mb", type=float, default=100.0, help="the target: peak over idle below this (MiB)")
    args = parser.parse_args()

    import requests
    from harness import SHAPE, ServerProcess, login, make_lab  # noqa: F401
    from hostile import deflate_bomb

    from medannot.demo_data import ct_geometry, ct_phantom
    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        root = Path(tmp)
        db = f"sqlite:///{root / 'server.db'}"
        lab = make_lab(db, root / "lab", cases=2)
        server = ServerProcess(db, root / "data").start()
        try:
            assert server.process is not None
            pid = server.process.pid
            headers = login(server.url, "r1")
            task = requests.post(f"{server.url}/api/v1/projects/{lab.project_id}/claim", headers=headers,
                                 timeout=30).json()
            _, labels = ct_phantom(SHAPE)
            made = export_segmentation(load_source(lab.series[task["case_id"]]), labels, ct_geometry(SHAPE),
                                       load_guideline(ROOT / "MedAnnotExtension" / "medannot" / "data" /
                                                      "liver-ct.yaml"),
                                       ReaderInfo("r1^Test", "r1"), root / "out", task_id=str(task["task_id"]))
            started = time.perf_counter()
            bomb = deflate_bomb(made.sr_path, args.inflated_mb * 1024 * 1024)
            print(f"hostile SR: {len(bomb) / 1e6:.2f} MB deflated, {args.inflated_mb} MiB inflated "
                  f"(built in {time.perf_counter() - started:.1f} s); the same for a SEG")
            seg = made.seg_path.read_bytes()
            seg_bomb = deflate_bomb(made.seg_path, args.inflated_mb * 1024 * 1024)
            cases = [
                ("bomb, no lease, task 99999", 99999, None, bomb),
                ("bomb, no lease, own task", task["task_id"], None, bomb),
                ("bomb, with the lease", task["task_id"], task["lease_token"], bomb),
                ("SEG bomb, with the lease", task["task_id"], task["lease_token"], made.sr_path.read_bytes()),
                ("honest SEG + SR", task["task_id"], task["lease_token"], made.sr_path.read_bytes()),
            ]
            print(f"{'upload':30} {'status':>6} {'idle MiB':>9} {'peak-idle MiB':>14} {'seconds':>8}")
            worst = 0.0
            for name, task_id, lease, sr in cases:
                with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
                    clear.write("5")  # VmHWM := current VmRSS
                idle = _status_mb(pid, "VmRSS")
                send = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                if lease:
                    send["X-Lease-Token"] = lease
                start = time.perf_counter()
                seg_file = seg_bomb if name.startswith("SEG bomb") else seg
                answer = requests.post(f"{server.url}/api/v1/tasks/{task_id}/submit", headers=send, timeout=600,
                                       files={"seg": ("seg.dcm", seg_file), "sr": ("sr.dcm", sr)})
                seconds = time.perf_counter() - start
                over = _status_mb(pid, "VmHWM") - idle
                if "bomb" in name:
                    worst = max(worst, over)
                print(f"{name:30} {answer.status_code:>6} {idle:>9.1f} {over:>14.1f} {seconds:>8.2f}")
            print(f"worst hostile peak over idle: {worst:.1f} MiB (target < {args.limit_mb:g} MiB): "
                  f"{'met' if worst < args.limit_mb else 'NOT met'}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
