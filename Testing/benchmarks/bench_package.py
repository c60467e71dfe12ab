"""Build and verify of a submission package of 200 cases x 3 readers, against ``sha256sum`` over the same files.

Run: ``PYTHONPATH=MedAnnotExtension python Testing/benchmarks/bench_package.py [--cases 200] [--shape 32 128 128]``

The lab is generated cheaply: each reader exports one SEG + SR on a generated CT series, then every case gets a
copy of it with new UIDs (the SR's references rewritten to match), stored and audited as the server does.
Target: verify within 2x the sha256sum floor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from medannot.deid import DeidOptions, apply_tree
from medannot.demo_data import ct_geometry, ct_phantom, make_ct_series
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source
from medannot.package import build_package, verify_package
from medannot.server.audit import append_audit
from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
from medannot.server.models import TASK_SUBMITTED, Case, Submission, Task
from medannot.server.projects import create_project
from medannot.server.security import create_user
from medannot.server.storage import ObjectStore

GUIDELINE = Path(__file__).resolve().parents[2] / "MedAnnotExtension" / "medannot" / "data" / "liver-ct.yaml"


def _replace_uids(ds, mapping: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    for element in ds.iterall():
        if element.VR == "UI" and isinstance(element.value, str) and element.value in mapping:
            element.value = mapping[element.value]


def _copy(seg_bytes: bytes, sr_bytes: bytes) -> tuple[bytes, bytes, str]:
    seg, sr = dcmread(BytesIO(seg_bytes)), dcmread(BytesIO(sr_bytes))
    mapping = {str(seg.SOPInstanceUID): generate_uid(), str(seg.SeriesInstanceUID): generate_uid(),
               str(sr.SOPInstanceUID): generate_uid(), str(sr.SeriesInstanceUID): generate_uid()}
    for ds in (seg, sr):
        _replace_uids(ds, mapping)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out_seg, out_sr = BytesIO(), BytesIO()
    seg.save_as(out_seg, enforce_file_format=True)
    sr.save_as(out_sr, enforce_file_format=True)
    return out_seg.getvalue(), out_sr.getvalue(), str(seg.SOPInstanceUID)


def make_lab(root: Path, cases: int, readers: int, shape: tuple[int, int, int]) -> tuple[str, Path, int]:
    db_url, data_dir = f"sqlite:///{root / 'server.db'}", root / "data"
    series = root / "series"  # de-identified before import, as the package's gate asks
    apply_tree(make_ct_series(root / "scanner", shape), series, DeidOptions(bytes(range(32))))
    guideline = load_guideline(GUIDELINE)
    _, labels = ct_phantom(shape)
    templates = []
    for r in range(1, readers + 1):
        result = export_segmentation(load_source(series), labels, ct_geometry(shape), guideline,
                                     ReaderInfo(f"r{r}^Bench", f"r{r}"), root / "exports" / f"r{r}")
        templates.append((result.seg_path.read_bytes(), result.sr_path.read_bytes()))
    store = ObjectStore(data_dir)
    engine = make_engine(db_url)
    upgrade_database(engine)
    with transaction(session_factory(engine)) as session:
        users = [create_user(session, f"r{r}", "annotator", "correct horse battery", actor="bench")
                 for r in range(1, readers + 1)]
        project = create_project(session, GUIDELINE, actor="bench")
        project.readers_per_case = readers
        for c in range(1, cases + 1):
            case = Case(project_id=project.id, case_key=f"case-{c:04d}", source=str(series), study_uid="1.2",
                        series_uid="1.2.3")
            session.add(case)
            session.flush()
            for slot, (user, (seg_t, sr_t)) in enumerate(zip(users, templates), start=1):
                seg_bytes, sr_bytes, uid = _copy(seg_t, sr_t)
                seg_sha, sr_sha = store.put(seg_bytes), store.put(sr_bytes)
                task = Task(project_id=project.id, case_id=case.id, slot=slot, status=TASK_SUBMITTED,
                            reader_id=user.id)
                session.add(task)
                session.flush()
                sub = Submission(task_id=task.id, user_id=user.id, seg_sha256=seg_sha, sr_sha256=sr_sha,
                                 seg_sop_uid=uid, guideline_version=guideline.version)
                session.add(sub)
                session.flush()
                append_audit(session, user.username, "task.submit", f"task:{task.id}", {"status": "leased"},
                             {"status": TASK_SUBMITTED, "submission": sub.id, "seg_sha256": seg_sha,
                              "sr_sha256": sr_sha, "seg_uid": uid, "replaces": None})
        project_id = project.id
    engine.dispose()
    return db_url, data_dir, project_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--dciodvfy", action="store_true", help="Also time verify with dciodvfy on every file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-package-") as work:
        root = Path(work)
        t0 = time.perf_counter()
        db_url, data_dir, project_id = make_lab(root, args.cases, args.readers, tuple(args.shape))
        generate = time.perf_counter() - t0
        out = root / "package"
        engine = make_engine(db_url)
        t0 = time.perf_counter()
        with transaction(session_factory(engine)) as session:
            build_package(session, data_dir, project_id, out)
        build = time.perf_counter() - t0
        engine.dispose()
        files = [p for p in (out / "data").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files) / 1e6
        subprocess.run(["sync"], check=False)
        t0 = time.perf_counter()
        listing = "\0".join(str(p) for p in files).encode()
        subprocess.run(["xargs", "-0", "sha256sum"], input=listing, stdout=subprocess.DEVNULL, check=True)
        floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = verify_package(out, use_dciodvfy=False)
        verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_package(out, use_dciodvfy=False, workers=1)
        verify_one = time.perf_counter() - t0
        # the bag's own checksum stage alone, as our verifier hashes
        from medannot.package.bag import sha256_file

        t0 = time.perf_counter()
        for p in files:
            sha256_file(p)
        hashing = time.perf_counter() - t0
        report = {"cases": args.cases, "readers": args.readers, "shape": list(args.shape), "payload_files": len(files),
                  "payload_MB": round(size, 1), "dicom_files": result.dicom_files, "generate_s": round(generate, 2),
                  "build_s": round(build, 2), "build_MB_s": round(size / build, 1),
                  "sha256sum_floor_s": round(floor, 2), "sha256sum_MB_s": round(size / floor, 1),
                  "verify_s": round(verify, 2), "verify_MB_s": round(size / verify, 1),
                  "verify_over_floor": round(verify / floor, 2),
                  "verify_workers": os.cpu_count(), "verify_1_worker_s": round(verify_one, 2), "verify_hash_stage_s": round(hashing, 2),
                  "hash_stage_over_floor": round(hashing / floor, 2)}
        if args.dciodvfy:
            t0 = time.perf_counter()
            verify_package(out, use_dciodvfy=True)
            report["verify_with_dciodvfy_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(report, indent=2))
        print(f"verify {verify:.2f} s = {verify / floor:.2f} x sha256sum ({floor:.2f} s); target <= 2x: "
              f"{'met' if verify <= 2 * floor else 'not met'}", file=sys.stderr)


if __name__ == "__main__":
    main()
