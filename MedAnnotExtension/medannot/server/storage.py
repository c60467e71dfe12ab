"""Content-addressed storage of submitted files: ``objects/<sha[:2]>/<sha>``, written atomically, never replaced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
        tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path_of(sha256).read_bytes()
