"""Installing what MedAnnot needs in Slicer: only what is missing, on first use, never Slicer's own packages.

Slicer's installers are replaced by recorders: these tests check what would be asked of pip, and install nothing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
import slicer  # noqa: E402

import MedAnnotLib  # noqa: E402
from MedAnnotLib import dependencies  # noqa: E402

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_REQUIREMENTS = EXTENSION_DIR / "MedAnnotLib" / "requirements.txt"


class PipRecorder:
    """Records the calls Slicer's pip helpers would receive, with the constraints file's text at call time."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def pip_ensure(self, requirements, constraints=None, requester=None, **options):
        self.calls.append({"function": "pip_ensure", "requirements": list(requirements), "requester": requester,
                           "constraints": Path(constraints).read_text(encoding="utf-8")})

    def pip_install(self, arguments):
        constraints = Path(arguments[arguments.index("-c") + 1]).read_text(encoding="utf-8")
        self.calls.append({"function": "pip_install", "requirements": arguments[:arguments.index("-c")],
                           "constraints": constraints})


@pytest.fixture
def recorder(monkeypatch):
    recorder = PipRecorder()
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=recorder.pip_ensure))
    monkeypatch.setattr(slicer.util, "pip_install", recorder.pip_install)
    return recorder


@pytest.fixture
def requirements_with_a_missing_package(tmp_path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# what the core needs\nhighdicom>=0.27.0,<0.29\nmedannot-absent-test-package>=1.0\n")
    return path


def test_the_modules_requirements_are_met_here_so_nothing_is_installed(recorder):
    assert MedAnnotLib.missingRequirements(MODULE_REQUIREMENTS) == []
    assert MedAnnotLib.ensureRequirements(MODULE_REQUIREMENTS) == []
    assert recorder.calls == []


def test_every_module_reads_the_one_requirements_list():
    assert MedAnnotLib.REQUIREMENTS_PATH == MODULE_REQUIREMENTS
    for module, lib in (("MedAnnot", "MedAnnotWorklistLib"), ("MedAnnotCine", "MedAnnotCineLib"),
                        ("MedAnnotExport", "MedAnnotExportLib")):
        source = (EXTENSION_DIR / module / lib / "logic.py").read_text(encoding="utf-8")
        assert "REQUIREMENTS_PATH = MedAnnotLib.REQUIREMENTS_PATH" in source, module
        assert not (EXTENSION_DIR / module / "Resources" / "requirements.txt").exists(), module


def test_requirements_accept_every_version_slicer_5_12_bundles():
    """A range that excluded Slicer's own version would make pip replace a package Slicer imports at start-up."""
    for requirement in dependencies.readRequirements(MODULE_REQUIREMENTS):
        for name, version in dependencies.SLICER_BUNDLED.items():
            if canonicalize_name(name) == canonicalize_name(requirement.name):
                assert requirement.specifier.contains(version), f"{requirement} excludes Slicer 5.12's {name} {version}"
    names = {canonicalize_name(r.name): r for r in dependencies.readRequirements(MODULE_REQUIREMENTS)}
    assert names["highdicom"].specifier.contains("0.27.0")


# What the modules import, by import name -> the distribution that provides it.
DISTRIBUTIONS = {"yaml": "PyYAML", "cv2": "opencv-python-headless", "jsonschema": "jsonschema",
                 "highdicom": "highdicom", "pydicom": "pydicom", "numpy": "numpy", "SimpleITK": "SimpleITK",
                 "requests": "requests", "urllib3": "urllib3", "typing_extensions": "typing_extensions",
                 "packaging": "packaging", "PIL": "pillow", "scipy": "scipy"}
SLICER_APPLICATION = {"slicer", "qt", "ctk", "vtk", "DICOMLib", "SegmentEditorEffects", "mrml"}
OPTIONAL = {"itk": "the morphological interpolation, offered only where itk-morphologicalcontourinterpolation is"}
# MedAnnotExport's "Build package" / "Verify package" (admins only) need the lab server's packages; its logic says
# to install them with slicer.util.pip_install('medannot[server]') when one is missing, and never installs them
_PACKAGE_TOOLS = ("alembic", "bagit", "cryptography", "dicomanonymizer", "dicomweb_client", "jinja2", "matplotlib",
                  "sqlalchemy", "starlette", "weasyprint")
OPTIONAL.update({name: "the submission package buttons (medannot[server], installed on request)"
                 for name in _PACKAGE_TOOLS})


def _third_party_imports() -> dict[str, set[str]]:
    """Every top-level package the three modules can import, following medannot/ and the Libs (also imports inside
    functions), that is neither ours nor the standard library; -> the files importing it."""
    roots = [EXTENSION_DIR, *(EXTENSION_DIR / m for m in ("MedAnnot", "MedAnnotCine", "MedAnnotExport"))]

    def ours(name: str) -> Path | None:
        for root in roots:
            candidate = root.joinpath(*name.split("."))
            if (candidate / "__init__.py").is_file():
                return candidate / "__init__.py"
            if candidate.with_suffix(".py").is_file():
                return candidate.with_suffix(".py")
        return None

    todo = [EXTENSION_DIR / m / f"{m}.py" for m in ("MedAnnot", "MedAnnotCine", "MedAnnotExport")]
    todo += sorted((EXTENSION_DIR / "MedAnnotLib").glob("*.py"))
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                if (module := ours(name)) is not None:
                    todo.append(module)
                elif ours(name.split(".")[0]) is None and name.split(".")[0] not in sys.stdlib_module_names:
                    found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def test_every_package_the_modules_import_is_slicers_or_in_the_one_requirements_list():
    listed = {canonicalize_name(r.name) for r in dependencies.readRequirements(MODULE_REQUIREMENTS)}
    imported = _third_party_imports()
    assert {"yaml", "jsonschema", "highdicom", "cv2"} <= set(imported)
    for name, files in imported.items():
        if name in SLICER_APPLICATION or name in OPTIONAL:
            continue
        assert name in DISTRIBUTIONS, f"{name} (imported by {sorted(files)}): which package provides it?"
        distribution = DISTRIBUTIONS[name]
        assert dependencies.isSlicerBundled(distribution) or canonicalize_name(distribution) in listed, \
            f"{distribution} (imported by {sorted(files)}) is neither shipped by Slicer 5.12 nor in {MODULE_REQUIREMENTS.name}"


def test_a_slicer_package_is_never_reinstalled_even_when_a_list_asks_for_another_version(recorder, tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("numpy>=99\nhighdicom>=99\npydicom<3\n")

    assert MedAnnotLib.missingRequirements(path) == []
    assert MedAnnotLib.ensureRequirements(path) == []
    assert recorder.calls == []


def test_every_installed_slicer_package_is_pinned_when_pip_runs(recorder, requirements_with_a_missing_package):
    MedAnnotLib.ensureRequirements(requirements_with_a_missing_package)

    pins = recorder.calls[0]["constraints"].splitlines()
    for name in ("highdicom", "pillow", "pyjpegls", "requests", "urllib3", "typing_extensions", "packaging"):
        assert f"{name}=={importlib.metadata.version(name)}" in pins


def test_only_the_missing_requirement_is_installed_with_slicers_packages_pinned(
        recorder, requirements_with_a_missing_package):
    installed = MedAnnotLib.ensureRequirements(requirements_with_a_missing_package, requester="MedAnnot Export")

    assert installed == ["medannot-absent-test-package>=1.0"]
    (call,) = recorder.calls
    assert call["function"] == "pip_ensure"
    assert call["requirements"] == installed
    assert call["requester"] == "MedAnnot Export"
    for name in ("numpy", "pydicom", "SimpleITK"):
        assert f"{name}=={importlib.metadata.version(name)}" in call["constraints"].splitlines()


def test_slicer_without_pip_ensure_falls_back_to_pip_install_with_the_same_pins(
        recorder, requirements_with_a_missing_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import slicer.packaging raises ImportError

    MedAnnotLib.ensureRequirements(requirements_with_a_missing_package)

    (call,) = recorder.calls
    assert call["function"] == "pip_install"
    assert call["requirements"] == ["medannot-absent-test-package>=1.0"]
    assert f"numpy=={importlib.metadata.version('numpy')}" in call["constraints"].splitlines()


def test_invalid_requirement_line_names_file_and_line(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("highdicom>=0.28\nnot a requirement !!\n")

    with pytest.raises(ValueError, match=r"requirements.txt:2: not a valid requirement"):
        dependencies.readRequirements(path)


def test_importing_the_slicer_side_installs_nothing_and_needs_no_highdicom():
    """MedAnnotLib and the export logic are imported at Slicer startup, before highdicom may be installed."""
    extension = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
    code = (
        "import sys, builtins\n"
        f"sys.path[:0] = [{str(extension)!r}, {str(extension / 'MedAnnotExport')!r}]\n"
        "real_import = builtins.__import__\n"
        "def guarded(name, *args, **kwargs):\n"
        "    if name.split('.')[0] in ('highdicom', 'yaml', 'jsonschema', 'pip'):\n"
        "        raise ImportError('not installed: ' + name)\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = guarded\n"
        "import MedAnnotLib, MedAnnotExportLib\n"
        "print('imported')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "imported" in completed.stdout
