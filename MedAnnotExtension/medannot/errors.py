"""The exceptions MedAnnot raises for failures a user can act on.

Every message says what was wrong, where (file, tag, segment, frame) and what to do; the CLI prints it as one line.
"""

from __future__ import annotations


class MedAnnotError(Exception):
    """Base class of every user-facing MedAnnot failure."""


class GuidelineError(MedAnnotError):
    """A guideline file is unreadable or does not validate against the schema."""


class SourceImageError(MedAnnotError):
    """The source DICOM is unreadable, empty, mixed-series or lacks attributes we need."""


class LabelMapError(MedAnnotError):
    """A label map is unreadable or does not fit the source or the guideline."""


class GeometryMismatchError(LabelMapError):
    """A label map's size, spacing, origin or direction does not match its source image."""


class SegmentContentError(LabelMapError):
    """A segment is empty although required, or a label value is not defined by the guideline."""


class ProvenanceError(MedAnnotError):
    """Reader, confidence or algorithm information is missing or malformed."""


class DicomSegError(MedAnnotError):
    """A DICOM-SEG or SR could not be read, or is not one MedAnnot can interpret."""
