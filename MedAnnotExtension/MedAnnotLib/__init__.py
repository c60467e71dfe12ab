"""Slicer glue shared by the MedAnnot modules: MRML nodes <-> numpy arrays and LPS geometry, DICOM sources,
and installing the packages MedAnnot needs on first use.

Importing this package installs nothing and needs only what Slicer ships (numpy, SimpleITK, pydicom, VTK, MRML).
"""

from MedAnnotLib.dependencies import REQUIREMENTS_PATH, ensureRequirements, missingRequirements
from MedAnnotLib.dicomsource import dicomFilesOfVolume, dicomInstanceUidsOfVolume, sourcePathOfVolume
from MedAnnotLib.mrml import (
    addVolumeNodeFromArray,
    arrayAndGeometryFromVolumeNode,
    geometryFromVolumeNode,
    hasParentTransform,
    ijkToRasMatrixFromGeometry,
    updateVolumeNodeFromArray,
)
from MedAnnotLib.segmentations import (
    addSegmentationNodeFromGuideline,
    addSegmentationNodeFromLabelMap,
    labelMapFromSegmentationNode,
    segmentMasksFromSegmentationNode,
    labelMapFromSegments,
    terminologyEntryFromSegmentSpec,
    updateSegmentationFromLabelMap,
    updateSegmentsFromLabelMap,
)

__all__ = [
    "REQUIREMENTS_PATH",
    "addSegmentationNodeFromGuideline",
    "addSegmentationNodeFromLabelMap",
    "addVolumeNodeFromArray",
    "arrayAndGeometryFromVolumeNode",
    "dicomFilesOfVolume",
    "dicomInstanceUidsOfVolume",
    "ensureRequirements",
    "geometryFromVolumeNode",
    "hasParentTransform",
    "ijkToRasMatrixFromGeometry",
    "labelMapFromSegmentationNode",
    "segmentMasksFromSegmentationNode",
    "labelMapFromSegments",
    "missingRequirements",
    "sourcePathOfVolume",
    "terminologyEntryFromSegmentSpec",
    "updateSegmentationFromLabelMap",
    "updateSegmentsFromLabelMap",
    "updateVolumeNodeFromArray",
]
