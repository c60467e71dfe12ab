"""Debian's Chromium, driven headless by Playwright (Python), for the dashboard's tests.

Playwright's own browser download is never used (`playwright install` needs the internet): the tests launch the
system's ``chromium`` (Debian package ``chromium``) through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_ENV = "MEDANNOT_TEST_CHROMIUM"  # path of a Chromium executable, to use another build
CHROMIUM_CANDIDATES = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))
INSTALL_HINT = "apt-get install chromium"


def chromium_binary() -> str | None:
    """$MEDANNOT_TEST_CHROMIUM when set, else Debian's /usr/bin/chromium, else chromium on PATH; None if absent."""
    if os.environ.get(CHROMIUM_ENV):
        given = Path(os.environ[CHROMIUM_ENV])
        return str(given) if given.is_file() and os.access(given, os.X_OK) else None
    found = next((str(p) for p in CHROMIUM_CANDIDATES if p.is_file() and os.access(p, os.X_OK)), None)
    return found or shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_problem() -> str | None:
    """Why the browser tests cannot run here, in one line that says what to install; None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed: pip install -e '.[dev]'"
    if chromium_binary() is None:
        if os.environ.get(CHROMIUM_ENV):
            return f"no Chromium executable at {CHROMIUM_ENV}={os.environ[CHROMIUM_ENV]}: {INSTALL_HINT} or fix the path"
        return f"Chromium is not installed (no /usr/bin/chromium): {INSTALL_HINT}"
    return None


def new_page(browser) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A page in a browser context of its own (its own cookies), closed after the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    try:
        yield context.new_page()
    finally:
        context.close()
