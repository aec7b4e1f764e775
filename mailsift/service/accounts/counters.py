"""Per-user sending limits and failed-login counts: the counts that must be exact.

A message is checked against its sender's limits and counted in one transaction under
the user's lock, so that N workers cannot each let the N-th message through; a failed
login is counted the same way. Everything else a counted message changes is queued
(:mod:`.pending`). Counts are kept in one-minute buckets: a rolling hour is the last 60
buckets, a rolling day the last 1440, without a row per message.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import replace

from sqlalchemy import ColumnElement, Table, func, select

from mailsift.service.accounts import LIMIT_NAMES, AccountState, Limits, SendingDecision, schema
from mailsift.service.accounts.connections import Connections
from mailsift.service.accounts.pending import PendingCounts
from mailsift.service.accounts.schema import (
    DAY_START,
    KEY,
    in_hour,
    insert_for,
    normalise_user,
    upserts,
    user_lock,
)
from mailsift.service.accounts.states import STATE_OF, AccountStates, account_state
from mailsift.service.accounts.window import (
    DAY_MINUTES,
    HOUR_MINUTES,
    auth_counts,
    risk_window,
)
from mailsift.service.db import (
    Runner,
    core_runner,
    delete_in_turns,
    hot_statement,
    lock_key_for,
    nowait_raw_transaction,
    raw_runner,
)
from mailsift.service.pg import admission as pg_admission
from mailsift.service.pg.pool import AsyncPool
from mailsift.service.settings import Settings

__all__ = ["SendingCounters", "decide"]

log = logging.getLogger("mailsift.accounts")

MINUTE_RETENTION = 25 * 60  # minutes: a rolling day plus slack for clock skew
HOUR_RETENTION = 8 * 24  # hours: the usual rate looks back a week
DOMAIN_RETENTION_SECONDS = 180 * 86400.0
PRUNE_EVERY_SECONDS = 3600.0
_PRUNE_LOCK_KEY = lock_key_for("accounts:prune")

_m = schema.minutes.c
_SENDING_COUNTS = select(
    in_hour(_m.messages), in_hour(_m.recipients), func.coalesce(func.sum(_m.messages), 0)
).where(_m.user == KEY, _m.minute >= DAY_START)
_HOT_COUNTS = hot_statement(lambda _: _SENDING_COUNTS)
_HOT_STATE = hot_statement(lambda _: STATE_OF)
_HOT_SENT = hot_statement(
    lambda dialect: upserts(dialect).sent,
    "user",
    "minute",
    "messages",
    "recipients",
    "scored",
    "spam",
)


class SendingCounters:
    """Limit checks, the minute buckets they count in, and failed logins.

    A counted message's roll-up and recipient domains go to ``queue``; the sender's
    state for :meth:`admit` comes from ``states`` (its cache, or read in the same
    transaction as the check).
    """

    def __init__(
        self, db: Connections, settings: Settings, states: AccountStates, queue: PendingCounts
    ) -> None:
        self.db = db
        self.settings = settings
        self.states = states
        self.queue = queue
        self._overrides = _overrides(settings.limit_overrides)
        self._next_prune = 0.0

    def limits_for(self, user: str) -> Limits:
        """The settings' defaults with this user's overrides applied."""
        s = self.settings
        values = {
            "messages_per_hour": s.limit_messages_per_hour,
            "messages_per_day": s.limit_messages_per_day,
            "recipients_per_hour": s.limit_recipients_per_hour,
        }
        values.update(self._overrides.get(normalise_user(user), {}))
        return Limits(**values)

    def admit(
        self, user: str, recipients: list[str], now: float
    ) -> tuple[SendingDecision, AccountState]:
        """What scoring one outbound message needs, in one transaction: the sender's risk
        state, and whether the message fits under their limits (counted if so).

        The state is this process's copy while at most ``state_cache_seconds`` old, else
        read under the user's lock. A suspended user's message is checked but not
        counted (it is held anyway); see :meth:`check_and_record`.
        """
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = _recipients(recipients)
        cached = self.states.cached(key)
        read_at = time.monotonic()

        def admit(run: Runner) -> tuple[SendingDecision, AccountState]:
            account = cached or account_state(key, run(_HOT_STATE, {"key": key}))
            suspended = account.state == "suspended"
            return self._check(run, key, limits, len(rcpts), now, dry_run=suspended), account

        if self.db.waits() or self.db.nowait_engine is None:
            with self.db.writing(user_lock(key)) as conn:
                decision, account = admit(core_runner(conn))
        else:
            with nowait_raw_transaction(self.db.nowait_engine) as raw:
                decision, account = admit(raw_runner(raw))
        if cached is None:
            self.states.remember(account, read_at)
        if decision.recorded:
            self.queue.queue_sent(key, rcpts, now)
        return decision, account

    def check_and_record(
        self, user: str, recipients: list[str], now: float, *, dry_run: bool = False
    ) -> SendingDecision:
        """Decide whether one message fits under every limit and, if so, count it.

        Atomic across processes: the counts are read and the message recorded under the
        user's lock, so N workers cannot each let the N-th message through. A refused
        message is not counted (the gateway's retry would otherwise count twice), and
        neither is anything with ``dry_run`` (mail of a suspended user, held anyway).
        The hourly roll-up and the recipient domains of a counted message are queued.
        """
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = _recipients(recipients)
        with self.db.writing(user_lock(key)) as conn:
            decision = self._check(core_runner(conn), key, limits, len(rcpts), now, dry_run=dry_run)
        if decision.recorded:
            self.queue.queue_sent(key, rcpts, now)
        return decision

    def _check(
        self, run: Runner, key: str, limits: Limits, rcpts: int, now: float, *, dry_run: bool
    ) -> SendingDecision:
        """The limit check and the minute bucket's increment: all that must be exact."""
        minute = int(now // 60)
        row = run(
            _HOT_COUNTS,
            {
                "key": key,
                "hour_start": minute - HOUR_MINUTES + 1,
                "day_start": minute - DAY_MINUTES + 1,
            },
        )
        assert row is not None  # an aggregate: always one row
        before = (int(row[0]), int(row[1]), int(row[2]))
        decision = decide(key, limits, rcpts, before, dry_run=dry_run)
        if decision.recorded:
            run(
                _HOT_SENT,
                {
                    "user": key,
                    "minute": minute,
                    "messages": 1,
                    "recipients": rcpts,
                    "scored": 0,
                    "spam": 0,
                },
            )
        return decision

    async def admit_on_loop(
        self, pool: AsyncPool, user: str, recipients: list[str], now: float
    ) -> tuple[SendingDecision, AccountState]:
        """:meth:`admit` on PostgreSQL in one statement on the event loop
        (:func:`~mailsift.service.pg.admission.admit`): same lock, same rule, same rows.
        Raises :class:`~mailsift.service.pg.pool.Unreachable` when the database is away."""
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = _recipients(recipients)
        cached = self.states.cached(key)
        read_at = time.monotonic()
        row = await pg_admission.admit(
            pool,
            user=key,
            lock=user_lock(key),
            minute=int(now // 60),
            recipients=len(rcpts),
            limits=(limits.messages_per_hour, limits.messages_per_day, limits.recipients_per_hour),
            dry_run=cached is not None and cached.state == "suspended",
            read_state=cached is None,
        )
        account = cached or account_state(key, row.state)
        if cached is None:
            self.states.remember(account, read_at)
        before = (row.messages_hour, row.recipients_hour, row.messages_day)
        decision = decide(key, limits, len(rcpts), before, dry_run=account.state == "suspended")
        if decision.recorded != row.recorded:  # the same rule on both sides: never
            log.error("admission of %s: the database and this process disagree", key)
            decision = replace(decision, recorded=row.recorded)
        if decision.recorded:
            self.queue.queue_sent(key, rcpts, now)
        return decision, account

    def record_auth_failure(self, user: str, client_ip: str, now: float) -> int:
        """Count one failed login; returns the user's failures in the risk window."""
        key = normalise_user(user)
        ip = ipaddress.ip_address(client_ip.strip()).compressed
        minute = int(now // 60)
        a = schema.auth.c
        with self.db.writing(user_lock(key)) as conn:
            ins = insert_for(conn)(schema.auth).values(
                user=key, client_ip=ip, minute=minute, failures=1
            )
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[a.user, a.client_ip, a.minute],
                    set_={"failures": a.failures + ins.excluded.failures},
                )
            )
            failures, _ips = auth_counts(conn, key, risk_window(conn, key, now))
        return failures

    # -- housekeeping ---------------------------------------------------------------

    async def prune_if_due(self, now: float) -> None:
        """:meth:`prune`, at most once an hour (the flusher calls it)."""
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            await self.prune(now)

    async def prune(self, now: float) -> None:
        """Drop buckets older than every window that reads them (all users), a few
        hundred rows a transaction, requests served in between (see
        :func:`~mailsift.service.db.delete_in_turns`): an hour of expired minute buckets
        is every active user's, too many for one transaction that every outbound
        admission would wait behind."""
        try:
            for table, condition in _expired(now):
                await delete_in_turns(
                    self.db.engine,
                    self.db.nowait_engine,
                    table,
                    condition,
                    lock_key=_PRUNE_LOCK_KEY,
                )
        except Exception as exc:  # housekeeping must never fail a message
            log.error("pruning account counters failed: %s", type(exc).__name__)


def _expired(now: float) -> list[tuple[Table, ColumnElement[bool]]]:
    """Each counter table, and which of its rows no window reads any more."""
    minute, hour = int(now // 60), int(now // 3600)
    return [
        (schema.minutes, schema.minutes.c.minute < minute - MINUTE_RETENTION),
        (schema.auth, schema.auth.c.minute < minute - MINUTE_RETENTION),
        (schema.hours, schema.hours.c.hour < hour - HOUR_RETENTION),
        (schema.domains, schema.domains.c.last_seen < now - DOMAIN_RETENTION_SECONDS),
    ]


def decide(
    key: str, limits: Limits, rcpts: int, before: tuple[int, int, int], *, dry_run: bool
) -> SendingDecision:
    """Whether one message of ``rcpts`` recipients fits, given the counts before it
    (messages this hour, recipients this hour, messages today). Pure: the synchronous
    path and the one-statement path (whose SQL applies the same rule) both use it."""
    messages_hour, recipients_hour, messages_day = before
    wanted = {
        "messages_per_hour": messages_hour + 1,
        "messages_per_day": messages_day + 1,
        "recipients_per_hour": recipients_hour + rcpts,
    }
    exceeded = tuple(name for name in LIMIT_NAMES if 0 < limits.of(name) < wanted[name])
    record = not exceeded and not dry_run
    if record:
        messages_hour, recipients_hour, messages_day = (
            wanted["messages_per_hour"],
            wanted["recipients_per_hour"],
            wanted["messages_per_day"],
        )
    return SendingDecision(
        user=key,
        allowed=not exceeded,
        exceeded=exceeded,
        limits=limits,
        messages_hour=messages_hour,
        messages_day=messages_day,
        recipients_hour=recipients_hour,
        recipients=rcpts,
        recorded=record,
    )


def _recipients(recipients: list[str]) -> set[str]:
    """Distinct recipients: the same address twice, in any case, is one."""
    return {r.strip().lower() for r in recipients if r.strip()}


def _overrides(raw: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per-user overrides keyed like the counters; unknown limit names are logged and
    ignored rather than refused, so a typo does not stop the service."""
    known: set[str] = set(LIMIT_NAMES)
    result: dict[str, dict[str, int]] = {}
    for user, limits in raw.items():
        try:
            key = normalise_user(user)
        except ValueError:
            log.warning("limit override for an unusable user name ignored")
            continue
        good = {}
        for name, value in limits.items():
            if name in known and isinstance(value, int) and value >= 0:
                good[name] = value
            else:
                log.warning("limit override %r for %s ignored", name, key)
        result[key] = good
    return result
