"""Shared fixtures: small generated images and guidelines (no patient data, nothing downloaded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedAnnotExtension"))

from medannot.demo_data import cine_phantom, ct_geometry, ct_phantom, make_ct_series, make_us_cine  # noqa: E402
from medannot_testing import fold_missing_tool_skip  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    fold_missing_tool_skip(item, report)  # one -rs line per file for a missing Orthanc or PostgreSQL
    return report
CT_SHAPE = (12, 48, 40)


@pytest.fixture(scope="session")
def liver_guideline_path() -> Path:
    return ROOT / "MedAnnotExtension" / "medannot" / "data" / "liver-ct.yaml"


@pytest.fixture(scope="session")
def echo_guideline_path() -> Path:
    return ROOT / "MedAnnotExtension" / "medannot" / "data" / "echo-lv.yaml"


@pytest.fixture(scope="session")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 12-slice CT series with its label map (1 liver, 2 lesion) and geometry."""
    folder = make_ct_series(tmp_path_factory.mktemp("ct") / "series", CT_SHAPE)
    _, labels = ct_phantom(CT_SHAPE)
    return {"folder": folder, "labels": labels, "geometry": ct_geometry(CT_SHAPE), "shape": CT_SHAPE}


@pytest.fixture(scope="session")
def us_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 24-frame ultrasound cine without Frame of Reference, with its label map (1 cavity, 2 wall)."""
    path = make_us_cine(tmp_path_factory.mktemp("us") / "cine.dcm")
    _, labels = cine_phantom()
    return {"path": path, "labels": labels}



@pytest.fixture(scope="session")
def enhanced_ct_path(ct_case, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CT series as one enhanced multi-frame image (highdicom's legacy conversion), frames in slice order."""
    import highdicom as hd
    import numpy as np
    import pydicom

    from medannot.imaging import load_source

    series = [pydicom.dcmread(path) for path in load_source(ct_case["folder"]).paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(series, series_instance_uid=hd.UID(), series_number=7,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    z = [float(item.PlanePositionSequence[0].ImagePositionPatient[2])
         for item in enhanced.PerFrameFunctionalGroupsSequence]
    order = np.argsort(z)
    pixels = enhanced.pixel_array[order]
    enhanced.PerFrameFunctionalGroupsSequence = [enhanced.PerFrameFunctionalGroupsSequence[i] for i in order]
    enhanced.PixelData = pixels.tobytes()
    path = tmp_path_factory.mktemp("enhanced") / "ct.dcm"
    pydicom.Dataset.save_as(enhanced, path, enforce_file_format=True)
    return path
