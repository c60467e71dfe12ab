"""Install the Python packages MedAnnot needs that Slicer lacks (PyYAML, jsonschema, OpenCV, ...), on first use.

Nothing is installed at import time. A package Slicer itself ships (``SLICER_BUNDLED``: numpy, pydicom, highdicom,
SimpleITK, requests, pillow, ...) is never installed, reinstalled or upgraded: Slicer's own modules import it at
start-up, and replacing it mid-session leaves them with a half-replaced package. Such a requirement counts as met
whenever the package is installed, and pip gets a constraints file pinning every installed one, so that resolving the
other requirements can never replace it either.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)

# The extension's one requirements list, installed next to this file (see MedAnnotLib/CMakeLists.txt).
REQUIREMENTS_PATH = Path(__file__).resolve().parent / "requirements.txt"

# The Python packages Slicer 5.12 installs in its own Python, with their versions, as pinned in Slicer's
# SuperBuild/External_python-*.cmake on the 5.12 branch (commit 9034c71a8fce). A requirement naming one must accept
# this version (checked by Testing/slicer_mrml/test_slicer_dependencies.py).
SLICER_BUNDLED: dict[str, str] = {
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "SimpleITK": "2.5.5",
    "pydicom": "3.0.2",
    "highdicom": "0.27.0",
    "pillow": "12.2.0",
    "pyjpegls": "1.5.1",
    "dicomweb-client": "0.61.0",
    "dcmqi": "0.4.0",
    "retrying": "1.4.2",
    "typing_extensions": "4.15.0",
    "requests": "2.34.2",
    "urllib3": "2.7.0",
    "certifi": "2026.5.20",
    "charset-normalizer": "3.4.7",
    "idna": "3.16",
    "packaging": "26.2",
    "pyparsing": "3.3.2",
    "six": "1.17.0",
    "setuptools": "82.0.1",
    "wheel": "0.47.0",
    "pip": "26.1.1",
}

# Pinned to their installed versions whenever pip runs for MedAnnot.
PROTECTED_PACKAGES = tuple(SLICER_BUNDLED)
_PROTECTED = {canonicalize_name(name) for name in PROTECTED_PACKAGES}


def isSlicerBundled(name: str) -> bool:
    """Whether ``name`` (any spelling: ``SimpleITK``, ``simpleitk``, ``typing-extensions``) is a package Slicer ships."""
    return canonicalize_name(name) in _PROTECTED


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


def missingRequirements(requirementsPath: str | Path = REQUIREMENTS_PATH) -> list[Requirement]:
    """Return the requirements of a requirements.txt file that are not installed at an accepted version.

    A package Slicer ships counts as installed at an accepted version whenever it is installed: it is never
    upgraded (a version outside the range is logged, not replaced).
    """
    missing = []
    for requirement in readRequirements(requirementsPath):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if requirement.specifier.contains(installed, prereleases=True):
            continue
        if isSlicerBundled(requirement.name):
            logger.warning("%s %s is Slicer's own and is kept, although %s asks for %s", requirement.name,
                           installed, Path(requirementsPath).name, requirement.specifier)
            continue
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


def ensureRequirements(requirementsPath: str | Path = REQUIREMENTS_PATH, requester: str = "MedAnnot") -> list[str]:
    """Install what a requirements.txt file asks for and is missing; do nothing when all is present.

    Uses ``slicer.packaging.pip_ensure`` (asks the user first) where Slicer has it, otherwise
    ``slicer.util.pip_install``. Either way pip gets a constraints file pinning ``PROTECTED_PACKAGES`` to their
    installed versions.

    Parameters
    ----------
    requirementsPath : str or pathlib.Path
        A requirements.txt file; by default the extension's (``REQUIREMENTS_PATH``).
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
