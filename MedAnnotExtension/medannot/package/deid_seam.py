"""The one seam to the de-identification gate (``medannot.deid``), which lives in its own package."""

from __future__ import annotations

from pathlib import Path

DEID_NOT_INSTALLED = ("de-identification gate not installed (medannot.deid.check_file not importable): the files "
                      "were not checked for PHI")


def deid_gate(path: Path) -> list[str]:
    """PHI findings of one file (empty when it passes), or ``[DEID_NOT_INSTALLED]`` when there is no gate."""
    try:
        from medannot.deid import check_file  # type: ignore[attr-defined]
    except ImportError:
        return [DEID_NOT_INSTALLED]
    return [str(finding) for finding in check_file(path)]
