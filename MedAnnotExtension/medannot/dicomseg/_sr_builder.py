"""Build the companion TID 1500 Measurement Report (Comprehensive 3D SR) that carries what a SEG cannot:
per-segment confidence, timing, keyframes, the guideline's full sha256, the task and the reader's role."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from medannot.dicomseg import codes
from medannot.dicomseg.provenance import ReaderInfo, SegmentProvenance
from medannot.guideline import Guideline, SegmentSpec
from medannot.imaging.source import SourceImage


@dataclass(frozen=True)
class SrSegment:
    """What the SR says about one SEG segment."""

    number: int
    spec: SegmentSpec
    provenance: SegmentProvenance
    tracking_uid: str
    tracking_id: str
    volume_ml: float | None


@dataclass(frozen=True)
class ConsensusInput:
    """A reader SEG a consensus was made from, and STAPLE's estimates of that reader by segment name (empty for a
    majority vote, which estimates nothing)."""

    seg_uid: str
    sensitivity: Mapping[str, float]
    specificity: Mapping[str, float]


def _text(name: Code, value: str, relationship: str = "HAS OBS CONTEXT") -> Dataset:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=relationship)


def _frames_text(frames: Sequence[int]) -> str:
    return ",".join(str(f) for f in frames)


def build_sr(
    seg: hd.seg.Segmentation,
    source: SourceImage,
    segments: Sequence[SrSegment],
    *,
    guideline: Guideline,
    reader: ReaderInfo,
    task_id: str | None,
    content_datetime: datetime,
    replaces_seg_uid: str | None,
    previous_sr: Dataset | None,
    checklist: dict[str, str],
    series_instance_uid: str,
    sop_instance_uid: str,
    contributing_equipment: Sequence[hd.ContributingEquipment],
    software_version: str,
    derived_from: Sequence[ConsensusInput] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for ``seg``; each measurement group references one segment and shares its tracking UID.

    ``derived_from`` lists the reader SEGs of a consensus: each is named at the root (its SOP Instance UID), and
    each segment's group holds each reader's STAPLE sensitivity and specificity, inferred from that reader's SEG.
    """
    person = hd.sr.PersonObserverIdentifyingAttributes(
        name=reader.name,
        login_name=reader.reader_id,
        organization_name=reader.institution,
        role_in_organization=codes.role_code(reader.role),
    )
    context = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(observer_type=codes.PERSON,
                                                      observer_identifying_attributes=person),
    )
    groups = []
    for item in segments:
        measurements = []
        if item.provenance.confidence is not None:
            measurements.append(hd.sr.Measurement(name=codes.CERTAINTY_OF_FINDING,
                                                  value=float(item.provenance.confidence), unit=codes.PERCENT))
        if item.volume_ml is not None:
            measurements.append(hd.sr.Measurement(name=codes.VOLUME, value=round(item.volume_ml, 4),
                                                  unit=codes.MILLILITER))
        algorithm = None
        if item.provenance.algorithm_type != "MANUAL" and item.provenance.algorithm_name:
            algorithm = hd.sr.AlgorithmIdentification(name=item.provenance.algorithm_name,
                                                      version=item.provenance.algorithm_version or "unknown")
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=item.tracking_uid, identifier=item.tracking_id),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=item.number,
                source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
            ),
            finding_type=hd.sr.CodedConcept(item.spec.type.code, item.spec.type.scheme, item.spec.type.meaning),
            finding_category=hd.sr.CodedConcept(item.spec.category.code, item.spec.category.scheme,
                                                item.spec.category.meaning),
            algorithm_id=algorithm,
            measurements=measurements or None,
        )
        groups.append(group)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    _add_group_items(report, segments, derived_from)
    root_items = [
        _text(codes.GUIDELINE_ID, guideline.id),
        _text(codes.GUIDELINE_VERSION, guideline.version),
        _text(codes.GUIDELINE_SHA256, guideline.sha256),
        _text(codes.READER_ROLE, reader.role),
        _text(codes.SOURCE_GRID, "x".join(str(v) for v in source.shape)),
    ]
    if task_id:
        root_items.append(_text(codes.TASK_ID, task_id))
    root_items.extend(_text(codes.CHECKLIST_ANSWER, f"{item}={answer}") for item, answer in checklist.items())
    if replaces_seg_uid:
        root_items.append(hd.sr.UIDRefContentItem(name=codes.REPLACES_SEG, value=replaces_seg_uid,
                                                  relationship_type="HAS OBS CONTEXT"))
    root_items.extend(hd.sr.UIDRefContentItem(name=codes.CONSENSUS_INPUT, value=item.seg_uid,
                                              relationship_type="HAS OBS CONTEXT") for item in derived_from)
    root = report[0]
    root.ContentSequence.extend(root_items)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *source.datasets],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=seg.SeriesNumber + 1,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="MedAnnot",
        is_complete=True,
        is_final=True,
        institution_name=reader.institution,
        previous_versions=[previous_sr] if previous_sr is not None else None,
        contributing_equipment=list(contributing_equipment),
        record_evidence=True,
    )
    stamp = content_datetime.strftime("%Y%m%d"), content_datetime.strftime("%H%M%S.%f")
    sr.ContentDate, sr.ContentTime = stamp
    sr.SeriesDescription = f"MedAnnot provenance {guideline.id} {guideline.version}"[:64]
    sr.SoftwareVersions = software_version
    sr.CodingSchemeIdentificationSequence = DicomSequence([codes.private_scheme_item()])
    return sr


def _estimate(name: Code, value: float, seg_uid: str) -> Dataset:
    item = hd.sr.NumContentItem(name=name, value=round(float(value), 6), unit=Code("1", "UCUM", "no units"),
                                relationship_type="CONTAINS")
    item.ContentSequence = DicomSequence([hd.sr.UIDRefContentItem(name=codes.CONSENSUS_INPUT, value=seg_uid,
                                                                  relationship_type="INFERRED FROM")])
    return item


def _add_group_items(report: hd.sr.MeasurementReport, segments: Sequence[SrSegment],
                     derived_from: Sequence[ConsensusInput] = ()) -> None:
    root = report[0]
    containers = [i for i in root.ContentSequence if i.ValueType == "CONTAINER"
                  and i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = containers[0].ContentSequence
    for group, item in zip(groups, segments):
        prov = item.provenance
        extra: list[Dataset] = [
            hd.sr.NumContentItem(name=codes.LABEL_VALUE, value=item.spec.label,
                                 unit=Code("1", "UCUM", "no units"), relationship_type="HAS OBS CONTEXT"),
        ]
        if prov.started:
            extra.append(hd.sr.DateTimeContentItem(name=codes.DATETIME_STARTED, value=prov.started,
                                                   relationship_type="HAS OBS CONTEXT"))
        if prov.ended:
            extra.append(hd.sr.DateTimeContentItem(name=codes.DATETIME_COMPLETED, value=prov.ended,
                                                   relationship_type="HAS OBS CONTEXT"))
        if prov.active_seconds is not None:
            extra.append(hd.sr.NumContentItem(name=codes.ACTIVE_TIME, value=float(prov.active_seconds),
                                              unit=codes.SECOND, relationship_type="HAS OBS CONTEXT"))
        if prov.keyframes:
            extra.append(_text(codes.KEYFRAMES, _frames_text(prov.keyframes)))
        if prov.interpolated_frames:
            extra.append(_text(codes.INTERPOLATED_FRAMES, _frames_text(prov.interpolated_frames)))
        for source in derived_from:
            if item.spec.name in source.sensitivity:
                extra.append(_estimate(codes.STAPLE_SENSITIVITY, source.sensitivity[item.spec.name], source.seg_uid))
            if item.spec.name in source.specificity:
                extra.append(_estimate(codes.STAPLE_SPECIFICITY, source.specificity[item.spec.name], source.seg_uid))
        group.ContentSequence.extend(extra)
