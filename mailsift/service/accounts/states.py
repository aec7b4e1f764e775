"""Each user's risk state (ok, watch, suspended), its history, and this process's copy.

The state machine is apart from the counters because it changes rarely and is read on
every outbound message: scoring reads the cached copy (:meth:`AccountStates.cached`),
and every change goes through a compare-and-set under the user's lock, so that two
workers judging the same user change it (and alert) once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from mailsift.service.accounts import RISK_STATES, AccountState, RiskState, StateChange, schema
from mailsift.service.accounts.connections import Connections
from mailsift.service.accounts.schema import (
    KEY,
    MAX_REASON,
    MAX_USER,
    insert_for,
    normalise_user,
    user_lock,
)
from mailsift.service.accounts.window import bucket_counts
from mailsift.service.pg import states as pg_states
from mailsift.service.pg.pool import AsyncPool

__all__ = [
    "MAX_CACHED_USERS",
    "STATE_CACHE_SECONDS",
    "STATE_OF",
    "AccountStates",
    "account_state",
    "risk_state",
]

log = logging.getLogger("mailsift.accounts")

STATE_CACHE_SECONDS = 1.0
"""How long this process scores with a risk state it read (its own changes show at once)."""
MAX_CACHED_USERS = 100_000

_s = schema.state.c
STATE_OF = select(_s.state, _s.since, _s.reason).where(_s.user == KEY)
"""A user's (state, since, reason), for :func:`account_state`."""


class AccountStates:
    """Reads and changes risk states; keeps what this process last read or wrote.

    Methods are synchronous and take ``now`` (see :class:`~.store.AccountStore`).
    """

    def __init__(self, db: Connections, *, state_cache_seconds: float) -> None:
        self.db = db
        self.state_cache_seconds = state_cache_seconds
        # user -> (when read or written (monotonic), state); see cached_state
        self._states: dict[str, tuple[float, AccountState]] = {}

    def get_state(self, user: str) -> AccountState:
        """The user's risk state as the database has it now."""
        key = normalise_user(user)
        read_at = time.monotonic()
        with self.db.reading() as conn:
            account = self.read(conn, key)
        self.remember(account, read_at)
        return account

    def cached_state(self, user: str) -> AccountState:
        """The user's risk state as this process read or wrote it at most
        ``state_cache_seconds`` ago: what scoring uses, so that a state another worker
        changed holds here within about a second, without a read per message."""
        key = normalise_user(user)
        return self.cached(key) or self.get_state(key)

    def last_known(self, key: str) -> AccountState | None:
        """This process's copy of the state however old (the database being away)."""
        hit = self._states.get(key)
        return None if hit is None else hit[1]

    def cached(self, key: str) -> AccountState | None:
        """This process's copy of the state, if fresh enough; None to read it."""
        hit = self._states.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.state_cache_seconds:
            return None
        return hit[1]

    def remember(self, account: AccountState, read_at: float) -> None:
        """Cache a state read (or written) at ``read_at``, unless a newer one is cached."""
        hit = self._states.get(account.user)
        if hit is not None and hit[0] > read_at:
            return
        if len(self._states) > MAX_CACHED_USERS:
            oldest = time.monotonic() - self.state_cache_seconds
            self._states = {k: v for k, v in self._states.items() if v[0] > oldest}
        self._states[account.user] = (read_at, account)

    def read(self, conn: Connection, key: str) -> AccountState:
        return account_state(key, conn.execute(STATE_OF, {"key": key}).first())

    def set_state(
        self,
        user: str,
        state: RiskState,
        reason: str,
        now: float,
        *,
        expected: RiskState | None = None,
        by: str = "mailsift",
    ) -> bool:
        """Move the user to ``state``; True when this call changed it.

        With ``expected`` it is a compare-and-set: nothing happens unless the user is
        still in that state, so two workers judging the same user change it (and
        alert) once, and an administrator's clear made meanwhile is not overwritten.
        """
        key = normalise_user(user)
        risk_state(state)
        with self.db.writing(user_lock(key)) as conn:
            old = self.read(conn, key).state
            if old == state or (expected is not None and old != expected):
                self._states.pop(key, None)  # another worker changed it: read afresh
                return False
            self._write(conn, key, old, state, reason, now, by, reset=False)
        self.remember(AccountState(key, state, now, reason[:MAX_REASON]), time.monotonic())
        log.warning("account %s: %s -> %s (%s)", key, old, state, reason[:200])
        return True

    async def set_state_on_loop(
        self,
        pool: AsyncPool,
        user: str,
        state: RiskState,
        reason: str,
        now: float,
        *,
        expected: RiskState | None = None,
        by: str = "mailsift",
    ) -> tuple[bool, AccountState]:
        """:meth:`set_state` as one statement on the event loop (PostgreSQL,
        :mod:`mailsift.service.pg.states`): whether this call changed the state, and the
        state now (another worker's, after a lost compare-and-set)."""
        key = normalise_user(user)
        risk_state(state)
        read_at = time.monotonic()
        done = await pg_states.change_state(
            pool,
            user=key,
            lock=user_lock(key),
            state=state,
            reason=reason,
            now=now,
            expected=expected,
            by=by,
        )
        current = account_state(key, done.state)
        self.remember(current, read_at)
        if done.changed:
            log.warning("account %s: -> %s (%s)", key, state, reason[:200])
        return done.changed, current

    def clear(self, user: str, by: str, now: float) -> AccountState:
        """An administrator's all-clear: back to ``ok``, judged afresh from now on.

        Returns the state before the clear. The risk window restarts (the counts of the
        current minute bucket are recorded as its base), so the burst or the failed
        logins that led to the suspension do not suspend the user again.
        """
        key = normalise_user(user)
        reason = f"cleared by {by}"
        with self.db.writing(user_lock(key)) as conn:
            previous = self.read(conn, key)
            self._write(conn, key, previous.state, "ok", reason, now, by, reset=True)
        self.remember(AccountState(key, "ok", now, reason[:MAX_REASON]), time.monotonic())
        log.warning("account %s: %s -> ok (cleared by %s)", key, previous.state, by)
        return previous

    def _write(
        self,
        conn: Connection,
        key: str,
        old: RiskState,
        new: RiskState,
        reason: str,
        now: float,
        by: str,
        *,
        reset: bool,
    ) -> None:
        reason = reason[:MAX_REASON]
        values: dict[str, Any] = {"state": new, "since": now, "reason": reason}
        if reset:
            values["reset_at"] = now
            values.update(bucket_counts(conn, key, int(now // 60)))
        ins = insert_for(conn)(schema.state).values(user=key, **values)
        conn.execute(ins.on_conflict_do_update(index_elements=[_s.user], set_=values))
        conn.execute(
            schema.history.insert().values(
                user=key, at=now, old_state=old, new_state=new, reason=reason, by=by[:MAX_USER]
            )
        )

    def not_ok(self, limit: int = 200) -> list[AccountState]:
        """Every account not in the ok state, the latest change first (the console)."""
        query = (
            select(_s.user, _s.state, _s.since, _s.reason)
            .where(_s.state != "ok")
            .order_by(_s.since.desc())
            .limit(limit)
        )
        with self.db.reading() as conn:
            rows = conn.execute(query).all()
        return [account_state(str(r[0]), r[1:]) for r in rows]

    def history(self, user: str, limit: int = 20) -> list[StateChange]:
        """The user's latest state changes, newest first."""
        key = normalise_user(user)
        h = schema.history.c
        with self.db.reading() as conn:
            rows = conn.execute(
                select(h.at, h.old_state, h.new_state, h.reason, h.by)
                .where(h.user == key)
                .order_by(h.id.desc())
                .limit(limit)
            ).all()
        return [
            StateChange(float(r[0]), risk_state(r[1]), risk_state(r[2]), str(r[3]), str(r[4]))
            for r in rows
        ]


def account_state(key: str, row: Sequence[Any] | None) -> AccountState:
    """A state from its row (state, since, reason); a user never judged is ok."""
    if row is None:
        return AccountState(key, "ok", None, "")
    return AccountState(key, risk_state(row[0]), float(row[1]), str(row[2]))


def risk_state(value: object) -> RiskState:
    """``value`` as a risk state; ValueError when it is none."""
    for state in RISK_STATES:
        if value == state:
            return state
    raise ValueError(f"unknown account state {value!r}")
