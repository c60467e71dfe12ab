"""Submission packages built from the dashboard: each is kept in the server's data folder with the result of
``package verify`` run on it right after the build, so the package page can list, show and hand them out."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.db import transaction
from medannot.server.models import utcnow

_NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


@dataclass(frozen=True)
class BuiltPackage:
    name: str
    folder: Path
    record: dict[str, Any]  # who built it when, the build's numbers, the verification's outcome


def packages_dir(data_dir: Path, project_id: int) -> Path:
    return Path(data_dir) / "packages" / f"project-{project_id}"


def _record_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".json")  # beside the bag: a file inside would fail its manifest


def build_and_verify(factory: sessionmaker[Session], data_dir: Path, project_id: int, actor: str,
                     require_final: bool) -> BuiltPackage:
    """Build the project's package into the data folder, verify it offline as ``medannot package verify`` does,
    keep the outcome beside it, and audit the build. A build refused (``require_final`` with open cases, a broken
    audit trail) raises its PackageBuildError and leaves nothing behind."""
    from medannot.package import build_package, verify_package

    name = f"{utcnow().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    folder = packages_dir(data_dir, project_id) / name
    with transaction(factory) as session:
        numbers = build_package(session, data_dir, project_id, folder, require_final=require_final)
    try:
        check = verify_package(folder, workers=1)
        verification: dict[str, Any] = {
            "intact": True, "payload_files": check.payload_files, "payload_bytes": check.payload_bytes,
            "dicom_files": check.dicom_files, "audit_records": check.audit_records, "signatures": check.signatures,
            "notes": check.notes}
    except MedAnnotError as exc:
        verification = {"intact": False, "problem": str(exc)}
    record = {"built_at": utcnow().isoformat() + "Z", "built_by": actor, "require_final": require_final,
              "numbers": numbers, "verification": verification}
    _record_path(folder).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    with transaction(factory) as session:
        append_audit(session, actor, "package.build", f"project:{project_id}", None,
                     {"package": name, "cases": numbers["cases"], "final_cases": numbers["final_cases"],
                      "audit_head": numbers["audit_head"], "intact": verification["intact"]})
    return BuiltPackage(name, folder, record)


def built_packages(data_dir: Path, project_id: int) -> list[BuiltPackage]:
    """The project's packages built here, newest first."""
    root = packages_dir(data_dir, project_id)
    found = []
    for folder in sorted(root.glob("*"), reverse=True) if root.is_dir() else []:
        if folder.is_dir() and _NAME.match(folder.name) and _record_path(folder).is_file():
            found.append(BuiltPackage(folder.name, folder,
                                      json.loads(_record_path(folder).read_text(encoding="utf-8"))))
    return found


def built_package(data_dir: Path, project_id: int, name: str) -> BuiltPackage | None:
    """One built package by name, or None (a name that is not one of ours never touches the file system)."""
    if not _NAME.match(name):
        return None
    return next((p for p in built_packages(data_dir, project_id) if p.name == name), None)
