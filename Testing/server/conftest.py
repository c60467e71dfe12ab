"""Server test fixtures: a real Orthanc (DICOMweb) per test module, skipped where Orthanc is absent except on CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, start_orthanc  # noqa: E402

INSTALL_HINT = "apt-get install -y orthanc orthanc-dicomweb"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A running Orthanc with the DICOMweb plugin on a free loopback port, with one user and a random password.

    One per test module: Orthanc starts in ~0.1 s but takes ~2.5 s to shut down. Tests share it, so each uploads
    series with fresh UIDs (as ``make_ct_series`` does) and must not delete what others stored.
    """
    missing = None
    if orthanc_binary() is None:
        missing = f"the Orthanc binary is not installed ({INSTALL_HINT})"
    elif dicomweb_plugin() is None:
        missing = f"Orthanc's DICOMweb plugin is not installed ({INSTALL_HINT})"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must install it", pytrace=False)
        pytest.skip(missing)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()
