"""The parts of the modules that need Qt to run, checked as files: the GUI code, its .ui, CMake (MedAnnotExport's
widgets here; every module's Logic class, icon and CMake at the end).

The widget cannot be built without Slicer's Qt; these checks catch the mistakes that would only show there.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from PIL import Image

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
MODULE_DIR = EXTENSION_DIR / "MedAnnotExport"
MODULE_SOURCE = (MODULE_DIR / "MedAnnotExport.py").read_text(encoding="utf-8")
UI = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "MedAnnotExport.ui")


def _uiWidgets() -> dict[str, str]:
    return {widget.get("name"): widget.get("class") for widget in UI.iter("widget")}


def _parameterFields() -> set[str]:
    tree = ast.parse(MODULE_SOURCE)
    parameterClass = next(node for node in tree.body
                          if isinstance(node, ast.ClassDef) and node.name == "MedAnnotExportParameterNode")
    assert any(getattr(decorator, "id", None) == "parameterNodeWrapper" for decorator in parameterClass.decorator_list)
    return {statement.target.id for statement in parameterClass.body if isinstance(statement, ast.AnnAssign)}


def _boundParameters() -> dict[str, str]:
    bound = {}
    for widget in UI.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("name")
    return bound


def test_every_widget_the_gui_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SOURCE))
    assert used, "the widget should reach its controls through self.ui"
    assert used - set(_uiWidgets()) == set()


def test_every_parameter_is_bound_to_exactly_one_widget_and_every_binding_to_a_parameter():
    assert set(_boundParameters()) == _parameterFields()


def test_ui_uses_slicer_widgets_for_nodes_and_paths_and_a_table_for_confidences():
    widgets = _uiWidgets()
    assert widgets["MedAnnotExport"] == "qMRMLWidget"
    assert widgets["segmentationSelector"] == widgets["referenceVolumeSelector"] == "qMRMLNodeComboBox"
    assert widgets["guidelinePathLineEdit"] == widgets["outputDirPathLineEdit"] == "ctkPathLineEdit"
    assert widgets["confidenceTableWidget"] == "QTableWidget"
    assert widgets["exportButton"] == "QPushButton"
    connected = {connection.findtext("receiver") for connection in UI.iter("connection")
                 if connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert connected == {name for name, kind in widgets.items() if kind == "qMRMLNodeComboBox"}


# The three modules' files, checked alike: which Logic class the GUI runs, the icon, and what CMake installs.
MODULES = {
    "MedAnnot": ("MedAnnotWorklistLib.logic", "MedAnnotLogic"),
    "MedAnnotCine": ("MedAnnotCineLib.logic", "MedAnnotCineLogic"),
    "MedAnnotExport": ("MedAnnotExportLib.logic", "MedAnnotExportLogic"),
}


def _listed_in_cmake(cmakeFile: Path, moduleName: str) -> set[str]:
    text = cmakeFile.read_text(encoding="utf-8").replace("${MODULE_NAME}", moduleName)
    return set(re.findall(r"[\w/]+\.(?:py|ui|png|txt)\b", text)) - {"CMakeLists.txt"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_runs_the_logic_class_the_tests_exercise(module):
    tree = ast.parse((EXTENSION_DIR / module / f"{module}.py").read_text(encoding="utf-8"))
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert MODULES[module] in imported
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert defined == {module, f"{module}ParameterNode", f"{module}Widget", f"{module}Test"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_icon_is_a_128_pixel_png(module):
    with Image.open(EXTENSION_DIR / module / "Resources" / "Icons" / f"{module}.png") as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_cmake_installs_every_file_of_each_module_and_the_extension_builds_it(module):
    moduleDir = EXTENSION_DIR / module
    moduleFiles = {str(path.relative_to(moduleDir)) for path in moduleDir.rglob("*")
                   if path.is_file() and path.suffix in (".py", ".ui", ".png", ".txt") and path.name != "CMakeLists.txt"
                   and "__pycache__" not in path.parts}
    assert _listed_in_cmake(moduleDir / "CMakeLists.txt", module) == moduleFiles
    assert f"add_subdirectory({module})" in (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8").splitlines()


def test_cmake_installs_every_python_file_of_the_shared_lib():
    libFiles = {str(path.relative_to(EXTENSION_DIR)) for path in (EXTENSION_DIR / "MedAnnotLib").glob("*.py")}
    libFiles.add("MedAnnotLib/requirements.txt")  # the extension's one requirements list
    assert _listed_in_cmake(EXTENSION_DIR / "MedAnnotLib" / "CMakeLists.txt", "MedAnnotLib") == libFiles
