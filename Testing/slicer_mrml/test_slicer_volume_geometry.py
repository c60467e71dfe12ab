"""Volume nodes <-> numpy + LPS geometry on real MRML."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML): pip install slicer-core")
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402

import MedAnnotLib  # noqa: E402
from medannot.imaging.geometry import Geometry  # noqa: E402


def test_volume_round_trip_preserves_voxels_and_oblique_geometry(scene, oblique_geometry):
    voxels = np.random.default_rng(1).integers(-1000, 2000, oblique_geometry.shape).astype(np.int16)

    volumeNode = MedAnnotLib.addVolumeNodeFromArray(voxels, oblique_geometry, name="oblique", scene=scene)
    back, geometry = MedAnnotLib.arrayAndGeometryFromVolumeNode(volumeNode)

    np.testing.assert_array_equal(back, voxels)
    assert back.dtype == voxels.dtype
    assert oblique_geometry.mismatches(geometry) == []
    np.testing.assert_allclose(geometry.direction, oblique_geometry.direction, atol=1e-9)
    np.testing.assert_allclose(geometry.origin, oblique_geometry.origin, atol=1e-9)
    np.testing.assert_allclose(geometry.spacing, oblique_geometry.spacing, atol=1e-9)


def test_geometry_is_the_lps_grid_simpleitk_reads_from_slicers_own_nrrd(scene, tmp_path):
    """Slicer's NRRD writer converts RAS to LPS itself: an independent check of our RAS/LPS signs."""
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ras")
    ijkToRas = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    slicer.util.updateVolumeFromArray(volumeNode, np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    storageNode = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storageNode.SetFileName(str(tmp_path / "volume.nrrd"))
    assert storageNode.WriteData(volumeNode)

    written = sitk.ReadImage(str(tmp_path / "volume.nrrd"))
    geometry = MedAnnotLib.geometryFromVolumeNode(volumeNode)

    assert Geometry.from_sitk(written).mismatches(geometry) == []
    np.testing.assert_allclose(geometry.direction, written.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(MedAnnotLib.arrayAndGeometryFromVolumeNode(volumeNode)[0],
                                  sitk.GetArrayFromImage(written))


def test_label_map_volume_keeps_label_values_and_fits_64_bit_labels_into_32_bits(scene, oblique_geometry):
    labels = np.zeros(oblique_geometry.shape, dtype=np.int64)
    labels[1, 2:4, 3:6] = 2
    labels[2, 0, 0] = 1

    volumeNode = MedAnnotLib.addVolumeNodeFromArray(labels, oblique_geometry, name="labels", labelMap=True, scene=scene)
    back, geometry = MedAnnotLib.arrayAndGeometryFromVolumeNode(volumeNode)

    assert volumeNode.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(back, labels)
    assert oblique_geometry.mismatches(geometry) == []


def test_array_that_does_not_fit_its_geometry_is_refused_with_both_shapes(scene, oblique_geometry):
    with pytest.raises(ValueError, match=r"\(2, 5, 7\).*\(3, 5, 7\)"):
        MedAnnotLib.addVolumeNodeFromArray(np.zeros((2, 5, 7), np.uint8), oblique_geometry, scene=scene)


def test_volume_without_voxels_is_named_in_the_error(scene):
    emptyNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty CT")
    with pytest.raises(ValueError, match="Empty CT"):
        MedAnnotLib.geometryFromVolumeNode(emptyNode)
