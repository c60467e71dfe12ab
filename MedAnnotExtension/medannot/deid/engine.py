"""Apply the Basic Profile to one dataset, and find what in a dataset would still identify the patient.

``deidentify`` and ``find_phi`` walk the same tree (every nested sequence item, the file meta, SR content items)
and read the same rules, so what ``check`` reports is exactly what ``apply`` changes.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

import medannot
from medannot.deid import profile
from medannot.deid.profile import DeidError

logger = logging.getLogger(__name__)

_REGISTRY = "1.2.840.10008."
#: UI attributes that name a coding scheme, a context group or the writing software, never an instance.
_UID_KEEP = frozenset({"CodingSchemeUID", "ContextUID", "MappingResourceUID", "ImplementationClassUID",
                       "TransferSyntaxUID", "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID",
                       "ReferencedTransferSyntaxUIDInFile"})
#: What MedAnnot writes about the annotator and the annotation (staff, not patient): a submission needs them, so the
#: gate keeps them in MedAnnot's own SEG/SR (Manufacturer "MedAnnot") and says so in DeidentificationMethod.
_PROVENANCE = frozenset({
    "ContentCreatorName", "ContentCreatorIdentificationCodeSequence", "PersonIdentificationCodeSequence", "InstitutionName", "InstitutionalDepartmentName",
    "InstitutionAddress", "SeriesDescription", "DerivationDescription", "ContentSequence", "PersonName",
    "VerifyingObserverName", "VerifyingOrganization", "VerifyingObserverIdentificationCodeSequence",
    "ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime",
    "ObservationDateTime", "VerificationDateTime", "DateTime", "Date", "Time", "StationName", "DeviceSerialNumber",
    "ContributingEquipmentSequence", "ContributionDateTime", "ContributionDescription", "ContentLabel",
    "ContentDescription", "TextValue", "ReferencedPerformedProcedureStepSequence", "PerformedProcedureCodeSequence",
})
_DATE_VRS = ("DA", "DT", "TM")
#: File meta attributes that name the sending station or carry private data: not in Table E.1-1 (the meta header is
#: rewritten by whoever writes the file), removed here because they can name the hospital's systems.
_META_IDENTIFYING = frozenset({"SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                               "ReceivingApplicationEntityTitle", "SourcePresentationAddress",
                               "SendingPresentationAddress", "ReceivingPresentationAddress", "PrivateInformation",
                               "PrivateInformationCreatorUID"})
_TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT")
#: Where an identifying value is looked for (and from where one is taken): free text, names, identifiers, dates.
_FREE_TEXT_VRS = ("LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT")
_SEARCHED_VRS = _FREE_TEXT_VRS + ("CS", "AE")  # a code string or AE title can hold a name too ("DOE")
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "PN": "ANONYMIZED", "AS": "000Y",
          "DS": "0", "IS": "0", "CS": "ANONYMIZED"}
_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UC": 1024, "UT": 65536}
_REMOVED_TEXT = "REMOVED"


@dataclass(frozen=True)
class DeidOptions:
    """How ``medannot deid apply`` de-identifies.

    Parameters
    ----------
    key
        The lab's secret (at least 16 bytes): UIDs and date offsets are HMAC-SHA256 of it, so the same source
        always maps to the same UIDs (SEGs still reference their images across exports) and nobody without the
        key can recompute the mapping from an original UID.
    profile
        ``basic`` (dates replaced by a dummy date) or ``retain-dates-shifted`` (every date moved back by one
        offset per patient, 30..3679 days).
    retain_patient_characteristics
        Keep sex, age (over 89 written as 090Y), size, weight, ... (option 113108).
    us_pixels
        For ultrasound, which usually carries burned-in text: ``flag`` (leave it; ``check`` reports it),
        ``blank-outside-regions`` (zero every pixel outside SequenceOfUltrasoundRegions, option 113101) or
        ``confirmed-clean`` (the lab has looked: BurnedInAnnotation NO, recorded in DeidentificationMethod).
    """

    key: bytes
    profile: str = "basic"
    retain_patient_characteristics: bool = False
    us_pixels: str = "flag"

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise DeidError("the de-identification key is shorter than 16 bytes; make one with "
                            "'medannot deid keygen --output lab.key'")
        if self.profile not in profile.PROFILES:
            raise DeidError(f"unknown profile {self.profile!r}; choose one of {', '.join(profile.PROFILES)}")
        if self.us_pixels not in ("flag", "blank-outside-regions", "confirmed-clean"):
            raise DeidError(f"unknown --us-pixels {self.us_pixels!r}; choose flag, blank-outside-regions or "
                            "confirmed-clean")

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key, written into DeidentificationMethod (never the key)."""
        return hashlib.sha256(b"medannot-deid-key-id:" + self.key).hexdigest()[:12]

    @property
    def shift_dates(self) -> bool:
        return self.profile == "retain-dates-shifted"


@dataclass(frozen=True)
class Finding:
    """One PHI candidate left in a dataset: where (tag path), what, and the Table E.1-1 action it needs."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class _Walk:
    """State of one walk over a dataset: the options, the PHI values to look for, what was found or done."""

    options: DeidOptions | None
    ours: bool
    phi_values: list[str]
    patient: str = ""
    marks: frozenset[str] = frozenset()  # in a check: "marked" (PatientIdentityRemoved YES) and its CID 7050 codes
    date_offset: timedelta | None = None
    findings: list[Finding] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)
    uid_paths: dict[str, list[str]] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.changes[what] = self.changes.get(what, 0) + 1


# ---------------------------------------------------------------------------------------------------- keyed maps


def remap_uid(uid: str, key: bytes) -> str:
    """The UID ``uid`` becomes under ``key``: ``2.25.`` and 128 bits of HMAC-SHA256 (PS3.5 B.2), at most 44 chars."""
    digest = hmac.new(key, b"uid:" + uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def pseudonym(patient: str, key: bytes) -> str:
    """A patient's pseudonymous PatientID (and PatientName) under ``key``: ``MA-`` and 12 hex digits."""
    return "MA-" + hmac.new(key, b"patient:" + patient.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:12].upper()


def date_offset(patient: str, key: bytes) -> timedelta:
    """How far back every date of one patient moves under ``key``: 30..3679 days, the same on every run."""
    digest = hmac.new(key, b"date-offset:" + patient.encode("utf-8", "replace"), hashlib.sha256).digest()
    return timedelta(days=30 + int.from_bytes(digest[:4], "big") % 3650)


def _patient_key(ds: Dataset) -> str:
    return str(ds.get("PatientID", "") or "") + "\x00" + str(ds.get("PatientName", "") or "")


# ---------------------------------------------------------------------------------------------------- values


def _registered(uid: str) -> bool:
    return uid.startswith(_REGISTRY)


def _collect_phi_values(ds: Dataset, ours: bool) -> list[str]:
    """Values of identifying attributes in ``ds`` (at any depth), to look for anywhere else: a patient name in an
    SR text, an accession number in an image comment, an original UID pasted into a description. In MedAnnot's own
    SEG/SR the annotator's provenance is not a patient's identity and is not collected."""
    found: set[str] = set()
    stack = [ds]
    while stack:
        current = stack.pop()
        for tag in list(current.keys()):
            if tag.is_private:
                continue
            keyword = keyword_for_tag(tag)
            if ours and keyword in _PROVENANCE:
                continue
            vr = _vr_of(current, tag)
            if vr == "SQ":
                stack.extend(current[tag].value or [])
                continue
            if vr not in _FREE_TEXT_VRS + ("DA", "DT", "UI"):
                continue
            if vr == "UI":
                if keyword in _UID_KEEP:
                    continue
            elif profile.action_for(int(tag)) is None:
                continue
            elem = current[tag]
            if elem.value in (None, ""):
                continue
            for value in (elem.value if elem.VM > 1 else [elem.value]):
                text = str(value).strip()
                if vr == "UI" and _registered(text):
                    continue
                if vr == "PN":
                    found.update(p.strip() for p in re.split(r"[\^=]", text) if len(p.strip()) >= 3)
                elif len(text) >= 4 and text.upper() not in ("YES", "NO", "NONE", "UNKNOWN"):
                    found.add(text)
    found -= set(_DUMMY.values()) | {_REMOVED_TEXT}
    return sorted(found, key=len, reverse=True)


def _tag_name(tag: BaseTag, keyword: str) -> str:
    text = f"({tag.group:04X},{tag.element:04X})"
    return f"{keyword}{text}" if keyword else text


def _truncate(text: str, vr: str) -> str:
    limit = _MAX.get(vr)
    return text[:limit] if limit else text


def _contains_phi(elem: DataElement, values: list[str]) -> str | None:
    """The first identifying value found in ``elem``'s text, ignoring case ("DOE" holds "Doe")."""
    if elem.VR not in _SEARCHED_VRS or elem.value in (None, ""):
        return None
    texts = [str(v).upper() for v in (elem.value if elem.VM > 1 else [elem.value])]
    for value in values:
        if any(value.upper() in text for text in texts):
            return value
    return None


def _scrub(elem: DataElement, values: list[str]) -> None:
    def clean(text: str) -> str:
        for value in values:
            text = re.sub(re.escape(value), "X" * min(len(value), 8), text, flags=re.IGNORECASE)
        return _truncate(text, elem.VR)

    elem.value = [clean(str(v)) for v in elem.value] if elem.VM > 1 else clean(str(elem.value))


# ---------------------------------------------------------------------------------------------------- dates


def _shift(value: str, vr: str, offset: timedelta) -> str:
    text = str(value).strip()
    if not text:
        return text
    try:
        if vr == "DA":
            return (datetime.strptime(text[:8], "%Y%m%d").date() - offset).strftime("%Y%m%d")
        if vr == "DT":
            day = datetime.strptime(text[:8], "%Y%m%d").date() - offset
            return day.strftime("%Y%m%d") + text[8:]
    except ValueError:
        return _DUMMY[vr]
    return text  # TM: the time of day is not a date; the option keeps it


def _age(value: str) -> str:
    match = re.fullmatch(r"(\d{3})([DWMY])", str(value).strip())
    if match and match[2] == "Y" and int(match[1]) > 89:
        return "090Y"
    return str(value)


# ---------------------------------------------------------------------------------------------------- the walk


def _walk(ds: Dataset, walk: _Walk, prefix: str, in_content: bool) -> None:
    """Apply (``walk.options`` set) or check (None) the profile on ``ds`` and everything nested in it.

    An element is converted from its raw bytes only when a rule needs its value: a SEG's thousands of per-frame
    items are mostly numbers and UIDs, and converting them all made a check ten times slower."""
    applying = walk.options is not None
    marked = "marked" in walk.marks
    for tag in list(ds.keys()):
        if tag.is_private:
            if applying:
                del ds[tag]
                walk.count("private elements removed")
            elif tag.element >= 0x0100 or tag.element < 0x0010:  # report data, not each private creator
                walk.findings.append(Finding(f"{prefix}{_tag_name(tag, '')}",
                                             "private element (the profile removes private tags)"))
            continue
        vr = _vr_of(ds, tag)
        keyword = keyword_for_tag(tag)
        action = profile.action_for(int(tag))
        if action is None and (vr in ("DA", "DT") or keyword in _META_IDENTIFYING):
            # a date the table does not list (it lists ~100) is still a date of the patient's care; the meta
            # header's station names are the hospital's: treat them as the table treats their kin
            action = "X" if keyword in _META_IDENTIFYING else "D"
        provenance = walk.ours and keyword in _PROVENANCE
        if vr == "SQ":
            _walk_sequence(ds, ds[tag], walk, f"{prefix}{_tag_name(tag, keyword)}", action, provenance, in_content)
            continue
        if vr == "UI":
            if applying or not marked or keyword in _META_IDENTIFYING:  # a marked file's UIDs are its own
                _uid(ds, ds[tag], walk, f"{prefix}{_tag_name(tag, keyword)}", keyword)
            continue
        if in_content and keyword == "TextValue" and not walk.ours:
            elem = ds[tag]
            if applying:
                elem.value = _REMOVED_TEXT
                walk.count("SR text values removed")
            elif not _cleaned(walk):
                walk.findings.append(Finding(f"{prefix}{_tag_name(tag, keyword)}", f"SR free text "
                                             f"{str(elem.value)[:40]!r} (Clean Structured Content removes it)"))
            continue
        if action is None or provenance:
            if not walk.phi_values or vr not in _SEARCHED_VRS:
                continue
            elem = ds[tag]
            found = _contains_phi(elem, walk.phi_values)
            if found is not None:
                if applying:
                    _scrub(elem, walk.phi_values)
                    walk.count("identifying values removed from other attributes")
                else:
                    walk.findings.append(Finding(f"{prefix}{_tag_name(tag, keyword)}",
                                                 f"contains the identifying value {found!r}"))
            continue
        _tabled(ds, ds[tag], walk, f"{prefix}{_tag_name(tag, keyword)}", action, keyword)


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:  # implicit VR: the dictionary's
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _cleaned(walk: _Walk) -> bool:
    return "113104" in walk.marks


def _walk_sequence(ds: Dataset, elem: DataElement, walk: _Walk, path: str, action: str | None, provenance: bool,
                   in_content: bool) -> None:
    applying = walk.options is not None
    content = in_content or elem.keyword == "ContentSequence"
    if action in ("X", "X/Z", "Z") and not provenance and elem.value:
        if applying:
            if action == "X":
                del ds[elem.tag]
            else:
                elem.value = DicomSequence([])
            walk.count("sequences removed")
            return
        # a check names the sequence and, below it, every identifying value it holds
        walk.findings.append(Finding(path, f"sequence of {len(elem.value)} item(s) (Table E.1-1: {action})"))
    for index, item in enumerate(elem.value or []):
        _walk(item, walk, f"{path}[{index}].", content)
        if applying and action == "D" and not provenance and not content:
            for leaf in item:
                if leaf.VR in ("SH", "LO", "PN", "ST", "LT", "UT", "UC") and leaf.value:
                    leaf.value = _truncate(_DUMMY.get(leaf.VR, "ANONYMIZED"), leaf.VR)


def _uid(ds: Dataset, elem: DataElement, walk: _Walk, path: str, keyword: str) -> None:
    if keyword in _UID_KEEP or elem.value in (None, ""):
        return
    if keyword in _META_IDENTIFYING:
        if walk.options is not None:
            del ds[elem.tag]
        else:
            walk.findings.append(Finding(path, "names the sender's private information creator"))
        return
    values = elem.value if elem.VM > 1 else [elem.value]
    if all(_registered(str(v)) for v in values):
        return
    if walk.options is not None:
        mapped = [v if _registered(str(v)) else remap_uid(str(v), walk.options.key) for v in values]
        elem.value = mapped if elem.VM > 1 else mapped[0]
        walk.count("UIDs remapped")
    else:
        walk.uid_paths.setdefault(keyword or path, []).append(path)


def _tabled(ds: Dataset, elem: DataElement, walk: _Walk, path: str, action: str, keyword: str) -> None:
    """An attribute Table E.1-1 lists (not a sequence, not a UID)."""
    options = walk.options
    empty = elem.value in (None, "") or (isinstance(elem.value, (bytes, list)) and not elem.value)
    is_date = elem.VR in _DATE_VRS
    if options is None:  # check
        if empty:
            return
        marked = "marked" in walk.marks
        if not marked:
            walk.findings.append(Finding(path, f"{_show(elem)} (Table E.1-1: {action})"))
            return
        allowed = "D" in action  # a dummy is what the profile asks for
        if is_date and ("113107" in walk.marks or "113106" in walk.marks):
            allowed = True
        if keyword in profile.PATIENT_CHARACTERISTICS and "113108" in walk.marks:
            allowed = keyword != "PatientAge" or _age(str(elem.value)) == str(elem.value)
        if keyword == "PatientName" and str(elem.value).rstrip("^") == str(ds.get("PatientID", "")):
            allowed = True  # the pseudonym, a dummy value (Z allows one)
        if not allowed:
            walk.findings.append(Finding(path, f"{_show(elem)} left in a file marked de-identified "
                                               f"(Table E.1-1: {action})"))
        return
    # apply
    if keyword in profile.PATIENT_CHARACTERISTICS and options.retain_patient_characteristics:
        if keyword == "PatientAge":
            elem.value = _age(str(elem.value))
        return
    if keyword in ("PatientID", "PatientName"):
        # the name as a family name component (a PN without "^" is the retired form dciodvfy warns about)
        elem.value = pseudonym(walk.patient, options.key) + ("^" if keyword == "PatientName" else "")
        walk.count("patient pseudonymised")
        return
    if is_date and options.shift_dates and walk.date_offset is not None:
        if not empty:
            elem.value = _shift(str(elem.value), elem.VR, walk.date_offset)
            walk.count("dates shifted")
        return
    if action == "X":
        del ds[elem.tag]
        walk.count("attributes removed")
    elif "D" in action and (is_date or action in ("D", "X/D")):
        # a dummy where the table allows one and emptying could break the IOD (Type 1 dates such as ContentDate)
        if empty:
            return
        if elem.VR in _TEXT_VRS:
            elem.value = _truncate(_DUMMY.get(elem.VR, "ANONYMIZED"), elem.VR)
        else:
            del ds[elem.tag]
        walk.count("values replaced by dummies")
    elif not empty:  # Z, X/Z, Z/D and X/Z/D on other attributes: present but empty keeps a Type 2 conformant
        elem.value = "" if elem.VR in _TEXT_VRS else None
        walk.count("values emptied")


def _show(elem: DataElement) -> str:
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return f"{elem.VR} data of {len(elem.value or b'')} bytes"
    text = str(elem.value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


# ---------------------------------------------------------------------------------------------------- public


def _method_codes(ds: Dataset) -> set[str]:
    return {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])}


def _is_ultrasound(ds: Dataset) -> bool:
    return str(ds.get("Modality", "")) == "US" or str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.6.")


def _likely_burned_in(ds: Dataset) -> bool:
    """Images that usually carry burned-in text: ultrasound and secondary captures (screenshots, scanned forms)."""
    return "PixelData" in ds and (_is_ultrasound(ds) or str(ds.get("SOPClassUID", "")).startswith(
        "1.2.840.10008.5.1.4.1.1.7"))


def find_phi(ds: Dataset) -> list[Finding]:
    """Every PHI candidate left in ``ds``: what ``deid apply`` would change, each with its tag path."""
    ours = str(ds.get("Manufacturer", "")) == "MedAnnot"
    codes = _method_codes(ds)
    marked = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    walk = _Walk(None, ours, [] if marked else _collect_phi_values(ds, ours),
                 marks=frozenset(codes | {"marked"}) if marked else frozenset())
    findings: list[Finding] = []
    if not marked:
        findings.append(Finding("PatientIdentityRemoved(0012,0062)", "not YES: the file is not marked "
                                "de-identified"))
    elif profile.BASIC_PROFILE[0] not in codes:
        findings.append(Finding("DeidentificationMethodCodeSequence(0012,0064)",
                                f"has no {profile.BASIC_PROFILE[0]} ({profile.BASIC_PROFILE[1]})"))
    _walk(ds, walk, "", False)
    if hasattr(ds, "file_meta"):
        _walk(ds.file_meta, walk, "FileMeta.", False)
    findings.extend(walk.findings)
    if not marked:
        for keyword, paths in walk.uid_paths.items():
            more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
            findings.append(Finding(paths[0], f"original UID, not remapped (Table E.1-1: U){more}"))
    burned = str(ds.get("BurnedInAnnotation", "")).upper()
    if burned == "YES":
        findings.append(Finding("BurnedInAnnotation(0028,0301)", "YES: the pixels carry burned-in text; blank it "
                                "(--us-pixels blank-outside-regions for ultrasound) or do not release the image"))
    elif _likely_burned_in(ds) and burned != "NO" and profile.CLEAN_PIXEL_DATA[0] not in codes:
        kind = "ultrasound image" if _is_ultrasound(ds) else "secondary capture"
        findings.append(Finding("PixelData(7FE0,0010)", f"{kind}: burned-in text is likely and "
                                "BurnedInAnnotation is not NO; blank outside the ultrasound regions "
                                "(--us-pixels blank-outside-regions) or confirm (--us-pixels confirmed-clean)"))
    return findings


def deidentify(ds: Dataset, options: DeidOptions, where: str = "the dataset",
               in_place: bool = False) -> tuple[Dataset, dict[str, int]]:
    """A de-identified copy of ``ds`` and counts of what changed; ``ds`` itself is not touched unless ``in_place``
    (for a dataset just read from a file: saves the copy, a quarter of the time).

    Raises ``DeidError`` (naming ``where``) when an option cannot apply, e.g. blanking an ultrasound image that
    has no SequenceOfUltrasoundRegions.
    """
    ours = str(ds.get("Manufacturer", "")) == "MedAnnot"
    patient = _patient_key(ds)
    phi_values = _collect_phi_values(ds, ours)
    likely_burned_in = _likely_burned_in(ds)
    out = ds if in_place else copy.deepcopy(ds)
    walk = _Walk(options, ours, phi_values, patient=patient)
    if options.shift_dates:
        walk.date_offset = date_offset(patient, options.key)
    if likely_burned_in and options.us_pixels == "blank-outside-regions":
        _blank_outside_regions(out, where)
    _walk(out, walk, "", False)
    if "PatientName" in out or "PatientID" in out:  # one pseudonym in both, also where the source had only one
        out.PatientID = pseudonym(patient, options.key)
        out.PatientName = out.PatientID + "^"
    if hasattr(out, "file_meta"):
        _walk(out.file_meta, walk, "FileMeta.", False)
        # the meta header names the (new) instance; some sources lack it (ACR-NEMA style files)
        if "SOPInstanceUID" in out:
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        if "SOPClassUID" in out and "MediaStorageSOPClassUID" not in out.file_meta:
            out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    _mark(out, options, ours, bool(walk.changes.get("SR text values removed")) or "ContentSequence" in out,
          likely_burned_in)
    return out, dict(walk.changes)


def _mark(ds: Dataset, options: DeidOptions, ours: bool, structured: bool, burned_in_likely: bool) -> None:
    codes = [profile.BASIC_PROFILE]
    notes = [f"MedAnnot {medannot.__version__}: PS3.15 E.1-1 Basic Profile (table {profile.TABLE_EDITION})",
             f"UIDs remapped by HMAC-SHA256 (key {options.key_id})"]
    if structured:
        codes.append(profile.CLEAN_STRUCTURED_CONTENT)
    if options.shift_dates:
        codes.append(profile.RETAIN_MODIFIED_DATES)
        notes.append("dates shifted per patient")
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    if options.retain_patient_characteristics:
        codes.append(profile.RETAIN_PATIENT_CHARACTERISTICS)
    if burned_in_likely and options.us_pixels == "blank-outside-regions":
        codes.append(profile.CLEAN_PIXEL_DATA)
        notes.append("pixels outside the ultrasound regions blanked")
        ds.BurnedInAnnotation = "NO"
    elif burned_in_likely and options.us_pixels == "confirmed-clean":
        notes.append("pixel data confirmed free of burned-in identification by the lab")
        ds.BurnedInAnnotation = "NO"
    if ours:
        notes.append("annotator identity and annotation provenance retained")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _lo_list(notes)
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)


def _lo_list(notes: list[str]) -> list[str]:
    """DeidentificationMethod is LO (64 characters per value) with VM 1-n: one value per note."""
    return [note[:64] for note in notes]


def _blank_outside_regions(ds: Dataset, where: str) -> None:
    import numpy as np

    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        raise DeidError(f"{where}: no SequenceOfUltrasoundRegions: no region to keep; use "
                        "--us-pixels confirmed-clean after looking at it, or leave it flagged")
    try:
        ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
        pixels = ds.pixel_array.copy()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this one user-facing problem
        raise DeidError(f"{where}: cannot decode the pixel data to blank it ({exc})") from exc
    rows, columns = int(ds.Rows), int(ds.Columns)
    keep = np.zeros((rows, columns), dtype=bool)
    for region in regions:
        x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
        x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        keep[max(0, y0):min(rows, y1 + 1), max(0, x0):min(columns, x1 + 1)] = True
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    shape_mask = keep
    if samples > 1:
        shape_mask = keep[..., None]
    if frames > 1:
        shape_mask = shape_mask[None, ...]
    pixels = np.where(shape_mask, pixels, 0).astype(pixels.dtype)
    if samples > 1 and str(ds.get("PlanarConfiguration", 0)) == "1":
        ds.PlanarConfiguration = 0
    ds.PixelData = pixels.tobytes()
    if "YBR" in str(ds.get("PhotometricInterpretation", "")):
        ds.PhotometricInterpretation = "RGB"
