"""DICOM-SEG and companion TID 1500 SR with MedAnnot provenance: write, read, validate.

The names below are imported from their modules when first used, so that a light module of this package (such as
the highdicom preparation a helper process runs) can be imported without pydicom and highdicom.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medannot.dicomseg._sr_builder import ConsensusInput
    from medannot.dicomseg.export import ExportResult, export_segmentation
    from medannot.dicomseg.provenance import ReaderInfo, SegmentProvenance, parse_algorithm
    from medannot.dicomseg.reader import SegmentationRecord, read_segmentation

_MODULE_OF = {
    "ConsensusInput": "_sr_builder",
    "ExportResult": "export",
    "ReaderInfo": "provenance",
    "SegmentProvenance": "provenance",
    "SegmentationRecord": "reader",
    "export_segmentation": "export",
    "parse_algorithm": "provenance",
    "read_segmentation": "reader",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
