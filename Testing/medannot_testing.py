"""Helpers shared by test folders (importable because pytest puts Testing/ on sys.path for its conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# CLI tests run `python -m medannot.cli` from this checkout, whatever copy pip installed.
CLI_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "MedAnnotExtension"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_medannot(*args: object, stdin: str | None = None, env: dict[str, str] | None = None,
                 timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m medannot.cli ARGS` from this checkout, as a user would, and capture what it prints."""
    return subprocess.run([sys.executable, "-m", "medannot.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, env={**CLI_ENV, **(env or {})}, timeout=timeout, check=False, cwd=cwd)
