"""Guidelines: the versioned, machine-readable rules of an annotation project."""

from medannot.guideline.model import CodedConcept, Guideline, SegmentSpec, load_guideline, parse_guideline

__all__ = ["CodedConcept", "Guideline", "SegmentSpec", "load_guideline", "parse_guideline"]
