"""Alert incidents as single statements on the event loop (PostgreSQL).

The synchronous path reads the incident, decides, and writes, under an advisory lock:
five round trips in a thread per raise, and a wave of account state changes raises
hundreds. Here a raise is one upsert that decides in the database whether it fires
(``ON CONFLICT DO UPDATE`` works on the newest version of the row, which it locks, so
two replicas raising the same incident at once still fire once), and a resolve is one
delete.
"""

from __future__ import annotations

from mailsift.service.pg.pool import AsyncPool

__all__ = ["claim", "prune", "resolve"]

_CLAIM = """
INSERT INTO alert_incidents AS i (kind, incident, opened_at, last_seen, raised)
VALUES (%(kind)s, %(key)s, %(now)s, %(now)s, 1)
ON CONFLICT (kind, incident) DO UPDATE SET
    opened_at = CASE WHEN %(now)s - i.last_seen < %(quiet)s THEN i.opened_at ELSE %(now)s END,
    raised = CASE WHEN %(now)s - i.last_seen < %(quiet)s THEN i.raised + 1 ELSE 1 END,
    last_seen = CASE WHEN %(now)s - i.last_seen < %(quiet)s
                     THEN greatest(i.last_seen, %(now)s) ELSE %(now)s END
RETURNING raised = 1, opened_at
"""
_RESOLVE = "DELETE FROM alert_incidents WHERE kind = %s AND incident = %s"
_RESOLVE_OPENED = _RESOLVE + " AND opened_at = %s"
_PRUNE = "DELETE FROM alert_incidents WHERE last_seen < %s"


async def claim(pool: AsyncPool, kind: str, key: str, now: float, quiet: float) -> float | None:
    """Record one raise; the incident's opening time when it fires (new, or quiet for
    ``quiet`` seconds), else None."""
    row = await pool.fetchone(_CLAIM, {"kind": kind, "key": key, "now": now, "quiet": quiet})
    assert row is not None  # RETURNING: always one row
    return float(row[1]) if row[0] else None


async def resolve(pool: AsyncPool, kind: str, key: str, opened_at: float | None) -> bool:
    """Close the incident (only the one opened at ``opened_at``, if given)."""
    if opened_at is None:
        return await pool.execute(_RESOLVE, (kind, key)) > 0
    return await pool.execute(_RESOLVE_OPENED, (kind, key, opened_at)) > 0


async def prune(pool: AsyncPool, before: float) -> int:
    """Drop incidents quiet since before ``before``: as good as gone."""
    return await pool.execute(_PRUNE, (before,))
