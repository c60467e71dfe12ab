"""Small generated images for the demo and the tests: a CT series and an ultrasound cine, with label maps.

Everything is synthetic (no patient data): a body-like ellipse with a liver and lesions for CT, a beating cavity
with a moving wall for the ultrasound cine.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from medannot.imaging.geometry import Geometry

CT_SPACING = (0.8, 0.8, 2.5)  # column, row, slice spacing in mm
# The demo cine's pixels (PhysicalDeltaX, PhysicalDeltaY in cm): 1.2 mm, so the 96 x 128 frame spans 11.5 x 15.4 cm
# (an apical view's depth) and the phantom's cavity is 17-36 cm², a plausible left ventricle.
US_DELTA_CM = (0.12, 0.12)
CT_ORIGIN = (-25.6, -25.6, -40.0)


def _patient_study(ds: Dataset, study_uid: str, modality: str) -> None:
    now = datetime(2026, 1, 15, 9, 30, 0)
    ds.PatientName = "Demo^Synthetic"
    ds.PatientID = "MEDANNOT-DEMO"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = "DEMO1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = "MedAnnot synthetic"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def ct_phantom(shape: tuple[int, int, int] = (16, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """CT values (HU, int16) and a label map (1 liver, 2 lesion) of a synthetic abdomen, shape (slices, rows, cols)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.75) ** 2 < 1
    liver = ((x + 0.3) / 0.45) ** 2 + ((y + 0.1) / 0.4) ** 2 + (z / 0.8) ** 2 < 1
    lesion = ((x + 0.35) / 0.12) ** 2 + ((y + 0.1) / 0.12) ** 2 + ((z - 0.1) / 0.3) ** 2 < 1
    rng = np.random.default_rng(7)
    hu = np.where(body, 40, -1000) + np.where(liver, 20, 0) + np.where(lesion, -45, 0)
    hu = (hu + rng.normal(0, 8, shape)).astype(np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[liver] = 1
    labels[lesion & liver] = 2
    return hu, labels


def ct_geometry(shape: tuple[int, int, int]) -> Geometry:
    """The LPS geometry :func:`make_ct_series` writes for ``shape``."""
    return Geometry(size=(shape[2], shape[1], shape[0]), spacing=CT_SPACING, origin=CT_ORIGIN,
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def make_ct_series(folder: str | Path, shape: tuple[int, int, int] = (16, 64, 64),
                   hu: np.ndarray | None = None) -> Path:
    """Write a synthetic axial CT series, one file per slice, into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hu is None:
        hu, _ = ct_phantom(shape)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for k in range(shape[0]):
        uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, uid)
        _patient_study(ds, study, "CT")
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.SeriesInstanceUID = series
        ds.SeriesDescription = "Synthetic abdomen CT"
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [CT_ORIGIN[0], CT_ORIGIN[1], CT_ORIGIN[2] + k * CT_SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [CT_SPACING[1], CT_SPACING[0]]
        ds.SliceThickness = CT_SPACING[2]
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = np.ascontiguousarray(hu[k]).tobytes()
        ds.save_as(folder / f"ct_{k:04d}.dcm", enforce_file_format=True)
    return folder


def cine_phantom(frames: int = 24, rows: int = 96, cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Grey ultrasound-like frames (uint8) and a label map (1 cavity, 2 wall): a cavity that beats and drifts."""
    t = np.arange(frames)[:, None, None]
    y, x = np.mgrid[0:rows, 0:cols]
    y, x = y[None], x[None]
    cy = rows * 0.5 + 3 * np.sin(2 * np.pi * t / frames)
    cx = cols * 0.45 + 6 * np.sin(2 * np.pi * t / frames)
    radius = rows * 0.22 * (1 + 0.18 * np.cos(2 * np.pi * t / frames))
    dist = np.sqrt(((y - cy) / 1.0) ** 2 + ((x - cx) / 1.3) ** 2)
    cavity = dist < radius
    wall = (dist >= radius) & (dist < radius + 5)
    rng = np.random.default_rng(11)
    image = np.where(cavity, 20, 90) + np.where(wall, 110, 0) + rng.gamma(2.0, 12.0, (frames, rows, cols))
    labels = np.zeros((frames, rows, cols), dtype=np.uint8)
    labels[cavity] = 1
    labels[wall] = 2
    return np.clip(image, 0, 255).astype(np.uint8), labels


def us_region(x0: int, y0: int, x1: int, y1: int, delta_cm: tuple[float, float] = US_DELTA_CM,
              spatial_format: int = 1, units: tuple[int, int] = (3, 3)) -> Dataset:
    """One item of SequenceOfUltrasoundRegions: columns x0-x1, rows y0-y1 (inclusive), pixels delta_cm (x, y);
    by default a 2D tissue region in cm."""
    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = float(delta_cm[0]), float(delta_cm[1])
    return item


def make_us_cine(path: str | Path, frames: int = 24, rows: int = 96, cols: int = 128,
                 frame_time_ms: float = 33.3, regions: list[Dataset] | None | str = "default") -> Path:
    """Write a synthetic ultrasound multi-frame cine without a Frame of Reference (as scanners write them).

    Like a scanner, it calibrates its pixels with a SequenceOfUltrasoundRegions: by default one 2D tissue region
    over the whole frame of ``US_DELTA_CM`` pixels; ``regions`` gives other items (see :func:`us_region`), and
    ``None`` writes no calibration (an uncalibrated cine, sizes then only in pixels).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = cine_phantom(frames, rows, cols)
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(UltrasoundMultiFrameImageStorage, uid)
    _patient_study(ds, generate_uid(), "US")
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "Synthetic cardiac cine"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.FrameTime = frame_time_ms
    ds.CineRate = round(1000 / frame_time_ms)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    if isinstance(regions, str):
        regions = [us_region(0, 0, cols - 1, rows - 1)]
    if regions:
        ds.SequenceOfUltrasoundRegions = regions
    ds.PixelData = image.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
