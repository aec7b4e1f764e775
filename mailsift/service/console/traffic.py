"""What the Overview page charts: messages per minute by direction and verdict, read
from the audit trail when the page is opened (no counters kept for the console, so an
unwatched console costs the service nothing)."""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Integer, cast, func, select

from mailsift.service.audit import AUDIT_EVENTS

__all__ = ["RANGES", "SETTLE_SECONDS", "Traffic", "traffic"]

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


SETTLE_SECONDS = 60.0
"""A bucket that ended this long ago holds every row it will ever hold: workers write
their buffered audit rows within a second or two."""

_Counts = dict[tuple[str, str], int]
_settled: weakref.WeakKeyDictionary[Engine, dict[float, dict[int, _Counts]]] = (
    weakref.WeakKeyDictionary()
)
"""Per engine and bucket size, the counts of settled buckets, filled as pages are shown:
a week's chart reads only what is new since it was last drawn, not a million rows."""
_lock = threading.Lock()


def traffic(engine: Engine, span_name: str, now: float | None = None) -> Traffic:
    """Counts per bucket over the range ending now (blocking; one grouped query over the
    buckets not yet known settled)."""
    span, bucket = RANGES[span_name]
    now = time.time() if now is None else now
    first = int((now - span) // bucket) + 1
    n = int(span // bucket)
    last_settled = int((now - SETTLE_SECONDS) // bucket) - 1
    with _lock:  # pages are drawn in threads, maybe two at once
        settled = _settled.setdefault(engine, {}).setdefault(bucket, {})
        for old in [slot for slot in settled if slot < first]:
            del settled[old]
        known: dict[int, _Counts] = {}
        for slot in range(first, last_settled + 1):
            if slot not in settled:
                break
            known[slot] = settled[slot]
    since = first + len(known)
    fresh = _count(engine, bucket, since)
    with _lock:
        for slot in range(since, last_settled + 1):
            settled[slot] = fresh.get(slot, {})
    per_minute = {(d, v): [0.0] * n for d in DIRECTIONS for v in VERDICTS}
    total = 0
    for i in range(n):
        slot = first + i
        for key, count in (known[slot] if slot < since else fresh.get(slot, {})).items():
            if key in per_minute:
                per_minute[key][i] += count * 60.0 / bucket
                total += count
    fmt = "%H:%M" if span <= 86_400 else "%a %H:%M"
    labels = [datetime.fromtimestamp((first + i) * bucket, UTC).strftime(fmt) for i in range(n)]
    return Traffic(labels, per_minute, total)


def _count(engine: Engine, bucket: float, since: int) -> dict[int, _Counts]:
    """Rows per bucket, direction and verdict, from bucket number ``since`` on."""
    # SQLite's cast truncates (the times are positive: floor); PostgreSQL's rounds.
    ratio = _e.created_at / bucket
    slot = cast(func.floor(ratio) if engine.dialect.name == "postgresql" else ratio, Integer)
    query = (
        select(slot.label("slot"), _e.direction, _e.verdict, func.count())
        .where(_e.created_at >= since * bucket)
        .group_by(slot, _e.direction, _e.verdict)
    )
    found: dict[int, _Counts] = {}
    with engine.connect() as conn:
        for at, direction, verdict, count in conn.execute(query):
            found.setdefault(int(at), {})[(str(direction), str(verdict))] = int(count)
    return found
