"""Pixel data that pydicom cannot decode where MedAnnot runs (Slicer's Python has pillow and pyjpegls only, no
JPEG Lossless or HTJ2K decoder): decoded by the GDCM inside SimpleITK, which Slicer ships, as pydicom would decode it.

Real files other tools wrote: pydicom-data's JPEG Lossless, JPEG 2000, JPEG-LS and RLE images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medannot.errors import SourceImageError
from medannot.imaging import load_source, modality_volume
from medannot.imaging.pixels import _decode_with_gdcm, stored_values

data_store = pytest.importorskip("data_store", reason="needs pydicom-data (the dev extra)")
DATA = Path(os.path.dirname(data_store.__file__)) / "data"


def _pydicom_decodes(dataset) -> bool:
    try:
        dataset.pixel_array
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.parametrize("name, shape, dtype", [
    # shape and dtype as pydicom's own reference table gives them (JPGL_16_16_1_1_1F_M2, JPGL_08_08_1_0_1F)
    ("JPEG-LL.dcm", (1024, 256), np.int16),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (768, 1024), np.uint8),
    ("bad_sequence.dcm", (512, 512), np.uint16),
])
def test_jpeg_lossless_files_decode_to_stored_values(name, shape, dtype):
    dataset = pydicom.dcmread(DATA / name)

    values = stored_values(dataset, DATA / name)

    assert (values.shape, values.dtype) == (shape, dtype)
    assert values.max() > values.min()


@pytest.mark.parametrize("name", ["MR2_J2KR.dcm", "US1_J2KR.dcm", "RG1_J2KR.dcm", "693_J2KR.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_RLE.dcm", "OBXXXX1A_rle_2frame.dcm"])
def test_gdcm_decodes_what_pydicom_decodes_value_for_value(name):
    """Signed, MONOCHROME1, palette, YBR_RCT colour and multi-frame: GDCM's values are pydicom's."""
    dataset = pydicom.dcmread(DATA / name)
    expected = dataset.pixel_array

    decoded = _decode_with_gdcm(dataset, DATA / name)

    assert decoded is not None
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


def test_a_jpeg_lossless_ct_slice_loads_in_hounsfield_units(tmp_path):
    """bad_sequence.dcm is a JPEG Lossless CT slice without a Frame of Reference; given one, it loads as a volume."""
    dataset = pydicom.dcmread(DATA / "bad_sequence.dcm")
    dataset.FrameOfReferenceUID = pydicom.uid.generate_uid()
    folder = tmp_path / "ct"
    folder.mkdir()
    dataset.save_as(folder / "slice.dcm")

    volume = modality_volume(load_source(folder))

    stored = stored_values(pydicom.dcmread(folder / "slice.dcm"), folder / "slice.dcm")
    assert volume.shape == (1, 512, 512)
    np.testing.assert_array_equal(volume[0], stored.astype(np.int32) * int(dataset.RescaleSlope)
                                  + int(dataset.RescaleIntercept))


def test_pixel_data_nothing_here_decodes_is_refused_naming_the_file_and_the_transfer_syntax(tmp_path):
    dataset = pydicom.dcmread(DATA / "JPEG-LL.dcm")
    dataset.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"
    path = tmp_path / "broken.dcm"

    if _pydicom_decodes(dataset):
        pytest.skip("a pydicom decoder here reads even this")
    with pytest.raises(SourceImageError, match=r"broken.dcm: cannot decode the pixel data \(JPEG Lossless"):
        stored_values(dataset, path)
