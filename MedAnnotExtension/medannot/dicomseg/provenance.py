"""Who drew a segmentation, how, how sure and when: the provenance MedAnnot records in every SEG and SR."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from medannot.errors import ProvenanceError

ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC")
_PN = re.compile(r"^[^\\=]{1,64}$")


@dataclass(frozen=True)
class ReaderInfo:
    """The person who made (or is accountable for) a segmentation.

    Parameters
    ----------
    name
        DICOM person name, ``Last^First``.
    reader_id
        Stable identifier of the reader in the lab (login or staff id).
    role
        Role in the project, e.g. ``Annotator``, ``Reviewer``, ``Radiologist``.
    institution
        Institution the reader works for.
    """

    name: str
    reader_id: str
    role: str = "Annotator"
    institution: str | None = None

    def __post_init__(self) -> None:
        if not _PN.match(self.name or ""):
            raise ProvenanceError(
                f"reader name {self.name!r} is not a DICOM person name; write it as Last^First (at most 64 characters)"
            )
        if not self.reader_id or len(self.reader_id) > 16 or "\\" in self.reader_id:
            raise ProvenanceError(f"reader id {self.reader_id!r} must be 1 to 16 characters without backslash")


@dataclass(frozen=True)
class SegmentProvenance:
    """How one segment was made and how sure its reader is.

    ``confidence`` is 0-100 (DCM 111012 Certainty of Finding, in %). ``keyframes`` and ``interpolated_frames`` are
    1-based source frame numbers (for a cine or a volume: slice numbers) when interpolation was used.
    """

    algorithm_type: str = "MANUAL"
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    confidence: int | None = None
    started: datetime | None = None
    ended: datetime | None = None
    active_seconds: float | None = None
    keyframes: tuple[int, ...] = field(default_factory=tuple)
    interpolated_frames: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.algorithm_type not in ALGORITHM_TYPES:
            raise ProvenanceError(
                f"algorithm type {self.algorithm_type!r} is not one of {', '.join(ALGORITHM_TYPES)}"
            )
        if self.algorithm_type != "MANUAL" and not self.algorithm_name:
            raise ProvenanceError(f"a {self.algorithm_type} segment needs an algorithm name (TYPE:NAME[:VERSION])")
        if self.confidence is not None and not (0 <= int(self.confidence) <= 100):
            raise ProvenanceError(f"confidence {self.confidence} must be between 0 and 100")


def parse_algorithm(text: str) -> SegmentProvenance:
    """Parse ``MANUAL|SEMIAUTOMATIC|AUTOMATIC[:NAME[:VERSION]]`` as given on the command line."""
    parts = text.split(":")
    kind = parts[0].strip().upper()
    name = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
    version = parts[2].strip() if len(parts) > 2 and parts[2].strip() else None
    if kind == "SEMIAUTOMATIC" or kind == "AUTOMATIC":
        name = name or None
    return SegmentProvenance(algorithm_type=kind, algorithm_name=name, algorithm_version=version)
