"""Helpers shared by test folders (importable because pytest puts Testing/ on sys.path for its conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# CLI tests run `python -m medannot.cli` from this checkout, whatever copy pip installed.
CLI_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "MedAnnotExtension"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_medannot(*args: object, stdin: str | None = None, env: dict[str, str] | None = None,
                 timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m medannot.cli ARGS` from this checkout, as a user would, and capture what it prints."""
    return subprocess.run([sys.executable, "-m", "medannot.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, env={**CLI_ENV, **(env or {})}, timeout=timeout, check=False, cwd=cwd)


def on_ci() -> bool:
    """True on CI (``.ci/run`` sets CI=1): it installs every tool the tests use, so a missing one is a broken set-up."""
    return bool(os.environ.get("CI"))


def require_tool(problem: str | None) -> None:
    """A test needs a tool (a program, a service, a package): skip it with ``problem``, one line that says what to
    install, or fail it on CI; nothing when ``problem`` is None (the tool is there)."""
    if problem is None:
        return
    if on_ci():
        pytest.fail(f"{problem}; CI must provide it", pytrace=False)
    pytest.skip(problem)


def skip_unless_available(items: Iterable[pytest.Item], needs: Callable[[pytest.Item], bool],
                          problem: Callable[[], str | None]) -> None:
    """Outside CI, mark skipped up front the collected tests that ``needs`` a missing tool, so that ``pytest -rs``
    folds them into one line per file (a skip raised in each test's fixture is one line per test).

    ``problem`` is asked once, and only if some test needs the tool. On CI nothing is marked: the tool's fixture
    calls :func:`require_tool`, which fails the tests.
    """
    if on_ci():
        return
    needing = [item for item in items if needs(item)]
    reason = problem() if needing else None
    if reason is not None:
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=reason))
            item.stash[MISSING_TOOL] = reason


MISSING_TOOL = pytest.StashKey[str]()


def fold_missing_tool_skip(item: pytest.Item, report: pytest.TestReport) -> None:
    """Report a test skipped by :func:`skip_unless_available` without its line number, so that pytest folds
    parametrized ones too (it keeps the line of a test whose function has marks of its own)."""
    reason = item.stash.get(MISSING_TOOL, None)
    if reason is not None and report.skipped and isinstance(report.longrepr, tuple):
        report.longrepr = (report.longrepr[0], None, report.longrepr[2])


def rewrite_as_jpeg_lossless(path: Path) -> None:
    """Re-encode a DICOM file's pixel data as JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1), the
    stored values unchanged; the encoder is the GDCM inside SimpleITK (pydicom has none for it).

    The header keeps everything but the Image Pixel bit layout, which becomes the encoder's (16 bits stored).
    """
    import numpy as np
    import SimpleITK as sitk
    from pydicom import dcmread
    from pydicom.uid import JPEGLosslessSV1

    dataset = dcmread(path)
    stored = np.asarray(dataset.pixel_array)
    encoded_path = Path(path).with_suffix(".gdcm-jpeg-lossless.dcm")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(encoded_path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")  # GDCM's "JPEG" is lossless process 14 SV1
    writer.Execute(sitk.GetImageFromArray(stored.reshape(1, *stored.shape)))
    encoded = dcmread(encoded_path)
    encoded_path.unlink()
    assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1, encoded.file_meta.TransferSyntaxUID
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(dataset, keyword, encoded[keyword].value)
    dataset.PixelData = encoded.PixelData
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    dataset.save_as(path, enforce_file_format=True)
