"""Installing what MedAnnot needs in Slicer: only what is missing, on first use, never Slicer's own packages.

Slicer's installers are replaced by recorders: these tests check what would be asked of pip, and install nothing.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
import slicer  # noqa: E402

import MedAnnotLib  # noqa: E402
from MedAnnotLib import dependencies  # noqa: E402

MODULE_REQUIREMENTS = (Path(__file__).resolve().parents[2] / "MedAnnotExtension" / "MedAnnotExport" / "Resources"
                       / "requirements.txt")


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
    path.write_text("# what the core needs\nhighdicom>=0.28.2,<0.29\nmedannot-absent-test-package>=1.0\n")
    return path


def test_the_modules_requirements_are_met_here_so_nothing_is_installed(recorder):
    assert MedAnnotLib.missingRequirements(MODULE_REQUIREMENTS) == []
    assert MedAnnotLib.ensureRequirements(MODULE_REQUIREMENTS) == []
    assert recorder.calls == []


def test_module_requirements_ask_for_highdicom_028(recorder):
    names = {str(requirement) for requirement in dependencies.readRequirements(MODULE_REQUIREMENTS)}
    assert "highdicom<0.29,>=0.28.2" in names


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
