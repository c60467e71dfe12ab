"""Coded concepts MedAnnot puts in its SEG and SR: standard DCM/SCT/UCUM codes, plus a private scheme for the rest.

Items without a standard concept use the private coding scheme ``99MEDANNOT``, declared in each SR's
CodingSchemeIdentificationSequence so a reader can look it up.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99MEDANNOT"
PRIVATE_SCHEME_NAME = "MedAnnot annotation provenance"
PRIVATE_SCHEME_ORGANIZATION = "MedAnnot project"

CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # (111012, DCM): per-segment confidence in %
PERCENT = codes.UCUM.Percent
SECOND = codes.UCUM.Second
MILLILITER = Code("ml", "UCUM", "milliliter")
VOLUME = codes.SCT.Volume
PERSON = codes.DCM.Person
IMAGING_PROCEDURE = codes.SCT.Imaging
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
SOURCE_FOR_PROCESSING = codes.DCM.SourceImageForImageProcessingOperation
SEGMENTATION_DERIVATION = Code("113076", "DCM", "Segmentation")
DATETIME_STARTED = Code("111526", "DCM", "DateTime Started")
DATETIME_COMPLETED = Code("111527", "DCM", "DateTime Completed")

GUIDELINE_ID = Code("GUIDELINE_ID", PRIVATE_SCHEME, "Annotation guideline identifier")
GUIDELINE_VERSION = Code("GUIDELINE_VER", PRIVATE_SCHEME, "Annotation guideline version")
GUIDELINE_SHA256 = Code("GUIDELINE_SHA", PRIVATE_SCHEME, "Annotation guideline SHA-256")
TASK_ID = Code("TASK_ID", PRIVATE_SCHEME, "Annotation task identifier")
READER_ROLE = Code("READER_ROLE", PRIVATE_SCHEME, "Reader role")
SOURCE_GRID = Code("SOURCE_GRID", PRIVATE_SCHEME, "Source grid size (frames x rows x columns)")
REPLACES_SEG = Code("REPLACES_SEG", PRIVATE_SCHEME, "Replaces segmentation instance")
LABEL_VALUE = Code("LABEL_VALUE", PRIVATE_SCHEME, "Label map value")
ACTIVE_TIME = Code("ACTIVE_TIME", PRIVATE_SCHEME, "Active annotation time")
KEYFRAMES = Code("KEYFRAMES", PRIVATE_SCHEME, "Keyframes (drawn by the reader)")
CHECKLIST_ANSWER = Code("CHECKLIST", PRIVATE_SCHEME, "Checklist answer (item id=answer)")
INTERPOLATED_FRAMES = Code("INTERP_FRAMES", PRIVATE_SCHEME, "Interpolated frames")
CONSENSUS_INPUT = Code("CONSENSUS_IN", PRIVATE_SCHEME, "Reader segmentation the consensus was made from")
STAPLE_SENSITIVITY = Code("STAPLE_SENS", PRIVATE_SCHEME, "STAPLE estimated reader sensitivity")
STAPLE_SPECIFICITY = Code("STAPLE_SPEC", PRIVATE_SCHEME, "STAPLE estimated reader specificity")

ROLE_CODES = {
    "radiologist": Code("66862007", "SCT", "Radiologist"),
    "physician": Code("309343006", "SCT", "Physician"),
}


def role_code(role: str) -> Code:
    """A code for a reader's role in the organisation: SNOMED where one exists, else the private scheme."""
    return ROLE_CODES.get(role.lower(), Code(role.upper()[:16], PRIVATE_SCHEME, role[:64]))


def private_scheme_item() -> Dataset:
    """CodingSchemeIdentificationSequence item declaring the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item
