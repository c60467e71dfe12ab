"""Whether an uploaded SEG + SR is what it claims to be for this task: drawn by the logged-in reader, for this task,
on exactly this case's images, under the project's guideline (full sha256). What `seg read` later reports of a stored
file is then what the server checked."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import Dataset

from medannot.dicomseg import codes
from medannot.dicomseg.reader import (
    _DERIVATION, _frame_sources, _key, _referenced_instances, _walk, check_sr_references, parse_sr,
    referenced_instance_uids,
)
from medannot.errors import DicomSegError, MedAnnotError

_CONTENT_TASK = re.compile(r"\btask (\S+)$")
_OBSERVER_NAME = ("DCM", "121008")
_OBSERVER_LOGIN = ("DCM", "128774")
_READER_ID_LENGTH = 16  # ReaderInfo: a reader id (SH) holds at most 16 characters


class ProvenanceMismatch(MedAnnotError):
    """The SEG or SR names another reader, another task, other images or another guideline than this task's."""


def expected_reader_id(username: str) -> str:
    """The reader id a user's SEG must carry: the login name (its first 16 characters for a longer one, as the
    Slicer module fills it in)."""
    return username[:_READER_ID_LENGTH]


def _name_words(name: str) -> list[str]:
    return sorted(w.casefold() for w in re.split(r"[\s^,.=]+", name) if w)


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _seg_readers(seg: Dataset) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(where, reader id) and (where, reader name) of every place the SEG names its reader."""
    ids: list[tuple[str, str]] = []
    names: list[tuple[str, str]] = []
    holders: list[tuple[str, Dataset]] = [("the SEG", seg)]
    holders += [(f"segment {item.get('SegmentNumber', '?')}", item) for item in seg.get("SegmentSequence", [])]
    for where, holder in holders:
        if "ContentCreatorName" in holder and _text(holder.ContentCreatorName):
            names.append((f"ContentCreatorName of {where}", _text(holder.ContentCreatorName)))
        for creator in holder.get("ContentCreatorIdentificationCodeSequence", []):
            for person in creator.get("PersonIdentificationCodeSequence", []):
                ids.append((f"ContentCreatorIdentificationCodeSequence of {where}", _text(person.get("CodeValue"))))
                if _text(person.get("CodeMeaning")):
                    names.append((f"ContentCreatorIdentificationCodeSequence of {where}",
                                  _text(person.get("CodeMeaning"))))
    return ids, names


def _sr_readers(sr: Dataset) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    ids: list[tuple[str, str]] = []
    names: list[tuple[str, str]] = []
    for item in _walk(sr.get("ContentSequence")):
        if "ConceptNameCodeSequence" not in item:
            continue
        name = item.ConceptNameCodeSequence[0]
        concept = (str(name.CodingSchemeDesignator), str(name.get("CodeValue")))
        if concept == _OBSERVER_NAME and item.get("ValueType") == "PNAME":
            names.append(("the SR's Person Observer Name", _text(item.get("PersonName"))))
        elif concept == _OBSERVER_LOGIN and item.get("ValueType") == "TEXT":
            ids.append(("the SR's Person Observer's Login Name", _text(item.get("TextValue"))))
    return ids, names


def check_reader(seg: Dataset, sr: Dataset, username: str, printed_name: str | None) -> None:
    """The SEG and SR name the logged-in user, and only them, as their reader."""
    seg_ids, seg_names = _seg_readers(seg)
    sr_ids, sr_names = _sr_readers(sr)
    want = expected_reader_id(username)
    if not seg_ids:
        raise ProvenanceMismatch(f"the SEG names no reader id (ContentCreatorIdentificationCodeSequence); export it "
                                 f"with reader id {want!r}, your login")
    for where, reader_id in seg_ids + sr_ids:
        if reader_id != want:
            raise ProvenanceMismatch(f"{where} names reader id {reader_id!r}, but you are logged in as {username!r}; "
                                     f"export the result with your own reader id {want!r}")
    if not seg_names:
        raise ProvenanceMismatch("the SEG has no ContentCreatorName; export it with your name as reader name")
    first_where, first = seg_names[0]
    for where, name in seg_names[1:] + sr_names:
        if _name_words(name) != _name_words(first):
            raise ProvenanceMismatch(f"{where} names reader {name!r} but {first_where} names {first!r}; one result "
                                     "has one reader: export it again")
    # "Lovelace^Ada" is "Ada Lovelace, MD" of the roster: every word of the DICOM name is in the printed name
    if printed_name and not set(_name_words(first)) <= set(_name_words(printed_name)):
        raise ProvenanceMismatch(f"{first_where} names reader {first!r}, but user {username!r} is {printed_name!r} "
                                 "in the reader roster; export the result with your own name")


def check_task(seg: Dataset, sr_root: dict[tuple[str, str], Any], task_id: int) -> None:
    """Every task id the SEG or SR carries is this task's."""
    claims: list[tuple[str, str]] = []
    derivation = _DERIVATION.search(str(seg.get("DerivationDescription", "")))
    if derivation and derivation["task"]:
        claims.append(("the SEG's DerivationDescription", derivation["task"].strip()))
    content = _CONTENT_TASK.search(str(seg.get("ContentDescription", "")))
    if content:
        claims.append(("the SEG's ContentDescription", content[1]))
    if sr_root.get(_key(codes.TASK_ID)) is not None:
        claims.append(("the SR's task item", _text(sr_root[_key(codes.TASK_ID)])))
    for where, claimed in claims:
        if claimed != str(task_id):
            raise ProvenanceMismatch(f"{where} names task {claimed}, but it was submitted to task {task_id}; export "
                                     "the result from this task")


def _outside(uids: Iterable[str], allowed: set[str]) -> list[str]:
    return sorted(set(uids) - allowed)


def check_case_references(seg: Dataset, sr: Dataset, study_uid: str, series_uid: str, case_key: str,
                          instances: set[str]) -> None:
    """The SEG references exactly the case's study and series and only its instances; the SR is this SEG's and
    references nothing outside the case."""
    where = f"case {case_key}"
    series = [str(item.get("SeriesInstanceUID", "")) for item in seg.get("ReferencedSeriesSequence", [])]
    if series != [series_uid]:
        raise ProvenanceMismatch(f"the SEG references series {', '.join(series) or 'none'}, not exactly {where}'s "
                                 f"series {series_uid}; export it from this task's images")
    if str(seg.get("StudyInstanceUID", "")) != study_uid:
        raise ProvenanceMismatch(f"the SEG belongs to study {seg.get('StudyInstanceUID', '(none)')}, not {where}'s "
                                 f"study {study_uid}; export it from this task's images")
    listed = [uid for _, uid in _referenced_instances(seg)]
    if not listed:
        raise ProvenanceMismatch(f"the SEG's ReferencedSeriesSequence lists no instance of {where}; export it from "
                                 "this task's images")
    outside = _outside(listed, instances)
    if outside:
        raise ProvenanceMismatch(f"the SEG's ReferencedSeriesSequence lists {len(outside)} instance(s) not in {where} "
                                 f"(e.g. {outside[0]}); export it from this task's images")
    outside = _outside((uid for uid, _ in _frame_sources(seg) if uid), instances)
    if outside:
        raise ProvenanceMismatch(f"{len(outside)} instance(s) the SEG's frames reference (SourceImageSequence) are not "
                                 f"in {where} (e.g. {outside[0]}); export it from this task's images")
    try:
        check_sr_references(Path("sr"), sr, seg)
    except DicomSegError as exc:
        raise ProvenanceMismatch(f"the SR does not reference this SEG (SOPInstanceUID {seg.SOPInstanceUID}); send the "
                                 "SR written with this SEG") from exc
    if str(sr.get("StudyInstanceUID", "")) != study_uid:
        raise ProvenanceMismatch(f"the SR belongs to study {sr.get('StudyInstanceUID', '(none)')}, not {where}'s "
                                 f"study {study_uid}; send the SR written with this SEG")
    seg_uid = str(seg.SOPInstanceUID)
    for key in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(key, []):
            if str(study.get("StudyInstanceUID", "")) != study_uid:
                raise ProvenanceMismatch(f"the SR's {key} names study {study.get('StudyInstanceUID', '(none)')}, not "
                                         f"{where}'s study {study_uid}; send the SR written with this SEG")
    images = {str(ref.ReferencedSOPInstanceUID) for item in _walk(sr.get("ContentSequence"))
              if item.get("ValueType") == "IMAGE" for ref in item.get("ReferencedSOPSequence", [])}
    outside = _outside(referenced_instance_uids(sr) | images, instances | {seg_uid})
    if outside:
        raise ProvenanceMismatch(f"the SR references {len(outside)} instance(s) that are neither this SEG nor in "
                                 f"{where} (e.g. {outside[0]}); send the SR written with this SEG")


def check_guideline(seg: Dataset, sr_root: dict[tuple[str, str], Any], guideline_id: str | None,
                    versions: dict[str, str]) -> str:
    """Both the SEG and the SR name the project's guideline with a version it has and that version's full sha256;
    returns the version."""
    listed = ", ".join(sorted(versions))
    derivation = _DERIVATION.search(str(seg.get("DerivationDescription", "")))
    if derivation is None:
        raise ProvenanceMismatch("the SEG's DerivationDescription names no guideline with its sha256 ('MedAnnot "
                                 "guideline <id> version <v> sha256 <64 hex>'); export it with the project's guideline")
    claims = [("the SEG", derivation["id"], derivation["version"], derivation["sha"])]
    sr_claim = [_text(sr_root.get(_key(c))) or None for c in (codes.GUIDELINE_ID, codes.GUIDELINE_VERSION,
                                                               codes.GUIDELINE_SHA256)]
    if not all(sr_claim):
        raise ProvenanceMismatch("the SR lacks the guideline id, version or sha256 items; send the SR written with "
                                 "this SEG by MedAnnot")
    claims.append(("the SR", *sr_claim))
    for where, gid, version, sha in claims:
        if gid != guideline_id or version not in versions:
            raise ProvenanceMismatch(f"{where} follows guideline {gid} {version}, but this project uses {guideline_id} "
                                     f"versions {listed}")
        if sha != versions[str(version)]:
            raise ProvenanceMismatch(f"{where} names guideline {gid} {version} with sha256 {str(sha)[:12]}..., not the "
                                     "project's text of that version; export with the project's guideline")
    return str(claims[0][2])


def sr_root_items(sr: Dataset) -> dict[tuple[str, str], Any]:
    """The SR's root items by concept (guideline, task, ...)."""
    return parse_sr(sr)["root"]
