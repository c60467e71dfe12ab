"""The SEG/SR file writer (medannot/dicomseg/_file_writer) writes the bytes pydicom's ``save_as`` writes."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from medannot.dicomseg import ReaderInfo, SegmentProvenance, export_segmentation
from medannot.dicomseg._file_writer import encode_file, save_dataset
from medannot.dicomseg.export import _build_seg_and_sr
from medannot.guideline import load_guideline
from medannot.imaging import load_source

READER = ReaderInfo(name="Müller^Jürgen", reader_id="jm", role="Radiologist", institution="Hôpital Général")
WHEN = datetime(2026, 3, 4, 10, 20, 30, tzinfo=timezone.utc)


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ours(ds: Dataset) -> bytes:
    parts = encode_file(ds)
    assert parts is not None, "the file was left to pydicom: the fast writer was not used"
    return b"".join(parts)


def _cases(ct_case: dict, us_case: dict, enhanced: Path, liver: Path, echo: Path) -> dict[str, dict]:
    ct = load_source(ct_case["folder"])
    one_segment = (ct_case["labels"] == 1).astype(np.uint8)
    probability = np.clip(ct_case["labels"].astype(np.float32) / 2.0, 0.0, 1.0)
    return {
        "CT, two segments": dict(source=ct, labels=ct_case["labels"], guideline=liver),
        "CT, one segment": dict(source=ct, labels=one_segment, guideline=liver),
        "CT, FRACTIONAL": dict(source=ct, labels=None, guideline=liver, probabilities={"liver": probability}),
        "US cine without Frame of Reference": dict(source=load_source(us_case["path"]), labels=us_case["labels"],
                                                   guideline=echo),
        "enhanced CT multi-frame": dict(source=load_source(enhanced), labels=ct_case["labels"], guideline=liver),
    }


CASES = ["CT, two segments", "CT, one segment", "CT, FRACTIONAL", "US cine without Frame of Reference",
         "enhanced CT multi-frame"]


@pytest.mark.parametrize("case", CASES)
def test_seg_and_sr_as_built_are_written_byte_for_byte_as_pydicom_writes_them(case, ct_case, us_case, enhanced_ct_path,
                                                                            liver_guideline_path,
                                                                            echo_guideline_path):
    spec = _cases(ct_case, us_case, enhanced_ct_path, liver_guideline_path, echo_guideline_path)[case]
    guideline = load_guideline(spec["guideline"])
    first = guideline.segments[0].name
    built = _build_seg_and_sr(
        spec["source"], spec["labels"], None, guideline, READER,
        segments={first: SegmentProvenance(confidence=80)}, task_id="task-7", probabilities=spec.get("probabilities"),
        replaces=None, content_datetime=WHEN, labels_name="labels", checklist=None, derived_from=(),
    )
    for ds in (built.seg, built.sr):
        # pydicom first: its write settles what it settles in place (Pixel Data's VR), which ours must then match
        expected = _pydicom_bytes(ds)
        assert _ours(ds) == expected, ds.Modality


def test_exported_files_read_back_are_rewritten_byte_for_byte_as_pydicom_writes_them(ct_case, liver_guideline_path,
                                                                                   tmp_path):
    result = export_segmentation(load_source(ct_case["folder"]), ct_case["labels"], ct_case["geometry"],
                                 load_guideline(liver_guideline_path), READER, tmp_path, content_datetime=WHEN)
    for path in (result.seg_path, result.sr_path):
        # two reads: independent datasets whose elements are still as read (not converted)
        assert _ours(pydicom.dcmread(path)) == _pydicom_bytes(pydicom.dcmread(path)) == path.read_bytes()


def _odd_dataset(bits_allocated: int = 1) -> Dataset:
    """Every kind of element the writer encodes itself or hands to pydicom, with the odd cases of each."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"  # odd length: padded with 00H
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.StudyDate = "20260304"
    ds.StudyTime = "102030.5"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "ab1"
    ds.InstitutionName = "Hôpital Général"  # LO, not ASCII: pydicom's encoding
    ds.StationName = "odd"  # SH, odd length: padded with a space
    ds.StudyDescription = ""  # empty: no value
    ds.ImageComments = "x" * 70001  # LT longer than a 16-bit length: pydicom writes it as UN
    ds.PixelSpacing = [0.5, "1.250"]  # DS: computed and original strings
    ds.InstanceNumber = 7
    ds.Rows, ds.Columns = 2, 4
    ds.BitsAllocated = bits_allocated
    ds.FrameIncrementPointer = 0x00181063  # AT
    ds.TagAngleSecondAxis = -3  # SS
    ds.ReferencePixelX0 = -70000  # SL
    ds.ReferencedFrameNumber = [1, 2, 3]  # IS multi
    ds.add_new(0x00189087, "FD", [1.5, -2.25])
    ds.add_new(0x0018A001, "SQ", [])  # empty sequence
    ds.add_new(0x00091010, "LO", "MedAnnot test")  # private creator
    ds.add_new(0x00091001, "OB", b"\x01\x02\x03")  # private, odd-length bytes: padded with 00H
    inner = Dataset()
    inner.SpecificCharacterSet = "ISO_IR 100"  # an item's own character set
    inner.CodeMeaning = "Café"
    inner.CodeValue = "C1"
    deeper = Dataset()
    deeper.ReferencedSOPInstanceUID = "1.2.3"
    deeper.is_undefined_length_sequence_item = True
    inner.ReferencedSOPSequence = DicomSequence([deeper])
    inner["ReferencedSOPSequence"].is_undefined_length = True
    ds.ConceptNameCodeSequence = DicomSequence([inner, Dataset()])
    ds.PixelData = b"\x01\x02\x03\x04" * (4 if bits_allocated > 8 else 1)  # VR "OB or OW" until written
    return ds


@pytest.mark.filterwarnings("ignore:The value for the data element", "ignore:The value length")
@pytest.mark.parametrize("bits_allocated", [1, 16])
def test_every_kind_of_element_is_written_as_pydicom_writes_it(bits_allocated):
    ours, theirs = _odd_dataset(bits_allocated), _odd_dataset(bits_allocated)
    assert ours["PixelData"].VR == "OB or OW"
    assert _ours(ours) == _pydicom_bytes(theirs)
    assert ours["PixelData"].VR == theirs["PixelData"].VR == ("OW" if bits_allocated > 8 else "OB")


@pytest.mark.filterwarnings("ignore:The value for the data element", "ignore:The value length")
def test_what_the_writer_does_not_encode_itself_is_left_whole_to_pydicom(tmp_path):
    ambiguous = _odd_dataset()
    ambiguous.PixelRepresentation = 0
    ambiguous.SmallestImagePixelValue = 0  # "US or SS": settled by pydicom from PixelRepresentation
    implicit = _odd_dataset()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for ds, twin in ((ambiguous, ambiguous.copy()), (implicit, implicit.copy())):
        assert encode_file(ds) is None
        save_dataset(ds, tmp_path / "out.dcm")
        assert (tmp_path / "out.dcm").read_bytes() == _pydicom_bytes(twin)
