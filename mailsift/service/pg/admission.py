"""A sender's limit check and count in one statement, exact across replicas.

The synchronous path takes the user's advisory lock, sums their minute buckets, counts
the message and commits: five round trips (BEGIN, lock, sum, upsert, COMMIT), in a
thread. Here the same steps are a function on the server, called as one statement on
an autocommit connection: one round trip, one short transaction. It takes the same
advisory lock as every other exact write for the user (``user_lock``), so the two paths
may run side by side, and each statement of a PL/pgSQL function sees every commit made
before it (READ COMMITTED): the sum after the lock counts every message admitted before.

The function returns the counts *before* this message, whether it was recorded, and
(when asked) the user's risk state read under the same lock; the caller decides what
they mean with the same pure rule as the synchronous path
(:func:`~mailsift.service.accounts.counters.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsift.service.pg.pool import AsyncPool

__all__ = ["DDL", "AdmitRow", "admit"]

FUNCTION = "mailsift_admit_v1"
"""Versioned: replicas of two releases side by side each call their own."""

DDL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(
    p_user text, p_lock bigint, p_minute integer, p_recipients integer,
    p_max_hour integer, p_max_day integer, p_max_recipients integer,
    p_dry_run boolean, p_read_state boolean)
RETURNS TABLE (messages_hour bigint, recipients_hour bigint, messages_day bigint,
               recorded boolean, state text, since double precision, reason text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    suspended boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF p_read_state THEN
        SELECT s.state, s.since, s.reason INTO state, since, reason
          FROM account_state s WHERE s."user" = p_user;
        suspended := coalesce(state = 'suspended', false);
    END IF;
    SELECT coalesce(sum(CASE WHEN m.minute >= p_minute - 59 THEN m.messages ELSE 0 END), 0),
           coalesce(sum(CASE WHEN m.minute >= p_minute - 59 THEN m.recipients ELSE 0 END), 0),
           coalesce(sum(m.messages), 0)
      INTO messages_hour, recipients_hour, messages_day
      FROM account_minutes m
     WHERE m."user" = p_user AND m.minute >= p_minute - 1439;
    recorded := NOT (p_dry_run OR suspended
        OR (p_max_hour > 0 AND messages_hour + 1 > p_max_hour)
        OR (p_max_day > 0 AND messages_day + 1 > p_max_day)
        OR (p_max_recipients > 0 AND recipients_hour + p_recipients > p_max_recipients));
    IF recorded THEN
        INSERT INTO account_minutes AS m ("user", minute, messages, recipients, scored, spam)
        VALUES (p_user, p_minute, 1, p_recipients, 0, 0)
        ON CONFLICT ("user", minute) DO UPDATE
           SET messages = m.messages + 1, recipients = m.recipients + excluded.recipients;
    END IF;
    RETURN NEXT;
END
$$
"""
_CALL = f"SELECT * FROM {FUNCTION}(%s, %s, %s, %s, %s, %s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class AdmitRow:
    """What the function answered: counts before this message, and the state if read."""

    messages_hour: int
    recipients_hour: int
    messages_day: int
    recorded: bool
    state: tuple[str, float, str] | None
    """(state, since, reason) when asked for and the user has a row; else None."""


async def admit(
    pool: AsyncPool,
    *,
    user: str,
    lock: int,
    minute: int,
    recipients: int,
    limits: tuple[int, int, int],
    dry_run: bool,
    read_state: bool,
) -> AdmitRow:
    """One message of ``user`` checked (and counted when it fits), one round trip.

    ``limits`` are (messages per hour, per day, recipients per hour), 0 = unlimited.
    Raises :class:`~mailsift.service.pg.pool.Unreachable` when the database is away.
    """
    row = await pool.fetchone(_CALL, (user, lock, minute, recipients, *limits, dry_run, read_state))
    assert row is not None  # RETURN NEXT: always one row
    state = None if row[4] is None else (str(row[4]), float(row[5]), str(row[6]))
    return AdmitRow(int(row[0]), int(row[1]), int(row[2]), bool(row[3]), state)
