"""What the Slicer ExtensionsIndex and a reader see of the extension: its metadata, the modules' declared
dependencies, interpolation methods offered only where they can run, and messages that never ask a radiologist
to run pip.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_DIR = ROOT / "MedAnnotExtension"
MODULES = ("MedAnnot", "MedAnnotCine", "MedAnnotExport")


def _extension_metadata() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'^set\((EXTENSION_\w+) "(.*)"\)', text, flags=re.M))


def _module_attribute(module: str, attribute: str):
    tree = ast.parse((EXTENSION_DIR / module / f"{module}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
                and node.targets[0].attr == attribute and ast.unparse(node.targets[0].value) == "self.parent"):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module}.py sets no self.parent.{attribute}")


def test_contributors_are_given_as_name_and_affiliation():
    pattern = re.compile(r"^[^()]+ \([^()]+\)$")
    for contributor in _extension_metadata()["EXTENSION_CONTRIBUTORS"].split(", "):
        assert pattern.match(contributor), contributor
    for module in MODULES:
        for contributor in _module_attribute(module, "contributors"):
            assert pattern.match(contributor), (module, contributor)


def test_the_icon_url_points_at_a_128_pixel_png_of_this_repository():
    url = _extension_metadata()["EXTENSION_ICONURL"]
    path = url.split("/main/", 1)[1]
    assert (ROOT / path).is_file() and path.endswith(".png"), url
    screenshots = _extension_metadata()["EXTENSION_SCREENSHOTURLS"].split()
    assert all((ROOT / s.split("/main/", 1)[1]).is_file() for s in screenshots), screenshots


def test_the_worklist_module_declares_the_modules_it_uses():
    """MedAnnot opens cine cases with MedAnnotCine's logic on Sequences, and exports through MedAnnotExport."""
    assert {"MedAnnotCine", "Sequences", "MedAnnotExport", "Segmentations"} <= set(
        _module_attribute("MedAnnot", "dependencies"))
    assert {"Sequences", "Segmentations"} <= set(_module_attribute("MedAnnotCine", "dependencies"))
    # Sequences is a Slicer core module, not an extension: the extension itself depends on no other extension.
    assert _extension_metadata()["EXTENSION_DEPENDS"] == "NA"


def test_no_message_the_slicer_side_can_show_tells_the_reader_to_run_pip():
    offenders = []
    roots = [EXTENSION_DIR / m for m in (*MODULES, "MedAnnotLib")] + [
        EXTENSION_DIR / "medannot" / sub for sub in ("imaging", "interpolation", "dicomseg", "guideline", "client")]
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "pip install" in node.value:
                    offenders.append(f"{path.relative_to(EXTENSION_DIR)}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------------------------------------- methods
pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_slicer_cine import KEYFRAMES, cine, logic, markFromTruth  # noqa: E402,F401 - cine, logic: fixtures

from medannot.interpolation import METHODS  # noqa: E402
from medannot.interpolation import morphological  # noqa: E402


def test_morphological_is_offered_only_where_its_package_is_installed(monkeypatch):
    from MedAnnotCineLib.logic import MedAnnotCineLogic

    assert METHODS[-1] == "morphological"  # the widget may drop only trailing choices (item i is choice i)
    monkeypatch.setattr(morphological, "is_available", lambda: False)
    assert MedAnnotCineLogic.availableMethods() == ["auto", "motion", "shape"]
    monkeypatch.setattr(morphological, "is_available", lambda: True)
    assert MedAnnotCineLogic.availableMethods() == list(METHODS)


def test_morphological_without_its_package_is_refused_saying_which_methods_to_choose(cine, logic, monkeypatch):
    from medannot.interpolation import InterpolationError

    markFromTruth(logic, cine, KEYFRAMES)
    monkeypatch.setattr(morphological, "is_available", lambda: False)

    with pytest.raises(InterpolationError, match="not available in this Slicer.*choose auto, motion or shape") as error:
        logic.interpolate("morphological")
    assert "pip" not in str(error.value)
