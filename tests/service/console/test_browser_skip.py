"""Without Debian's Chromium or without Playwright the browser tests skip, saying why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.service.console import browser


def test_a_missing_chromium_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        browser.skip_without_browser()


def test_a_missing_playwright_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
    with pytest.raises(pytest.skip.Exception, match="Playwright for Python is not installed"):
        browser.skip_without_browser()
