"""Helpers shared by test folders (importable because pytest puts Testing/ on sys.path for its conftest)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# CLI tests run `python -m medannot.cli` from this checkout, whatever copy pip installed.
CLI_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "MedAnnotExtension"), *filter(None, [os.environ.get("PYTHONPATH")])])}
