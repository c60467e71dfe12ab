"""MedAnnot: expert medical-image annotation with provenance that holds up in a regulatory submission."""

__version__ = "0.1.0"
