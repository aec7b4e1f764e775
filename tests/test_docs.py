"""The README stays true to the code: every setting documented, nothing stale, two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailsift.service.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
PREFIX = str(Settings.model_config.get("env_prefix", ""))
FIRST_SCREEN_LINES = 30

_ROW = re.compile(
    r"^\|\s*`(?P<name>MAILSIFT_[A-Z0-9_]+)`\s*\|(?P<default>[^|]*)\|(?P<doc>[^|]*)\|\s*$"
)
_MENTION = re.compile(r"\bMAILSIFT_[A-Z][A-Z0-9_]*")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next second-level heading."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(?P<body>.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group("body")


def _table_rows() -> dict[str, tuple[str, str]]:
    """``MAILSIFT_NAME -> (default cell, description cell)`` from the settings table."""
    rows: dict[str, tuple[str, str]] = {}
    for line in _section(_readme(), "Settings").splitlines():
        match = _ROW.match(line)
        if match:
            name = match.group("name")
            assert name not in rows, f"{name} appears twice in the settings table"
            rows[name] = (match.group("default").strip(), match.group("doc").strip())
    return rows


def _env_names() -> set[str]:
    return {f"{PREFIX}{name}".upper() for name in Settings.model_fields}


def _documented_default(value: object) -> str:
    """How the settings table spells a default (extra text may follow it in the cell)."""
    return "*unset*" if value is None else f"`{value}`"


def test_settings_come_from_mailsift_variables() -> None:
    assert PREFIX == "MAILSIFT_"


def test_every_setting_is_in_the_readme_settings_table() -> None:
    missing = sorted(_env_names() - set(_table_rows()))
    assert not missing, f"settings missing from the README's settings table: {missing}"


def test_readme_documents_no_setting_that_does_not_exist() -> None:
    stale = sorted(set(_MENTION.findall(_readme())) - _env_names())
    assert not stale, f"README documents MAILSIFT_ variables that Settings lacks: {stale}"


def test_every_documented_setting_has_its_default_and_a_description() -> None:
    rows = _table_rows()
    for name, field in Settings.model_fields.items():
        env = f"{PREFIX}{name}".upper()
        if env not in rows:
            continue  # reported by the test above
        default, doc = rows[env]
        expected = _documented_default(field.default)
        assert default.startswith(expected), f"{env}: README says {default!r}, code has {expected}"
        assert doc, f"{env}: no description in the README"


def _fenced_lines(lines: list[str]) -> list[str]:
    """Non-blank lines inside fenced code blocks, in order."""
    inside = False
    found: list[str] = []
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            inside = not inside
        elif inside and line.strip():
            found.append(line.strip())
    return found


def test_first_screen_gives_exactly_the_two_commands() -> None:
    first_screen = _readme().splitlines()[:FIRST_SCREEN_LINES]
    commands = _fenced_lines(first_screen)
    assert commands == ["make run", "make test"], (
        f"the README's first {FIRST_SCREEN_LINES} lines must show exactly `make run` and "
        f"`make test` in code blocks, found {commands}"
    )


@pytest.mark.parametrize(
    ("text", "commands"),
    [
        ("```sh\nmake run\n```\n\n```\nmake test\n```\n", ["make run", "make test"]),
        ("```sh\nmake run\nmake test\n\n```\n", ["make run", "make test"]),
        ("run `make run`\n\n    make test\n", []),
        ("```\nmake venv\n```\n```\nmake run\n", ["make venv", "make run"]),
    ],
)
def test_fenced_lines(text: str, commands: list[str]) -> None:
    assert _fenced_lines(text.splitlines()) == commands
