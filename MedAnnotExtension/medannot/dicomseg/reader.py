"""Read a MedAnnot (or any) DICOM-SEG and its companion SR back into a label map and a provenance summary."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.pixels import pack_bits
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

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
    """A SEG read back: its dataset, the companion SR if found, the label map and the provenance summary.

    ``labels`` holds one label per voxel; where segments overlap the later segment's label is kept, and
    ``overlaps`` counts, per (earlier, later) segment number pair, the voxels that lost the earlier label.
    ``segment_mask(number)`` gives one segment's full mask on the same grid.
    """

    seg_path: Path
    dataset: Dataset
    sr_path: Path | None
    sr: Dataset | None
    labels: np.ndarray
    geometry: Geometry | None
    summary: dict[str, Any] = field(default_factory=dict)
    overlaps: dict[tuple[int, int], int] = field(default_factory=dict)
    _mask_of: Callable[[int], np.ndarray] | None = field(default=None, repr=False)

    def segment_mask(self, number: int) -> np.ndarray:
        """The boolean mask of segment ``number`` on the label map's grid."""
        if self._mask_of is None:
            return self.labels == number
        return self._mask_of(number)


def read_dicom(path: str | Path, what: str = "DICOM file") -> Dataset:
    """Read a DICOM file or raise :class:`DicomSegError` naming it."""
    path = Path(path)
    try:
        return dcmread(path)
    except InvalidDicomError as exc:
        raise DicomSegError(f"{path}: not a DICOM file (no DICM prefix after the 128-byte preamble); give a "
                            f"{what}") from exc
    except (OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
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


def is_tiled_full(seg: Dataset) -> bool:
    """Whether the SEG's frames are tiles of a total pixel matrix (DimensionOrganizationType TILED_FULL)."""
    return str(seg.get("DimensionOrganizationType", "")) == "TILED_FULL"


def expected_pixel_bytes(seg: Dataset) -> int:
    """Bytes of native (uncompressed) PixelData that NumberOfFrames frames of this SEG need."""
    samples = int(seg.get("SamplesPerPixel", 1) or 1)
    bits = int(seg.Rows) * int(seg.Columns) * int(seg.get("NumberOfFrames", 1) or 1) * samples * int(seg.BitsAllocated)
    return (bits + 7) // 8


def check_complete_seg(path: Path, seg: Dataset, frames_must_fit: bool = True) -> None:
    """Refuse a SEG that pydicom read only in part: pydicom stops silently at the end of a truncated file, so a
    cut file shows up as missing attributes or a PixelData shorter than its declared length (the last element of
    a SEG). With ``frames_must_fit``, also refuse PixelData too short for NumberOfFrames (it cannot be decoded)."""
    if str(seg.get("SOPClassUID", "")) != SegmentationStorage and seg.get("Modality") != "SEG":
        kind = seg.get("Modality") or getattr(seg.get("SOPClassUID"), "name", None) or "unknown"
        raise DicomSegError(f"{path}: not a DICOM-SEG (Modality {kind}); give a Segmentation Storage file")
    missing = [k for k in ("SegmentSequence", "Rows", "Columns", "BitsAllocated", "PixelData") if k not in seg]
    if missing:
        raise DicomSegError(f"{path}: the SEG has no {', '.join(missing)}; the file is truncated or incomplete "
                            f"({path.stat().st_size} bytes), copy it again from its origin")
    raw = seg.get_item("PixelData")
    declared = getattr(raw, "length", None)
    if (isinstance(raw, RawDataElement) and raw.value is not None and declared is not None
            and declared != 0xFFFFFFFF and len(raw.value) < declared):
        raise DicomSegError(f"{path}: PixelData declares {declared} bytes but the file ends after "
                            f"{len(raw.value)}; the file is truncated, copy it again from its origin")
    if frames_must_fit and not seg.file_meta.TransferSyntaxUID.is_compressed:
        need, have = expected_pixel_bytes(seg), len(seg.PixelData)
        if have < need:
            raise DicomSegError(f"{path}: PixelData holds {have} bytes but NumberOfFrames {seg.NumberOfFrames} "
                                f"needs {need}; NumberOfFrames or PixelData is wrong, export the SEG again")


@dataclass
class _Placement:
    """How the SEG's frames land on the label map grid: a highdicom reader call and the grid's geometry.

    ``read(**options)`` returns (slices, rows, cols, segments) or, with ``combine_segments``, (slices, rows, cols).
    """

    read: Callable[..., np.ndarray]
    geometry: Geometry | None
    how: str


def _geometry_of_volume(volume: hd.VolumeGeometry) -> tuple[Geometry, bool]:
    """MedAnnot's geometry of a highdicom volume, and whether the slice axis must be flipped to run along
    row x column as MedAnnot's grids do (highdicom may stack the slices the other way)."""
    affine = np.asarray(volume.affine, dtype=float)
    slice_axis, row_axis, col_axis = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    spacing = [float(np.linalg.norm(v)) for v in (col_axis, row_axis, slice_axis)]
    x, y, z = (v / s for v, s in zip((col_axis, row_axis, slice_axis), spacing))
    origin = affine[:3, 3]
    flip = bool(np.dot(z, np.cross(x, y)) < 0)
    n_slices, rows, cols = (int(v) for v in volume.spatial_shape)
    if flip:
        origin = origin + (n_slices - 1) * slice_axis
        z = -z
    geometry = Geometry(size=(cols, rows, n_slices), spacing=(spacing[0], spacing[1], spacing[2]),
                        origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
                        direction=tuple((np.column_stack([x, y, z]).reshape(-1) + 0.0).tolist()))
    return geometry, flip


def _referenced_instances(seg: Dataset) -> list[tuple[str, str]]:
    """(series UID, SOP Instance UID) of every source instance in ReferencedSeriesSequence, in file order."""
    return [(str(s.SeriesInstanceUID), str(i.ReferencedSOPInstanceUID))
            for s in seg.get("ReferencedSeriesSequence", []) for i in s.get("ReferencedInstanceSequence", [])]


def _frame_sources(seg: Dataset) -> list[tuple[str | None, int | None]]:
    """(referenced SOP Instance UID, referenced frame number) of each frame; one shared entry for TILED_FULL."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    items = seg.get("PerFrameFunctionalGroupsSequence") or [shared]
    return [_frame_refs(item) if "DerivationImageSequence" in item else _frame_refs(shared) for item in items]


def check_source_references(seg_path: Path, seg: Dataset, source: SourceImage) -> None:
    """Refuse a ``--source`` the SEG was not drawn on: the SEG must reference the source's instances, and every
    instance its frames reference must be in the source."""
    source_uids = {str(d.SOPInstanceUID) for d in source.datasets}
    where = source.paths[0].parent if len(source.paths) > 1 else source.paths[0]
    listed = _referenced_instances(seg)
    framed = {uid for uid, _ in _frame_sources(seg) if uid}
    named = {uid for _, uid in listed} | framed
    if not named & source_uids:
        series = sorted({s for s, _ in listed}) or ["(none listed)"]
        raise DicomSegError(
            f"{seg_path}: ReferencedSeriesSequence names series {', '.join(series)}, and no instance the SEG "
            f"references is in --source {where} (series {source.series_uid}); give the series this SEG was drawn on")
    outside = sorted(framed - source_uids)
    if outside:
        raise DicomSegError(
            f"{seg_path}: {len(outside)} instance(s) its frames reference (SourceImageSequence, e.g. {outside[0]}) "
            f"are not in --source {where}; give the complete source series")
    if str(seg.get("StudyInstanceUID", "")) != source.study_uid:
        raise DicomSegError(f"{seg_path}: StudyInstanceUID {seg.get('StudyInstanceUID')} differs from --source "
                            f"{where} ({source.study_uid}); give the series this SEG was drawn on")


def _placement(seg_path: Path, seg: Dataset, hseg: hd.seg.Segmentation, source: SourceImage | None,
               grid: tuple[int, int, int] | None) -> _Placement:
    """Choose how to lay the SEG's frames out. highdicom places the frames in every case; what MedAnnot decides
    is which grid to ask it for (the source's, the SEG's own volume, or its total pixel matrix)."""
    common = dict(assert_missing_frames_are_empty=True)
    if is_tiled_full(seg) or hseg.is_tiled:
        # Tiles of a slide's total pixel matrix: one plane, in slide coordinates (not LPS), so no geometry.
        return _Placement(lambda **kw: hseg.get_total_pixel_matrix(**kw)[None], None, "total pixel matrix")
    if source is not None:
        if not any(uid for uid, _ in _frame_sources(seg)) and hseg.coordinate_system and source.geometry:
            return _volume_on_source(seg_path, hseg, source.geometry)
        if source.is_multiframe:
            uid, n = str(source.first.SOPInstanceUID), source.shape[0]
            return _Placement(lambda **kw: hseg.get_pixels_by_source_frame(
                uid, source_frame_numbers=list(range(1, n + 1)), **common, **kw), source.geometry, "source frames")
        uids = [str(d.SOPInstanceUID) for d in source.datasets]
        return _Placement(lambda **kw: hseg.get_pixels_by_source_instance(uids, **common, **kw), source.geometry,
                          "source instances")
    frames = _frame_sources(seg)
    instances = [uid for _, uid in _referenced_instances(seg)]
    frame_numbers = [f for _, f in frames if f is not None]
    ours = str(seg.get("Manufacturer", "")) == "MedAnnot"
    if frame_numbers and len({u for u, _ in frames}) == 1 and (ours or hseg.coordinate_system is None):
        # One multi-frame source. MedAnnot's exporter only accepts sources whose frames are in slice order, and
        # a source without a Frame of Reference has no other order, so the frame number is the slice index.
        uid = str(frames[0][0])
        n = grid[0] if ours and grid else max(frame_numbers)
        return _Placement(lambda **kw: hseg.get_pixels_by_source_frame(
            uid, source_frame_numbers=list(range(1, n + 1)), **common, **kw),
            _geometry(seg, [f - 1 for f in frame_numbers], n) if hseg.coordinate_system else None, "source frames")
    if ours and instances and not frame_numbers:
        # MedAnnot's exporter lists the slices in ReferencedInstanceSequence in slice order, so that order is
        # the source grid, whole (also the slices without segment), as `seg export` had it.
        n = grid[0] if grid and grid[0] == len(instances) else len(instances)
        indices = [instances.index(uid) for uid, _ in frames if uid in instances]
        return _Placement(lambda **kw: hseg.get_pixels_by_source_instance(instances[:n], **common, **kw),
                          _geometry(seg, indices, n), "referenced instances in MedAnnot's order")
    if hseg.coordinate_system is not None:
        # Another tool's SEG: the order of ReferencedInstanceSequence means nothing, the frames' positions do.
        # highdicom's volume spans the segmented slices (the source may have more; --source gives them all).
        grid_of_frames = hseg.get_volume_geometry()
        if grid_of_frames is None:
            raise DicomSegError(f"{seg_path}: its frames' positions (PlanePositionSequence) do not form a regular "
                                "volume; give --source to read it onto the source grid")
        volume_geometry, flip = _geometry_of_volume(grid_of_frames)

        def read_volume(**kw: Any) -> np.ndarray:
            array = hseg.get_volume(**kw).array
            return array[::-1] if flip else array

        return _Placement(read_volume, volume_geometry, "the SEG's own volume")
    if len(instances) == 1 or len({u for u, _ in frames if u}) == 1:
        uid = instances[0] if len(instances) == 1 else str(next(u for u, _ in frames if u))
        return _Placement(lambda **kw: hseg.get_pixels_by_source_instance([uid], **common, **kw), None,
                          "its one source image")
    raise DicomSegError(f"{seg_path}: the frames reference {len(instances)} source images without a Frame of "
                        "Reference, whose order only the source knows; give --source with the source series")


def _volume_on_source(seg_path: Path, hseg: hd.seg.Segmentation, target: Geometry) -> _Placement:
    """Frames without DerivationImageSequence name no source slice, so highdicom cannot index them by source; its
    volume of their positions is placed on the source grid instead, which must share its pixels exactly."""
    grid_of_frames = hseg.get_volume_geometry()
    if grid_of_frames is None:
        raise DicomSegError(f"{seg_path}: its frames reference no source image and their positions do not form a "
                            "regular volume; MedAnnot cannot place them on --source")
    own, flip = _geometry_of_volume(grid_of_frames)
    offset = ((np.asarray(own.origin) - np.asarray(target.origin)) @ target.direction_matrix) / np.asarray(
        target.spacing)
    first = int(round(offset[2]))
    aligned = (np.allclose(own.direction, target.direction, atol=1e-4)
               and np.allclose(own.spacing, target.spacing, rtol=1e-3)
               and np.allclose(offset, [0, 0, first], atol=1e-2) and own.size[:2] == target.size[:2]
               and 0 <= first and first + own.shape[0] <= target.shape[0])
    if not aligned:
        raise DicomSegError(f"{seg_path}: its frames reference no source image and do not lie on the --source "
                            "grid (position, spacing or orientation differ); give the series this SEG was drawn on")

    def read_on_source(**kw: Any) -> np.ndarray:
        array = hseg.get_volume(**kw).array
        array = array[::-1] if flip else array
        out = np.zeros((target.shape[0], *array.shape[1:]), dtype=array.dtype)
        out[first:first + array.shape[0]] = array
        return out

    return _Placement(read_on_source, target, "the source grid, by the frames' positions")


def _geometry(seg: Dataset, indices: list[int], n_slices: int) -> Geometry | None:
    """The grid of MedAnnot's own SEG from its frames' positions and their slice indices (see ``_placement``)."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    per_frame = seg.get("PerFrameFunctionalGroupsSequence", [])
    positions = [_position(item, shared) for item in per_frame]
    if ("PlaneOrientationSequence" not in shared or not positions or any(p is None for p in positions)
            or len(indices) != len(positions)):
        return None
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    measures = shared.PixelMeasuresSequence[0]
    pixel = [float(v) for v in measures.PixelSpacing]
    pos = np.asarray(positions)
    idx = np.asarray(indices)
    dist = pos @ normal
    spacing = float(measures.get("SpacingBetweenSlices") or 0) or None
    distinct = np.unique(idx)
    if len(distinct) > 1:
        a, b = distinct[0], distinct[-1]
        step = float((dist[idx == b][0] - dist[idx == a][0]) / (b - a))
        if step < 0:
            # A source whose frames run against row x column (stored head to feet): the slice axis is -normal, as
            # load_source gives that source's grid.
            normal = -normal
        spacing = spacing or abs(step)
    elif spacing is None:
        spacing = float(measures.get("SliceThickness") or 1.0)
    first = int(np.argmin(idx))
    origin = pos[first] - idx[first] * spacing * normal
    return Geometry.from_dicom_plane(int(seg.Rows), int(seg.Columns), n_slices, pixel, spacing, origin, iop,
                                     normal=normal)


def _segment_masks(seg_path: Path, hseg: hd.seg.Segmentation, placement: _Placement,
                   numbers: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(segment number, boolean mask on the placement's grid), one segment at a time (a stack of all segments
    of a large CT would not fit in memory). FRACTIONAL voxels count from half the maximum value."""
    segmentation_type = str(seg_type(hseg))
    if segmentation_type == "LABELMAP":
        # every frame holds every segment: decode once and split
        values = _read(seg_path, placement, combine_segments=True, skip_overlap_checks=True)
        for number in numbers:
            yield number, values == number
        return
    threshold = 0.5 * float(hseg.get("MaximumFractionalValue", 1)) if segmentation_type == "FRACTIONAL" else 0.5
    for number in numbers:
        stored = _read(seg_path, placement, segment_numbers=[number], rescale_fractional=False)
        yield number, stored[..., 0] >= threshold


def seg_type(seg: Dataset) -> str:
    return str(seg.get("SegmentationType", "BINARY"))


def _read(seg_path: Path, placement: _Placement, **options: Any) -> np.ndarray:
    try:
        return np.asarray(placement.read(**options))
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        # highdicom's refusals of this SEG's layout (spatial locations not preserved, frames missing, ...)
        raise DicomSegError(f"{seg_path}: highdicom cannot place its frames on {placement.how} ({exc}); check the "
                            "file with `medannot seg validate`" + (" or give --source" if "source" not in
                                                                   placement.how else "")) from exc


def _as_little_endian(seg: Dataset) -> None:
    """Re-encode a big endian SEG's pixel data in memory (highdicom parses only little endian datasets; pydicom
    already decoded the other attributes to Python values, which carry no byte order)."""
    syntax = seg.file_meta.get("TransferSyntaxUID") if hasattr(seg, "file_meta") else None
    if syntax is None or syntax.is_little_endian:
        return
    pixels = seg.pixel_array
    if int(seg.BitsAllocated) == 1:
        data = pack_bits(pixels.astype(bool))
    else:
        data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    seg.PixelData = data + b"\x00" * (len(data) % 2)
    seg["PixelData"].VR = "OB" if int(seg.BitsAllocated) <= 8 else "OW"
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.set_original_encoding(False, True)


def _reconstruct(seg_path: Path, seg: Dataset, source: SourceImage | None, grid: tuple[int, int, int] | None,
                 label_of: dict[int, int]) -> tuple[np.ndarray, Geometry | None, dict[int, int],
                                                    dict[tuple[int, int], int], Callable[[int], np.ndarray]]:
    try:
        _as_little_endian(seg)
        # copy=False: highdicom wraps the dataset we read instead of holding a second copy of its pixel data
        hseg = hd.seg.Segmentation.from_dataset(seg, copy=False)
    except (AttributeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise DicomSegError(f"{seg_path}: highdicom cannot interpret this SEG ({exc}); check it with "
                            "`medannot seg validate`") from exc
    placement = _placement(seg_path, seg, hseg, source, grid)
    numbers = list(hseg.segment_numbers)
    owner: np.ndarray | None = None
    counts: dict[int, int] = {}
    overlaps: dict[tuple[int, int], int] = {}
    for number, mask in _segment_masks(seg_path, hseg, placement, numbers):
        if owner is None:
            owner = np.zeros(mask.shape, dtype=np.uint16)
        counts[number] = int(np.count_nonzero(mask))
        earlier = owner[mask]
        for other, voxels in enumerate(np.bincount(earlier[earlier > 0])):
            if voxels:
                overlaps[(other, number)] = int(voxels)
        owner[mask] = number
    if owner is None:
        owner = np.zeros((1, int(seg.Rows), int(seg.Columns)), dtype=np.uint16)
    lut = np.zeros(int(owner.max(initial=0)) + 1, dtype=np.uint16 if max(label_of.values(), default=0) > 255
                   else np.uint8)
    for number in numbers:
        if number < len(lut):
            lut[number] = label_of.get(number, number)
    if placement.geometry is not None and placement.geometry.shape != owner.shape:
        raise DicomSegError(f"{seg_path}: its frames fill a {owner.shape} grid but the geometry is "
                            f"{placement.geometry.shape}; give --source to read it onto the source grid")

    def mask_of(number: int) -> np.ndarray:
        return next(m for n, m in _segment_masks(seg_path, hseg, placement, [number]))

    return lut[owner], placement.geometry, counts, overlaps, mask_of


def check_sr_references(sr_path: Path, sr: Dataset, seg: Dataset) -> None:
    """Refuse an SR that is not this SEG's: its evidence (or an image item) must list the SEG's SOPInstanceUID."""
    if sr.get("Modality") != "SR":
        raise DicomSegError(f"{sr_path}: Modality {sr.get('Modality', 'missing')}, not an SR; give the SR written "
                            "with this SEG, or leave --sr out")
    uid = str(seg.SOPInstanceUID)
    images = {str(ref.ReferencedSOPInstanceUID) for item in _walk(sr.get("ContentSequence"))
              if item.get("ValueType") == "IMAGE" for ref in item.get("ReferencedSOPSequence", [])}
    if uid not in referenced_instance_uids(sr) | images:
        raise DicomSegError(f"{sr_path}: does not reference this SEG (SOPInstanceUID {uid}) in "
                            "CurrentRequestedProcedureEvidenceSequence or its content; give the SR written with "
                            "this SEG, or leave --sr out")


def read_segmentation(seg_path: str | Path, sr_path: str | Path | None = None,
                      source: SourceImage | None = None) -> SegmentationRecord:
    """Read a SEG (and its companion SR, found next to it when not given) back.

    Reads BINARY, FRACTIONAL (a voxel belongs to a segment from half the maximum fractional value) and LABELMAP
    SEGs, per-frame or TILED_FULL, with or without a Frame of Reference; highdicom places the frames.

    Parameters
    ----------
    seg_path
        The DICOM-SEG file.
    sr_path
        Its companion SR; by default the SR in the same folder that references the SEG.
    source
        The source image, to read the label map exactly on its grid. Without it, a SEG from another tool is read
        onto the volume its own frames span (their positions), MedAnnot's own SEGs onto the whole source grid.

    Raises
    ------
    DicomSegError
        If the file is not a complete, readable DICOM-SEG, the SR does not reference it or the source is not the
        one it was drawn on.
    """
    seg_path = Path(seg_path)
    seg = read_dicom(seg_path, "DICOM-SEG")
    check_complete_seg(seg_path, seg)
    if source is not None:
        check_source_references(seg_path, seg, source)
    sr_file = Path(sr_path) if sr_path else find_companion_sr(seg_path, str(seg.SOPInstanceUID))
    sr = read_dicom(sr_file, "SR") if sr_file else None
    if sr is not None and sr_file is not None:
        check_sr_references(sr_file, sr, seg)
    parsed = parse_sr(sr) if sr is not None else None
    label_of = _label_values(seg, parsed)
    labels, geometry, counts, overlaps, mask_of = _reconstruct(seg_path, seg, source, _grid_from_sr(parsed),
                                                               label_of)
    return SegmentationRecord(seg_path, seg, sr_file, sr, labels, geometry,
                              _summary(seg, parsed, label_of, counts), overlaps, mask_of)


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
        if number == 0 and seg_type(seg) == "LABELMAP":
            continue  # a LABELMAP's background (pixel value 0), which highdicom does not count as a segment
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
