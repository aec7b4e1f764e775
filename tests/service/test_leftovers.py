"""What a SIGKILLed service left in its data dir and in /dev/shm is gone once the next one
starts (#12); what belongs to a process still alive is kept."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailsift.service.http.balance import BOARD_PREFIX, board_directory
from tests.service.server import Service


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _old_file(path: Path, age: float = 3600) -> Path:
    path.write_bytes(b"x" * 1024)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def test_a_killed_runs_leftovers_are_removed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A real run killed with SIGKILL: two workers, so it has a metrics dir.
    killed = Service(data, workers=2).start()
    assert killed.proc is not None
    killed_metrics = data / f"metrics-{killed.proc.pid}"
    assert killed_metrics.is_dir()
    killed_boards = list(Path(board_directory()).glob(f"{BOARD_PREFIX}{killed.proc.pid}-*"))
    assert len(killed_boards) == 1  # one listener: one board
    killed.kill(signal.SIGKILL)
    assert killed_metrics.is_dir() and killed_boards[0].exists()  # nobody cleaned up
    dead = data / f"metrics-{_dead_pid()}"
    dead.mkdir()
    (dead / "counter_1.db").write_bytes(b"\0" * 64)
    live = data / f"metrics-{os.getpid()}"  # this test process is alive
    live.mkdir()
    live_board = Path(board_directory()) / f"{BOARD_PREFIX}{os.getpid()}-test"
    live_board.write_bytes(b"\0" * 64)
    stale_tmp = _old_file(data / "model.snapshot.k1ll3d.tmp")
    unrelated = _old_file(data / "notes.tmp")

    with Service(data, workers=2) as svc:
        assert svc.proc is not None
        assert not killed_metrics.exists()
        assert not killed_boards[0].exists()
        assert live_board.exists()
        assert not dead.exists()
        assert not stale_tmp.exists()
        assert live.is_dir()
        assert unrelated.exists()
        assert (data / f"metrics-{svc.proc.pid}").is_dir()  # its own, made after cleaning
    live_board.unlink()


def test_a_snapshot_temporary_being_written_is_kept(tmp_path: Path) -> None:
    """Another service on this data dir writing a snapshot holds the writers' lock."""
    data = tmp_path / "data"
    data.mkdir()
    tmp = _old_file(data / "model.snapshot.writing.tmp")
    with open(data / "model.snapshot.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with Service(data):
            assert tmp.exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    with Service(data):
        assert not tmp.exists()
