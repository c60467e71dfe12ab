"""DICOM-SEG and companion TID 1500 SR with MedAnnot provenance: write, read, validate."""

from medannot.dicomseg.provenance import ReaderInfo, SegmentProvenance, parse_algorithm
from medannot.dicomseg._sr_builder import ConsensusInput
from medannot.dicomseg.export import ExportResult, export_segmentation
from medannot.dicomseg.reader import SegmentationRecord, read_segmentation

__all__ = [
    "ConsensusInput",
    "ExportResult",
    "ReaderInfo",
    "SegmentProvenance",
    "SegmentationRecord",
    "export_segmentation",
    "parse_algorithm",
    "read_segmentation",
]
