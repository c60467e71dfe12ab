"""Build the SEG dataset with highdicom, and complete what highdicom 0.28 lacks for multi-frame sources without a
Frame of Reference (ultrasound and angiography cine; highdicom issues #284, #200, #174).

For those sources highdicom builds every module from a one-frame proxy of the real source (same UIDs, so every
reference stays true); we then write the frames ourselves: one per (segment, non-empty source frame), each
referencing its source frame with ReferencedFrameNumber, indexed by segment number and source frame number.

FRACTIONAL SEGs of sources with a Frame of Reference are laid out by highdicom from a small array that only says
which frames exist; the quantised frames are then written from the per-segment maps (see ``_fractional_frames``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Sequence
from datetime import date
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.valuerep import DA, TM

from medannot.dicomseg import codes
from medannot.dicomseg._fractional_frames import (
    MAX_FRACTIONAL_VALUE, frame_layout, frame_peaks, frame_source, quantised_pixel_data, source_plane_index,
)
from medannot.errors import DicomSegError
from medannot.imaging.source import SourceImage

logger = logging.getLogger(__name__)

_MULTIFRAME_ONLY = (
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "CineRate", "FrameDelay",
    "ActualFrameDuration", "RecommendedDisplayFrameRate", "StartTrim", "StopTrim", "PreferredPlaybackSequencing",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
)


def build_seg(
    source: SourceImage,
    pixels: np.ndarray | Sequence[np.ndarray],
    segment_descriptions: Sequence[hd.seg.SegmentDescription],
    *,
    fractional: bool,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    software_version: str,
    content_description: str,
    content_label: str,
    content_creator_name: str,
    content_creator_identification: hd.ContentCreatorIdentificationCodeSequence,
    contributing_equipment: Sequence[hd.ContributingEquipment],
) -> hd.seg.Segmentation:
    """Build a SEG for ``source``.

    ``pixels`` is one (frames, rows, cols) array of segment numbers (BINARY), or one (frames, rows, cols) float32
    map of probabilities in [0, 1] per segment, in segment-number order (FRACTIONAL); frames in the order of the
    source's frames or sorted slices. The maps are read, never copied whole.
    """
    kwargs: dict[str, Any] = dict(
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(segment_descriptions),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer="MedAnnot",
        manufacturer_model_name="MedAnnot",
        software_versions=software_version,
        device_serial_number="0",
        content_description=content_description,
        content_label=content_label,
        content_creator_name=content_creator_name,
        content_creator_identification=content_creator_identification,
        contributing_equipment=list(contributing_equipment),
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
    )
    source = _as_highdicom_reads(source)
    if source.geometry is None and source.is_multiframe:
        seg = _build_without_frame_of_reference(source, pixels, fractional, len(segment_descriptions), kwargs)
    elif fractional:
        seg = _build_fractional(source, list(pixels), kwargs)
    else:
        seg = hd.seg.Segmentation(source_images=source.datasets, pixel_array=pixels, **kwargs)
    _complete_what_highdicom_leaves(seg, source)
    return seg


# Type 2 attributes of the Patient and General Study modules that highdicom 0.28 reads from the source as
# attributes (an AttributeError when a file lacks them, e.g. no PatientID).
_TYPE2_READ_BY_HIGHDICOM = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime",
)


def _as_highdicom_reads(source: SourceImage) -> SourceImage:
    """The source as highdicom can take it, for files other tools wrote loosely.

    - Type 2 attributes it reads are present (empty where the file has none, as Type 2 allows);
    - an empty SpecificCharacterSet is dropped (empty means the default repertoire, which highdicom's enumeration
      does not accept);
    - ACR-NEMA style dates and times ("1997.04.24", "14:04:38") are written as DA / TM ("19970424", "140438"), and
      ones that still do not parse are left empty, since highdicom refuses them and the SEG copies them.

    Datasets that need none of this are passed as they are: nothing is copied for a conformant series.
    """
    datasets: list[Dataset] = []
    for ds in source.datasets:
        elements = ds._dict  # looked up by tag: a 300-slice series makes thousands of these checks
        fixes: dict[str, str | None] = {keyword: "" for keyword, tag in _TYPE2_TAGS if tag not in elements}
        if _CHARSET_TAG in elements:
            charset = ds.get("SpecificCharacterSet", None)
            values = [charset] if charset is None or isinstance(charset, str) else list(charset)
            if not any(str(v or "").strip() for v in values):
                fixes["SpecificCharacterSet"] = None
        for keyword, tag, kind in _DATE_AND_TIME_TAGS:
            if tag not in elements or keyword in fixes or _is_plain_date_or_time(elements[tag], kind):
                continue
            if ds[keyword].value not in (None, ""):
                fixed = _as_dicom_date_or_time(str(ds[keyword].value), kind)
                if fixed != str(ds[keyword].value):
                    fixes[keyword] = fixed
        if not fixes:
            datasets.append(ds)
            continue
        view = Dataset(dict(ds.items()))  # a new element map over the same elements: ds itself stays untouched
        view.file_meta = getattr(ds, "file_meta", Dataset())
        view.set_original_encoding(*ds.original_encoding)
        for keyword, value in fixes.items():
            if keyword in view:
                # the view shares ds's elements: setting the value of one would change ds; put a new one instead
                del view[keyword]
            if value is not None:
                setattr(view, keyword, value)
        datasets.append(view)
    changed = any(a is not b for a, b in zip(datasets, source.datasets))
    return dataclasses.replace(source, datasets=datasets) if changed else source


_DATES_AND_TIMES = {"StudyDate": "DA", "StudyTime": "TM", "PatientBirthDate": "DA", "SeriesDate": "DA",
                    "SeriesTime": "TM", "ContentDate": "DA", "ContentTime": "TM"}


_TYPE2_TAGS = tuple((keyword, int(Tag(keyword))) for keyword in _TYPE2_READ_BY_HIGHDICOM)
_DATE_AND_TIME_TAGS = tuple((keyword, int(Tag(keyword)), kind) for keyword, kind in _DATES_AND_TIMES.items())
_CHARSET_TAG = 0x00080005
# Values that DA / TM read as they are (so _as_dicom_date_or_time keeps them), as stored: at most one pad space.
_PLAIN = {"DA": re.compile(rb"(\d{4})(\d{2})(\d{2}) ?"),
          "TM": re.compile(rb"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)? ?")}


def _is_plain_date_or_time(element: DataElement | RawDataElement, kind: str) -> bool:
    """Whether a DA / TM element certainly needs no fix, decided from its bytes without converting it.

    ``False`` only means "look closer" (the element is then converted and checked as before).
    """
    value = element.value
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if not isinstance(value, bytes):
        return False  # deferred, multi-valued or a date object: the full check
    if not value:
        return True  # empty: nothing to fix
    match = _PLAIN[kind].fullmatch(value)
    if match is None:
        return False
    if kind == "DA":
        try:
            date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return False
    return True


def _as_dicom_date_or_time(value: str, kind: str) -> str:
    text = value.strip().replace(":", "") if kind == "TM" else value.strip().replace(".", "").replace("-", "")
    try:
        (DA if kind == "DA" else TM)(text)
    except ValueError:
        return ""
    return text


def _complete_what_highdicom_leaves(seg: hd.seg.Segmentation, source: SourceImage) -> None:
    """Make the SEG conformant where highdicom 0.28 copies the source's gaps (found by dciodvfy on real files)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if source.geometry is None:
        # General Image: PatientOrientation is Type 2C, required when there is no ImageOrientationPatient;
        # highdicom does not write it for single-frame sources (US, CR, DX, NM, secondary captures).
        if "PatientOrientation" not in seg:
            seg.PatientOrientation = source.first.get("PatientOrientation", "")
        # Without a Frame of Reference the Pixel Measures functional group is optional; highdicom copies whatever
        # the source had (PixelSpacing 0 on some CRs, no SliceThickness on NM), which is then invalid. A SEG frame
        # lies exactly on its source frame, so the source's own calibration still applies: drop incomplete ones.
        if measures is not None and not _complete_pixel_measures(measures):
            del shared.PixelMeasuresSequence
    elif measures is not None and len(measures) and "SliceThickness" not in measures[0]:
        # Type 1C with a Frame of Reference; the source had none (a single slice without SliceThickness). The
        # grid's slice spacing is the best nominal value: for one slice it places no voxel.
        measures[0].SliceThickness = f"{source.geometry.spacing[2]:.6g}"
        logger.warning("%s has no SliceThickness; the SEG states %s mm, the grid's slice spacing",
                       source.paths[0], measures[0].SliceThickness)


def _complete_pixel_measures(measures: DicomSequence) -> bool:
    if not len(measures):
        return False
    item = measures[0]
    try:
        spacing = [float(v) for v in item.get("PixelSpacing") or []]
        thickness = float(item.get("SliceThickness") or 0)
    except (TypeError, ValueError):
        return False
    return len(spacing) == 2 and min(spacing) > 0 and thickness > 0


def _build_fractional(source: SourceImage, maps: list[np.ndarray], kwargs: dict[str, Any]) -> hd.seg.Segmentation:
    _, rows, cols = source.shape
    layout = frame_layout(frame_peaks(maps), rows, cols)
    seg = hd.seg.Segmentation(source_images=source.datasets, pixel_array=layout.proxy, **kwargs)
    del seg.PixelData  # highdicom's frames of the proxy; the real ones are written below

    planes = source_plane_index(source.datasets)
    items: list[Dataset] = []
    frames: list[tuple[int, int]] = []
    shared = seg.SharedFunctionalGroupsSequence[0]
    for item in seg.PerFrameFunctionalGroupsSequence:
        frame = frame_source(item, shared, planes)
        if frame not in layout.placeholders:
            items.append(item)
            frames.append(frame)
    if set(frames) != layout.frames or len(frames) != len(layout.frames):
        raise DicomSegError("highdicom laid out other FRACTIONAL frames than the probability maps hold "
                            f"({len(frames)} instead of {len(layout.frames)}); please report this")
    seg.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    seg.NumberOfFrames = len(frames)
    seg.PixelData = quantised_pixel_data(maps, frames)
    # What highdicom infers from a float array of several segments; the proxy is a label map, which cannot overlap.
    seg.SegmentsOverlap = "UNDEFINED" if len(maps) > 1 else "NO"
    return seg


def _proxy_of(ds: Dataset) -> Dataset:
    proxy = Dataset()
    for element in ds:
        if element.keyword in _MULTIFRAME_ONLY or element.tag == Tag("PixelData"):
            continue
        proxy.add(copy.deepcopy(element))
    proxy.file_meta = copy.deepcopy(ds.file_meta) if hasattr(ds, "file_meta") else Dataset()
    # highdicom treats any instance of a multi-frame IOD as multi-frame and then reads its shared functional
    # groups; an ultrasound cine has none, so give the proxy an empty one (removed again from the SEG).
    proxy.NumberOfFrames = 1
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([Dataset()])
    proxy.SharedFunctionalGroupsSequence = DicomSequence([shared])
    return proxy


def _build_without_frame_of_reference(
    source: SourceImage,
    pixels: np.ndarray | Sequence[np.ndarray],
    fractional: bool,
    n_segments: int,
    kwargs: dict[str, Any],
) -> hd.seg.Segmentation:
    src = source.first
    n_frames, rows, cols = source.shape
    # One proxy plane in which every segment is present, so highdicom writes every module and segment item.
    if fractional:
        dummy = np.zeros((1, rows, cols, n_segments), dtype=np.float32)
        for s in range(n_segments):
            dummy[0, 0, s] = 1.0
    else:
        dummy = np.zeros((1, rows, cols), dtype=np.uint16 if n_segments > 255 else np.uint8)
        dummy[0, 0, :n_segments] = np.arange(1, n_segments + 1)
    seg = hd.seg.Segmentation(source_images=[_proxy_of(src)], pixel_array=dummy, **kwargs)

    template = copy.deepcopy(seg.PerFrameFunctionalGroupsSequence[0])
    del seg.PixelData
    if fractional:
        maps = list(pixels)
        # Unlike highdicom's FoR path, a frame is kept whenever a probability on it is above 0, even if it rounds
        # to 0: that is what this path has always written.
        peaks = frame_peaks(maps)
        present_frames = [(number, int(index)) for number in range(1, n_segments + 1)
                          for index in np.flatnonzero(peaks[number - 1] > 0)]
        items = [_frame_item(template, src, number, index + 1) for number, index in present_frames]
        seg.PerFrameFunctionalGroupsSequence = DicomSequence(items)
        seg.NumberOfFrames = len(items)
        seg.PixelData = quantised_pixel_data(maps, present_frames)
    else:
        assert isinstance(pixels, np.ndarray)
        frames: list[np.ndarray] = []
        items = []
        for segment_number in range(1, n_segments + 1):
            planes = pixels == segment_number
            present = np.flatnonzero(planes.reshape(n_frames, -1).any(axis=1))
            for index in present:
                frames.append(planes[index])
                items.append(_frame_item(template, src, segment_number, int(index) + 1))
        if not frames:
            frames.append(np.zeros((rows, cols), dtype=bool))
            items.append(_frame_item(template, src, 1, 1))
        seg.PerFrameFunctionalGroupsSequence = DicomSequence(items)
        seg.NumberOfFrames = len(frames)
        seg.PixelData = _pad(np.packbits(np.stack(frames).ravel(), bitorder="little").tobytes())
    organization_uid = hd.UID()
    organization = Dataset()
    organization.DimensionOrganizationUID = organization_uid
    seg.DimensionOrganizationSequence = DicomSequence([organization])
    seg.DimensionIndexSequence = _dimension_index(organization_uid)
    # General Image: required (may be empty) when the image has no patient position and orientation.
    seg.PatientOrientation = src.get("PatientOrientation", "")
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared and not any(len(i) for i in shared.PixelMeasuresSequence):
        del shared.PixelMeasuresSequence
    if "SegmentIdentificationSequence" in shared:
        # highdicom shares it when the SEG has one segment; every frame written above carries its own, and a
        # functional group may be shared or per-frame, never both (dciodvfy: "already used in Shared...").
        del shared.SegmentIdentificationSequence
    for stale in ("DimensionOrganizationType",):
        if stale in seg:
            del seg[stale]
    return seg


def _frame_item(template: Dataset, src: Dataset, segment_number: int, frame_number: int) -> Dataset:
    item = copy.deepcopy(template)
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = src.SOPClassUID
    source_item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    source_item.ReferencedFrameNumber = frame_number
    source_item.SpatialLocationsPreserved = "YES"  # the SEG frame lies exactly on its source frame
    source_item.PurposeOfReferenceCodeSequence = DicomSequence([hd.sr.CodedConcept.from_code(codes.SOURCE_FOR_PROCESSING)])
    derivation = Dataset()
    derivation.DerivationCodeSequence = DicomSequence([hd.sr.CodedConcept.from_code(codes.SEGMENTATION_DERIVATION)])
    derivation.SourceImageSequence = DicomSequence([source_item])
    item.DerivationImageSequence = DicomSequence([derivation])
    content = Dataset()
    content.DimensionIndexValues = [segment_number, frame_number]
    content.TemporalPositionIndex = frame_number
    item.FrameContentSequence = DicomSequence([content])
    ident = Dataset()
    ident.ReferencedSegmentNumber = segment_number
    item.SegmentIdentificationSequence = DicomSequence([ident])
    return item


def _dimension_index(organization_uid: str) -> DicomSequence:
    by_segment = Dataset()
    by_segment.DimensionOrganizationUID = organization_uid
    by_segment.DimensionIndexPointer = Tag("ReferencedSegmentNumber")
    by_segment.FunctionalGroupPointer = Tag("SegmentIdentificationSequence")
    by_segment.DimensionDescriptionLabel = "Segment Number"
    by_frame = Dataset()
    by_frame.DimensionOrganizationUID = organization_uid
    by_frame.DimensionIndexPointer = Tag("TemporalPositionIndex")
    by_frame.FunctionalGroupPointer = Tag("FrameContentSequence")
    by_frame.DimensionDescriptionLabel = "Source Frame Number"
    return DicomSequence([by_segment, by_frame])


def _pad(data: bytes) -> bytes:
    return data + b"\x00" if len(data) % 2 else data
