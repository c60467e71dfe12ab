"""Volume nodes <-> numpy arrays with their LPS geometry: the one place where Slicer's RAS meets DICOM's LPS.

Slicer places voxels with an IJK-to-RAS matrix; the core (``medannot``) uses an LPS :class:`Geometry` as DICOM and
SimpleITK do. RAS and LPS differ in the sign of the first two axes, so converting flips the first two rows of the
matrix. Arrays are (slices, rows, columns), as ``slicer.util.arrayFromVolume`` returns them.
"""

from __future__ import annotations

import numpy as np
import slicer

from medannot.imaging.geometry import Geometry

# Multiplying by this from the left turns a matrix that maps into LPS into one that maps into RAS, and back.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometryFromVolumeNode(volumeNode) -> Geometry:
    """Return the LPS grid of a volume node's voxels.

    Parent transforms are not applied: the geometry is the node's own IJK-to-RAS, as stored with the voxels.

    Parameters
    ----------
    volumeNode : vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode
        A volume with image data.

    Returns
    -------
    Geometry
        Size, spacing, origin and direction in LPS (SimpleITK conventions).

    Raises
    ------
    ValueError
        If the node has no voxels.
    """
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None:
        name = volumeNode.GetName() if volumeNode is not None else "(none)"
        raise ValueError(f"Volume '{name}' has no voxels; load or create image data first.")
    directionsRas = np.zeros((3, 3))
    volumeNode.GetIJKToRASDirections(directionsRas)
    directionsLps = _LPS_TO_RAS[:3, :3] @ directionsRas
    originLps = _LPS_TO_RAS[:3, :3] @ np.asarray(volumeNode.GetOrigin(), dtype=float)
    return Geometry(
        size=tuple(int(n) for n in imageData.GetDimensions()),
        spacing=tuple(float(s) for s in volumeNode.GetSpacing()),
        origin=tuple(float(v) for v in originLps),
        direction=tuple(float(v) for v in directionsLps.reshape(-1)),
    )


def ijkToRasMatrixFromGeometry(geometry: Geometry) -> np.ndarray:
    """Return the 4x4 IJK-to-RAS matrix that places voxels on ``geometry``'s LPS grid."""
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = geometry.direction_matrix * np.asarray(geometry.spacing, dtype=float)
    ijkToLps[:3, 3] = geometry.origin
    return _LPS_TO_RAS @ ijkToLps


def arrayAndGeometryFromVolumeNode(volumeNode) -> tuple[np.ndarray, Geometry]:
    """Return a copy of a scalar volume's voxels, shape (slices, rows, columns), and their LPS geometry.

    Raises
    ------
    ValueError
        If the node has no voxels or more than one component per voxel.
    """
    geometry = geometryFromVolumeNode(volumeNode)
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if components != 1:
        raise ValueError(
            f"Volume '{volumeNode.GetName()}' has {components} components per voxel; "
            "a scalar (grey-level) or label map volume is needed."
        )
    return np.array(slicer.util.arrayFromVolume(volumeNode), copy=True), geometry


def updateVolumeNodeFromArray(volumeNode, array: np.ndarray, geometry: Geometry) -> None:
    """Set a volume node's voxels and IJK-to-RAS from a (slices, rows, columns) array on an LPS grid.

    Raises
    ------
    ValueError
        If the array's shape is not ``geometry.shape``, or it holds 64-bit integers that do not fit in 32 bits
        (Slicer cannot display 64-bit integer volumes).
    """
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(
            f"Array shape {tuple(array.shape)} does not match the geometry's (slices, rows, columns) "
            f"{tuple(geometry.shape)}."
        )
    array = _withoutInt64(array)
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRasMatrixFromGeometry(geometry)))
    slicer.util.updateVolumeFromArray(volumeNode, array)


def addVolumeNodeFromArray(array: np.ndarray, geometry: Geometry, name: str = "", labelMap: bool = False,
                           scene=None):
    """Add a scalar (or label map) volume node holding ``array`` on ``geometry``'s grid.

    Parameters
    ----------
    array : numpy.ndarray
        Voxels, shape (slices, rows, columns) = ``geometry.shape``.
    geometry : Geometry
        LPS grid of the voxels.
    name : str
        Node name; the scene makes it unique.
    labelMap : bool
        Create a ``vtkMRMLLabelMapVolumeNode`` instead of a ``vtkMRMLScalarVolumeNode``.
    scene : vtkMRMLScene, optional
        Defaults to ``slicer.mrmlScene``.

    Returns
    -------
    vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode
    """
    scene = scene if scene is not None else slicer.mrmlScene
    className = "vtkMRMLLabelMapVolumeNode" if labelMap else "vtkMRMLScalarVolumeNode"
    volumeNode = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name or "Volume"))
    updateVolumeNodeFromArray(volumeNode, array, geometry)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def _withoutInt64(array: np.ndarray) -> np.ndarray:
    if array.dtype not in (np.int64, np.uint64):
        return array
    if array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max):
        return array.astype(np.int32)
    raise ValueError("Voxel values exceed the 32-bit integer range; Slicer cannot hold 64-bit integer volumes.")


def hasParentTransform(node) -> bool:
    """Whether a transformable node is under a transform (its voxels are then not where its geometry says)."""
    return node is not None and node.GetParentTransformNode() is not None

