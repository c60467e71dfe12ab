"""Where MedAnnot keeps per-user files: ``MEDANNOT_HOME`` or ``~/.medannot``."""

from __future__ import annotations

import os
from pathlib import Path


def medannot_home() -> Path:
    """The per-user MedAnnot folder: ``MEDANNOT_HOME`` or ``~/.medannot`` (client session, outbox, default
    server database)."""
    return Path(os.environ.get("MEDANNOT_HOME") or Path.home() / ".medannot")
