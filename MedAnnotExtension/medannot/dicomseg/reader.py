"""Read a MedAnnot (or any) DICOM-SEG and its companion SR back into a label map and a provenance summary."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from medannot.dicomseg import codes
from medannot.errors import DicomSegError
from medannot.imaging.geometry import Geometry
from medannot.imaging.source import SourceImage

logger = logging.getLogger(__name__)

_DERIVATION = re.compile(
    r"guideline (?P<id>\S+) version (?P<version>\S+) sha256 (?P<sha>[0-9a-f]{64})(?:; task (?P<task>[^;]+))?"
)


@dataclass
class SegmentationRecord:
    """A SEG read back: its dataset, the companion SR if found, the label map and the provenance summary."""

    seg_path: Path
    dataset: Dataset
    sr_path: Path | None
    sr: Dataset | None
    labels: np.ndarray
    geometry: Geometry | None
    summary: dict[str, Any] = field(default_factory=dict)


def read_dicom(path: str | Path, what: str = "DICOM file") -> Dataset:
    """Read a DICOM file or raise :class:`DicomSegError` naming it."""
    path = Path(path)
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
        raise DicomSegError(f"{path}: cannot read {what} ({exc})") from exc


def referenced_instance_uids(sr: Dataset) -> set[str]:
    """SOP Instance UIDs an SR lists as evidence."""
    uids: set[str] = set()
    for key in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(key, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for inst in series.get("ReferencedSOPSequence", []):
                    uids.add(str(inst.ReferencedSOPInstanceUID))
    return uids


def find_companion_sr(seg_path: Path, seg_uid: str) -> Path | None:
    """The SR next to ``seg_path`` that references the SEG, if there is one."""
    for candidate in sorted(seg_path.parent.glob("*.dcm")):
        if candidate == seg_path:
            continue
        try:
            ds = dcmread(candidate, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - other files in the folder are not our business
            continue
        if ds.get("Modality") == "SR" and seg_uid in referenced_instance_uids(ds):
            return candidate
    return None


def _walk(items: Any) -> Any:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    value = name.get("CodeValue") or name.get("LongCodeValue") or name.get("URNCodeValue")
    return str(name.CodingSchemeDesignator), str(value)


def _key(code: Any) -> tuple[str, str]:
    return (code.scheme_designator, code.value)


def _value(item: Dataset) -> Any:
    kind = item.ValueType
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "DATETIME":
        return str(item.DateTime)
    if kind == "NUM":
        return float(item.MeasuredValueSequence[0].NumericValue)
    if kind == "CODE":
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    return None


def parse_sr(sr: Dataset) -> dict[str, Any]:
    """Extract MedAnnot provenance from a companion SR: root items and one dict per referenced segment."""
    root: dict[tuple[str, str], Any] = {}
    checklist: dict[str, str] = {}
    groups: dict[int, dict[tuple[str, str], Any]] = {}
    for item in sr.get("ContentSequence", []):
        if item.ValueType != "CONTAINER":
            if "ConceptNameCodeSequence" in item and _concept(item) == _key(codes.CHECKLIST_ANSWER):
                key, _, answer = str(_value(item)).partition("=")
                checklist[key] = answer
            elif "ConceptNameCodeSequence" in item:
                root[_concept(item)] = _value(item)
            continue
        for group in _walk(item.get("ContentSequence")):
            if group.ValueType != "CONTAINER":
                continue
            values: dict[tuple[str, str], Any] = {}
            segment_number = None
            for child in _walk(group.get("ContentSequence")):
                if child.ValueType == "IMAGE" and "ReferencedSOPSequence" in child:
                    ref = child.ReferencedSOPSequence[0]
                    if "ReferencedSegmentNumber" in ref:
                        segment_number = int(ref.ReferencedSegmentNumber)
                elif "ConceptNameCodeSequence" in child:
                    values.setdefault(_concept(child), _value(child))
            if segment_number is not None:
                groups[segment_number] = values
    for item in sr.get("ContentSequence", []):
        for child in _walk([item]):
            if child.ValueType == "PNAME" and _concept(child) == ("DCM", "121008"):
                root.setdefault(("DCM", "121008"), str(child.PersonName))
    return {"root": root, "groups": groups, "checklist": checklist}


def _frames(seg: Dataset) -> np.ndarray:
    n, rows, cols = int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns)
    if seg.file_meta.TransferSyntaxUID.is_compressed:
        return np.asarray(seg.pixel_array).reshape(n, rows, cols)
    raw = seg.PixelData
    if int(seg.BitsAllocated) == 1:
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: n * rows * cols]
        return bits.reshape(n, rows, cols)
    return np.frombuffer(raw, dtype=np.uint8)[: n * rows * cols].reshape(n, rows, cols)


def _frame_refs(item: Dataset) -> tuple[str | None, int | None]:
    for derivation in item.get("DerivationImageSequence", []):
        for src in derivation.get("SourceImageSequence", []):
            frame = int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else None
            return str(src.ReferencedSOPInstanceUID), frame
    return None, None


def _position(item: Dataset, shared: Dataset) -> np.ndarray | None:
    for group in (item, shared):
        if "PlanePositionSequence" in group:
            return np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    return None


def _grid_from_sr(parsed: dict[str, Any] | None) -> tuple[int, int, int] | None:
    if not parsed:
        return None
    text = parsed["root"].get(_key(codes.SOURCE_GRID))
    if not text:
        return None
    try:
        a, b, c = (int(v) for v in str(text).split("x"))
    except ValueError:
        return None
    return a, b, c


def _reconstruct(seg: Dataset, source: SourceImage | None, grid: tuple[int, int, int] | None,
                 label_of: dict[int, int]) -> tuple[np.ndarray, Geometry | None, dict[int, int]]:
    frames = _frames(seg)
    rows, cols = int(seg.Rows), int(seg.Columns)
    fractional = seg.get("SegmentationType") == "FRACTIONAL"
    max_value = float(seg.get("MaximumFractionalValue", 255))
    per_frame = seg.PerFrameFunctionalGroupsSequence
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    instances = [str(i.ReferencedSOPInstanceUID)
                 for s in seg.get("ReferencedSeriesSequence", []) for i in s.get("ReferencedInstanceSequence", [])]
    if source is not None and not source.is_multiframe:
        instances = [str(d.SOPInstanceUID) for d in source.datasets]
    indices: list[int] = []
    positions: list[np.ndarray | None] = []
    for item in per_frame:
        uid, frame = _frame_refs(item)
        if frame is not None:
            indices.append(frame - 1)
        elif uid is not None and uid in instances:
            indices.append(instances.index(uid))
        else:
            indices.append(-1)
        positions.append(_position(item, shared))
    n_slices = (source.shape[0] if source is not None else grid[0] if grid else
                max(len(instances) if all(i >= 0 for i in indices) and not any(
                    _frame_refs(x)[1] for x in per_frame) else 0, max(indices) + 1))
    if any(i < 0 for i in indices):
        raise DicomSegError("SEG frames do not reference their source images; MedAnnot cannot place them "
                            "(give --source to read against the source series)")
    labels = np.zeros((n_slices, rows, cols), dtype=np.uint16 if max(label_of.values(), default=0) > 255
                      else np.uint8)
    counts: dict[int, int] = {}
    for item, index, plane in zip(per_frame, indices, frames):
        ident = item if "SegmentIdentificationSequence" in item else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        mask = plane >= (0.5 * max_value) if fractional else plane.astype(bool)
        labels[index][mask] = label_of.get(number, number)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(mask))
    geometry = source.geometry if source is not None else _geometry(seg, shared, indices, positions, n_slices)
    return labels, geometry, counts


def _geometry(seg: Dataset, shared: Dataset, indices: list[int], positions: list[np.ndarray | None],
              n_slices: int) -> Geometry | None:
    if "PlaneOrientationSequence" not in shared or any(p is None for p in positions) or not positions:
        return None
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    measures = shared.PixelMeasuresSequence[0]
    pixel = [float(v) for v in measures.PixelSpacing]
    pos = np.asarray(positions)
    idx = np.asarray(indices)
    dist = pos @ normal
    spacing = float(measures.get("SpacingBetweenSlices") or 0) or None
    if spacing is None:
        distinct = np.unique(idx)
        if len(distinct) > 1:
            a, b = distinct[0], distinct[-1]
            spacing = float((dist[idx == b][0] - dist[idx == a][0]) / (b - a))
        else:
            spacing = float(measures.get("SliceThickness") or 1.0)
    first = int(np.argmin(idx))
    origin = pos[first] - idx[first] * spacing * normal
    return Geometry.from_dicom_plane(int(seg.Rows), int(seg.Columns), n_slices, pixel, spacing, origin, iop)


def read_segmentation(seg_path: str | Path, sr_path: str | Path | None = None,
                      source: SourceImage | None = None) -> SegmentationRecord:
    """Read a SEG (and its companion SR, found next to it when not given) back.

    Parameters
    ----------
    seg_path
        The DICOM-SEG file.
    sr_path
        Its companion SR; by default the SR in the same folder that references the SEG.
    source
        The source image, to read the label map exactly on its grid (needed for SEGs from other tools whose
        frames reference slices MedAnnot cannot order).

    Raises
    ------
    DicomSegError
        If the file is not a readable DICOM-SEG.
    """
    seg_path = Path(seg_path)
    seg = read_dicom(seg_path, "DICOM-SEG")
    if seg.get("Modality") != "SEG" or "SegmentSequence" not in seg:
        raise DicomSegError(f"{seg_path}: not a DICOM-SEG (Modality {seg.get('Modality', 'missing')})")
    sr_file = Path(sr_path) if sr_path else find_companion_sr(seg_path, str(seg.SOPInstanceUID))
    sr = read_dicom(sr_file, "SR") if sr_file else None
    parsed = parse_sr(sr) if sr is not None else None
    label_of = _label_values(seg, parsed)
    labels, geometry, counts = _reconstruct(seg, source, _grid_from_sr(parsed), label_of)
    return SegmentationRecord(seg_path, seg, sr_file, sr, labels, geometry,
                              _summary(seg, parsed, label_of, counts))


def _summary(seg: Dataset, parsed: dict[str, Any] | None, label_of: dict[int, int],
             counts: dict[int, int]) -> dict[str, Any]:
    root = parsed["root"] if parsed else {}
    groups = parsed["groups"] if parsed else {}
    match = _DERIVATION.search(str(seg.get("DerivationDescription", "")))
    guideline = {
        "id": root.get(_key(codes.GUIDELINE_ID)) or (match["id"] if match else None),
        "version": root.get(_key(codes.GUIDELINE_VERSION)) or (match["version"] if match else None),
        "sha256": root.get(_key(codes.GUIDELINE_SHA256)) or (match["sha"] if match else None),
    }
    task = root.get(_key(codes.TASK_ID)) or (match["task"] if match and match["task"] else None)
    creator_id = None
    if "ContentCreatorIdentificationCodeSequence" in seg:
        people = seg.ContentCreatorIdentificationCodeSequence[0].get("PersonIdentificationCodeSequence", [])
        creator_id = str(people[0].CodeValue) if people else None
    series = seg.get("ReferencedSeriesSequence", [])
    segments = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        group = groups.get(number, {})
        confidence = group.get(_key(codes.CERTAINTY_OF_FINDING))
        algorithm_name = item.get("SegmentAlgorithmName")
        if not algorithm_name and "SegmentationAlgorithmIdentificationSequence" in item:
            algorithm_name = item.SegmentationAlgorithmIdentificationSequence[0].get("AlgorithmName")
        segments.append({
            "number": number,
            "label": label_of.get(number, number),
            "name": str(item.SegmentLabel),
            "algorithm_type": str(item.SegmentAlgorithmType),
            "algorithm_name": str(algorithm_name) if algorithm_name else None,
            "confidence": int(round(confidence)) if confidence is not None else None,
            "voxels": counts.get(number, 0),
            "tracking_uid": str(item.TrackingUID) if "TrackingUID" in item else None,
        })
    content_datetime = f"{seg.get('ContentDate', '')}{seg.get('ContentTime', '')}"
    return {
        "reader_name": str(seg.get("ContentCreatorName", "")) or None,
        "reader_id": creator_id,
        "content_datetime": _iso(content_datetime),
        "task_id": task,
        "guideline": guideline,
        "source": {"study_uid": str(seg.StudyInstanceUID),
                   "series_uid": str(series[0].SeriesInstanceUID) if series else None},
        "segments": segments,
        "checklist": parsed["checklist"] if parsed else {},
    }


def _iso(dicom_dt: str) -> str | None:
    if len(dicom_dt) < 14:
        return dicom_dt or None
    d = dicom_dt
    frac = d[15:] if len(d) > 14 and d[14] == "." else ""
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}" + (f".{frac}" if frac else "")


def provenance_summary(seg: Dataset, sr: Dataset | None = None) -> dict[str, Any]:
    """The provenance summary of a SEG (and its SR) without decoding pixels (``voxels`` are 0)."""
    parsed = parse_sr(sr) if sr is not None else None
    return _summary(seg, parsed, _label_values(seg, parsed), {})


def _label_values(seg: Dataset, parsed: dict[str, Any] | None) -> dict[int, int]:
    """Segment number -> guideline label value (from the SR; the segment number when there is no SR)."""
    groups = parsed["groups"] if parsed else {}
    return {int(s.SegmentNumber): int(groups.get(int(s.SegmentNumber), {}).get(_key(codes.LABEL_VALUE))
                                      or int(s.SegmentNumber))
            for s in seg.SegmentSequence}
