"""Install the Python packages MedAnnot needs that Slicer lacks (highdicom, ...), on first use.

Nothing is installed at import time. Packages Slicer itself ships and relies on (numpy, pydicom, SimpleITK,
requests) are pinned to their installed versions, so installing our requirements can never replace them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

logger = logging.getLogger(__name__)

PROTECTED_PACKAGES = ("numpy", "pydicom", "SimpleITK", "requests")


def readRequirements(requirementsPath: str | Path) -> list[Requirement]:
    """Parse a requirements.txt file (comments, blank lines and pip options are skipped).

    Raises
    ------
    ValueError
        If a line is not a valid requirement; the message names the file and line.
    """
    requirements = []
    path = Path(requirementsPath)
    for lineNumber, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement as error:
            raise ValueError(f"{path}:{lineNumber}: not a valid requirement: {text} ({error})") from error
    return requirements


def missingRequirements(requirementsPath: str | Path) -> list[Requirement]:
    """Return the requirements of a requirements.txt file that are not installed at an accepted version."""
    missing = []
    for requirement in readRequirements(requirementsPath):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(requirement)
    return missing


def protectedPackageConstraints() -> list[str]:
    """Return ``name==version`` pins for the installed packages Slicer relies on (see ``PROTECTED_PACKAGES``)."""
    pins = []
    for name in PROTECTED_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def ensureRequirements(requirementsPath: str | Path, requester: str = "MedAnnot") -> list[str]:
    """Install what a requirements.txt file asks for and is missing; do nothing when all is present.

    Uses ``slicer.packaging.pip_ensure`` (asks the user first) where Slicer has it, otherwise
    ``slicer.util.pip_install``. Either way pip gets a constraints file pinning ``PROTECTED_PACKAGES`` to their
    installed versions.

    Parameters
    ----------
    requirementsPath : str or pathlib.Path
        A module's ``Resources/requirements.txt``.
    requester : str
        Name shown in Slicer's install dialog.

    Returns
    -------
    list of str
        The requirements that were installed (empty when nothing was missing).

    Raises
    ------
    RuntimeError
        If the user declines the installation (raised by Slicer).
    subprocess.CalledProcessError
        If pip fails, for example because a requirement would need a different numpy.
    """
    missing = [str(requirement) for requirement in missingRequirements(requirementsPath)]
    if not missing:
        return []
    logger.info("%s: installing %s", requester, ", ".join(missing))
    with tempfile.TemporaryDirectory(prefix="MedAnnotPip-") as folder:
        constraintsPath = Path(folder) / "constraints.txt"
        constraintsPath.write_text("\n".join(protectedPackageConstraints()) + "\n", encoding="utf-8")
        _pipInstall(missing, constraintsPath, requester)
    importlib.invalidate_caches()
    return missing


def _pipInstall(requirements: list[str], constraintsPath: Path, requester: str) -> None:
    import slicer

    try:
        slicerPackaging = importlib.import_module("slicer.packaging")
    except ImportError:  # Slicer before slicer.packaging existed, or the slicer-core wheel
        slicerPackaging = None
    pipEnsure = getattr(slicerPackaging, "pip_ensure", None)
    if pipEnsure is not None and "constraints" in inspect.signature(pipEnsure).parameters:
        pipEnsure(requirements, constraints=str(constraintsPath), requester=requester)
    else:
        slicer.util.pip_install([*requirements, "-c", str(constraintsPath)])
