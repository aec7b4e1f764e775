"""Starting rebuilds from the service: on demand, and when enough has been learned.

A rebuild runs as its own process (``mailsift rebuild``), at a lower CPU priority, so
the workers keep serving while it trains; the settings it needs reach it through its
environment, never its command line (a database URL may hold a password). Every worker
may find a rebuild due; the rebuild lock lets one run and the others return at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mailsift.learning.published import Published
from mailsift.service.settings import Settings

__all__ = ["BUSY_EXIT", "RebuildFailed", "RebuildScheduler", "run_rebuild"]

log = logging.getLogger("mailsift.rebuild")

BUSY_EXIT = 3
"""``mailsift rebuild --if-idle`` exits with this when another rebuild runs."""
_RETRY_SECONDS = 60.0


class RebuildFailed(Exception):
    """The rebuild process failed; the message is its last words, never message content."""


def _environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["MAILSIFT_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url is not None:
        env["MAILSIFT_DATABASE_URL"] = settings.database_url
    return env


async def run_rebuild(settings: Settings, *, wait: bool) -> dict[str, Any] | None:
    """Run one rebuild process; its JSON summary, or None when ``wait`` is false and
    another rebuild was running."""
    args = [sys.executable, "-m", "mailsift.cli", "rebuild", "--json", "--nice"]
    if not wait:
        args.append("--if-idle")
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=_environment(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode == BUSY_EXIT and not wait:
        return None
    if proc.returncode != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise RebuildFailed(f"rebuild exited with {proc.returncode}: {last[0][:300]}")
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


@dataclass(slots=True)
class RebuildScheduler:
    """Whether a rebuild is due, and starting one (at most one at a time per worker)."""

    settings: Settings
    started_at: float = field(default_factory=time.time)
    """Before any rebuild was published, the time rule counts from here."""
    _task: asyncio.Task[Any] | None = None
    _not_before: float = 0.0

    def due(self, head: int, newest: Published | None, now: float) -> bool:
        """Pure: enough new entries since the newest published model, or enough time."""
        s = self.settings
        if s.rebuild_every_entries <= 0 and s.rebuild_every_seconds <= 0:
            return False
        done_at, created = (newest.position, newest.created_at) if newest else (0, self.started_at)
        behind = head - done_at
        if behind <= 0:
            return False
        if s.rebuild_every_entries > 0 and behind >= s.rebuild_every_entries:
            return True
        return s.rebuild_every_seconds > 0 and now - created >= s.rebuild_every_seconds

    def start_if_due(self, head: int, newest: Published | None) -> bool:
        now = time.time()
        running = self._task is not None and not self._task.done()
        if running or now < self._not_before or not self.due(head, newest, now):
            return False
        self._not_before = now + _RETRY_SECONDS
        self._task = asyncio.create_task(self._run())
        return True

    async def _run(self) -> None:
        try:
            summary = await run_rebuild(self.settings, wait=False)
        except (OSError, RebuildFailed, ValueError) as exc:
            log.error("scheduled rebuild failed: %s", exc)
            return
        if summary is not None:
            log.info(
                "rebuilt %d examples at log position %d in %.1f s (model %s)",
                summary["examples"],
                summary["log_position"],
                summary["seconds"],
                summary["model_version"],
            )

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
