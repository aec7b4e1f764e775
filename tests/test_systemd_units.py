"""The shipped systemd units are valid, locked down, and start commands that exist.

``systemd-analyze`` reads unit files without a running systemd: ``verify`` refuses an
unknown key or a missing executable, ``security --offline`` rates the sandboxing. The
commands' options are checked against the real CLI, which refuses an unknown option
before it honours ``--help``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "integrations" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
INSTALLED = "/opt/mailsift/bin/mailsift"
MAILSIFT = str(Path(sys.executable).with_name("mailsift"))
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _here(unit: Path, into: Path) -> Path:
    """The unit with this checkout's ``mailsift`` in place of the installed one."""
    copy = into / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, MAILSIFT))
    return copy


def test_there_is_a_unit_for_the_service_and_each_daemon() -> None:
    assert [u.name for u in SERVICES] == [
        "mailsift-milter.service",
        "mailsift-policy.service",
        "mailsift.service",
    ]


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_systemd_accepts_the_unit_without_a_warning(unit: Path, tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", str(_here(unit, tmp_path))], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_the_unit_is_locked_down(unit: Path, tmp_path: Path) -> None:
    """No root, no capabilities, the host read-only: systemd's own rating stays "OK" or
    better (at most 2.5 of 10; an unhardened unit is 9.6)."""
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(_here(unit, tmp_path))],
        capture_output=True,
        text=True,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert level is not None, done.stdout + done.stderr
    assert float(level.group(1)) <= 2.5, done.stdout
    text = unit.read_text()
    assert "User=mailsift" in text and "CapabilityBoundingSet=\n" in text


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_every_option_the_unit_passes_is_one_the_command_takes(unit: Path) -> None:
    (line,) = [s for s in unit.read_text().splitlines() if s.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == INSTALLED
    argv = [MAILSIFT, *(a.replace("%d", "/run/credentials/x") for a in argv[1:]), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
