"""DICOM-SEG and companion TID 1500 SR with MedAnnot provenance: write, read, validate.

The names below are imported from their modules when first used, so that a light module of this package (such as
the highdicom preparation a helper process runs) can be imported without pydicom and highdicom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medannot._lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF, globals())
