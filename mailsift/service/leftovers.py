"""What a killed service leaves behind in its data dir, removed when the next one starts.

A worker killed with SIGKILL (or a host that lost power) runs no clean-up: a snapshot
being written stays as ``model.snapshot.<random>.tmp`` (24 MiB each), and the
supervisor's ``metrics-<pid>`` directory of Prometheus files and its load board
(``/dev/shm/mailsift-load-<pid>-…``) stay too, for ever, one per crash. At start the
supervisor removes the metrics directories and boards of processes that are gone and
the snapshot temporaries no live writer holds, and leaves everything that belongs to a
process still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from mailsift.service.http.balance import BOARD_PREFIX, board_directory

__all__ = ["clean_leftovers", "pid_alive"]

log = logging.getLogger("mailsift.leftovers")

METRICS_PREFIX = "metrics-"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(data_dir: Path, snapshot_path: Path, started: float | None = None) -> int:
    """Remove dead processes' metrics directories and unheld snapshot temporaries older
    than ``started`` (now); the number of entries removed."""
    if not data_dir.is_dir():
        return 0
    started = time.time() if started is None else started
    removed = _stale_metrics_dirs(data_dir) + _stale_snapshot_temps(snapshot_path, started)
    removed += _stale_boards(Path(board_directory()))
    if removed:
        log.info("removed %d leftovers of earlier runs from %s", removed, data_dir)
    return removed


def _stale_metrics_dirs(data_dir: Path) -> int:
    removed = 0
    for old in data_dir.glob(f"{METRICS_PREFIX}*"):
        pid = old.name.removeprefix(METRICS_PREFIX)
        if not old.is_dir() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
            removed += 1
    return removed


def _stale_boards(directory: Path) -> int:
    """Load boards of supervisors that are gone (of any data dir: they are per host)."""
    removed = 0
    for board in directory.glob(f"{BOARD_PREFIX}*-*"):
        pid = board.name.removeprefix(BOARD_PREFIX).partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):  # another user's, or just removed
                board.unlink()
                removed += 1
    return removed


def _stale_snapshot_temps(snapshot_path: Path, started: float) -> int:
    """Temporaries of :func:`~mailsift.models.snapshot.save_snapshot`, under the writers'
    lock: whoever holds it may be writing one right now (another service on this dir)."""
    temps = list(snapshot_path.parent.glob(f"{snapshot_path.name}.*.tmp"))
    if not temps:
        return 0
    lock_path = snapshot_path.with_name(snapshot_path.name + ".lock")
    removed = 0
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a snapshot is being written: try again at the next start
        try:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    if tmp.stat().st_mtime < started:
                        tmp.unlink()
                        removed += 1
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return removed
