"""The package as a zip stream, for the server's ``POST /api/v1/projects/{id}/package``."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from medannot.package.build import build_package

_CHUNK = 1 << 20


def _stream(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        handle.seek(0)
        while chunk := handle.read(_CHUNK):
            yield chunk
    finally:
        handle.close()


def folder_zip(root: Path, filename: str) -> StreamingResponse:
    """Answer a package folder as a zip download (spooled to disk past 64 MB), its paths relative to ``root``."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return StreamingResponse(_stream(spool), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def package_zip(session: Session, data_dir: Path, project_id: int, require_final: bool = False) -> StreamingResponse:
    """Build the package in a temporary folder and answer it as a zip (spooled to disk past 64 MB)."""
    with tempfile.TemporaryDirectory(prefix="medannot-package-") as work:
        root = Path(work) / f"project-{project_id}-package"
        build_package(session, data_dir, project_id, root, require_final=require_final)
        return folder_zip(root, f"project-{project_id}-package.zip")
