"""A JPEG Lossless CT case through the worklist logic, end to end against a real task server: the archive holds the
series as JPEG Lossless SV1 (the commonest lossless syntax in PACS), the server serves it as stored, Slicer's Python
has no pydicom decoder for it, and the reader still gets the CT in Hounsfield units, paints it and submits a SEG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "MedAnnotExtension"
TESTING_DIR = Path(__file__).resolve().parents[1]
for path in (EXTENSION_DIR / "MedAnnot", EXTENSION_DIR / "MedAnnotCine", TESTING_DIR / "server", TESTING_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
harness = pytest.importorskip("harness", reason="needs the server extra: pip install '.[server]'")

import slicer  # noqa: E402
from harness import PASSWORD, SHAPE, ServerProcess, make_lab  # noqa: E402
from medannot_testing import rewrite_as_jpeg_lossless  # noqa: E402
from MedAnnotWorklistLib.logic import MedAnnotLogic  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import JPEGLosslessSV1  # noqa: E402

import MedAnnotLib  # noqa: E402
from medannot.dicomseg import read_segmentation  # noqa: E402
from medannot.imaging import load_source  # noqa: E402

SLOPE, INTERCEPT = 1, -1024


@pytest.fixture
def jpeg_lossless_lab(tmp_path):
    """The usual lab, case-001's series rewritten as JPEG Lossless (rescale -1024) before the server starts;
    returns the lab and case-001's expected Hounsfield units."""
    lab = make_lab(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "lab")
    source = load_source(lab.series["case-001"])
    expected = []
    for path in source.paths:
        ds = dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        ds.save_as(path)
        expected.append(ds.pixel_array.astype(np.int32) * SLOPE + INTERCEPT)
        rewrite_as_jpeg_lossless(path)
    return lab, np.stack(expected)


@pytest.fixture
def server(jpeg_lossless_lab, tmp_path):
    lab, _ = jpeg_lossless_lab
    server = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def test_a_jpeg_lossless_ct_case_opens_in_hounsfield_units_and_is_submitted(scene, jpeg_lossless_lab, server,
                                                                             tmp_path):
    lab, expected = jpeg_lossless_lab
    assert {dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
            for p in lab.series["case-001"].iterdir()} == {JPEGLosslessSV1}
    with pytest.raises(Exception, match="JPEG Lossless"):  # what pydicom alone does here, as in Slicer's Python
        dcmread(next(lab.series["case-001"].iterdir())).pixel_array
    logic = MedAnnotLogic(outboxFolder=tmp_path / "outbox", cacheFolder=tmp_path / "cases")
    logic.login(server.url, "r1", PASSWORD)

    session = logic.nextCase(lab.project_id)

    assert session.caseId == "case-001"
    served = [p for p in (session.cacheDir / "images").iterdir() if p.is_file()]
    assert served and {dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in served} == {
        JPEGLosslessSV1}  # passed through as the archive holds it
    voxels = slicer.util.arrayFromVolume(session.volumeNode)
    np.testing.assert_array_equal(voxels, expected)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 3:21, 3:15] = 1
    labels[1:3, 10:13, 7:10] = 2
    MedAnnotLib.updateSegmentationFromLabelMap(session.segmentationNode, labels,
                                               MedAnnotLib.geometryFromVolumeNode(session.volumeNode),
                                               session.guideline)
    result = logic.submit(session, readerName="Roe^Rita", readerId="r1", readerRole="Radiologist",
                          institution="Test Hospital", confidences={"Liver": 90, "Lesion": 60},
                          checklistAnswers={"contrast-phase": "yes", "image-quality": "good"})

    assert (result.status, result.caseId) == ("sent", "case-001")
    np.testing.assert_array_equal(read_segmentation(result.segPath).labels, labels)
    seg = dcmread(result.segPath)
    assert [str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence] == [
        load_source(lab.series["case-001"]).series_uid]
