"""What the Overview page charts: messages per minute by direction and verdict, read
from the audit trail when the page is opened (no counters kept for the console, so an
unwatched console costs the service nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Integer, cast, func, select

from mailsift.service.audit import AUDIT_EVENTS

__all__ = ["RANGES", "Traffic", "traffic"]

RANGES: dict[str, tuple[float, float]] = {
    "hour": (3600.0, 60.0),
    "day": (86_400.0, 900.0),
    "week": (7 * 86_400.0, 3600.0),
}
"""Range name: (span, bucket) in seconds: 60, 96 and 168 bars."""
VERDICTS = ("ham", "suspect", "spam")
DIRECTIONS = ("inbound", "outbound")
_e = AUDIT_EVENTS.c


@dataclass(frozen=True, slots=True)
class Traffic:
    labels: list[str]
    per_minute: dict[tuple[str, str], list[float]]
    """(direction, verdict): the rate in each bucket, messages per minute."""
    total: int


def traffic(engine: Engine, span_name: str, now: float | None = None) -> Traffic:
    """Counts per bucket over the range ending now (blocking; one grouped query)."""
    span, bucket = RANGES[span_name]
    now = time.time() if now is None else now
    first = int((now - span) // bucket) + 1
    n = int(span // bucket)
    # SQLite's cast truncates (the times are positive: floor); PostgreSQL's rounds.
    ratio = _e.created_at / bucket
    slot = cast(func.floor(ratio) if engine.dialect.name == "postgresql" else ratio, Integer)
    query = (
        select(slot.label("slot"), _e.direction, _e.verdict, func.count())
        .where(_e.created_at >= first * bucket)
        .group_by(slot, _e.direction, _e.verdict)
    )
    per_minute = {(d, v): [0.0] * n for d in DIRECTIONS for v in VERDICTS}
    total = 0
    with engine.connect() as conn:
        for at, direction, verdict, count in conn.execute(query):
            i = int(at) - first
            key = (str(direction), str(verdict))
            if 0 <= i < n and key in per_minute:
                per_minute[key][i] += int(count) * 60.0 / bucket
                total += int(count)
    fmt = "%H:%M" if span <= 86_400 else "%a %H:%M"
    labels = [datetime.fromtimestamp((first + i) * bucket, UTC).strftime(fmt) for i in range(n)]
    return Traffic(labels, per_minute, total)
