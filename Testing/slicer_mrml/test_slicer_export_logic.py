"""The MedAnnotExport logic (the class the module's widget runs) on real MRML: segmentation node -> SEG + SR."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
import slicer  # noqa: E402
from MedAnnotExportLib.logic import MedAnnotExportLogic  # noqa: E402

import MedAnnotLib  # noqa: E402
from medannot.demo_data import make_ct_series  # noqa: E402
from medannot.dicomseg import read_segmentation  # noqa: E402
from medannot.errors import GuidelineError, SourceImageError  # noqa: E402
from medannot.imaging import load_source  # noqa: E402


def _export(guideline, ct_study, segmentationNode, tmp_path, **overrides):
    arguments = dict(segmentationNode=segmentationNode, referenceVolumeNode=ct_study.volumeNode,
                     guidelinePath=guideline.source_path, readerName="Doe^Jane", readerId="jdoe",
                     readerRole="Radiologist", institution="Test Hospital", outputDir=tmp_path / "out",
                     confidences={"Liver": 90, "Lesion": 55})
    arguments.update(overrides)
    return MedAnnotExportLogic().exportSegmentation(**arguments)


def test_exported_seg_reads_back_equal_to_the_segmentation_voxel_for_voxel(scene, guideline, ct_study, tmp_path):
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   name="Reader 1", scene=scene)
    drawn = MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, ct_study.volumeNode, guideline)
    assert set(np.unique(drawn)) == {0, 1, 2}

    result = _export(guideline, ct_study, segmentationNode, tmp_path)
    record = read_segmentation(result.seg_path)

    np.testing.assert_array_equal(record.labels, drawn)
    np.testing.assert_array_equal(record.labels, ct_study.labels)
    assert ct_study.geometry.mismatches(record.geometry) == []
    reloaded = MedAnnotLib.addSegmentationNodeFromLabelMap(record.labels, record.geometry, guideline, scene=scene)
    for name in ("Liver", "Lesion"):
        segmentIds = [node.GetSegmentation().GetSegmentIdBySegmentName(name) for node in (segmentationNode, reloaded)]
        np.testing.assert_array_equal(
            slicer.util.arrayFromSegmentBinaryLabelmap(reloaded, segmentIds[1], ct_study.volumeNode),
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentIds[0], ct_study.volumeNode))


def test_export_records_reader_guideline_and_confidence_per_segment(scene, guideline, ct_study, tmp_path):
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    summary = read_segmentation(_export(guideline, ct_study, segmentationNode, tmp_path).seg_path).summary

    assert summary["reader_name"] == "Doe^Jane"
    assert summary["reader_id"] == "jdoe"
    assert (summary["guideline"]["id"], summary["guideline"]["version"]) == ("liver-ct", "1.0.0")
    assert summary["guideline"]["sha256"] == guideline.sha256
    confidences = {segment["name"]: segment["confidence"] for segment in summary["segments"]}
    assert confidences == {"Liver": 90, "Lesion": 55}
    assert {segment["algorithm_type"] for segment in summary["segments"]} == {"MANUAL"}


def test_export_through_the_parameter_node_fields(scene, guideline, guideline_path, ct_study, tmp_path):
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)
    parameters = types.SimpleNamespace(segmentationNode=segmentationNode, referenceVolumeNode=ct_study.volumeNode,
                                       guidelinePath=guideline_path, readerName="Doe^Jane", readerId="jdoe",
                                       readerRole="Annotator", institution="", outputDir=tmp_path / "out")

    result = MedAnnotExportLogic().exportFromParameterNode(parameters, confidences={"Liver": 70})

    assert result.seg_path.is_file() and result.sr_path.is_file()


def test_series_sharing_its_folder_with_other_files_exports_only_the_volumes_instances(
        scene, guideline, ct_study, dicom_database, tmp_path):
    otherSeries = make_ct_series(tmp_path / "other", shape=(2, 32, 32))
    shutil.copy(next(otherSeries.iterdir()), ct_study.folder / "other-series.dcm")
    (ct_study.folder / "notes.txt").write_text("not DICOM")
    dicom_database.addFolder(otherSeries)
    with pytest.raises(SourceImageError, match="holds 2 series"):
        load_source(ct_study.folder)  # so the export must pick out the volume's own files
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    record = read_segmentation(_export(guideline, ct_study, segmentationNode, tmp_path).seg_path)

    np.testing.assert_array_equal(record.labels, ct_study.labels)


def test_volume_not_loaded_from_the_dicom_database_gives_a_clear_error(scene, guideline, ct_study, tmp_path):
    ct_study.volumeNode.RemoveAttribute("DICOM.instanceUIDs")
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    with pytest.raises(SourceImageError, match="Volume 'CT' was not loaded from Slicer's DICOM database"):
        _export(guideline, ct_study, segmentationNode, tmp_path)
    assert not (tmp_path / "out").exists()


def test_without_an_open_dicom_database_the_error_says_to_open_the_dicom_module(
        scene, guideline, ct_study, tmp_path, monkeypatch):
    monkeypatch.delattr(slicer, "dicomDatabase")
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    with pytest.raises(SourceImageError, match="no DICOM database is open; open the DICOM module"):
        _export(guideline, ct_study, segmentationNode, tmp_path)


def test_instance_missing_from_the_database_is_named(scene, guideline, ct_study, dicom_database, tmp_path):
    missingUid = ct_study.volumeNode.GetAttribute("DICOM.instanceUIDs").split()[3]
    del dicom_database.files[missingUid]
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    with pytest.raises(SourceImageError, match=f"DICOM instance {missingUid} is not in the DICOM database"):
        _export(guideline, ct_study, segmentationNode, tmp_path)


def test_transformed_volume_is_refused(scene, guideline, ct_study, tmp_path):
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    ct_study.volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(ct_study.labels, ct_study.geometry, guideline,
                                                                   scene=scene)

    with pytest.raises(SourceImageError, match="Volume 'CT' is under a transform"):
        _export(guideline, ct_study, segmentationNode, tmp_path)


def test_missing_guideline_file_is_reported_before_anything_else(scene, guideline, ct_study, tmp_path):
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")

    with pytest.raises(GuidelineError, match="Choose a guideline file"):
        _export(guideline, ct_study, segmentationNode, tmp_path, guidelinePath=tmp_path / "nowhere.yaml")


def test_guideline_segment_names_fill_the_confidence_table_in_order(guideline_path):
    assert MedAnnotExportLogic().segmentNames(guideline_path) == ["Liver", "Lesion"]


def test_an_optional_segment_left_empty_is_left_out_even_with_a_confidence(scene, guideline, ct_study, tmp_path):
    liverOnly = np.where(ct_study.labels == 2, 1, ct_study.labels).astype(ct_study.labels.dtype)
    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(liverOnly, ct_study.geometry, guideline,
                                                                   scene=scene)
    assert segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Lesion")  # the guideline created it

    summary = read_segmentation(_export(guideline, ct_study, segmentationNode, tmp_path).seg_path).summary

    assert [(s["name"], s["confidence"]) for s in summary["segments"]] == [("Liver", 90)]
