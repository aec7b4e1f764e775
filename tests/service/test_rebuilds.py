"""When a worker finds a rebuild due (pure), and that one runs at a time from the service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailsift.learning.published import Published
from mailsift.learning.rebuild import rebuild_lock
from mailsift.learning.trainlog import open_training_log
from mailsift.service.rebuilds import RebuildScheduler, run_rebuild
from mailsift.service.settings import Settings


def scheduler(entries: int, seconds: float, started: float = 1000.0) -> RebuildScheduler:
    settings = Settings(rebuild_every_entries=entries, rebuild_every_seconds=seconds)
    return RebuildScheduler(settings, started_at=started)


def published(position: int, at: float) -> Published:
    return Published(1, position, "v", position, at)


@pytest.mark.parametrize(
    ("entries", "seconds", "head", "newest", "now", "due"),
    [
        (1000, 3600, 0, None, 10_000.0, False),  # nothing learned: nothing to rebuild
        (1000, 3600, 999, None, 1500.0, False),
        (1000, 3600, 1000, None, 1500.0, True),  # by count
        (1000, 3600, 5, None, 1000.0 + 3599, False),  # never rebuilt: time from start
        (1000, 3600, 5, None, 1000.0 + 3600, True),
        (1000, 3600, 1500, published(600, 0.0), 10.0, False),  # 900 since the last
        (1000, 3600, 1600, published(600, 0.0), 10.0, True),
        (1000, 3600, 601, published(600, 0.0), 3600.0, True),  # by time
        (1000, 3600, 600, published(600, 0.0), 99_999.0, False),  # nothing new
        (0, 0, 10**6, None, 10**9, False),  # both off
        (0, 60, 601, published(600, 0.0), 59.0, False),
    ],
)
def test_a_rebuild_is_due_by_count_or_by_time(
    entries: int, seconds: float, head: int, newest: Published | None, now: float, due: bool
) -> None:
    assert scheduler(entries, seconds).due(head, newest, now) is due


def test_an_idle_rebuild_does_not_wait_for_a_running_one(tmp_path: Path) -> None:
    """The service's scheduled rebuilds ask not to wait: a busy lock is None, at once."""
    settings = Settings(data_dir=tmp_path)
    first = asyncio.run(run_rebuild(settings, wait=False))
    assert first is not None and first["examples"] == 0 and first["published_id"] == 1
    log = open_training_log(None, tmp_path)
    try:
        with rebuild_lock(log, tmp_path, wait=True):
            assert asyncio.run(run_rebuild(settings, wait=False)) is None
    finally:
        log.close()
