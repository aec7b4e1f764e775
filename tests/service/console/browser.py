"""Debian's Chromium driven by Playwright, for the console's browser tests.

The browser is the system's (``/usr/bin/chromium``, installed by ``.ci/run``), never one
Playwright downloads; each run gets a fresh profile directory. Without Chromium or
Playwright the tests that need them skip, saying which is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
"""Where each browser test leaves its screenshot (git-ignored; kept for a look after)."""


def skip_without_browser() -> None:
    """Skip the calling test unless Playwright and Debian's Chromium are both here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")


@contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile in ``profile``, 1280x800."""
    skip_without_browser()
    from playwright.sync_api import sync_playwright

    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
        )
        try:
            context.set_default_timeout(20_000)
            yield context
        finally:
            context.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"
