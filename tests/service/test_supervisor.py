"""Workers that die as soon as they start stop the service instead of being respawned for
ever (#16): a real ``mailsift serve`` whose workers cannot import a dependency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def broken_dependency(tmp_path: Path) -> str:
    """A PYTHONPATH on which the public suffix list every worker imports is a broken install
    (the supervisor never imports it, so only the workers fail)."""
    site = tmp_path / "broken-site"
    (site / "publicsuffixlist").mkdir(parents=True)
    (site / "publicsuffixlist" / "__init__.py").write_text(
        'raise ImportError("publicsuffixlist is broken: reinstall it")\n'
    )
    return os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_failing_at_import_stop_the_service(tmp_path: Path, workers: int) -> None:
    env = {
        **os.environ,
        "MAILSIFT_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": broken_dependency(tmp_path),
    }
    command = [sys.executable, "-m", "mailsift.cli", "serve", "--port", str(free_port())]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*command, "--admin-port", "0", "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"still respawning workers after 90 s: {out.decode()[-1500:]}")
    text = out.decode()
    assert proc.returncode != 0, text[-1500:]
    assert "publicsuffixlist is broken" in text  # the workers' own error is shown
    assert time.monotonic() - started < 60
    if workers > 1:
        assert "workers failed, service stopped" in text
        assert text.count("publicsuffixlist is broken") <= 12  # given up after a few, not hundreds
