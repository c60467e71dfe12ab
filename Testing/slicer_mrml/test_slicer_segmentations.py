"""Segmentation nodes <-> guideline label maps on real MRML."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
import slicer  # noqa: E402

import MedAnnotLib  # noqa: E402
from medannot.errors import SegmentContentError  # noqa: E402


def _segments(segmentationNode) -> dict:
    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i)
            for i in range(segmentation.GetNumberOfSegments())}


def _referenceVolume(scene, geometry):
    return MedAnnotLib.addVolumeNodeFromArray(np.zeros(geometry.shape, np.int16), geometry, name="Reference",
                                              scene=scene)


def test_segmentation_from_guideline_has_its_names_colours_and_dicom_codes(scene, guideline):
    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, name="Reader 1", scene=scene)

    segments = _segments(segmentationNode)
    assert list(segments) == ["Liver", "Lesion"]
    np.testing.assert_allclose(segments["Liver"].GetColor(), (0xDD / 255, 0x82 / 255, 0x65 / 255))
    np.testing.assert_allclose(segments["Lesion"].GetColor(), (0xF0 / 255, 0xD2 / 255, 0x64 / 255))

    entry = slicer.vtkSlicerTerminologyEntry()
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologies.DeserializeTerminologyEntry(segments["Lesion"].GetTerminology(), entry)
    category, segmentType = entry.GetCategoryObject(), entry.GetTypeObject()
    assert (category.GetCodingSchemeDesignator(), category.GetCodeValue(), category.GetCodeMeaning()) == (
        "SCT", "49755003", "Morphologically Altered Structure")
    assert (segmentType.GetCodingSchemeDesignator(), segmentType.GetCodeValue(), segmentType.GetCodeMeaning()) == (
        "SCT", "52988006", "Lesion")


def test_label_map_round_trips_through_a_segmentation_node_on_an_oblique_grid(scene, guideline, oblique_geometry):
    labels = np.zeros(oblique_geometry.shape, dtype=np.uint8)
    labels[0:2, 1:4, 1:6] = 1
    labels[1, 2, 2:4] = 2
    referenceNode = _referenceVolume(scene, oblique_geometry)

    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(labels, oblique_geometry, guideline, scene=scene)
    back = MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, referenceNode, guideline)

    np.testing.assert_array_equal(back, labels)
    assert list(_segments(segmentationNode)) == ["Liver", "Lesion"]


def test_empty_guideline_segments_still_exist_for_the_reader_to_draw(scene, guideline, oblique_geometry):
    labels = np.zeros(oblique_geometry.shape, dtype=np.uint8)
    labels[0, 0, 0] = 1

    segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(labels, oblique_geometry, guideline, scene=scene)

    assert list(_segments(segmentationNode)) == ["Liver", "Lesion"]


def test_label_value_the_guideline_does_not_define_is_refused(scene, guideline, oblique_geometry):
    labels = np.zeros(oblique_geometry.shape, dtype=np.uint8)
    labels[0, 0, 0] = 7

    with pytest.raises(SegmentContentError, match=r"\[7\].*Liver \(1\), Lesion \(2\)"):
        MedAnnotLib.addSegmentationNodeFromLabelMap(labels, oblique_geometry, guideline, scene=scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_segment_not_in_the_guideline_is_named_in_the_error(scene, guideline, oblique_geometry):
    referenceNode = _referenceVolume(scene, oblique_geometry)
    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, name="Reader 1", scene=scene)
    segmentationNode.GetSegmentation().AddEmptySegment("", "Spleen")

    with pytest.raises(SegmentContentError, match="'Reader 1': segment 'Spleen' is not in guideline liver-ct"):
        MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, referenceNode, guideline)


def test_overlapping_segments_are_refused_with_the_voxel_count(scene, guideline, oblique_geometry):
    referenceNode = _referenceVolume(scene, oblique_geometry)
    segmentationNode = MedAnnotLib.addSegmentationNodeFromGuideline(guideline, referenceVolumeNode=referenceNode,
                                                                    scene=scene)
    segmentation = segmentationNode.GetSegmentation()
    liver = np.zeros(oblique_geometry.shape, np.uint8)
    liver[1, 1:3, 1:3] = 1
    lesion = np.zeros(oblique_geometry.shape, np.uint8)
    lesion[1, 2, 2:5] = 1  # one voxel inside the liver
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentationNode,
                                                     segmentation.GetSegmentIdBySegmentName("Liver"), referenceNode)
    slicer.util.updateSegmentBinaryLabelmapFromArray(lesion, segmentationNode,
                                                     segmentation.GetSegmentIdBySegmentName("Lesion"), referenceNode)

    with pytest.raises(SegmentContentError, match="'Lesion' overlaps 'Liver' in 1 voxels"):
        MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, referenceNode, guideline)
