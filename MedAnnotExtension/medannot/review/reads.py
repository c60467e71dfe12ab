"""Reader SEGs of one case read for review: checked to share one source and grid, segments matched by name."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from pydicom import Dataset

from medannot.errors import DicomSegError, GeometryMismatchError
from medannot.guideline import CodedConcept, Guideline, SegmentSpec
from medannot.imaging.geometry import Geometry
from medannot.imaging.source import SourceImage
from medannot.review.agreement import PreparedMask

logger = logging.getLogger(__name__)


@dataclass
class Read:
    """One reader SEG: who, on which source, and one prepared mask per segment name."""

    path: Path
    seg_uid: str
    reader: str
    series_uid: str | None
    geometry: Geometry | None  # None for a cine (no patient coordinates): its masks are compared frame by frame
    shape: tuple[int, ...] = ()  # the label array's shape (slices or frames, rows, columns)
    masks: dict[str, PreparedMask] = field(default_factory=dict)
    items: dict[str, Dataset] = field(default_factory=dict)  # SegmentSequence item by segment name
    guideline: dict[str, str | None] = field(default_factory=dict)


def load_reads(paths: Sequence[Path], source: SourceImage | None = None) -> list[Read]:
    """Read each SEG (onto ``source``'s grid when given) and check they share one source and one grid.

    Raises
    ------
    DicomSegError
        For an unreadable SEG, one without a patient geometry (unless ``source`` is a calibrated cine), or SEGs
        drawn on different sources.
    GeometryMismatchError
        For SEGs on different grids.
    """
    from medannot.dicomseg import read_segmentation

    reads: list[Read] = []
    for path in paths:
        record = read_segmentation(path, source=source)
        summary = record.summary
        frames = record.geometry is None and source is not None
        if frames:
            assert source is not None
            spacing = _cine_spacing(path, source)
        elif record.geometry is None:
            raise DicomSegError(f"{path}: the SEG has no patient geometry (Frame of Reference and pixel spacing), "
                                "so distances in mm are unknown; give --source with the series it was drawn on")
        series = summary["source"]["series_uid"]
        if reads:
            first = reads[0]
            if series != first.series_uid:
                raise DicomSegError(f"{path}: drawn on series {series}, but {first.path} on series "
                                    f"{first.series_uid}; compare SEGs of one source")
            if first.geometry is not None and record.geometry is not None:
                problems = first.geometry.mismatches(record.geometry)
            elif first.shape != tuple(record.labels.shape) or (first.geometry is None) != (record.geometry is None):
                problems = [f"one is a cine {first.shape}, the other {tuple(record.labels.shape)}"]
            else:
                problems = []
            if problems:
                raise GeometryMismatchError(f"{path}: its grid differs from {first.path}'s: {'; '.join(problems)}; "
                                            "read both onto the source's grid with --source")
        if record.geometry is not None:
            spacing = tuple(float(s) for s in record.geometry.spacing[::-1])  # numpy order: slice, row, column
        read = Read(path=Path(path), seg_uid=str(record.dataset.SOPInstanceUID),
                    reader=summary.get("reader_name") or Path(path).name, series_uid=series,
                    geometry=record.geometry, shape=tuple(record.labels.shape),
                    guideline=dict(summary.get("guideline") or {}))
        by_number = {int(item.SegmentNumber): item for item in record.dataset.SegmentSequence}
        for segment in summary["segments"]:
            name = segment["name"]
            if name in read.masks:
                raise DicomSegError(f"{path}: two segments are labelled {name!r}; segments are matched across "
                                    "SEGs by label, so each needs a unique one")
            read.masks[name] = PreparedMask(record.segment_mask(segment["number"]), spacing,  # type: ignore[arg-type]
                                            frames=frames)
            read.items[name] = by_number[segment["number"]]
        reads.append(read)
        del record  # its label map: one at a time
    return reads


def _cine_spacing(path: Path, source: SourceImage) -> tuple[float, float, float]:
    """(1, row mm, column mm) of a cine's pixels, from its ultrasound calibration; the first axis (time) has no
    spacing and is not used."""
    from medannot.imaging.calibration import calibration_from_file

    calibration = calibration_from_file(source.paths[0])
    region = calibration.default
    if region is None:
        raise DicomSegError(f"{path}: its source {source.description} has no patient geometry and no pixel "
                            f"calibration ({calibration.reason}), so distances in mm are unknown; agreement needs "
                            "a calibrated source (SequenceOfUltrasoundRegions with cm units, or PixelSpacing)")
    if not calibration.is_uniform:
        raise DicomSegError(f"{path}: its source {source.description} has ultrasound regions of different pixel "
                            f"sizes ({calibration.describe()}); agreement in mm needs one pixel size per frame")
    return 1.0, region.row_mm, region.col_mm


def segment_names(reads: Sequence[Read]) -> list[str]:
    """Every segment name of any read, in the order first seen."""
    return list(dict.fromkeys(name for read in reads for name in read.masks))


def missing_segments(reads: Sequence[Read]) -> list[str]:
    """One sentence per read lacking a segment another read has (counted as empty there)."""
    names = segment_names(reads)
    notes = []
    for read in reads:
        for name in names:
            if name not in read.masks:
                having = next(r.path for r in reads if name in r.masks)
                notes.append(f"{read.path} has no segment {name!r} ({having} has): counted as empty")
    return notes


def check_required_segments(reads: Sequence[Read], guideline: Guideline) -> None:
    """Refuse reads that lack a segment the guideline requires (absent, or present with no voxel).

    Raises
    ------
    DicomSegError
        Naming the first such SEG and every required segment it lacks.
    """
    required = [spec.name for spec in guideline.segments if spec.required]
    for read in reads:
        lacking = [name for name in required if name not in read.masks or read.masks[name].is_empty]
        if lacking:
            raise DicomSegError(f"{read.path}: has no {', '.join(repr(n) for n in lacking)}, which guideline "
                                f"{guideline.id} {guideline.version} requires; that read cannot enter a consensus "
                                "(return it to its reader)")


def _hex_colour(item: Dataset) -> str:
    if "RecommendedDisplayCIELabValue" not in item:
        return "#808080"
    rgb = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb()
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _concept(sequence: Sequence[Dataset]) -> CodedConcept:
    code = sequence[0]
    return CodedConcept(scheme=str(code.CodingSchemeDesignator), code=str(code.CodeValue),
                        meaning=str(code.CodeMeaning))


def guideline_from_reads(reads: Sequence[Read]) -> Guideline:
    """A guideline for a consensus when none is given: the readers' segments (name, codes, colour from each
    segment's first SegmentSequence item), none required, under the guideline id, version and sha256 the readers'
    SEGs record (so the consensus names the guideline the readers followed).

    Raises
    ------
    DicomSegError
        When the SEGs record different guidelines.
    """
    recorded = [(r.path, r.guideline.get("id"), r.guideline.get("version"), r.guideline.get("sha256"))
                for r in reads]
    named = [g for g in recorded if g[3]]
    for path, gid, version, sha in named[1:]:
        if sha != named[0][3]:
            raise DicomSegError(f"{path}: follows guideline {gid} {version} (sha256 {str(sha)[:12]}), but "
                                f"{named[0][0]} follows {named[0][1]} {named[0][2]} (sha256 {str(named[0][3])[:12]}); "
                                "give --guideline for the consensus")
    segments = []
    for label, name in enumerate(segment_names(reads), start=1):
        item = next(r.items[name] for r in reads if name in r.items)
        segments.append(SegmentSpec(label=label, name=name,
                                    category=_concept(item.SegmentedPropertyCategoryCodeSequence),
                                    type=_concept(item.SegmentedPropertyTypeCodeSequence),
                                    color=_hex_colour(item), required=False))
    if named:
        _, gid, version, sha = named[0]
        return Guideline(id=str(gid), version=str(version), title=f"{gid} {version} (from the reader SEGs)",
                         segments=tuple(segments), sha256=str(sha))
    digest = hashlib.sha256("\n".join(f"{s.name}|{s.type.code}" for s in segments).encode()).hexdigest()
    return Guideline(id="reader-segments", version="0", title="Segments of the reader SEGs",
                     segments=tuple(segments), sha256=digest)
