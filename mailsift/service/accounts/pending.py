"""What the risk rules read besides the limits, queued in memory and written in batches.

Only the limit check and its minute bucket must be exact, so only they are written by
the request (:mod:`.counters`). The hourly roll-up behind the usual rate, the recipient
domains and how messages scored are summed here per row and written by
:meth:`PendingCounts.flush` in one transaction every fraction of a second: the risk
numbers lag the limits by that much (and a crashed process loses that much of them; a
stopped one flushes first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mailsift.service.accounts.connections import Connections
from mailsift.service.accounts.schema import MAX_DOMAIN, normalise_user, upserts
from mailsift.service.db import (
    Busy,
    ManyRunner,
    core_many,
    hot_statement,
    lock_key_for,
    nowait_raw_transaction,
    raw_many,
)

__all__ = ["MAX_PENDING_ROWS", "PendingCounts"]

log = logging.getLogger("mailsift.accounts")

MAX_PENDING_ROWS = 1_000_000  # queued rows kept while the database is unreachable
_FLUSH_LOCK_KEY = lock_key_for("accounts:flush")

_HOT_HOURS = hot_statement(
    lambda dialect: upserts(dialect).hour, "user", "hour", "messages", "recipients"
)
_HOT_OUTCOMES = hot_statement(
    lambda dialect: upserts(dialect).outcome,
    "user",
    "minute",
    "messages",
    "recipients",
    "scored",
    "spam",
)
_HOT_DOMAINS = hot_statement(
    lambda dialect: upserts(dialect).domain, "user", "domain", "first_seen", "last_seen"
)


class _Batch:
    """What this process recorded and has not written yet, summed per row it will update."""

    __slots__ = ("domains", "hours", "outcomes")

    def __init__(self) -> None:
        self.hours: dict[tuple[str, int], list[int]] = {}  # messages, recipients
        self.outcomes: dict[tuple[str, int], list[int]] = {}  # scored, spam
        self.domains: dict[tuple[str, str], list[float]] = {}  # first seen, last seen

    def __len__(self) -> int:
        return len(self.hours) + len(self.outcomes) + len(self.domains)

    def users(self) -> set[str]:
        return (
            {k[0] for k in self.hours}
            | {k[0] for k in self.outcomes}
            | {k[0] for k in self.domains}
        )

    def add_counts(self, into: dict[Any, list[int]], key: Any, first: int, second: int) -> None:
        row = into.get(key)
        if row is None:
            into[key] = [first, second]
        else:
            row[0] += first
            row[1] += second

    def add_domain(self, key: tuple[str, str], first: float, last: float) -> None:
        row = self.domains.get(key)
        if row is None:
            self.domains[key] = [first, last]
        else:
            row[0], row[1] = min(row[0], first), max(row[1], last)

    def absorb(self, other: _Batch) -> None:
        for key, (a, b) in other.hours.items():
            self.add_counts(self.hours, key, a, b)
        for key, (a, b) in other.outcomes.items():
            self.add_counts(self.outcomes, key, a, b)
        for where, (first, last) in other.domains.items():
            self.add_domain(where, first, last)


class PendingCounts:
    """The queue of hourly roll-ups, outcomes and recipient domains, and its flush.

    Thread-safe; :meth:`flush` also reports the users written since its last call, whom
    the caller re-judges (their numbers changed).
    """

    def __init__(self, db: Connections) -> None:
        self.db = db
        self._lock = threading.Lock()  # guards the queue and the users to judge
        # One flush at a time: a flush that starts after something was queued writes it,
        # or waits for the flush that took it to commit.
        self._flush_lock = threading.RLock()
        self._batch = _Batch()
        self._unjudged: set[str] = set()

    def queue_sent(self, key: str, rcpts: set[str], now: float) -> None:
        """Queue the roll-up and the recipient domains of one counted message."""
        domains = {d for d in map(_domain_of, rcpts) if d}
        with self._lock:
            batch = self._batch
            batch.add_counts(batch.hours, (key, int(now // 3600)), 1, len(rcpts))
            for domain in domains:
                batch.add_domain((key, domain), now, now)

    def record_outcome(self, user: str, verdict: str, now: float) -> None:
        """Count one scored outbound message of ``user``, and whether it was spam (queued
        for :meth:`flush`; never touches the database)."""
        if verdict not in ("ham", "suspect", "spam"):
            raise ValueError(f"unknown verdict {verdict!r}")
        key = normalise_user(user)
        with self._lock:
            batch = self._batch
            batch.add_counts(batch.outcomes, (key, int(now // 60)), 1, int(verdict == "spam"))

    def pending(self) -> bool:
        """Whether :meth:`flush` has anything to do (no I/O)."""
        return bool(self._batch) or bool(self._unjudged)

    def flush(self) -> set[str]:
        """Write what was queued, in one transaction; the users written since the last call.

        The caller re-judges those users: their numbers changed. On a database error
        (or :class:`~mailsift.service.db.Busy`) the queue is kept for the next flush.
        """
        with self._flushing():
            self.write()
            with self._lock:
                users, self._unjudged = self._unjudged, set()
        return users

    def write(self) -> None:
        """Write the queue (kept for the next try on an error, which is raised)."""
        with self._flushing():
            with self._lock:
                batch, self._batch = self._batch, _Batch()
            if not batch:
                return
            try:
                if self.db.waits() or self.db.nowait_engine is None:
                    with self.db.writing(_FLUSH_LOCK_KEY) as conn:
                        _write_batch(core_many(conn), batch)
                else:
                    with nowait_raw_transaction(self.db.nowait_engine) as raw:
                        _write_batch(raw_many(raw), batch)
            except Exception:
                with self._lock:
                    batch.absorb(self._batch)
                    if len(batch) <= MAX_PENDING_ROWS:
                        self._batch = batch
                    else:  # the database has been away for long: keep only what is new
                        self._batch = _Batch()
                        log.error("account counters lost: %d rows could not be written", len(batch))
                raise
            with self._lock:
                self._unjudged |= batch.users()

    def write_best_effort(self) -> None:
        """:meth:`write` before a read: an error is logged, :class:`Busy` raised."""
        try:
            self.write()
        except Busy:
            raise
        except Exception as exc:  # a read must not fail because a write did
            log.error("writing queued account counters failed: %s", type(exc).__name__)

    @contextmanager
    def _flushing(self) -> Iterator[None]:
        if not self._flush_lock.acquire(blocking=self.db.waits()):
            raise Busy
        try:
            yield
        finally:
            self._flush_lock.release()


def _write_batch(many: ManyRunner, batch: _Batch) -> None:
    # Sorted, so that two flushes on PostgreSQL lock rows in the same order.
    if batch.hours:
        many(
            _HOT_HOURS,
            [
                {"user": u, "hour": h, "messages": n, "recipients": r}
                for (u, h), (n, r) in sorted(batch.hours.items())
            ],
        )
    if batch.outcomes:
        many(
            _HOT_OUTCOMES,
            [
                {"user": u, "minute": m, "messages": 0, "recipients": 0, "scored": n, "spam": spam}
                for (u, m), (n, spam) in sorted(batch.outcomes.items())
            ],
        )
    if batch.domains:
        many(
            _HOT_DOMAINS,
            [
                {"user": u, "domain": d, "first_seen": first, "last_seen": last}
                for (u, d), (first, last) in sorted(batch.domains.items())
            ],
        )


def _domain_of(address: str) -> str | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return domain[:MAX_DOMAIN]
