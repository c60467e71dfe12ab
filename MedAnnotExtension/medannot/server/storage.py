"""Content-addressed storage of submitted files: ``objects/<sha[:2]>/<sha>``, written atomically, never replaced."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1024 * 1024


class ObjectStore:
    """Stores bytes under their sha256 in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` (no-op when already present) and return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_of(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        # a unique temporary name per call: two requests storing the same bytes at once must not share one
        fd, tmp = tempfile.mkstemp(prefix=f".{digest[:16]}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # same content under the same name: whichever rename wins is right
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename survives a power cut before the database commit does
            finally:
                os.close(directory)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return digest

    def put_file(self, source: BinaryIO) -> tuple[str, bool]:
        """Store the contents of an open file (read in pieces, never whole); returns its sha256 and whether this
        call created the object (False: the same bytes were stored before)."""
        staging = self.root / "objects" / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=staging)
        try:
            with os.fdopen(fd, "wb") as handle:
                source.seek(0)
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            sha = digest.hexdigest()
            target = self.path_of(sha)
            if target.exists():
                return sha, False
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return sha, True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self, sha256: str) -> None:
        """Remove an object no row refers to (a submission refused after its files were written)."""
        self.path_of(sha256).unlink(missing_ok=True)

    def get(self, sha256: str) -> bytes:
        return self.path_of(sha256).read_bytes()
