"""Export a label map (or probability maps) as DICOM-SEG + companion SR with MedAnnot provenance.

All checks run before anything is written; the two files appear together (written to temporary names, then
renamed), so a failed export leaves the output folder as it was.
"""

from __future__ import annotations

import copy

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

import medannot
from medannot._gc import with_paused_gc
from medannot.dicomseg import codes
from medannot.dicomseg._file_writer import save_dataset
from medannot.dicomseg._fractional_frames import MAX_FRACTIONAL_VALUE, quantise
from medannot.dicomseg._highdicom_setup import prepare_highdicom
from medannot.dicomseg._seg_builder import build_seg
from medannot.dicomseg._sr_builder import ConsensusInput, SrSegment, build_sr
from medannot.dicomseg.reader import find_companion_sr, read_dicom
from medannot.dicomseg.provenance import ReaderInfo, SegmentProvenance
from medannot.errors import (
    DicomSegError, GeometryMismatchError, LabelMapError, ProvenanceError, SegmentContentError,
)
from medannot.guideline import Guideline, SegmentSpec
from medannot.imaging.geometry import Geometry
from medannot.imaging.source import SourceImage

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9100


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it holds."""

    seg_path: Path
    sr_path: Path
    seg_sop_instance_uid: str
    sr_sop_instance_uid: str
    segments: list[dict[str, object]] = field(default_factory=list)


def _resolve_provenance(guideline: Guideline, segments: Mapping[str | int, SegmentProvenance] | None
                        ) -> dict[int, SegmentProvenance]:
    resolved: dict[int, SegmentProvenance] = {}
    for key, prov in (segments or {}).items():
        spec = guideline.segment(key)
        resolved[spec.label] = prov
    return resolved


def _check_geometry(source: SourceImage, shape: tuple[int, ...], geometry: Geometry | None, what: str) -> None:
    if tuple(shape) != tuple(source.shape):
        raise GeometryMismatchError(
            f"{what}: size {tuple(shape)} (frames/slices, rows, columns) but the source "
            f"{source.description} has {source.shape}; export the label map on the source image's grid"
        )
    if source.geometry is not None and geometry is not None:
        problems = source.geometry.mismatches(geometry)
        if problems:
            raise GeometryMismatchError(
                f"{what}: does not lie on the source image grid: " + "; ".join(problems)
                + ". Resample the label map onto the source volume (e.g. Slicer: Export to label map with the "
                "source as reference)"
            )


def checklist_answers(guideline: Guideline, answers: Mapping[str, str | bool]) -> dict[str, str]:
    """Check answers against the guideline's checklist and normalise them (yes/no questions to ``yes``/``no``).

    Raises
    ------
    ProvenanceError
        For an unknown item or an answer that is not one of the item's choices.
    """
    items = {item.id: item for item in guideline.checklist}
    normalised: dict[str, str] = {}
    for key, value in answers.items():
        item = items.get(key)
        if item is None:
            known = ", ".join(items) or "none"
            raise ProvenanceError(f"checklist item {key!r} is not in guideline {guideline.id} {guideline.version} "
                                  f"(its items: {known})")
        text = str(value).strip().lower() if item.type == "yes_no" else str(value).strip()
        if item.type == "yes_no":
            text = {"true": "yes", "false": "no", "y": "yes", "n": "no"}.get(text, text)
            if text not in ("yes", "no"):
                raise ProvenanceError(f"checklist item {key!r} ({item.question}) takes yes or no, not {value!r}")
        elif text not in item.choices:
            raise ProvenanceError(f"checklist item {key!r} ({item.question}) takes one of "
                                  f"{', '.join(item.choices)}, not {value!r}")
        normalised[key] = text
    return normalised


def _voxel_counts(labels: np.ndarray) -> dict[int, int]:
    """Voxels per label value, counted one non-empty slice at a time (no int64 copy of the whole map is made).

    Most slices of a label map are empty; one ``max`` per slice finds those that are not.
    """
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise LabelMapError(f"label map holds negative value {int(labels.min())}")
    if not labels.size:
        return {}
    peaks = labels.reshape(labels.shape[0], -1).max(axis=1)
    total = np.zeros(int(peaks.max()) + 1, dtype=np.int64)
    for index in np.flatnonzero(peaks):
        plane = labels[index]
        if total.size <= 16:  # a few values: one comparison each costs less than bincount's int64 copy of the slice
            for value in range(1, int(peaks[index]) + 1):
                total[value] += np.count_nonzero(plane == value)
        else:
            total += np.bincount(plane.ravel(), minlength=total.size)
    return {int(v): int(c) for v, c in enumerate(total) if c and v}


def _count_at_least(values: np.ndarray, threshold: float) -> int:
    """Voxels at or above ``threshold``, counted a few slices at a time (no full-size boolean temporary)."""
    step = max(1, (1 << 22) // max(1, values[0].size)) if values.size else 1
    return sum(int(np.count_nonzero(values[start:start + step] >= threshold))
               for start in range(0, values.shape[0], step))


@with_paused_gc
def export_segmentation(
    source: SourceImage,
    labels: np.ndarray | None,
    labels_geometry: Geometry | None,
    guideline: Guideline,
    reader: ReaderInfo,
    output_dir: str | Path,
    segments: Mapping[str | int, SegmentProvenance] | None = None,
    task_id: str | None = None,
    probabilities: Mapping[str | int, np.ndarray] | None = None,
    replaces: str | Path | None = None,
    content_datetime: datetime | None = None,
    labels_name: str = "label map",
    checklist: Mapping[str, str | bool] | None = None,
    derived_from: Sequence[ConsensusInput] = (),
) -> ExportResult:
    """Write one SEG and one SR for a reader's segmentation of ``source``.

    Parameters
    ----------
    source
        The images segmented (:func:`medannot.imaging.load_source`).
    labels
        (frames or slices, rows, cols) integer label map using the guideline's label values; 0 is background.
        ``None`` when ``probabilities`` are given instead.
    labels_geometry
        Geometry of the label map (checked against the source's); ``None`` to check the size only.
    guideline
        The guideline followed; defines the segments and their codes.
    reader
        Who made the segmentation.
    output_dir
        Folder to write ``seg-<UID suffix>.dcm`` and ``sr-<UID suffix>.dcm`` into (never overwritten).
    segments
        Per-segment provenance by segment name or label value; segments not given are MANUAL without confidence.
    task_id
        The task-queue task this result answers, if any.
    probabilities
        Per-segment probability maps in [0, 1] (by name or label); writes a FRACTIONAL (PROBABILITY) SEG.
    replaces
        Path of an earlier SEG this one corrects; the new SR lists the earlier SR (same folder) as predecessor.
    content_datetime
        When the segmentation was finished (default: now, UTC).
    labels_name
        How to name the label map in error messages (usually its file path).
    checklist
        The reader's answers to the guideline's per-case checklist, by item id (recorded in the SR).
    derived_from
        For a consensus: the reader SEGs it was made from, with STAPLE's estimates (listed in the SR).

    Raises
    ------
    GeometryMismatchError, SegmentContentError, LabelMapError
        Before anything is written.
    """
    built = _build_seg_and_sr(
        source, labels, labels_geometry, guideline, reader, segments=segments, task_id=task_id,
        probabilities=probabilities, replaces=replaces, content_datetime=content_datetime, labels_name=labels_name,
        checklist=checklist, derived_from=derived_from,
    )
    seg, sr = built.seg, built.sr
    seg_uid, sr_uid = str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DicomSegError(f"{output_dir}: cannot create the output folder ({exc.strerror or exc}); choose a "
                            "folder you can write") from exc
    seg_path = output_dir / f"seg-{seg_uid[-12:]}.dcm"
    sr_path = output_dir / f"sr-{sr_uid[-12:]}.dcm"
    _write_together([(seg, seg_path), (sr, sr_path)])
    logger.info("wrote %s and %s", seg_path, sr_path)
    summary = [
        {"number": s.number, "label": s.spec.label, "name": s.spec.name,
         "algorithm_type": s.provenance.algorithm_type, "confidence": s.provenance.confidence,
         "voxels": built.counts.get(s.spec.label, 0), "tracking_uid": s.tracking_uid}
        for s in built.segments
    ]
    return ExportResult(seg_path, sr_path, seg_uid, sr_uid, summary)


@dataclass(frozen=True)
class _Built:
    """The SEG and SR of an export before they are written, what the SR says per segment, and voxel counts."""

    seg: hd.seg.Segmentation
    sr: hd.sr.Comprehensive3DSR
    segments: list[SrSegment]
    counts: dict[int, int]


def _build_seg_and_sr(
    source: SourceImage,
    labels: np.ndarray | None,
    labels_geometry: Geometry | None,
    guideline: Guideline,
    reader: ReaderInfo,
    *,
    segments: Mapping[str | int, SegmentProvenance] | None,
    task_id: str | None,
    probabilities: Mapping[str | int, np.ndarray] | None,
    replaces: str | Path | None,
    content_datetime: datetime | None,
    labels_name: str,
    checklist: Mapping[str, str | bool] | None,
    derived_from: Sequence[ConsensusInput],
) -> _Built:
    """Check the inputs and build the SEG and SR of :func:`export_segmentation` (which see), writing nothing."""
    prepare_highdicom()  # before highdicom is first used, so that its tables are read the fast way
    provenance = _resolve_provenance(guideline, segments)
    answers = checklist_answers(guideline, checklist or {})
    content_datetime = content_datetime or datetime.now(timezone.utc)
    fractional = probabilities is not None
    volume_per_voxel = None
    if source.geometry is not None:
        volume_per_voxel = float(np.prod(source.geometry.spacing)) / 1000.0

    included: list[SegmentSpec]
    if fractional:
        assert probabilities is not None
        maps: dict[int, np.ndarray] = {}
        peaks: dict[int, float] = {}
        for key, prob in probabilities.items():
            spec = guideline.segment(key)
            _check_geometry(source, prob.shape, labels_geometry, f"{labels_name} ({spec.name})")
            prob = np.asarray(prob, dtype=np.float32)  # no copy when already float32; never stacked
            low, high = (float(prob.min()), float(prob.max())) if prob.size else (0.0, 0.0)
            if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
                raise LabelMapError(f"{labels_name} ({spec.name}): probabilities must lie in [0, 1]; found "
                                    f"{low:.3g}..{high:.3g}")
            maps[spec.label] = prob
            peaks[spec.label] = high
        missing = [s.name for s in guideline.segments if s.required and peaks.get(s.label, 0.0) <= 0.0]
        if missing:
            raise SegmentContentError(f"{labels_name}: required segment(s) {', '.join(missing)} have no probability "
                                      "above 0; give a map for each required segment")
        included = [s for s in guideline.segments if peaks.get(s.label, 0.0) > 0.0]
        if all(quantise(np.float32(peaks[s.label])) == 0 for s in included):
            raise SegmentContentError(f"{labels_name}: every probability is below 1/510, so each rounds to 0 of "
                                      f"{MAX_FRACTIONAL_VALUE} and the SEG would hold no frame; check the maps' scale")
        pixels: np.ndarray | list[np.ndarray] = [maps[s.label] for s in included]
        counts = {s.label: _count_at_least(maps[s.label], 0.5) for s in included}
    else:
        if labels is None:
            raise LabelMapError("no label map given; pass a label map or probability maps")
        _check_geometry(source, labels.shape, labels_geometry, labels_name)
        if labels.dtype.kind not in "ui":
            raise LabelMapError(f"{labels_name}: label values must be integers, not {labels.dtype}")
        counts = _voxel_counts(labels)
        undefined = sorted(set(counts) - set(guideline.labels))
        if undefined:
            listing = ", ".join(f"{v} ({counts[v]} voxels)" for v in undefined[:10])
            defined = ", ".join(f"{s.label}={s.name}" for s in guideline.segments)
            raise SegmentContentError(
                f"{labels_name}: label value(s) {listing} are not defined by guideline {guideline.id} "
                f"{guideline.version} ({defined}); relabel or remove them"
            )
        missing = [f"{s.name} (label {s.label})" for s in guideline.segments if s.required and s.label not in counts]
        if missing:
            raise SegmentContentError(f"{labels_name}: required segment(s) {', '.join(missing)} are empty; "
                                      "draw them or mark them not required in the guideline")
        included = [s for s in guideline.segments if s.label in counts]
        if [s.label for s in included] == list(range(1, len(included) + 1)) and labels.dtype.kind == "u":
            pixels = labels  # label values already are the segment numbers 1..N: no copy
        else:
            lut = np.zeros(max(max(counts), 1) + 1, dtype=np.uint16 if len(included) > 255 else np.uint8)
            for number, spec in enumerate(included, start=1):
                lut[spec.label] = number
            pixels = lut[labels]
    unknown_prov = sorted(set(provenance) - {s.label for s in included})
    if unknown_prov:
        names = ", ".join(guideline.segment(v).name for v in unknown_prov)
        raise SegmentContentError(f"{labels_name}: provenance given for {names}, which is empty in the label map")

    previous_sr, replaces_uid = _previous(replaces)
    software = f"medannot {medannot.__version__}"
    equipment = hd.ContributingEquipment(
        manufacturer="MedAnnot",
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name="medannot",
        software_versions=software,
        contribution_datetime=content_datetime,
        contribution_description="Segmentation export with provenance",
    )
    creator_id = _creator_identification(reader)
    descriptions, sr_segments = [], []
    for number, spec in enumerate(included, start=1):
        prov = provenance.get(spec.label, SegmentProvenance())
        tracking_uid = hd.UID()
        tracking_id = f"{spec.name} #{number}"[:64]
        algorithm = None
        if prov.algorithm_type != "MANUAL":
            algorithm = hd.AlgorithmIdentificationSequence(name=prov.algorithm_name or "unknown", family=_family(prov),
                                                           version=prov.algorithm_version or "unknown")
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=hd.sr.CodedConcept(spec.category.code, spec.category.scheme,
                                                           spec.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(spec.type.code, spec.type.scheme, spec.type.meaning),
            algorithm_type=prov.algorithm_type,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uid,
            tracking_id=tracking_id,
            display_color=hd.color.CIELabColor.from_string(spec.color),
        )
        descriptions.append(desc)
        volume = counts.get(spec.label, 0) * volume_per_voxel if volume_per_voxel else None
        sr_segments.append(SrSegment(number, spec, prov, tracking_uid, tracking_id, volume))

    seg_uid, sr_uid = hd.UID(), hd.UID()
    description = f"{guideline.id} {guideline.version}" + (f" task {task_id}" if task_id else "")
    seg = build_seg(
        source, pixels, descriptions,
        fractional=fractional,
        series_instance_uid=hd.UID(), sop_instance_uid=seg_uid,
        series_number=SEG_SERIES_NUMBER, instance_number=1,
        software_version=software,
        content_description=description[:64],
        content_label="MEDANNOT",
        content_creator_name=reader.name,
        content_creator_identification=creator_id,
        contributing_equipment=[equipment],
    )
    _stamp_provenance(seg, reader, creator_id, guideline, task_id, replaces_uid, content_datetime)
    sr = build_sr(
        seg, source, sr_segments,
        guideline=guideline, reader=reader, task_id=task_id, content_datetime=content_datetime,
        replaces_seg_uid=replaces_uid, previous_sr=previous_sr, checklist=answers,
        series_instance_uid=hd.UID(), sop_instance_uid=sr_uid,
        contributing_equipment=[equipment], software_version=software, derived_from=derived_from,
    )
    _carry_deidentification(source.first, (seg, sr))
    return _Built(seg, sr, sr_segments, counts)


def _family(prov: SegmentProvenance) -> hd.sr.CodedConcept:
    from pydicom.sr.codedict import codes as dcodes

    code = dcodes.cid7162.ArtificialIntelligence if prov.algorithm_type == "AUTOMATIC" else \
        dcodes.cid7162.MorphologicalOperations
    return hd.sr.CodedConcept.from_code(code)


def _creator_identification(reader: ReaderInfo) -> hd.ContentCreatorIdentificationCodeSequence:
    return hd.ContentCreatorIdentificationCodeSequence(
        person_identification_codes=[hd.sr.CodedConcept(reader.reader_id, codes.PRIVATE_SCHEME, reader.name[:64])],
        institution_name=reader.institution or "Not specified",
        institutional_department_name=reader.role[:64],
    )


def _stamp_provenance(
    seg: Dataset,
    reader: ReaderInfo,
    creator_id: hd.ContentCreatorIdentificationCodeSequence,
    guideline: Guideline,
    task_id: str | None,
    replaces_uid: str | None,
    when: datetime,
) -> None:
    seg.ContentDate = when.strftime("%Y%m%d")
    seg.ContentTime = when.strftime("%H%M%S.%f")
    seg.SeriesDescription = f"MedAnnot {guideline.id} {reader.reader_id}"[:64]
    derivation = f"MedAnnot guideline {guideline.id} version {guideline.version} sha256 {guideline.sha256}"
    if task_id:
        derivation += f"; task {task_id}"
    if replaces_uid:
        derivation += f"; replaces SEG {replaces_uid}"
    seg.DerivationDescription = derivation[:1024]
    seg.CodingSchemeIdentificationSequence = DicomSequence([codes.private_scheme_item()])
    # DICOM allows a creator per Segment Sequence item; highdicom has no parameter for it (see DESIGN.md).
    for item in seg.SegmentSequence:
        item.ContentCreatorName = reader.name
        item.ContentCreatorIdentificationCodeSequence = DicomSequence(list(creator_id))


_DEIDENTIFICATION = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                     "LongitudinalTemporalInformationModified")


def _carry_deidentification(source: Dataset, written: tuple[Dataset, ...]) -> None:
    """A SEG and SR of a de-identified image carry its patient module, so they are as de-identified as it: say so
    (PatientIdentityRemoved and the method, Patient Module), as highdicom does not copy them; without this the
    de-identification gate, and a receiving archive, would treat them as identified."""
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    for ds in written:
        for keyword in _DEIDENTIFICATION:
            if keyword in source:
                setattr(ds, keyword, copy.deepcopy(source[keyword].value))


def _previous(replaces: str | Path | None) -> tuple[Dataset | None, str | None]:
    if replaces is None:
        return None, None
    path = Path(replaces)
    old = read_dicom(path, "the SEG to be replaced")
    if old.get("Modality") != "SEG":
        raise DicomSegError(f"{path}: is not a DICOM-SEG (Modality {old.get('Modality')}); --replaces takes a SEG")
    uid = str(old.SOPInstanceUID)
    companion = find_companion_sr(path, uid)
    return (read_dicom(companion, "SR") if companion else None), uid


def _write_together(items: list[tuple[Dataset, Path]]) -> None:
    temps: list[tuple[Path, Path]] = []
    try:
        for ds, path in items:
            tmp = path.with_name(path.name + ".partial")
            temps.append((tmp, path))
            save_dataset(ds, tmp)  # the bytes of ds.save_as(tmp, enforce_file_format=True), faster
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as exc:
        raise DicomSegError(f"{items[0][1].parent}: cannot write the SEG and SR ({exc.strerror or exc}); free disk "
                            "space or choose a folder you can write; nothing was written") from exc
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()
