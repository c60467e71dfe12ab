"""Loading the modules as Slicer does, from a source checkout and from a build: Slicer appends each module's own folder
to sys.path and executes the module file (qSlicerScriptedLoadableModuleFactory, qSlicerScriptedUtils in Slicer 5.12);
it puts nothing else there, so MedAnnotLib, medannot and the other modules' Libs must be found from that alone.

Each load runs in a fresh Python whose sys.path has no MedAnnotExtension folder (the editable install's .pth adds
one; it is removed). slicer-core has no Qt, CTK or ScriptedLoadableModule: those are stand-ins that accept anything,
so this checks imports and search paths, not the GUI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULES = ("MedAnnot", "MedAnnotCine", "MedAnnotExport")

LOAD_AS_SLICER_DOES = r'''
import importlib.util, json, sys, types
moduleFile, moduleName = sys.argv[1], sys.argv[2]
sys.path[:] = [p for p in sys.path if "MedAnnotExtension" not in p and p not in ("", ".")]

class Anything:
    """Stands in for any Qt/CTK/Slicer GUI name: a class, a decorator, a function, a constant."""
    def __init__(self, *args, **kwargs): pass
    def __call__(self, *args, **kwargs): return args[0] if len(args) == 1 and isinstance(args[0], type) else Anything()
    def __getattr__(self, name): return Anything()
    def __getitem__(self, key): return Anything()
    def __class_getitem__(cls, key): return cls

class GuiModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Anything,), {})

import slicer, slicer.util
for name in ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.i18n", "slicer.parameterNodeWrapper"):
    sys.modules[name] = GuiModule(name)
slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
slicer.i18n = sys.modules["slicer.i18n"]
slicer.parameterNodeWrapper = sys.modules["slicer.parameterNodeWrapper"]
if not hasattr(slicer.util, "VTKObservationMixin"):
    slicer.util.VTKObservationMixin = type("VTKObservationMixin", (), {})

before = list(sys.path)
sys.path.append(str(__import__("pathlib").Path(moduleFile).parent))  # what ctkFactoryScriptedItem::load() does
spec = importlib.util.spec_from_file_location(moduleName, moduleFile)  # what loadSourceAsModule does
module = importlib.util.module_from_spec(spec)
sys.modules[moduleName] = module
spec.loader.exec_module(module)
import MedAnnotLib, medannot
print(json.dumps({"added": [p for p in sys.path if p not in before], "MedAnnotLib": MedAnnotLib.__file__,
                  "medannot": medannot.__file__,
                  "Libs": {n: getattr(sys.modules.get(n), "__file__", None)
                           for n in ("MedAnnotWorklistLib", "MedAnnotCineLib", "MedAnnotExportLib")}}))
'''


def _loadAsSlicerDoes(moduleFile: Path, tmp_path: Path) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, "-c", LOAD_AS_SLICER_DOES, str(moduleFile), moduleFile.stem],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environment)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_loads_from_the_source_tree_with_only_its_own_folder_on_the_path(module, tmp_path):
    loaded = _loadAsSlicerDoes(EXTENSION_DIR / module / f"{module}.py", tmp_path)

    assert Path(loaded["MedAnnotLib"]).parent == EXTENSION_DIR / "MedAnnotLib"
    assert Path(loaded["medannot"]).parent == EXTENSION_DIR / "medannot"
    lib = {"MedAnnot": "MedAnnotWorklistLib", "MedAnnotCine": "MedAnnotCineLib", "MedAnnotExport": "MedAnnotExportLib"}
    assert Path(loaded["Libs"][lib[module]]).parent.parent == EXTENSION_DIR / module


def test_a_module_in_a_build_adds_nothing_to_the_path(tmp_path):
    """In a build every module file, Lib, MedAnnotLib and medannot share one qt-scripted-modules folder."""
    flat = tmp_path / "qt-scripted-modules"
    flat.mkdir()
    for module in MODULES:
        shutil.copy(EXTENSION_DIR / module / f"{module}.py", flat)
        for lib in (EXTENSION_DIR / module).glob("*Lib"):
            shutil.copytree(lib, flat / lib.name)
    shutil.copytree(EXTENSION_DIR / "MedAnnotLib", flat / "MedAnnotLib")
    shutil.copytree(EXTENSION_DIR / "medannot", flat / "medannot")

    loaded = _loadAsSlicerDoes(flat / "MedAnnot.py", tmp_path)

    assert loaded["added"] == [str(flat)]
    assert Path(loaded["MedAnnotLib"]).parent == flat / "MedAnnotLib"
