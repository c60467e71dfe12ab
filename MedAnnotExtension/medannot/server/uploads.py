"""Take an upload in within limits: a body refused on its Content-Length or once it grows past the limit while
it streams in, and DICOM files read so that a small deflated file cannot inflate into gigabytes of memory."""

from __future__ import annotations

import logging
import tempfile
import zlib
from collections.abc import AsyncIterator
from typing import IO, Any, BinaryIO

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from medannot.dicomseg.reader import expected_pixel_bytes
from medannot.errors import MedAnnotError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# An SR holds text, codes and references (a 2000-slice CT's evidence is ~300 KB); it is read whole into memory.
MAX_SR_BYTES = 16 * MIB
# Sequence items cost pydicom ~1 KB of memory each but as little as 8 bytes of file: a file of empty items is a
# memory bomb. Real SEG and SR items hold elements (a SEG's per-frame items average ~55 bytes).
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_BASE_ITEMS, _BYTES_PER_ITEM = 10_000, 32
_CHUNK = 1024 * 1024
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_SPOOL_IN_MEMORY = 8 * MIB


class UploadTooLarge(MedAnnotError):
    """An upload (or what one of its files inflates to) is larger than the server accepts (HTTP 413)."""


class UploadMalformed(MedAnnotError):
    """An upload is not the multipart form with the expected files (HTTP 422)."""


def _mib(value: int) -> str:
    return f"{value / MIB:g} MiB"


def check_content_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length is over ``limit`` before any of it is read."""
    text = request.headers.get("content-length")
    if text is None:
        return  # chunked: the streaming limit applies
    if not text.isdigit():
        raise UploadMalformed(f"Content-Length {text!r} is not a number of bytes")
    if int(text) > limit:
        raise UploadTooLarge(f"the upload is {_mib(int(text))}, more than this server accepts ({_mib(limit)}); "
                             "ask the lab to raise --max-upload-mb if such results are expected")


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadTooLarge(f"the upload grew past {_mib(limit)}, more than this server accepts; ask the lab "
                                 "to raise --max-upload-mb if such results are expected")
        yield chunk


async def receive_files(request: Request, names: tuple[str, ...], limit: int) -> dict[str, UploadFile]:
    """Stream a multipart body of exactly the files ``names`` (at most ``limit`` bytes) into temporary files.

    The temporary files are anonymous (deleted when closed); the caller closes them.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UploadMalformed(f"send the files {', '.join(names)} as multipart/form-data (got "
                              f"{content_type or 'no Content-Type'})")
    check_content_length(request, limit)
    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=len(names), max_fields=0)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadMalformed(f"the upload is not a multipart form of the files {', '.join(names)} ({exc.message})") from exc
    files = {key: value for key, value in form.multi_items() if isinstance(value, UploadFile)}
    missing = [name for name in names if name not in files]
    if missing:
        for value in files.values():
            await value.close()
        raise UploadMalformed(f"the upload has no file {', '.join(repr(m) for m in missing)}; send the files "
                              f"{', '.join(names)}")
    return files


class _Discard:
    """A sink that only counts: inflating into it measures a file without keeping it."""

    def write(self, data: bytes) -> int:
        return len(data)


def _inflate(raw: BinaryIO, out: IO[bytes] | _Discard, cap: int, what: str) -> int:
    """Inflate the rest of ``raw`` into ``out``; refuse once more than ``cap`` bytes come out."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    for chunk in iter(lambda: raw.read(_CHUNK), b""):
        data = chunk
        while True:
            piece = inflater.decompress(data, _CHUNK)  # at most one chunk out per call: memory stays flat
            total += len(piece)
            if total > cap:
                raise UploadTooLarge(f"file {what!r} is deflated and inflates to more than {_mib(cap)}, more than "
                                     "this server accepts for it; it was refused unread and nothing was stored")
            out.write(piece)
            data = inflater.unconsumed_tail
            if not data and len(piece) < _CHUNK:
                break
    return total


def _check_items(stream: IO[bytes], size: int, what: str) -> None:
    """Refuse a file with far more sequence items than its size can hold for a real SEG or SR."""
    stream.seek(0)
    items, tail = 0, b""
    while chunk := stream.read(_CHUNK):
        block = tail + chunk
        items += block.count(_ITEM_TAG)
        tail = block[-3:]  # an item tag split across two chunks is counted in the next block
        items -= tail.count(_ITEM_TAG)
    if items > _BASE_ITEMS + size // _BYTES_PER_ITEM:
        raise UploadTooLarge(f"file {what!r} holds {items} sequence items in {size} bytes, far more than a SEG or SR "
                             "of that size has; it is refused unread")


def _stop_at_pixels(tag: Any, _vr: Any, _length: Any) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_dicom_bounded(upload: BinaryIO, what: str, cap: int, stop_before_pixels: bool = False) -> Dataset:
    """Read an uploaded DICOM file; a deflated one is inflated in pieces, and refused once it passes ``cap`` bytes.

    Raises
    ------
    UploadTooLarge
        If the file, inflated, is larger than ``cap``, or holds implausibly many sequence items.
    InvalidDicomError, ValueError, ...
        If it is not DICOM (the caller turns these into a 422).
    """
    upload.seek(0, 2)
    size = upload.tell()
    if size > cap:
        raise UploadTooLarge(f"file {what!r} is {_mib(size)}, more than this server accepts for it ({_mib(cap)})")
    upload.seek(0)
    read_preamble(upload, False)  # type: ignore[arg-type]
    meta = _read_file_meta_info(upload)  # type: ignore[arg-type]
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        _check_items(upload, size, what)
        upload.seek(0)
        return dcmread(upload, stop_before_pixels=stop_before_pixels)
    start = upload.tell()
    _inflate(upload, _Discard(), cap, what)  # a bomb is refused before a byte of it is kept, in memory or on disk
    upload.seek(start)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as inflated:
        total = _inflate(upload, inflated, cap, what)
        _check_items(inflated, total, what)
        inflated.seek(0)
        ds = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True,  # type: ignore[arg-type]
                          stop_when=_stop_at_pixels if stop_before_pixels else None)
    ds.file_meta = meta
    return ds


def check_decoded_size(seg: Dataset, what: str, cap: int) -> None:
    """Refuse a SEG whose frames, once decoded, would be larger than ``cap`` (compressed pixel data can hold
    gigabytes of frames in a few megabytes)."""
    try:
        need = expected_pixel_bytes(seg)
    except (AttributeError, TypeError, ValueError):
        return  # no frame dimensions: the SEG checks refuse it with a better message
    if need > cap:
        raise UploadTooLarge(f"file {what!r} declares {int(seg.get('NumberOfFrames', 1) or 1)} frames of "
                             f"{seg.Rows} x {seg.Columns} that decode to {_mib(need)}, more than this server accepts "
                             f"({_mib(cap)})")


__all__ = ["InvalidDicomError", "MAX_SR_BYTES", "UploadMalformed", "UploadTooLarge", "check_content_length",
           "check_decoded_size", "read_dicom_bounded", "receive_files"]
