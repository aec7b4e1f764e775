"""What the Learning page shows of the training log: recent examples by source (a
user's reports split by channel), reports waiting for consensus, each user's reports.
Read-only queries over the log's tables, never the message bytes; run when the page is
opened."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from mailsift.learning import log_schema as schema
from mailsift.learning.log_rows import first_at_or_after
from mailsift.learning.sources import SHARED, Source

__all__ = ["SOURCES", "LearningView", "learning_view", "source_counts"]

WEEK = 7 * 86_400.0
ROWS = 50
SOURCES = ("admin", "user", "imap", "outbound")
"""The Learning page's columns: a user's report through IMAP is shown apart from one
through the API (the ``via`` the report came with)."""
_entries, _reports, _labels = schema.entries.c, schema.reports.c, schema.labels.c


@dataclass(frozen=True, slots=True)
class LearningView:
    by_source: dict[str, dict[str, int]]
    recent: list[dict[str, Any]]
    waiting: list[dict[str, Any]]
    reporters: list[dict[str, Any]]


def _column(source: str, via: str | None) -> str:
    return "imap" if source == Source.USER.value and via == "imap" else source


def source_counts(engine: Engine, since: float) -> dict[str, dict[str, int]]:
    """Examples appended at or after ``since`` per source column and label (undos and
    forgets left out)."""
    counts = {s: {"ham": 0, "spam": 0} for s in SOURCES}
    with engine.connect() as conn:
        lo = first_at_or_after(conn, since)
        query = (
            select(_entries.source, _entries.via, _entries.label, func.count())
            .where(_entries.position >= lo, _entries.label.is_not(None))
            .group_by(_entries.source, _entries.via, _entries.label)
        )
        for source, via, label, n in conn.execute(query):
            counts.setdefault(_column(str(source), via), {"ham": 0, "spam": 0})[str(label)] += n
    return counts


def learning_view(engine: Engine, now: float | None = None) -> LearningView:
    """Everything the Learning page shows (blocking)."""
    now = time.time() if now is None else now
    recent_q = (
        select(
            _entries.position,
            _entries.fingerprint,
            _entries.label,
            _entries.undo_label,
            _entries.source,
            _entries.via,
            _entries.actor,
            _entries.layer,
            _entries.created_at,
        )
        .order_by(_entries.position.desc())
        .limit(ROWS)
    )
    # A report waits while the shared label differs from it (or there is none).
    waiting_q = (
        select(
            _reports.fingerprint,
            _reports.label,
            func.count().label("users"),
            func.max(_reports.created_at).label("latest"),
        )
        .select_from(
            schema.reports.outerjoin(
                schema.labels,
                and_(_labels.fingerprint == _reports.fingerprint, _labels.label == _reports.label),
            )
        )
        .where(_labels.fingerprint.is_(None), _reports.counted == 1)
        .group_by(_reports.fingerprint, _reports.label)
        .order_by(func.max(_reports.created_at).desc())
        .limit(ROWS)
    )
    spam = func.sum(case((_reports.label == "spam", 1), else_=0))
    users_q = (
        select(_reports.user, func.count().label("reports"), spam.label("spam"))
        .group_by(_reports.user)
        .order_by(func.count().desc(), _reports.user)
        .limit(ROWS)
    )
    with engine.connect() as conn:
        recent = [
            {
                **row._mapping,
                "column": _column(row.source, row.via),
                "layer": "shared" if row.layer == SHARED else "personal",
            }
            for row in conn.execute(recent_q)
        ]
        waiting = [dict(row._mapping) for row in conn.execute(waiting_q)]
        reporters = [dict(row._mapping) for row in conn.execute(users_q)]
    return LearningView(source_counts(engine, now - WEEK), recent, waiting, reporters)
