"""Real Slicer MRML from the slicer-core wheel, wired the way the Slicer application wires it.

slicer-core brings MRML, the Segmentations/Volumes/Sequences/Colors/Terminologies logics and ``slicer.util``, but no
Qt, CTK or application: ``slicer.mrmlScene``, ``slicer.modules`` and ``slicer.dicomDatabase`` do not exist. The
``scene`` fixture creates them for one test. Without slicer-core every test module that needs MRML skips itself
(``pytest.importorskip("slicer_core")`` at its top); this conftest then still loads, so the file checks run.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

try:
    import slicer_core  # noqa: F401  (the wheel; "slicer" alone may be an unrelated PyPI package)
    import slicer
    import vtk
except ImportError:
    slicer = vtk = None
    if os.environ.get("CI"):  # CI installs slicer-core (the dev extra): its absence is a broken set-up, not a skip
        raise RuntimeError("slicer-core is not installed; CI must run the MRML tests (pip install -e '.[dev]')")

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
for path in (EXTENSION_DIR / "MedAnnotExport", EXTENSION_DIR):  # parents of MedAnnotExportLib and of MedAnnotLib
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

GUIDELINE_PATH = Path(__file__).resolve().parent / "liver-ct.yaml"

# Order matters: Slicer creates these logics, gives each the application logic, then the scene, and registers them.
MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Sequences": "vtkSlicerSequencesLogic",
    "Terminologies": "vtkSlicerTerminologiesModuleLogic",
}


class LoadedModule:
    """What ``slicer.modules.<name>`` is in Slicer, as far as logic users need: an object with ``logic()``."""

    def __init__(self, name: str, logic) -> None:
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class DicomDatabase:
    """Stands in for ctkDICOMDatabase (slicer-core has no CTK): maps SOP Instance UIDs to their files."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def addFolder(self, folder: Path) -> None:
        from pydicom import dcmread

        for file in sorted(folder.iterdir()):
            self.files[str(dcmread(file, stop_before_pixels=True).SOPInstanceUID)] = str(file)

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")  # ctkDICOMDatabase answers an empty string for an unknown UID


@pytest.fixture
def scene(monkeypatch):
    """A fresh ``vtkMRMLScene`` set as ``slicer.mrmlScene``, with the module logics behind ``slicer.modules``."""
    mrmlScene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(mrmlScene)
    modules = {}
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    # Without Slicer's share folder the Colors and Terminologies logics log errors about default files they
    # cannot find; they work without them.
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        for name, className in MODULE_LOGICS.items():
            logic = getattr(slicer, className)()
            logic.SetMRMLApplicationLogic(applicationLogic)
            logic.SetMRMLScene(mrmlScene)
            applicationLogic.SetModuleLogic(name, logic)
            modules[name.lower()] = LoadedModule(name, logic)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    monkeypatch.setattr(slicer, "mrmlScene", mrmlScene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(**modules), raising=False)
    yield mrmlScene
    mrmlScene.Clear(True)


@pytest.fixture
def guideline_path() -> Path:
    """A two-segment guideline (1 Liver, 2 Lesion) with DICOM codes and colours."""
    return GUIDELINE_PATH


@pytest.fixture
def guideline(guideline_path):
    from medannot.guideline import load_guideline

    return load_guideline(guideline_path)


@pytest.fixture
def oblique_geometry():
    """A small oblique LPS grid (axes rotated 30 degrees about S, tilted about L) with anisotropic spacing."""
    from medannot.imaging.geometry import Geometry

    angle, tilt = np.deg2rad(30), 0.2
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    tilting = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]])
    return Geometry(size=(7, 5, 3), spacing=(0.7, 0.9, 2.5), origin=(-12.5, 30.25, -101.0),
                    direction=tuple((rotation @ tilting).reshape(-1).tolist()))


@pytest.fixture
def dicom_database(monkeypatch):
    """An empty stand-in DICOM database set as ``slicer.dicomDatabase``."""
    database = DicomDatabase()
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    return database


@pytest.fixture
def ct_study(scene, dicom_database, tmp_path):
    """A synthetic 8x32x32 CT series on disk, in the DICOM database, loaded as a volume node as Slicer's DICOM
    plugin loads it (voxels in slice order, ``DICOM.instanceUIDs`` set), with the phantom's true label map."""
    from pydicom import dcmread

    import MedAnnotLib
    from medannot.demo_data import ct_phantom, make_ct_series
    from medannot.imaging import load_source

    shape = (8, 32, 32)
    hu, labels = ct_phantom(shape)
    folder = make_ct_series(tmp_path / "ct", shape=shape, hu=hu)
    dicom_database.addFolder(folder)
    source = load_source(folder)
    voxels = np.stack([dcmread(path).pixel_array for path in source.paths])
    volumeNode = MedAnnotLib.addVolumeNodeFromArray(voxels, source.geometry, name="CT", scene=scene)
    volumeNode.SetAttribute("DICOM.instanceUIDs", " ".join(str(ds.SOPInstanceUID) for ds in source.datasets))
    return types.SimpleNamespace(folder=folder, volumeNode=volumeNode, labels=labels, geometry=source.geometry,
                                 voxels=voxels)
