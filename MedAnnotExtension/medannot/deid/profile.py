"""DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile (Table E.1-1) and its options.

The table itself (which action applies to which of ~650 attributes) comes from the ``dicom-anonymizer`` package
(KitwareMedical), which keeps it current with the standard's editions; MedAnnot takes only the table from it. Its
actions are what MedAnnot owns: UIDs remapped by a keyed HMAC (dicom-anonymizer draws random UIDs per run, which
breaks references between exports), dates shifted per patient, the method codes of CID 7050, structured content
cleaned rather than dropped, and the checks of ``medannot deid check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from medannot.errors import MedAnnotError

TABLE_EDITION = "2026c"

#: Action codes of Table E.1-1 by the category names dicom-anonymizer uses.
_CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# CID 7050 De-identification Method (coding scheme DCM).
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
CLEAN_STRUCTURED_CONTENT = ("113104", "Clean Structured Content Option")
RETAIN_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
RETAIN_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")

#: Profiles ``medannot deid apply --profile`` offers.
PROFILES = {
    "basic": "Basic Profile: dates replaced by a dummy date",
    "retain-dates-shifted": "Basic Profile + Retain Longitudinal Temporal Information with Modified Dates: every "
                            "date shifted by one offset per patient (keyed), so intervals between studies hold",
}

#: Attributes the Retain Patient Characteristics option keeps (PS3.15 E.3.6, the Table's "Rtn. Pat. Chars." column).
PATIENT_CHARACTERISTICS = frozenset({
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus", "PregnancyStatus",
    "PatientSexNeutered", "SpecialNeeds", "PatientState", "Allergies", "PreMedication", "AdditionalPatientHistory",
    "PatientSpeciesDescription", "PatientBreedDescription",
})


class DeidError(MedAnnotError):
    """De-identification could not be done: a missing key, an unreadable file, an option that does not apply."""


@dataclass(frozen=True)
class TableEntry:
    """One row of Table E.1-1: the tag (or a repeating-group mask) and its action code."""

    group: int
    element: int
    action: str
    group_mask: int = 0xFFFF
    element_mask: int = 0xFFFF


@lru_cache(maxsize=1)
def table() -> tuple[dict[int, str], tuple[TableEntry, ...]]:
    """Table E.1-1 as (action by exact tag, masked rows such as the 50xx curves and 60xx overlay data)."""
    try:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError as exc:  # pragma: no cover - a dependency of medannot[package]
        raise DeidError("the de-identification table needs the 'dicom-anonymizer' package: "
                        "pip install 'medannot[package]'") from exc
    database = dicom_anonymization_database_selector(f"dicomfields_{TABLE_EDITION}")
    exact: dict[int, str] = {}
    masked: list[TableEntry] = []
    for category, action in _CATEGORIES.items():
        for tag in database[category]:
            if len(tag) == 2:
                exact[(tag[0] << 16) | tag[1]] = action
            else:  # (group, element, group mask, element mask)
                masked.append(TableEntry(tag[0], tag[1], action, tag[2], tag[3]))
    return exact, tuple(masked)


def action_for(tag: int) -> str | None:
    """The Table E.1-1 action of ``tag`` (an int), or None when the table does not list it."""
    exact, masked = table()
    found = exact.get(tag)
    if found is not None:
        return found
    group, element = tag >> 16, tag & 0xFFFF
    for row in masked:
        if group & row.group_mask == row.group and element & row.element_mask == row.element:
            return row.action
    return None
