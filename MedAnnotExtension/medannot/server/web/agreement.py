"""The agreement page's report: the review report of :mod:`medannot.review.report` (the same figures and numbers
as ``medannot admin report``), built in the server's data folder and kept under the hash of the metric rows it was
built from, so a page view draws the figures again only when the project's agreement changed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from medannot.server.models import Project
from medannot.server.review import project_metric_rows
from medannot.server.web.activity import PLOT_LOCK

KEEP = 3  # reports kept per project (a page open in a browser may still show the one before)
_KEY = re.compile(r"^[0-9a-f]{20}$")


@dataclass(frozen=True)
class AgreementReport:
    key: str  # the hash of the rows and title it was built from; part of the figures' addresses
    folder: Path
    report: dict[str, Any]  # report.json: every number of every figure
    rows: int

    def figure(self, name: str) -> Path | None:
        """A figure of this report by file name, or None (only names report.json lists are ever opened)."""
        listed = {f["file"] for f in self.report["figures"]}
        return self.folder / name if name in listed else None


def reports_dir(data_dir: Path, project_id: int) -> Path:
    return Path(data_dir) / "dashboard" / f"agreement-project-{project_id}"


def report_title(project: Project) -> str:
    return f"Project {project.id} ({project.name})"  # as `medannot admin report` titles it


def _load(folder: Path, key: str, rows: int) -> AgreementReport:
    return AgreementReport(key, folder, json.loads((folder / "report.json").read_text(encoding="utf-8")), rows)


def agreement_report(session: Session, data_dir: Path, project: Project) -> AgreementReport | None:
    """The project's current agreement report (built now if its numbers changed), or None before any case has a
    measured review round."""
    from medannot.review.report import build_report

    rows = project_metric_rows(session, project.id)
    if not rows:
        return None
    title = report_title(project)
    key = hashlib.sha256(json.dumps([title, rows], sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = reports_dir(data_dir, project.id)
    folder = root / key
    if (folder / "report.json").is_file():
        return _load(folder, key, len(rows))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        with PLOT_LOCK:
            build_report(rows, work, title=title)
        try:
            work.rename(folder)  # whole or not at all; another server process may have built it meanwhile
        except OSError:
            if not (folder / "report.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    older = sorted((p for p in root.iterdir() if p.is_dir() and _KEY.match(p.name) and p != folder),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in older[KEEP - 1:]:
        shutil.rmtree(stale, ignore_errors=True)
    return _load(folder, key, len(rows))


def stored_report(data_dir: Path, project_id: int, key: str) -> AgreementReport | None:
    """A report built earlier, by its key (a key that is not one of ours never touches the file system)."""
    if not _KEY.match(key):
        return None
    folder = reports_dir(data_dir, project_id) / key
    if not (folder / "report.json").is_file():
        return None
    return _load(folder, key, 0)
