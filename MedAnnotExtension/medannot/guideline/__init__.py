"""Guidelines: the versioned, machine-readable rules of an annotation project.

The QA engine that checks a segmentation against them is :mod:`medannot.guideline.qa` (imported on use: it needs
SimpleITK).
"""

from medannot.guideline.model import (
    SEGMENT_EDITOR_TOOLS,
    SIGNATURE_MEANINGS,
    AgreementThreshold,
    ChecklistItem,
    CodedConcept,
    Guideline,
    ReviewPolicy,
    SegmentSpec,
    load_guideline,
    parse_guideline,
)
from medannot.guideline.rules import RULE_KINDS, Rule

__all__ = [
    "RULE_KINDS", "SEGMENT_EDITOR_TOOLS", "SIGNATURE_MEANINGS", "AgreementThreshold", "ChecklistItem",
    "CodedConcept", "Guideline", "ReviewPolicy", "Rule",
    "SegmentSpec", "load_guideline", "parse_guideline",
]
