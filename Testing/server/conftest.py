"""Server test fixtures: a real Orthanc (DICOMweb) per test module, and a headless Chromium for the dashboard.
Tests that need Orthanc, PostgreSQL or Chromium skip with one line saying what to install where it is absent, and
fail on CI (which installs all three)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import _pg_available  # noqa: E402
from medannot_testing import require_tool, skip_unless_available  # noqa: E402
from browser import chromium_binary, chromium_problem, new_page  # noqa: E402
from orthanc import OrthancServer, orthanc_problem, start_orthanc  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_unless_available(items, lambda item: "orthanc" in getattr(item, "fixturenames", ()), orthanc_problem)
    skip_unless_available(items, lambda item: "browser" in getattr(item, "fixturenames", ()), chromium_problem)
    skip_unless_available(
        items, lambda item: getattr(getattr(item, "callspec", None), "params", {}).get("db_url") == "postgresql",
        pg_problem)


def pg_problem() -> str | None:
    """Why the PostgreSQL variants cannot run here, in one line with what to do; None when they can."""
    problem = _pg_available()
    if problem is None:
        return None
    return f"{problem}; start PostgreSQL with a database 'test' there (apt-get install postgresql) or set " \
           "MEDANNOT_TEST_PG"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A running Orthanc with the DICOMweb plugin on a free loopback port, with one user and a random password.

    One per test module: Orthanc starts in ~0.1 s but takes ~2.5 s to shut down. Tests share it, so each uploads
    series with fresh UIDs (as ``make_ct_series`` does) and must not delete what others stored.
    """
    require_tool(orthanc_problem())
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright; one per test module (each test opens its own context,
    so cookies never carry over)."""
    require_tool(chromium_problem())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_binary(), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    """A dashboard page in a fresh browser context."""
    yield from new_page(browser)
