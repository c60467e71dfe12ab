"""Voxel-to-patient (LPS) geometry of an image grid, as SimpleITK and DICOM define it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only its images are taken and given here: SimpleITK is imported by those who read them
    import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """An image grid in LPS patient coordinates.

    ``size``, ``spacing`` and ``origin`` are in SimpleITK (x, y, z) order: columns, rows, slices.
    ``direction`` is a 3x3 matrix whose columns are the x, y and z axis directions.
    A numpy array of this grid has shape ``(size[2], size[1], size[0])``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, as sitk.Image.GetDirection()

    @property
    def shape(self) -> tuple[int, int, int]:
        """numpy shape (slices, rows, columns)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        size = tuple(int(v) for v in image.GetSize())
        if len(size) == 2:
            return cls(
                size=(size[0], size[1], 1),
                spacing=(*image.GetSpacing(), 1.0),  # type: ignore[arg-type]
                origin=(*image.GetOrigin(), 0.0),  # type: ignore[arg-type]
                direction=(*image.GetDirection()[0:2], 0.0, *image.GetDirection()[2:4], 0.0, 0.0, 0.0, 1.0),
            )
        return cls(
            size=size,  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dicom_plane(cls, rows: int, columns: int, slices: int, pixel_spacing: Sequence[float],
                         slice_spacing: float, first_position: Sequence[float],
                         orientation: Sequence[float], normal: Sequence[float] | None = None) -> Geometry:
        """The grid of a stack of DICOM planes: PixelSpacing (row, column), ImagePositionPatient of the first
        plane, ImageOrientationPatient (row direction, column direction); slices run along their cross product, or
        along ``normal`` when given (frames stored against the cross product)."""
        iop = np.asarray(orientation, dtype=float)
        normal = np.cross(iop[:3], iop[3:]) if normal is None else np.asarray(normal, dtype=float)
        return cls(size=(int(columns), int(rows), int(slices)),
                   spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(slice_spacing)),
                   origin=tuple(float(v) for v in first_position),  # type: ignore[arg-type]
                   direction=tuple(np.column_stack([iop[:3], iop[3:], normal]).reshape(-1).tolist()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry on a SimpleITK image of the same size and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def voxel_to_lps(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous (x, y, z) voxel indices, shape (..., 3), to LPS millimetres."""
        scaled = np.asarray(index_xyz, dtype=float) * np.asarray(self.spacing)
        return np.asarray(self.origin) + scaled @ self.direction_matrix.T

    def mismatches(self, other: Geometry, check_position: bool = True) -> list[str]:
        """Describe, in words a user can act on, how ``other`` differs from this grid (empty when they match).

        Tolerances: spacing 0.1 % relative, origin 1 % of the smallest spacing (at least 0.001 mm),
        direction cosines 1e-3.
        """
        problems: list[str] = []
        if self.shape != other.shape:
            problems.append(f"size {other.shape} (slices, rows, columns) but the source has {self.shape}")
            return problems
        if not check_position:
            return problems
        # On a one-slice grid the slice spacing places no voxel, and readers disagree on it (ITK takes
        # SpacingBetweenSlices, others SliceThickness): compare the in-plane spacing only.
        compared = 3 if self.size[2] > 1 else 2
        if not np.allclose(other.spacing[:compared], self.spacing[:compared], rtol=1e-3, atol=1e-6):
            problems.append(
                f"spacing {_fmt(other.spacing)} mm but the source has {_fmt(self.spacing)} mm"
            )
        tol = max(1e-3, 0.01 * min(self.spacing))
        if np.max(np.abs(np.subtract(other.origin, self.origin))) > tol:
            problems.append(f"origin {_fmt(other.origin)} mm but the source has {_fmt(self.origin)} mm (LPS)")
        if not np.allclose(other.direction, self.direction, atol=1e-3):
            problems.append(f"direction {_fmt(other.direction)} but the source has {_fmt(self.direction)}")
        return problems


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
