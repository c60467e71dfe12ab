"""Hostile uploads for the security tests and the upload-memory benchmark: built from honest files, in pieces,
so that building a file that inflates to gigabytes takes no gigabytes here."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

_PIECE = 1024 * 1024


def deflated(ds: Dataset) -> bytes:
    """``ds`` as an honest Deflated Explicit VR Little Endian file."""
    ds = ds.copy()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deflate_bomb(sr_path: Path, inflated_bytes: int) -> bytes:
    """The SR at ``sr_path`` as a deflated file whose dataset ends in a private OB element of ``inflated_bytes``
    zero bytes: a few bytes per KiB on the wire, all of it in memory once inflated whole."""
    ds = dcmread(sr_path)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    # after every standard element: private creator (7FE1,0010) and an OB (7FE1,1001) of inflated_bytes
    creator = b"BOMB"
    body.write(b"\xe1\x7f\x10\x00LO" + len(creator).to_bytes(2, "little") + creator)
    body.write(b"\xe1\x7f\x01\x10OB\x00\x00" + inflated_bytes.to_bytes(4, "little"))
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [b"\x00" * 128, b"DICM", meta.getvalue(), squeeze.compress(body.getvalue())]
    zeros = b"\x00" * _PIECE
    left = inflated_bytes
    while left > 0:
        parts.append(squeeze.compress(zeros[:min(left, _PIECE)]))
        left -= _PIECE
    parts.append(squeeze.flush())
    return b"".join(parts)
