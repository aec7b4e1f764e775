"""How far behind the training log's head this worker's model is, and a wake-up call
for the follower when something new was appended.

The head is known two ways: a notification of an append (PostgreSQL: every replica
hears of every append at commit, see :mod:`mailsift.service.pg.notify`) and a catch-up
that read to the end. A worker is *behind* when it has not confirmed being at the head
for ``behind_after`` seconds: entries it knows of are unapplied, or it cannot read the
log to find out. Polling stays as the fallback, notification only makes it sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["LogTail"]


class LogTail:
    """One worker's view of the log's head; the follower waits on it between rounds."""

    def __init__(self, behind_after: float) -> None:
        self.behind_after = behind_after
        self.head = 0
        """The highest position this worker knows was committed."""
        self.confirmed_at = time.monotonic()
        """When this worker last knew its model was at the head."""
        self.notified = 0
        """Appends heard of by notification."""
        self._wake = asyncio.Event()

    def appended(self, payload: str) -> None:
        """A notification: the entry at position ``payload`` was committed."""
        with contextlib.suppress(ValueError):
            self.head = max(self.head, int(payload))
        self.notified += 1
        self._wake.set()

    def saw_head(self, head: int) -> None:
        """The log's head was read: ``head``."""
        self.head = max(self.head, head)

    def wake(self) -> None:
        """Look at the log now (e.g. notifications may have been missed)."""
        self._wake.set()

    def caught_up(self, position: int, *, at_end: bool) -> None:
        """The follower applied through ``position``; ``at_end``: it read to the log's end
        then (so the head was ``position`` at that moment)."""
        if at_end:
            self.head = max(self.head, position)
        if position >= self.head:
            self.confirmed_at = time.monotonic()

    async def wait(self, timeout: float) -> None:
        """Until an append is heard of, or ``timeout`` seconds (the poll)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def lag(self, position: int) -> int:
        """Entries known to be committed that this worker has not applied."""
        return max(0, self.head - position)

    def behind(self, now: float | None = None) -> bool:
        """Whether this worker has not known itself at the head for ``behind_after``
        seconds (entries unapplied, or the log unreadable)."""
        return self.unconfirmed_seconds(now) > self.behind_after

    def unconfirmed_seconds(self, now: float | None = None) -> float:
        """Seconds since this worker last knew it was at the head."""
        now = time.monotonic() if now is None else now
        return max(0.0, now - self.confirmed_at)
