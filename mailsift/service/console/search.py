"""Searching the audit trail from the console's History page.

Each filter maps to a condition the trail's indexes serve: sender, fingerprint and
message id are exact matches on indexed columns; the rest (recipient, reason, verdict,
action, direction) narrow a walk of the time index, newest first, that stops at the
page's row count. Every search is bounded in time (the last day unless told), so a rare
recipient or reason costs at most one window's rows, never the whole trail.
``benchmarks/console_search.py`` times each kind on a million rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import ColumnElement, Engine, or_, select

from mailsift.service.audit import AUDIT_EVENTS, event_of

__all__ = ["PAGE_ROWS", "WINDOWS", "HistoryQuery", "event_by_id", "search"]

PAGE_ROWS = 50
WINDOWS: dict[str, float] = {"hour": 3600.0, "day": 86_400.0, "week": 7 * 86_400.0}
"""The time windows a search may cover, ending now (or at ``until``)."""
MAX_WINDOW = 31 * 86_400.0
_e = AUDIT_EVENTS.c


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """The History page's filters, as typed (empty: not filtered)."""

    sender: str = ""
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
        return cls(**values)

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "window")

    def conditions(self, now: float) -> list[ColumnElement[bool]]:
        where = [_e.created_at >= now - WINDOWS[self.window]]
        if self.sender:
            addr = self.sender.lower()
            where.append(or_(_e.mail_from == addr, _e.from_addr == addr))
        if self.recipient:
            # Stored as a JSON list of lower-case addresses: match one whole element.
            quoted = json.dumps(self.recipient.lower())
            where.append(_e.recipients.contains(quoted, autoescape=True))
        if self.fingerprint:
            where.append(_e.fingerprint == self.fingerprint.lower())
        if self.message_id:
            where.append(_e.message_id == self.message_id.strip("<>"))
        if self.reason:
            where.append(_e.reasons.contains(f"[{json.dumps(self.reason)},", autoescape=True))
        for name in ("verdict", "action", "direction"):
            value = getattr(self, name)
            if value:
                where.append(_e[name] == value)
        return where


def search(
    engine: Engine, query: HistoryQuery, *, now: float | None = None, limit: int = PAGE_ROWS
) -> list[dict[str, Any]]:
    """The newest ``limit`` rows that match (blocking)."""
    now = time.time() if now is None else now
    statement = (
        select(AUDIT_EVENTS)
        .where(*query.conditions(now))
        .order_by(_e.created_at.desc(), _e.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [event_of(row._mapping) for row in conn.execute(statement)]


def event_by_id(engine: Engine, event_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(AUDIT_EVENTS).where(_e.id == event_id)).first()
    return event_of(row._mapping) if row is not None else None
