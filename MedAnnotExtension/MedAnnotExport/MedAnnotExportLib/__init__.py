"""Parts of the MedAnnotExport module that need no Qt: the logic, importable by scripts, modules and tests."""

from MedAnnotExportLib.logic import MedAnnotExportLogic, MedAnnotPackageLogic

__all__ = ["MedAnnotExportLogic", "MedAnnotPackageLogic"]
