"""A sender's risk-state change as one statement (PostgreSQL).

The synchronous compare-and-set (:meth:`~mailsift.service.accounts.states.AccountStates.set_state`)
takes the user's lock, reads the state, writes it and its history row, and a second call
reads the result: two threads and about eight round trips per change. A spam wave moves
hundreds of senders at once, and those threads then held the interpreter lock the event
loop needed for every message in flight. Here the same steps are one function call under
the same advisory lock; it returns whether it changed the state and the state now.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsift.service.accounts.schema import MAX_REASON, MAX_USER
from mailsift.service.pg.pool import AsyncPool

__all__ = ["DDL", "StateChanged", "change_state"]

FUNCTION = "mailsift_set_state_v1"

DDL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(
    p_user text, p_lock bigint, p_state text, p_reason text, p_now double precision,
    p_expected text, p_by text)
RETURNS TABLE (changed boolean, state text, since double precision, reason text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    old text;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT s.state INTO old FROM account_state s WHERE s."user" = p_user;
    old := coalesce(old, 'ok');
    IF old = p_state OR (p_expected IS NOT NULL AND old <> p_expected) THEN
        changed := false;
    ELSE
        INSERT INTO account_state AS s ("user", state, since, reason, reset_messages,
                                        reset_recipients, reset_scored, reset_spam, reset_auth)
        VALUES (p_user, p_state, p_now, p_reason, 0, 0, 0, 0, 0)
        ON CONFLICT ("user") DO UPDATE
           SET state = excluded.state, since = excluded.since, reason = excluded.reason;
        INSERT INTO account_state_history ("user", at, old_state, new_state, reason, "by")
        VALUES (p_user, p_now, old, p_state, p_reason, p_by);
        changed := true;
    END IF;
    SELECT s.state, s.since, s.reason INTO state, since, reason
      FROM account_state s WHERE s."user" = p_user;
    RETURN NEXT;
END
$$
"""
_CALL = f"SELECT * FROM {FUNCTION}(%s, %s, %s, %s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class StateChanged:
    changed: bool
    state: tuple[str, float, str] | None
    """(state, since, reason) now; None for a user never judged (``ok``)."""


async def change_state(
    pool: AsyncPool,
    *,
    user: str,
    lock: int,
    state: str,
    reason: str,
    now: float,
    expected: str | None,
    by: str,
) -> StateChanged:
    """Compare-and-set ``user``'s state, one round trip; see the module's docstring."""
    row = await pool.fetchone(
        _CALL, (user, lock, state, reason[:MAX_REASON], now, expected, by[:MAX_USER])
    )
    assert row is not None  # RETURN NEXT: always one row
    current = None if row[1] is None else (str(row[1]), float(row[2]), str(row[3]))
    return StateChanged(bool(row[0]), current)
