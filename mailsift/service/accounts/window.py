"""The risk window: the last hour, but nothing from before the administrator's last clear.

Its start is stored with the state (:mod:`.states` writes it at a clear) and read by the
counters (failed logins in the window) and the usage figures alike, so it is worked out
here once rather than by each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from mailsift.service.accounts.schema import BASE_COLUMNS, auth, minutes, state

__all__ = ["DAY_MINUTES", "HOUR_MINUTES", "Window", "auth_counts", "bucket_counts", "risk_window"]

HOUR_MINUTES = 60
DAY_MINUTES = 24 * 60  # the daily limit's rolling day, in minute buckets


@dataclass(frozen=True, slots=True)
class Window:
    """The risk window: from ``start`` (epoch seconds), i.e. from bucket ``minute`` less
    the ``base`` counts that bucket held before the window began."""

    minute: int
    start: float
    base: dict[str, int]


def risk_window(conn: Connection, key: str, now: float) -> Window:
    """The risk window: the last hour, but nothing from before the last clear."""
    start = now - 3600
    minute = int(now // 60) - HOUR_MINUTES + 1
    s = state.c
    row = conn.execute(
        select(s.reset_at, *(getattr(s, f"reset_{n}") for n in BASE_COLUMNS)).where(s.user == key)
    ).first()
    if row is None or row[0] is None or row[0] <= start:
        return Window(minute, start, dict.fromkeys(BASE_COLUMNS, 0))
    reset_at = float(row[0])
    return Window(
        int(reset_at // 60),
        reset_at,
        {n: int(v) for n, v in zip(BASE_COLUMNS, row[1:], strict=True)},
    )


def bucket_counts(conn: Connection, key: str, minute: int) -> dict[str, int]:
    """What the user's bucket ``minute`` holds now (taken at a clear), as the state
    row's ``reset_*`` values."""
    m, a = minutes.c, auth.c
    row = conn.execute(
        select(m.messages, m.recipients, m.scored, m.spam).where(m.user == key, m.minute == minute)
    ).first()
    failures = conn.execute(
        select(func.coalesce(func.sum(a.failures), 0)).where(a.user == key, a.minute == minute)
    ).scalar_one()
    counts = [int(v) for v in row] if row is not None else [0, 0, 0, 0]
    return {f"reset_{n}": v for n, v in zip(BASE_COLUMNS, [*counts, int(failures)], strict=True)}


def auth_counts(conn: Connection, key: str, window: Window) -> tuple[int, int]:
    """Failures and distinct client addresses in the window (addresses seen only
    just before a clear, in the clear's minute, still count: they are a display)."""
    a = auth.c
    failures = func.coalesce(func.sum(a.failures), 0)
    row = conn.execute(
        select(failures, func.count(func.distinct(a.client_ip))).where(
            a.user == key, a.minute >= window.minute
        )
    ).one()
    return max(0, int(row[0]) - window.base["auth"]), int(row[1])
