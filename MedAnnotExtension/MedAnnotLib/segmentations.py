"""Segmentation nodes <-> label maps whose values are a guideline's segment labels.

A guideline segment is matched to a Slicer segment by name (case-insensitive). Segments carry the guideline's
colour and its DICOM codes as Slicer terminology, so Slicer's own DICOM tools and the terminology selector see
the same codes MedAnnot writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import slicer
from vtk.util import numpy_support

from medannot.errors import SegmentContentError
from medannot.imaging.geometry import Geometry
from MedAnnotLib.mrml import ijkToRasMatrixFromGeometry

if TYPE_CHECKING:  # the guideline package needs PyYAML, which Slicer may only get on first use
    from medannot.guideline import Guideline, SegmentSpec

# Slicer's terminology context for DICOM category/type codes; guideline codes are DICOM codes.
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"


def terminologyEntryFromSegmentSpec(spec: SegmentSpec) -> str:
    """Return the guideline segment's category and type in Slicer's serialized terminology format.

    Examples
    --------
    For the liver: ``Segmentation category and type - DICOM master list~SCT^91723000^Anatomical Structure``
    ``~SCT^10200004^Liver~^^~~^^~^^`` (one string; context, category, type, type modifier, anatomy).
    """
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    for codedObject, concept in ((entry.GetCategoryObject(), spec.category), (entry.GetTypeObject(), spec.type)):
        codedObject.SetCodingSchemeDesignator(concept.scheme)
        codedObject.SetCodeValue(concept.code)
        codedObject.SetCodeMeaning(concept.meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def applySegmentSpec(segment, spec: SegmentSpec) -> None:
    """Give a ``vtkSegment`` the guideline segment's name, colour and terminology."""
    segment.SetName(spec.name)
    segment.SetColor(*(channel / 255.0 for channel in spec.rgb))
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminologyEntryFromSegmentSpec(spec))


def addSegmentationNodeFromGuideline(guideline: Guideline, name: str = "", referenceVolumeNode=None, scene=None):
    """Add a segmentation node with one empty segment per guideline segment, ready for the Segment Editor.

    Parameters
    ----------
    guideline : Guideline
        Defines the segments (name, colour, codes) in order.
    name : str
        Node name; defaults to the guideline title.
    referenceVolumeNode : vtkMRMLScalarVolumeNode, optional
        Sets the segmentation's labelmap geometry (the grid the Segment Editor draws on).
    scene : vtkMRMLScene, optional
        Defaults to ``slicer.mrmlScene``.
    """
    scene = scene if scene is not None else slicer.mrmlScene
    segmentationNode = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or guideline.title))
    segmentationNode.CreateDefaultDisplayNodes()
    if referenceVolumeNode is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    for spec in guideline.segments:
        _segmentIdFor(segmentationNode, spec)
    return segmentationNode


def updateSegmentationFromLabelMap(segmentationNode, labels: np.ndarray, geometry: Geometry,
                                   guideline: Guideline) -> None:
    """Replace the voxels of each guideline segment with ``labels == segment.label``.

    Segments are found by name or created; each gets the guideline's colour and terminology. Segments that the
    guideline does not define are left alone.

    Raises
    ------
    SegmentContentError
        If the label map holds a value that no guideline segment has.
    ValueError
        If ``labels`` does not have ``geometry.shape``.
    """
    _checkLabelMap(labels, geometry, guideline)
    ijkToRas = slicer.util.vtkMatrixFromArray(ijkToRasMatrixFromGeometry(geometry))
    segmentation = segmentationNode.GetSegmentation()
    segmentation.SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(_orientedGrid(ijkToRas, geometry.size)),
    )
    for spec in guideline.segments:
        segmentId = _segmentIdFor(segmentationNode, spec)
        mask = _orientedMask((labels == spec.label).astype(np.uint8), ijkToRas)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(mask, segmentationNode, segmentId):
            raise RuntimeError(f"Slicer could not set the voxels of segment '{spec.name}'.")


def addSegmentationNodeFromLabelMap(labels: np.ndarray, geometry: Geometry, guideline: Guideline, name: str = "",
                                    scene=None):
    """Add a segmentation node with one segment per guideline segment, filled from a label map.

    See :func:`updateSegmentationFromLabelMap` for the errors raised; nothing is added to the scene then.
    """
    _checkLabelMap(labels, geometry, guideline)
    segmentationNode = addSegmentationNodeFromGuideline(guideline, name=name, scene=scene)
    updateSegmentationFromLabelMap(segmentationNode, labels, geometry, guideline)
    return segmentationNode


def labelMapFromSegmentationNode(segmentationNode, referenceVolumeNode, guideline: Guideline) -> np.ndarray:
    """Return a (slices, rows, columns) label map on the reference volume's grid with guideline label values.

    Every segment must be named after a guideline segment; voxels outside all segments are 0.

    Raises
    ------
    SegmentContentError
        If a segment's name is not in the guideline, two segments have the same guideline name, or segments
        overlap (a label map holds one label per voxel).
    """
    segmentation = segmentationNode.GetSegmentation()
    nodeName = segmentationNode.GetName()
    claimed: dict[int, str] = {}
    labels: np.ndarray | None = None
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segmentName = segmentation.GetSegment(segmentId).GetName()
        spec = _specNamed(guideline, segmentName)
        if spec is None:
            raise SegmentContentError(
                f"Segmentation '{nodeName}': segment '{segmentName}' is not in guideline {guideline.id} "
                f"{guideline.version}, which defines {_describeSegments(guideline)}; rename or delete the segment."
            )
        if spec.label in claimed:
            raise SegmentContentError(
                f"Segmentation '{nodeName}': segments '{claimed[spec.label]}' and '{segmentName}' are both "
                f"guideline segment '{spec.name}'; merge them or delete one."
            )
        claimed[spec.label] = segmentName
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode) > 0
        if labels is None:
            labels = np.zeros(mask.shape, dtype=_labelType(guideline))
        overlap = mask & (labels != 0)
        if overlap.any():
            others = sorted({claimed[int(v)] for v in np.unique(labels[overlap])})
            raise SegmentContentError(
                f"Segmentation '{nodeName}': segment '{segmentName}' overlaps {', '.join(repr(o) for o in others)} "
                f"in {int(overlap.sum())} voxels; each voxel may belong to one segment only. In the Segment Editor "
                "use Logical operators > Subtract, or paint with Masking > Modify other segments: Overwrite all."
            )
        labels[mask] = spec.label
    if labels is None:
        shape = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
        labels = np.zeros(shape, dtype=_labelType(guideline))
    return labels


def _checkLabelMap(labels: np.ndarray, geometry: Geometry, guideline: Guideline) -> None:
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"Label map shape {tuple(labels.shape)} does not match its geometry {tuple(geometry.shape)}.")
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - set(guideline.labels))
    if unknown:
        raise SegmentContentError(
            f"Label map holds value(s) {unknown} that guideline {guideline.id} {guideline.version} does not define; "
            f"it defines {_describeSegments(guideline)}."
        )


def _segmentIdFor(segmentationNode, spec: SegmentSpec) -> str:
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        if segment.GetName().lower() == spec.name.lower():
            applySegmentSpec(segment, spec)
            return segmentId
    segmentId = segmentation.AddEmptySegment("", spec.name)
    applySegmentSpec(segmentation.GetSegment(segmentId), spec)
    return segmentId


def _orientedGrid(ijkToRas, dimensions):
    """An empty ``vtkOrientedImageData`` that only describes a grid (no voxels are allocated)."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*(int(n) for n in dimensions))
    image.SetImageToWorldMatrix(ijkToRas)
    return image


def _orientedMask(mask: np.ndarray, ijkToRas):
    image = _orientedGrid(ijkToRas, tuple(reversed(mask.shape)))
    image.AllocateScalars(numpy_support.get_vtk_array_type(mask.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.reshape(-1)
    return image


def _specNamed(guideline: Guideline, name: str) -> SegmentSpec | None:
    return next((spec for spec in guideline.segments if spec.name.lower() == name.strip().lower()), None)


def _describeSegments(guideline: Guideline) -> str:
    return ", ".join(f"{spec.name} ({spec.label})" for spec in guideline.segments)


def _labelType(guideline: Guideline) -> type:
    return np.uint8 if max(guideline.labels, default=0) < 256 else np.uint16
