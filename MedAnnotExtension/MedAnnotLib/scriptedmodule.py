"""The base class of MedAnnot's module Logic classes, importable without Qt.

In Slicer it is ``slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic``; the slicer-core wheel (real MRML, no
Qt) lacks that module, so there the Logic classes derive from ``object`` and stay usable in tests and scripts.
"""

try:
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # the slicer-core wheel has MRML but not Slicer's Qt-based scripted-module classes
    ScriptedLoadableModuleLogic = object  # type: ignore[misc,assignment]

__all__ = ["ScriptedLoadableModuleLogic"]
