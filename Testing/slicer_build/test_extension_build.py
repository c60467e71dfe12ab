"""The extension's CMake lists, configured and built here without a Slicer build, with Ninja and with Make.

``slicer_model/`` stands in for a Slicer 5.12 build tree: its macros model what Slicer's
slicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript do with SCRIPTS and RESOURCES (one copy rule
per file, to ``qt-scripted-modules/<path as listed>``; see slicer_model/SlicerConfig.cmake). It is a model, not
Slicer's code: the build with Slicer's own macros happens where Slicer is built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medannot_testing import require_tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_DIR = ROOT / "MedAnnotExtension"
SLICER_MODEL = Path(__file__).resolve().parent / "slicer_model"
SCRIPTED_MODULES = Path("lib") / "Slicer-5.12" / "qt-scripted-modules"
GENERATORS = {"Ninja": "ninja", "Unix Makefiles": "make"}


def _tool_problem(program: str) -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not found: install it (Debian: apt-get install cmake)"
    if shutil.which(program) is None:
        return f"{program} not found: install it (Debian: apt-get install {'ninja-build' if program == 'ninja' else program})"
    return None


def _run(command: list[str], cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                               env={**os.environ, **environment})
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def installed(request, tmp_path_factory) -> Path:
    """The extension configured, built and installed (DESTDIR) with one generator; returns the install's
    qt-scripted-modules folder."""
    require_tool(_tool_problem(GENERATORS[request.param]))
    build = tmp_path_factory.mktemp(GENERATORS[request.param])
    _run(["cmake", "-G", request.param, f"-DSlicer_DIR={SLICER_MODEL}", "-DBUILD_TESTING=OFF",
          "-DCMAKE_INSTALL_PREFIX=/", str(ROOT)], cwd=build)
    _run(["cmake", "--build", ".", "--parallel", "2"], cwd=build)
    _run(["cmake", "--install", "."], cwd=build, DESTDIR=str(build / "install"))
    return build / "install" / SCRIPTED_MODULES


def test_the_extension_ships_exactly_one_requirements_list_the_one_medannotlib_reads(installed):
    lists = sorted(path.relative_to(installed) for path in installed.rglob("requirements*.txt"))
    assert lists == [Path("MedAnnotLib") / "requirements.txt"]
    assert (installed / lists[0]).read_text(encoding="utf-8") == \
        (EXTENSION_DIR / "MedAnnotLib" / "requirements.txt").read_text(encoding="utf-8")


def test_every_module_file_and_the_core_package_are_installed_and_byte_compile(installed):
    for module in ("MedAnnot", "MedAnnotCine", "MedAnnotExport"):
        assert (installed / f"{module}.py").is_file()
        assert (installed / "Resources" / "UI" / f"{module}.ui").is_file()
        assert (installed / "Resources" / "Icons" / f"{module}.png").is_file()
    for package in ("MedAnnotLib", "MedAnnotWorklistLib", "MedAnnotCineLib", "MedAnnotExportLib", "medannot"):
        assert (installed / package / "__init__.py").is_file(), package
    assert (installed / "medannot" / "guideline" / "schema.json").is_file()


# ------------------------------------------------------------------------------------ without cmake
def _listed(cmakeFile: Path, variable: str, moduleName: str) -> list[str]:
    text = cmakeFile.read_text(encoding="utf-8").replace("${MODULE_NAME}", moduleName)
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, flags=re.S)
    return [] if match is None else [line.split("#")[0].strip() for line in match.group(1).splitlines()
                                      if line.split("#")[0].strip()]


def _install_paths() -> list[str]:
    """Where each file the CMake lists name lands in qt-scripted-modules, by the macros' rule: modules' files by the
    path they are listed with; MedAnnotLib's and the core's relative to MedAnnotExtension/."""
    paths = []
    for module in ("MedAnnot", "MedAnnotCine", "MedAnnotExport"):
        cmakeFile = EXTENSION_DIR / module / "CMakeLists.txt"
        paths += _listed(cmakeFile, "MODULE_PYTHON_SCRIPTS", module)
        paths += _listed(cmakeFile, "MODULE_PYTHON_RESOURCES", module)
    libCmake = EXTENSION_DIR / "MedAnnotLib" / "CMakeLists.txt"
    paths += _listed(libCmake, "MEDANNOTLIB_PYTHON_SCRIPTS", "MedAnnotLib")
    paths += _listed(libCmake, "MEDANNOTLIB_PYTHON_RESOURCES", "MedAnnotLib")
    core = EXTENSION_DIR / "medannot"
    paths += [str(path.relative_to(EXTENSION_DIR)) for path in core.rglob("*")
              if path.suffix in (".py", ".json", ".yaml") or path.name == "py.typed"]
    return paths


def test_no_two_install_rules_write_one_path_in_qt_scripted_modules():
    paths = _install_paths()
    assert "MedAnnotLib/requirements.txt" in paths
    assert [path for path, count in Counter(paths).items() if count > 1] == []
