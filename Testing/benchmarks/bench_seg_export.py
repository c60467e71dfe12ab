#!/usr/bin/env python
"""Benchmark DICOM-SEG export: MedAnnot against dcmqi, plain highdicom and a bit-packing floor.

Run on demand (this is not a pytest file)::

    python Testing/benchmarks/bench_seg_export.py [--slices 300 --size 512 --segments 5 --repeat 1]

The script writes a synthetic CT series (one DICOM file per slice), a label map with non-overlapping
ellipsoids, one probability map per segment, a guideline YAML and a dcmqi ``meta.json`` into a temporary
folder, then runs every contender in a fresh subprocess and measures

* wall time of the whole process (interpreter start, imports, reading the inputs, converting, writing),
* the time after the imports ("work"), reported by the Python contenders themselves, split into phases,
* peak resident memory (``ru_maxrss`` of that one child, from ``os.wait4``), and its increase over a
  twin subprocess that only imports the same libraries (and a second twin that also loads the inputs).

Contenders: MedAnnot's CLI and in-process API (BINARY and FRACTIONAL), dcmqi ``itkimage2segimage``, plain
highdicom from stacked boolean masks and from a label map, and the floor: read the label map, pack the bits
of the non-empty frames of every segment and write one file with pydicom -- the least any SEG writer must do.

``--profile`` instead runs cProfile around ``medannot.dicomseg.export_segmentation`` (inputs already loaded)
and prints the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

READER_NAME, READER_ID = "Doe^Jane", "j"
SCRIPT = Path(__file__).resolve()

# Segments as ellipsoids in normalised volume coordinates (-1..1 per axis, order z, y, x): centre and semi-axes.
# At 300 x 512 x 512 voxels of 2.5 x 0.8 x 0.8 mm they have roughly organ sizes (liver ~1.7 l, lesion ~15 ml).
# Listed in label order (1 Liver, 2 Lesion, ...). Smaller ellipsoids are painted first and larger ones only where
# no label is yet, so the label map never overlaps and the lesion is carved out of the liver.
SEGMENT_TEMPLATES: list[dict] = [
    {"name": "Liver", "centre": (0.10, -0.05, -0.25), "axes": (0.20, 0.34, 0.39),
     "category": ("91723000", "Anatomical Structure"), "type": ("10200004", "Liver"), "color": "#dd8265"},
    {"name": "Lesion", "centre": (0.15, -0.05, -0.30), "axes": (0.04, 0.073, 0.073),
     "category": ("49755003", "Morphologically Altered Structure"), "type": ("52988006", "Lesion"),
     "color": "#f0d264"},
    {"name": "Spleen", "centre": (0.15, 0.10, 0.40), "axes": (0.13, 0.17, 0.22),
     "category": ("91723000", "Anatomical Structure"), "type": ("78961009", "Spleen"), "color": "#9d6c4b"},
    {"name": "Right kidney", "centre": (-0.15, 0.40, -0.30), "axes": (0.15, 0.15, 0.15),
     "category": ("91723000", "Anatomical Structure"), "type": ("9846003", "Right kidney"), "color": "#b9664f"},
    {"name": "Left kidney", "centre": (-0.15, 0.40, 0.35), "axes": (0.15, 0.15, 0.15),
     "category": ("91723000", "Anatomical Structure"), "type": ("18639004", "Left kidney"), "color": "#b9664f"},
]


@dataclass
class Inputs:
    """Paths of the generated benchmark inputs and facts about them."""

    root: Path
    shape: tuple[int, int, int]
    segments: list[dict]
    ct_dir: Path = field(init=False)
    labels: Path = field(init=False)
    guideline: Path = field(init=False)
    dcmqi_meta: Path = field(init=False)
    label_bytes: int = 0
    frames_per_segment: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ct_dir = self.root / "ct"
        self.labels = self.root / "labels.nii.gz"
        self.guideline = self.root / "guideline.yaml"
        self.dcmqi_meta = self.root / "meta.json"

    def probability(self, label: int) -> Path:
        """Path of the probability map of segment ``label``."""
        return self.root / f"prob-{label}.nii.gz"


# ----------------------------------------------------------------------------------------------- inputs


def segment_specs(n_segments: int) -> list[dict]:
    """Return ``n_segments`` segment definitions with label values 1..n.

    Parameters
    ----------
    n_segments : int
        How many segments; beyond the five anatomical templates, small extra lesions are added.

    Returns
    -------
    list of dict
        Each with ``label``, ``name``, ``centre``, ``axes``, ``category``, ``type`` and ``color``.
    """
    specs = [dict(t) for t in SEGMENT_TEMPLATES]
    rng = np.random.default_rng(3)
    for extra in range(max(0, n_segments - len(specs))):
        centre = (rng.uniform(-0.8, 0.8), rng.uniform(-0.75, -0.5), rng.uniform(-0.7, 0.7))
        specs.append({**SEGMENT_TEMPLATES[1], "name": f"Lesion {extra + 2}", "centre": centre,
                      "axes": (0.03, 0.05, 0.05)})
    specs = specs[:n_segments]
    for label, spec in enumerate(specs, start=1):
        spec["label"] = label
    return specs


def _ellipsoid_box(shape: tuple[int, int, int], centre: tuple[float, ...], axes: tuple[float, ...],
                   grow: float = 1.0) -> tuple[tuple[slice, ...], np.ndarray]:
    """Bounding box of an ellipsoid (grown by ``grow``) and its normalised radius within that box."""
    box, coords = [], []
    for n, c, a in zip(shape, centre, axes):
        centre_vox = (c + 1) / 2 * (n - 1)
        half = a * grow / 2 * (n - 1)
        lo, hi = max(0, int(np.floor(centre_vox - half))), min(n, int(np.ceil(centre_vox + half)) + 1)
        box.append(slice(lo, hi))
        coords.append((np.arange(lo, hi) - centre_vox) / max(a / 2 * (n - 1), 1e-6))
    z, y, x = np.ix_(*coords)
    return tuple(box), np.sqrt(z**2 + y**2 + x**2)


def _guideline_yaml(specs: list[dict]) -> str:
    lines = ["id: bench-ct", 'version: "1.0.0"', "title: Benchmark abdomen CT", "modality: CT",
             "readers_per_case: 1", "segments:"]
    for s in specs:
        lines += [f"  - label: {s['label']}",
                  f"    name: {s['name']}",
                  f"    category: {{scheme: SCT, code: \"{s['category'][0]}\", meaning: {s['category'][1]}}}",
                  f"    type: {{scheme: SCT, code: \"{s['type'][0]}\", meaning: {s['type'][1]}}}",
                  f"    color: \"{s['color']}\"",
                  "    required: false"]
    return "\n".join(lines) + "\n"


def _dcmqi_meta(specs: list[dict]) -> dict:
    """dcmqi ``seg-schema.json`` metadata: one input file (the label map) holding every segment."""
    attributes = []
    for s in specs:
        rgb = [int(s["color"][i:i + 2], 16) for i in (1, 3, 5)]
        attributes.append({
            "labelID": s["label"],
            "SegmentLabel": s["name"],
            "SegmentDescription": s["name"],
            "SegmentAlgorithmType": "MANUAL",
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": s["category"][0], "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": s["category"][1]},
            "SegmentedPropertyTypeCodeSequence": {"CodeValue": s["type"][0], "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": s["type"][1]},
            "recommendedDisplayRGBValue": rgb,
        })
    return {
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/seg-schema.json#",
        "ContentCreatorName": READER_NAME,
        "ClinicalTrialSeriesID": "Session1",
        "ClinicalTrialTimePointID": "1",
        "ClinicalTrialCoordinatingCenterName": "Benchmark",
        "SeriesDescription": "Segmentation",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "segmentAttributes": [attributes],
    }


def load_inputs(root: Path, shape: tuple[int, int, int], n_segments: int) -> Inputs | None:
    """Inputs already in ``root`` for these parameters (read from its ``inputs.json``), else ``None``.

    Imports nothing but numpy, so the contenders' children pay no extra import time or memory for it.
    """
    stamp = root / "inputs.json"
    if not stamp.is_file():
        return None
    facts = json.loads(stamp.read_text())
    if facts["shape"] != list(shape) or facts["segments"] != n_segments:
        return None
    inputs = Inputs(root, shape, segment_specs(n_segments))
    inputs.label_bytes, inputs.frames_per_segment = facts["label_bytes"], facts["frames"]
    return inputs


def prepare_inputs(root: Path, shape: tuple[int, int, int], n_segments: int) -> Inputs:
    """Write the CT series, label map, probability maps, guideline and dcmqi metadata into ``root``.

    Parameters
    ----------
    root : Path
        Folder to write into (reused when it already holds inputs made with the same parameters).
    shape : tuple of int
        (slices, rows, columns).
    n_segments : int
        Number of segments (label values 1..n).

    Returns
    -------
    Inputs
        Paths and the label-map facts the report needs.
    """
    existing = load_inputs(root, shape, n_segments)
    if existing is not None:
        return existing
    from medannot.demo_data import ct_geometry, make_ct_series
    from medannot.imaging import write_label_map

    specs = segment_specs(n_segments)
    inputs = Inputs(root, shape, specs)
    stamp = root / "inputs.json"
    root.mkdir(parents=True, exist_ok=True)
    geometry = ct_geometry(shape)
    labels = np.zeros(shape, dtype=np.uint8)
    for spec in sorted(specs, key=lambda s: float(np.prod(s["axes"]))):
        box, radius = _ellipsoid_box(shape, spec["centre"], spec["axes"])
        region = labels[box]
        region[(radius <= 1) & (region == 0)] = spec["label"]
    write_label_map(labels, geometry, inputs.labels)
    inputs.label_bytes = int(labels.nbytes)
    inputs.frames_per_segment = {s["name"]: int((labels == s["label"]).any(axis=(1, 2)).sum()) for s in specs}

    rng = np.random.default_rng(0)
    hu = rng.integers(-20, 21, size=shape, dtype=np.int16)
    hu += (labels > 0).astype(np.int16) * 60
    make_ct_series(inputs.ct_dir, shape, hu=hu)
    del hu, labels

    for spec in specs:  # soft edges: 1 inside 0.75 of the radius, falling to 0 at 1.25
        prob = np.zeros(shape, dtype=np.float32)
        box, radius = _ellipsoid_box(shape, spec["centre"], spec["axes"], grow=1.25)
        prob[box] = np.clip((1.25 - radius) / 0.5, 0.0, 1.0)
        write_label_map(prob, geometry, inputs.probability(spec["label"]))
        del prob

    inputs.guideline.write_text(_guideline_yaml(specs))
    inputs.dcmqi_meta.write_text(json.dumps(_dcmqi_meta(specs), indent=2))
    stamp.write_text(json.dumps({"shape": list(shape), "segments": n_segments, "label_bytes": inputs.label_bytes,
                                 "frames": inputs.frames_per_segment}))
    return inputs


# ------------------------------------------------------------------------------------- child processes


class Phases:
    """Accumulates named phase durations (seconds) of one child run."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        """Close the phase ``name``: the time since the previous mark."""
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


def _wrap_timed(module: object, names: list[str], acc: dict[str, float]) -> None:
    """Replace ``module.<name>`` by a wrapper adding its run time to ``acc[name]`` (names absent are skipped)."""
    for name in names:
        original = getattr(module, name, None)
        if original is None:
            continue

        def timed(*args, _f: Callable = original, _n: str = name, **kwargs):  # noqa: ANN202
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                acc[_n] = acc.get(_n, 0.0) + time.perf_counter() - t

        setattr(module, name, timed)


def _read_headers(folder: Path) -> list:
    """Source datasets (headers only) of a one-series folder, sorted along z."""
    import pydicom

    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    return sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))


def _segment_descriptions(specs: list[dict]) -> list:
    import highdicom as hd

    return [hd.seg.SegmentDescription(
        segment_number=s["label"], segment_label=s["name"],
        segmented_property_category=hd.sr.CodedConcept(s["category"][0], "SCT", s["category"][1]),
        segmented_property_type=hd.sr.CodedConcept(s["type"][0], "SCT", s["type"][1]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for s in specs]


def child_medannot(inputs: Inputs, out: Path, stage: str, fractional: bool) -> dict[str, float]:
    """MedAnnot in-process API; phases load / checks+LUT / build_seg / build_sr / write."""
    ph = Phases()
    import medannot.dicomseg.export as export_module
    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source, read_label_map, read_probability_map
    ph.mark("import")
    if stage == "imports":
        return ph.times
    guideline = load_guideline(inputs.guideline)
    source = load_source(inputs.ct_dir)
    labels = maps = None
    if fractional:
        maps = {}
        for spec in inputs.segments:
            maps[spec["name"]], geometry = read_probability_map(inputs.probability(spec["label"]))
    else:
        labels, geometry = read_label_map(inputs.labels)
    ph.mark("load")
    if stage == "inputs":
        return ph.times
    inner: dict[str, float] = {}
    _wrap_timed(export_module, ["build_seg", "build_sr", "_write_together"], inner)
    export_segmentation(source, labels, geometry, guideline, ReaderInfo(READER_NAME, READER_ID), out,
                        probabilities=maps)
    ph.mark("export")
    export_total = ph.times.pop("export")
    ph.times["checks+LUT"] = export_total - sum(inner.values())
    ph.times.update({"build_seg": inner.get("build_seg", 0.0), "build_sr": inner.get("build_sr", 0.0),
                     "write": inner.get("_write_together", 0.0)})
    return ph.times


def child_highdicom(inputs: Inputs, out: Path, stage: str, masks: bool) -> dict[str, float]:
    """Plain highdicom BINARY from stacked boolean masks (``masks``) or from the label map."""
    ph = Phases()
    import highdicom as hd
    import SimpleITK as sitk
    ph.mark("import")
    if stage == "imports":
        return ph.times
    sources = _read_headers(inputs.ct_dir)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs.labels)))
    ph.mark("load")
    if stage == "inputs":
        return ph.times
    descriptions = _segment_descriptions(inputs.segments)
    if masks:
        pixels = np.stack([labels == s["label"] for s in inputs.segments], axis=-1)
    else:
        pixels = labels
    ph.mark("prepare")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=1,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench", manufacturer_model_name="bench",
        software_versions="0", device_serial_number="0")
    ph.mark("build")
    out.mkdir(parents=True, exist_ok=True)
    seg.save_as(out / "seg.dcm")
    ph.mark("write")
    return ph.times


def child_floor(inputs: Inputs, out: Path, stage: str) -> dict[str, float]:
    """The floor: read the label map, pack the bits of non-empty frames per segment, write one pydicom file."""
    ph = Phases()
    import SimpleITK as sitk
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid
    ph.mark("import")
    if stage == "imports":
        return ph.times
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs.labels)))
    ph.mark("load")
    if stage == "inputs":
        return ph.times
    frames = []
    for spec in inputs.segments:
        mask = labels == spec["label"]
        frames.append(mask[mask.any(axis=(1, 2))])
    stack = np.concatenate(frames)
    bits = np.packbits(stack, bitorder="little").tobytes()
    ph.mark("pack")
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SegmentationStorage, uid, "SEG"
    ds.Rows, ds.Columns, ds.NumberOfFrames = labels.shape[1], labels.shape[2], stack.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = bits + b"\x00" * (len(bits) % 2)
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(out / "seg.dcm", enforce_file_format=True)
    ph.mark("write")
    return ph.times


CHILDREN: dict[str, Callable[[Inputs, Path, str], dict[str, float]]] = {
    "api-binary": lambda i, o, s: child_medannot(i, o, s, fractional=False),
    "api-fractional": lambda i, o, s: child_medannot(i, o, s, fractional=True),
    "hd-masks": lambda i, o, s: child_highdicom(i, o, s, masks=True),
    "hd-labelmap": lambda i, o, s: child_highdicom(i, o, s, masks=False),
    "floor": child_floor,
}


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Contender:
    """One way of writing the SEG: a command line (``cmd``) or a child of this script (``child``)."""

    key: str
    title: str
    cmd: Callable[[Inputs, Path], list[str]] | None = None
    child: str | None = None
    twin: str | None = None  # child whose imports / inputs stages are this contender's memory baselines
    pythonpath: str | None = None  # run with this PYTHONPATH (another checkout's MedAnnotExtension)


@dataclass
class Run:
    """What one subprocess run measured."""

    wall: float
    peak_mb: float
    phases: dict[str, float] = field(default_factory=dict)
    seg_bytes: int = 0
    frames: int = 0
    cpu: float = 0.0  # user + system seconds of the process (and of children it waited for)


def _medannot_cmd(inputs: Inputs, out: Path, fractional: bool) -> list[str]:
    # Not the installed ``medannot`` entry point: with an editable install it may import another checkout. The
    # module of this interpreter's ``medannot`` (PYTHONPATH is passed on to the child) is the one timed.
    base = [sys.executable, "-m", "medannot.cli"]
    cmd = base + ["seg", "export", "--source", str(inputs.ct_dir), "--guideline", str(inputs.guideline),
                  "--reader-name", READER_NAME, "--reader-id", READER_ID, "--output", str(out)]
    if fractional:
        for spec in inputs.segments:
            cmd += ["--probability", f"{spec['label']}={inputs.probability(spec['label'])}"]
    else:
        cmd += ["--labels", str(inputs.labels)]
    return cmd


def dcmqi_program(name: str = "itkimage2segimage") -> Path | None:
    """Path of a dcmqi command-line tool from the dcmqi wheel (or PATH), ``None`` if absent."""
    try:
        import dcmqi

        candidate = Path(dcmqi.__file__).parent / "bin" / name
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    found = shutil.which(name)
    return Path(found) if found else None


def _dcmqi_cmd(inputs: Inputs, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [str(dcmqi_program()), "--inputImageList", str(inputs.labels), "--inputDICOMDirectory",
            str(inputs.ct_dir), "--inputMetadata", str(inputs.dcmqi_meta), "--outputDICOM", str(out / "seg.dcm")]


CONTENDERS = [
    Contender("cli-binary", "medannot CLI  BINARY", cmd=lambda i, o: _medannot_cmd(i, o, False), twin="api-binary"),
    Contender("api-binary", "medannot API  BINARY", child="api-binary", twin="api-binary"),
    Contender("cli-fractional", "medannot CLI  FRACTIONAL", cmd=lambda i, o: _medannot_cmd(i, o, True),
              twin="api-fractional"),
    Contender("api-fractional", "medannot API  FRACTIONAL", child="api-fractional", twin="api-fractional"),
    Contender("dcmqi", "dcmqi itkimage2segimage", cmd=_dcmqi_cmd),
    Contender("hd-masks", "highdicom bool masks", child="hd-masks", twin="hd-masks"),
    Contender("hd-labelmap", "highdicom label map", child="hd-labelmap", twin="hd-labelmap"),
    Contender("floor", "FLOOR packbits+pydicom", child="floor", twin="floor"),
]


def _child_cmd(name: str, stage: str, inputs: Inputs, out: Path, result: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--child", name, "--stage", stage, "--workdir", str(inputs.root),
            "--slices", str(inputs.shape[0]), "--size", str(inputs.shape[1]), "--segments", str(len(inputs.segments)),
            "--child-out", str(out), "--child-result", str(result)]


# Linux charges a process with the RSS of the process it was forked from (at exec, the old address space's
# high-water mark goes into ru_maxrss). Forking from this script (numpy, pydicom, ... loaded) would inflate every
# contender's peak, so a bare interpreter (``python -S``, a few MB) forks and execs the contender and reports
# that process's own wall time and ru_maxrss.
_LAUNCHER = """
import json, os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as fh:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, fh)
"""


# Python contenders run with their bytecode cached, as after `pip install` (which compiles it): an environment
# with PYTHONDONTWRITEBYTECODE set would otherwise make MedAnnot's CLI compile its own modules on every run.
# The bytecode goes into the checkouts' __pycache__ folders (git-ignored) and stays there.
CACHE_BYTECODE = True


def child_env(pythonpath: str | None = None) -> dict[str, str]:
    """Environment of a contender's process."""
    env = dict(os.environ)
    if CACHE_BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def cache_bytecode(packages: list[Path]) -> None:
    """Compile the given source folders' bytecode (``__pycache__``, git-ignored), as pip does when installing."""
    if CACHE_BYTECODE:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, packages)], check=True, env=child_env(),
                       stdout=subprocess.DEVNULL)


def run_measured(cmd: list[str], log: Path, pythonpath: str | None = None) -> tuple[float, float, int, float]:
    """Run ``cmd`` (output to ``log``); return its wall seconds, its own peak RSS in MB, its exit code and its CPU
    seconds (user + system)."""
    stats = log.with_suffix(".rusage.json")
    stats.unlink(missing_ok=True)
    env = child_env(pythonpath)
    with open(log, "wb") as fh:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(stats), *cmd], stdout=fh,
                       stderr=subprocess.STDOUT, check=False, env=env)
    if not stats.is_file():
        return 0.0, 0.0, -1, 0.0
    facts = json.loads(stats.read_text())
    return facts["wall"], facts["maxrss_kib"] / 1024.0, facts["code"], facts["cpu"]  # Linux: ru_maxrss in KiB


def _seg_facts(out: Path) -> tuple[int, int]:
    """Bytes and NumberOfFrames of the SEG written into ``out`` (the SR is not counted)."""
    import pydicom

    for path in sorted(out.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.get("Modality") == "SEG":
            return path.stat().st_size, int(ds.get("NumberOfFrames", 1))
    return 0, 0


def measure(contender: Contender, inputs: Inputs, scratch: Path, index: int) -> Run:
    """One fresh-process run of ``contender``; raises ``RuntimeError`` with its log when it fails."""
    out = scratch / f"{contender.key}-{index}"
    result = scratch / f"{contender.key}-{index}.json"
    log = scratch / f"{contender.key}-{index}.log"
    shutil.rmtree(out, ignore_errors=True)
    if contender.cmd is not None:
        cmd = contender.cmd(inputs, out)
    else:
        assert contender.child is not None
        cmd = _child_cmd(contender.child, "full", inputs, out, result)
    wall, peak, code, cpu = run_measured(cmd, log, contender.pythonpath)
    if code != 0:
        raise RuntimeError(f"{contender.title} failed (exit {code}):\n{log.read_text(errors='replace')[-3000:]}")
    phases = json.loads(result.read_text()) if result.is_file() else {}
    seg_bytes, frames = _seg_facts(out)
    shutil.rmtree(out, ignore_errors=True)
    return Run(wall, peak, phases, seg_bytes, frames, cpu)


def measure_baseline(child: str, stage: str, inputs: Inputs, scratch: Path) -> float:
    """Peak RSS (MB) of a child that stops after ``stage`` ("imports" or "inputs")."""
    log = scratch / f"base-{child}-{stage}.log"
    _, peak, code, _ = run_measured(_child_cmd(child, stage, inputs, scratch / "unused", scratch / "unused.json"),
                                    log)
    if code != 0:
        raise RuntimeError(f"baseline {child}/{stage} failed:\n{log.read_text(errors='replace')[-3000:]}")
    return peak


# ------------------------------------------------------------------------------------------- reporting


@dataclass
class Row:
    """Summary of all runs of one contender."""

    contender: Contender
    wall: float
    cpu: float
    work: float | None
    peak: float
    over_imports: float | None
    over_inputs: float | None
    seg_bytes: int
    frames: int
    phases: dict[str, float]


def summarise(contender: Contender, runs: list[Run], baselines: dict[tuple[str, str], float]) -> Row:
    """Medians over the runs, and memory over the twin baselines."""
    wall = statistics.median(r.wall for r in runs)
    cpu = statistics.median(r.cpu for r in runs)
    peak = statistics.median(r.peak_mb for r in runs)
    names = runs[0].phases.keys()
    phases = {n: statistics.median(r.phases.get(n, 0.0) for r in runs) for n in names}
    work = sum(v for k, v in phases.items() if k != "import") if phases else None
    over_imports = over_inputs = None
    if contender.twin:
        over_imports = peak - baselines[(contender.twin, "imports")]
        over_inputs = peak - baselines[(contender.twin, "inputs")]
    return Row(contender, wall, cpu, work, peak, over_imports, over_inputs, runs[0].seg_bytes, runs[0].frames, phases)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(rows: list[Row], inputs: Inputs, repeat: int) -> None:
    """Print the table, the phase split, and the verdict on the targets."""
    by_key = {r.contender.key: r for r in rows}
    floor, dcmqi = by_key.get("floor"), by_key.get("dcmqi")
    mb = 1024 * 1024
    print(f"\nInput: CT {inputs.shape[0]} x {inputs.shape[1]} x {inputs.shape[2]} int16, {len(inputs.segments)} "
          f"segments; non-empty frames per segment {inputs.frames_per_segment}")
    print(f"label-map bytes (uint8 in memory): {inputs.label_bytes} ({inputs.label_bytes / mb:.1f} MB); "
          f"label-map file {inputs.labels.stat().st_size} bytes")
    print(f"times: median of {repeat} run(s), each in a fresh process, contenders taking turns. total = whole process; "
          "work = after imports; cpu = user + system seconds of the process (its threads added up).\n"
          "x-ratios use total (cpu x dcmqi: cpu over dcmqi's cpu; on a busy machine cpu varies less than total).\npeak = ru_maxrss of the process; +imp / +inp = peak minus a twin process that only "
          "imports the same libraries / also loads the same inputs.\n")
    head = (f"{'contender':<26}{'total s':>8}{'work s':>8}{'cpu s':>7}{'peak MB':>9}{'+imp MB':>9}{'+inp MB':>9}"
            f"{'x floor':>8}{'x dcmqi':>8}{'cpu x dcmqi':>12}{'frames':>7}{'SEG bytes':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        x_floor = r.wall / floor.wall if floor else None
        x_dcmqi = r.wall / dcmqi.wall if dcmqi else None
        cpu_x_dcmqi = r.cpu / dcmqi.cpu if dcmqi and dcmqi.cpu else None
        print(f"{r.contender.title:<26}{r.wall:>8.2f}{_fmt(r.work, '.2f'):>8}{r.cpu:>7.2f}{r.peak:>9.0f}"
              f"{_fmt(r.over_imports, '.0f'):>9}{_fmt(r.over_inputs, '.0f'):>9}{_fmt(x_floor, '.1f'):>8}"
              f"{_fmt(x_dcmqi, '.2f'):>8}{_fmt(cpu_x_dcmqi, '.2f'):>12}{r.frames:>7}{r.seg_bytes:>11}")
    print("\nphases (s, median):")
    for r in rows:
        if r.phases:
            print(f"  {r.contender.title:<26}" + "  ".join(f"{k} {v:.2f}" for k, v in r.phases.items()))

    ours = by_key.get("cli-binary")
    if not (ours and floor and dcmqi):
        print("\nverdict: needs the medannot CLI BINARY, dcmqi and floor rows")
        return
    faster = ours.wall < dcmqi.wall
    within = ours.wall <= 3 * floor.wall
    print(f"\nTARGET time (BINARY, CLI end to end): faster than dcmqi and within 3x of the floor -> "
          f"{'MET' if faster and within else 'NOT MET'}: {ours.wall:.2f} s vs dcmqi {dcmqi.wall:.2f} s "
          f"({'faster' if faster else 'slower'}, x{ours.wall / dcmqi.wall:.2f}), vs floor {floor.wall:.2f} s "
          f"(x{ours.wall / floor.wall:.1f})")
    api = by_key.get("api-binary")
    if api and api.work is not None and floor.work:
        print(f"  in-process work only: API {api.work:.2f} s vs floor {floor.work:.2f} s (x{api.work / floor.work:.1f})")
    budget = 2 * (inputs.label_bytes + ours.seg_bytes) / mb
    if ours.over_imports is not None:
        print(f"TARGET memory (BINARY, CLI peak over an imports-only twin): under 2 x (label map {inputs.label_bytes} B "
              f"+ SEG {ours.seg_bytes} B) = {budget:.0f} MB -> {'MET' if ours.over_imports < budget else 'NOT MET'}: "
              f"{ours.over_imports:.0f} MB (absolute peak {ours.peak:.0f} MB; over inputs-loaded twin "
              f"{ours.over_inputs:.0f} MB)")


# -------------------------------------------------------------------------------------------- profiling


def profile_export(inputs: Inputs, top: int) -> None:
    """cProfile ``export_segmentation`` (BINARY, inputs loaded beforehand); print the top ``top`` by cumtime."""
    import cProfile
    import pstats

    from medannot.dicomseg import ReaderInfo, export_segmentation
    from medannot.guideline import load_guideline
    from medannot.imaging import load_source, read_label_map

    guideline = load_guideline(inputs.guideline)
    source = load_source(inputs.ct_dir)
    labels, geometry = read_label_map(inputs.labels)
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile()
        profiler.enable()
        export_segmentation(source, labels, geometry, guideline, ReaderInfo(READER_NAME, READER_ID), out)
        profiler.disable()
    pstats.Stats(profiler).strip_dirs().sort_stats("cumulative").print_stats(top)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--slices", type=int, default=300, help="CT slices")
    p.add_argument("--size", type=int, default=512, help="rows = columns")
    p.add_argument("--segments", type=int, default=5, help="segments in the label map and guideline")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender (median reported)")
    p.add_argument("--only", default="", help="comma-separated contender keys to run: "
                   + ",".join(c.key for c in CONTENDERS))
    p.add_argument("--workdir", type=Path, help="keep inputs and outputs here and reuse inputs made with the same "
                   "parameters (default: a temporary folder, removed at the end)")
    p.add_argument("--before", type=Path, help="another MedAnnot checkout (its root or its MedAnnotExtension folder): "
                   "its CLI BINARY is timed too, as cli-binary-before, in the same run and on the same inputs")
    p.add_argument("--no-bytecode-cache", action="store_true", help="do not compile MedAnnot's bytecode first and "
                   "keep PYTHONDONTWRITEBYTECODE for the contenders if the environment sets it (bytecode already in "
                   "__pycache__ is still used: remove those folders to time a CLI that compiles its modules each run)")
    p.add_argument("--profile", action="store_true", help="profile the in-process BINARY export instead")
    p.add_argument("--profile-top", type=int, default=25, help="lines of profile to print")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=["imports", "inputs", "full"], default="full", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one child, or the profile); returns the exit status."""
    args = parse_args(argv)
    shape = (args.slices, args.size, args.size)
    if args.child:
        inputs = load_inputs(args.workdir, shape, args.segments)  # what the parent wrote
        if inputs is None:
            raise SystemExit(f"{args.workdir}: no inputs for these parameters")
        phases = CHILDREN[args.child](inputs, args.child_out, args.stage)
        args.child_result.write_text(json.dumps(phases))
        return 0

    temp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-seg-")
    root = args.workdir or Path(temp.name)  # type: ignore[union-attr]
    try:
        t = time.perf_counter()
        inputs = prepare_inputs(root, shape, args.segments)
        print(f"inputs ready in {root} ({time.perf_counter() - t:.1f} s)", flush=True)
        if args.profile:
            profile_export(inputs, args.profile_top)
            return 0
        wanted = {k for k in args.only.split(",") if k}
        contenders = [c for c in CONTENDERS if not wanted or c.key in wanted]
        if args.before is not None:
            before = args.before / "MedAnnotExtension" if (args.before / "MedAnnotExtension").is_dir() else args.before
            if not (before / "medannot" / "cli.py").is_file():
                raise SystemExit(f"--before {args.before}: no medannot package there")
            contenders.insert(0, Contender("cli-binary-before", "medannot CLI  BINARY before",
                                           cmd=lambda i, o: _medannot_cmd(i, o, False), pythonpath=str(before.resolve())))
        global CACHE_BYTECODE
        CACHE_BYTECODE = not args.no_bytecode_cache
        import medannot

        checkouts = [Path(medannot.__file__).parent] + [Path(c.pythonpath) / "medannot" for c in contenders
                                                       if c.pythonpath]
        cache_bytecode(checkouts + [SCRIPT.parent])
        print("Python bytecode: " + ("cached (compiled first, as pip install does) for " + ", ".join(map(str, checkouts))
                                     if CACHE_BYTECODE else "as the environment says (PYTHONDONTWRITEBYTECODE="
                                     f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})"), flush=True)
        if dcmqi_program() is None:
            print("dcmqi itkimage2segimage not found; skipping it (pip install dcmqi)")
            contenders = [c for c in contenders if c.key != "dcmqi"]
        scratch = root / "runs"
        scratch.mkdir(exist_ok=True)
        baselines = {(c.twin, stage): measure_baseline(c.twin, stage, inputs, scratch)
                     for c in contenders if c.twin for stage in ("imports", "inputs")}
        # Round-robin (run 1 of every contender, then run 2, ...) so that a load that comes and goes on a shared
        # machine falls on every contender alike.
        runs: dict[str, list[Run]] = {c.key: [] for c in contenders}
        for i in range(args.repeat):
            for contender in contenders:
                runs[contender.key].append(measure(contender, inputs, scratch, i))
                last = runs[contender.key][-1]
                print(f"  {contender.title}: run {i + 1} {last.wall:.2f} s (cpu {last.cpu:.2f} s), "
                      f"peak {last.peak_mb:.0f} MB", flush=True)
        rows = [summarise(c, runs[c.key], baselines) for c in contenders]
        report(rows, inputs, args.repeat)
    finally:
        if temp is not None:
            temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
