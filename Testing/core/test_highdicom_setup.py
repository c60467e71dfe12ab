"""What makes highdicom's first use faster changes nothing it checks or writes (medannot/dicomseg/_highdicom_setup)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from medannot_testing import CLI_ENV

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, EnhancedMRImageStorage, SegmentationStorage, UltrasoundMultiFrameImageStorage

from medannot.dicomseg._highdicom_setup import LazyModuleTable, prepare_highdicom
from medannot.imaging import load_source


def test_every_module_of_the_standard_reads_as_highdicom_parses_it():
    data = pkgutil.get_data("highdicom", "_standard/module_attribute_map.json")
    assert data is not None
    whole = json.loads(data)
    table = LazyModuleTable.index(data)
    assert table is not None
    assert list(table) == list(whole)
    assert all(table[key] == whole[key] for key in whole)
    assert "no-such-module" not in table
    with pytest.raises(KeyError):
        table["no-such-module"]


def test_a_table_indexed_in_a_helper_process_reads_as_highdicom_parses_it():
    from medannot.dicomseg._highdicom_setup import _table_of, module_table_index

    index = module_table_index()  # what seg export's helper process computes, without importing highdicom
    assert index is not None
    whole = json.loads(pkgutil.get_data("highdicom", "_standard/module_attribute_map.json"))
    table = _table_of(index)
    assert table is not None and list(table) == list(whole)
    assert all(table[key] == whole[key] for key in whole)
    path, size, mtime_ns, spans = index
    assert _table_of((path, size + 1, mtime_ns, spans)) is None  # not the file highdicom reads now: not used
    assert _table_of(("/elsewhere/module_attribute_map.json", size, mtime_ns, spans)) is None


def test_a_module_table_laid_out_otherwise_is_left_to_highdicom():
    table = {"first": [{"keyword": "A", "type": "1", "path": []}], "empty": [], "last": [{"keyword": "B"}]}
    assert LazyModuleTable.index(json.dumps(table).encode()) is None  # not indented: highdicom parses it whole
    indented = LazyModuleTable.index(json.dumps(table, indent=2).encode())
    assert indented is not None and dict(indented) == table


def test_iod_lookups_answer_as_highdicom_does():
    from highdicom import _standard_utils as standard

    prepare_highdicom()
    memoized = standard.is_attribute_in_iod
    original = memoized.__wrapped__
    assert memoized is not original
    for sop_class in (CTImageStorage, EnhancedMRImageStorage, SegmentationStorage, UltrasoundMultiFrameImageStorage):
        for attribute in ("NumberOfFrames", "PixelData", "ContentDate", "TotalPixelMatrixRows", "NoSuchAttribute"):
            for exclude in (None, ["IconImageSequence"]):
                assert memoized(attribute, sop_class, exclude) == original(attribute, sop_class, exclude)
    with pytest.raises(KeyError):
        memoized("PixelData", "1.2.3.4")
    prepare_highdicom()  # a second call changes nothing
    assert standard.is_attribute_in_iod is memoized


# Exports the same case twice in fresh processes: as MedAnnot does (collector paused, highdicom prepared) and with
# highdicom left to its own first use (collector on, nothing prepared); prints nothing, writes into two folders.
_EXPORT = """
import sys
from datetime import datetime, timezone
import numpy as np
import medannot.dicomseg.export as export
from medannot.dicomseg import ReaderInfo
from medannot.guideline import load_guideline
from medannot.imaging import load_source

source_path, labels_path, guideline_path, out, mode = sys.argv[1:]
run = export.export_segmentation
if mode == "highdicom-alone":
    export.prepare_highdicom = lambda: None
    run = export.export_segmentation.__wrapped__  # without the paused collector
source = load_source(source_path)
run(source, np.load(labels_path), source.geometry, load_guideline(guideline_path), ReaderInfo("Doe^Jane", "jdoe"),
    out, content_datetime=datetime(2026, 3, 4, 10, 20, 30, tzinfo=timezone.utc))
"""

# Values that differ between two exports by design (new UIDs, the time of writing).
# highdicom stamps its own Contributing Equipment item with the time of writing. The file meta group length counts
# the SOP Instance UID's characters, and highdicom's random UIDs are 60 to 64 characters long.
_PER_RUN = {"InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime", "ContributionDateTime",
            "FileMetaInformationGroupLength"}


def _generated_uids(seg: pydicom.Dataset, sr: pydicom.Dataset) -> dict[str, str]:
    uids = {str(seg.SOPInstanceUID): "<SEG>", str(seg.SeriesInstanceUID): "<SEG series>",
            str(sr.SOPInstanceUID): "<SR>", str(sr.SeriesInstanceUID): "<SR series>"}
    for index, item in enumerate(seg.DimensionOrganizationSequence):
        uids[str(item.DimensionOrganizationUID)] = f"<dimension organisation {index}>"
    for item in seg.SegmentSequence:
        uids[str(item.TrackingUID)] = f"<tracking {item.SegmentNumber}>"
    return uids


def _flatten(ds: pydicom.Dataset, uids: dict[str, str], prefix: str = "") -> dict[str, object]:
    values: dict[str, object] = {}
    for element in ds:
        name = prefix + (element.keyword or str(element.tag))
        if element.keyword in _PER_RUN:
            continue
        if element.VR == "SQ":
            values[name] = len(element.value)
            for index, item in enumerate(element.value):
                values.update(_flatten(item, uids, f"{name}[{index}]."))
        elif isinstance(element.value, bytes):
            values[name] = element.value
        else:
            text = str(element.value)
            values[name] = uids.get(text, text)
    return values


def _written(folder: Path) -> dict[str, dict[str, object]]:
    files = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in folder.glob("*.dcm")}
    seg, sr = pydicom.dcmread(files["SEG"]), pydicom.dcmread(files["SR"])
    uids = _generated_uids(seg, sr)
    return {"SEG": _flatten(seg, uids), "SR": _flatten(sr, uids), "file meta": _flatten(seg.file_meta, uids)}


def _labels_on(shape: tuple[int, int, int], case: str) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    n, rows, cols = shape
    labels[1:n - 1, rows // 4:rows // 2, cols // 4:cols // 2] = 1
    if case == "several segments, an empty plane between present ones":
        labels[n // 2] = 0
        labels[2, rows // 2:rows // 2 + 3, cols // 2:cols // 2 + 4] = 2
        labels[n - 2, rows // 2:rows // 2 + 2, cols // 2:cols // 2 + 2] = 2
    return labels


@pytest.mark.parametrize("case", ["one segment", "several segments, an empty plane between present ones"])
@pytest.mark.parametrize("source_kind", ["CT series", "enhanced MR multi-frame"])
def test_export_writes_what_highdicom_alone_writes(source_kind, case, ct_case, liver_guideline_path, tmp_path):
    source_path = ct_case["folder"] if source_kind == "CT series" else Path(get_testdata_file("emri_small.dcm"))
    labels_path = tmp_path / "labels.npy"
    np.save(labels_path, _labels_on(load_source(source_path).shape, case))
    written = {}
    for mode in ("medannot", "highdicom-alone"):
        out = tmp_path / mode
        proc = subprocess.run([sys.executable, "-c", _EXPORT, str(source_path), str(labels_path),
                               str(liver_guideline_path), str(out), mode], env=CLI_ENV, capture_output=True, text=True)
        assert proc.returncode == 0, f"{mode}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        written[mode] = _written(out)
    for part in ("SEG", "SR", "file meta"):
        ours, alone = written["medannot"][part], written["highdicom-alone"][part]
        assert sorted(ours) == sorted(alone), part
        differences = [name for name in ours if ours[name] != alone[name]]
        assert not differences, f"{part}: {differences[:5]}"
    assert written["medannot"]["SEG"]["NumberOfFrames"] == written["highdicom-alone"]["SEG"]["NumberOfFrames"]
