"""Searching the audit trail from the console's History page.

Sender, fingerprint and message id are exact matches on indexed columns: one query.
The rest (recipient, reason, verdict, action, direction) can only narrow a walk of the
time index, newest first, that stops at the page's row count; for a rare recipient or
reason that walk may cover the whole window. So such a search goes back in slices (an
hour, then each up to twice the last) and stops when the page is full, the window is
covered or :data:`BUDGET_SECONDS` is spent; the answer says how far back it looked and the page
offers to go on from there. An answer thus stays well under 300 ms however dense the
trail (``benchmarks/console_search.py`` times each kind on a million rows).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, or_, select

from mailsift.service.audit import AUDIT_EVENTS, event_of

__all__ = ["PAGE_ROWS", "WINDOWS", "Found", "HistoryQuery", "event_by_id", "search"]

PAGE_ROWS = 50
WINDOWS: dict[str, float] = {"hour": 3600.0, "day": 86_400.0, "week": 7 * 86_400.0}
"""The time windows a search may cover, ending now (or at ``until``)."""
BUDGET_SECONDS = 0.2
"""A sliced search's time: each slice is sized to end within it at the pace so far."""
FIRST_SLICE = 3600.0
_e = AUDIT_EVENTS.c


def _plain(column: Any) -> Any:
    """``column || ''``: the same value, but no index on it is used. SQLite would
    otherwise take ``audit_events_account`` (direction, account, created_at) for a
    direction and then filter every outbound row of the trail by time."""
    return column.concat("")


def _holds(engine: Engine, column: Any, needle: str) -> ColumnElement[bool]:
    """``needle`` occurs in ``column`` (case-sensitive; several times faster than a
    LIKE, which SQLite folds case for)."""
    if engine.dialect.name == "postgresql":
        return func.strpos(column, needle) > 0
    return func.instr(column, needle) > 0


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """The History page's filters, as typed (empty: not filtered)."""

    sender: str = ""
    until: str = ""
    """Unix seconds: search before this time (where an earlier answer stopped)."""
    recipient: str = ""
    fingerprint: str = ""
    message_id: str = ""
    verdict: str = ""
    action: str = ""
    reason: str = ""
    direction: str = ""
    window: str = "day"

    @classmethod
    def of(cls, params: dict[str, str]) -> HistoryQuery:
        values = {f.name: params.get(f.name, "").strip()[:320] for f in fields(cls)}
        if values["window"] not in WINDOWS:
            values["window"] = "day"
        try:
            values["until"] = f"{float(values['until']):.3f}" if values["until"] else ""
        except ValueError:
            values["until"] = ""
        return cls(**values)

    @property
    def indexed(self) -> bool:
        """Whether an exact match on an indexed column narrows the search."""
        return bool(self.sender or self.fingerprint or self.message_id)

    def span(self, now: float) -> tuple[float, float]:
        """The window searched: (from, until)."""
        end = min(float(self.until), now) if self.until else now
        return now - WINDOWS[self.window], end

    def params(self, **changes: str) -> dict[str, str]:
        """The query string of this search, with ``changes``."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in {**given, **changes}.items() if v}

    def conditions(self, engine: Engine) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.sender:
            addr = self.sender.lower()
            where.append(or_(_e.mail_from == addr, _e.from_addr == addr))
        if self.recipient:
            # Stored as a JSON list of lower-case addresses: match one whole element.
            where.append(_holds(engine, _e.recipients, json.dumps(self.recipient.lower())))
        if self.fingerprint:
            where.append(_e.fingerprint == self.fingerprint.lower())
        if self.message_id:
            where.append(_e.message_id == self.message_id.strip("<>"))
        if self.reason:
            where.append(_holds(engine, _e.reasons, f"[{json.dumps(self.reason)},"))
        for name in ("verdict", "action", "direction"):
            value = getattr(self, name)
            if value:
                where.append(_plain(_e[name]) == value)
        return where


@dataclass(frozen=True, slots=True)
class Found:
    rows: list[dict[str, Any]]
    searched_from: float
    """How far back the search looked: the window's start unless it stopped early."""
    complete: bool
    """Whether the whole window was searched (or the page filled)."""


def search(
    engine: Engine,
    query: HistoryQuery,
    *,
    now: float | None = None,
    limit: int = PAGE_ROWS,
    budget: float = BUDGET_SECONDS,
) -> Found:
    """The newest ``limit`` rows that match, and how far back they were looked for
    (blocking)."""
    now = time.time() if now is None else now
    start, end = query.span(now)
    where = query.conditions(engine)
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    size = end - start if query.indexed else FIRST_SLICE
    hi = end
    with engine.connect() as conn:
        while hi > start and len(rows) < limit:
            lo = max(start, hi - size)
            statement = (
                select(AUDIT_EVENTS)
                .where(_e.created_at >= lo, _e.created_at < hi, *where)
                .order_by(_e.created_at.desc(), _e.id.desc())
                .limit(limit - len(rows))
            )
            rows += [event_of(row._mapping) for row in conn.execute(statement)]
            hi = lo
            spent = time.monotonic() - began
            if spent >= budget:
                break
            # The next slice: twice the last, but no longer than the rest of the budget
            # lasts at the pace so far (seconds spent per second of trail searched).
            pace = spent / max(end - hi, 1.0)
            size = min(size * 2, (budget - spent) / pace) if pace > 0 else size * 2
    return Found(rows, hi, hi <= start or len(rows) >= limit)


def event_by_id(engine: Engine, event_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(AUDIT_EVENTS).where(_e.id == event_id)).first()
    return event_of(row._mapping) if row is not None else None
