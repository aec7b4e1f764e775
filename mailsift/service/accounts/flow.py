"""What the edge calls around scoring one outbound message, and after an account event.

``before_outbound`` counts the message against its sender's limits (exact, across
workers) and gives their risk state as this process knows it (at most about a second
old); ``record_outbound`` queues how the message scored. A flush (``run_flusher``, every
``FLUSH_SECONDS``) writes what the queue holds in one transaction and re-judges just the
users in it, so a change of state shows about a second after the mail that caused it.
``settle`` does the same at once for one user. On SQLite these store calls run on the
event loop itself and never wait there (see :func:`~mailsift.service.db.nowait_first`);
on PostgreSQL the admission is one statement on the loop
(:mod:`mailsift.service.pg.admission`), the rest in a threadpool. Alerts are raised on
every state change, once (compare-and-set picks the one worker that alerts).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from mailsift.service.accounts import AccountState, AccountStats, RiskState, SendingDecision
from mailsift.service.accounts.risk import assess
from mailsift.service.accounts.store import AccountStore, normalise_user
from mailsift.service.alerts import Alerter
from mailsift.service.db import nowait_first
from mailsift.service.settings import Settings

__all__ = [
    "ALERT_ACCOUNT_STATE",
    "ALERT_AUTH_FAILURES",
    "FLUSH_SECONDS",
    "AccountsHost",
    "after_outbound",
    "announce_change",
    "auth_failure",
    "before_outbound",
    "flush_outbound",
    "reassess",
    "record_outbound",
    "run_flusher",
    "settle",
]

log = logging.getLogger("mailsift.accounts")
T = TypeVar("T")

ALERT_ACCOUNT_STATE = "account_state"
ALERT_AUTH_FAILURES = "auth_failure_burst"
FLUSH_SECONDS = 0.5
"""How often each worker writes its queued account numbers and re-judges their users."""


class AccountsHost(Protocol):
    """The part of the service state these helpers use."""

    @property
    def settings(self) -> Settings: ...
    @property
    def accounts(self) -> AccountStore: ...
    @property
    def alerts(self) -> Alerter: ...


@dataclass(frozen=True, slots=True)
class _Judgement:
    old: AccountState
    new: AccountState
    changed: bool
    reasons: list[str]
    stats: AccountStats


async def before_outbound(
    state: AccountsHost, user: str, recipients: list[str]
) -> tuple[SendingDecision, AccountState]:
    """Count one outbound message against ``user``'s limits; their current risk state.

    Put the results in ``CheckContext.sending`` and ``CheckContext.account``. A
    suspended user's mail is held, so it is checked but not counted. The state is the
    one this process read or wrote within the last second or so.
    """
    store = state.accounts
    if store.pool is not None:  # PostgreSQL: one statement, on the loop
        return await store.admit_on_loop(store.pool, user, recipients, time.time())
    return await _call(store, store.admit, user, recipients, time.time())


async def _call(store: AccountStore, method: Callable[..., T], *args: Any) -> T:
    """A store method on the event loop when the store is a local file (SQLite) and the
    call need not wait, else in a thread; see :func:`~mailsift.service.db.nowait_first`."""
    nowait = functools.partial(store.nowait, method, *args) if store.on_loop else None
    return await nowait_first(nowait, functools.partial(method, *args))


def record_outbound(state: AccountsHost, user: str, verdict: str) -> None:
    """Queue how ``user``'s message scored; the next flush writes it and re-judges them.
    No I/O: safe to call on the event loop."""
    state.accounts.record_outcome(user, verdict, time.time())


async def settle(state: AccountsHost, user: str) -> AccountState:
    """Flush now and re-judge ``user`` (and whoever else the queue held): their state
    with everything this process recorded for them counted."""
    judged = await flush_outbound(state, also=(user,))
    return judged[normalise_user(user)]


async def after_outbound(state: AccountsHost, user: str, verdict: str) -> AccountState:
    """Record how ``user``'s message scored, re-judge them at once, alert on a change.

    A flush per message: for callers that need the verdict's effect immediately. The
    score path queues (:func:`record_outbound`) and lets the flusher judge.
    """
    record_outbound(state, user, verdict)
    return await settle(state, user)


async def flush_outbound(
    state: AccountsHost, *, also: Iterable[str] = ()
) -> dict[str, AccountState]:
    """Write this process's queued account numbers in one transaction, then re-judge the
    users they belong to (and ``also``); alerts on changes. Their states, by user."""
    now = time.time()
    store = state.accounts
    users = {normalise_user(u) for u in also}
    if store.pending():
        users |= await _call(store, store.flush)
    if not users:
        return {}
    assessed = await _call(store, store.assessments, users, now)
    judgements, changes = [], []
    for old, stats in assessed:
        new_state, reasons = assess(stats, old, state.settings)
        if new_state == old.state:
            judgements.append(_Judgement(old, old, False, reasons, stats))
        else:
            changes.append((old, stats, new_state, reasons))
    if changes:
        judgements += await _apply(store, changes, now)
    for judgement in judgements:
        if judgement.changed:
            await _announce(state, judgement)
            await asyncio.sleep(0)  # a wave of changes must not hold up requests
    return {j.new.user: j.new for j in judgements}


async def run_flusher(state: AccountsHost, every: float = FLUSH_SECONDS) -> None:
    """The worker's flush loop (a lifespan task); a final :func:`flush_outbound` belongs
    after it is cancelled. Expired buckets are pruned along the way, hourly."""
    store = state.accounts
    while True:
        await asyncio.sleep(every)
        try:
            await flush_outbound(state)
            await store.prune_if_due(time.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the queue is kept; the next round retries
            log.error("flushing account numbers failed: %s", type(exc).__name__)


async def reassess(state: AccountsHost, user: str) -> tuple[AccountState, AccountStats]:
    """Re-judge ``user`` now (after an account event); alerts on a change."""
    now = time.time()
    judgement = await run_in_threadpool(_judge, state.accounts, state.settings, user, now)
    await _announce(state, judgement)
    return judgement.new, judgement.stats


def _judge(store: AccountStore, settings: Settings, user: str, now: float) -> _Judgement:
    old = store.get_state(user)
    stats = store.stats(user, now)
    new_state, reasons = assess(stats, old, settings)
    changed = new_state != old.state and store.set_state(
        user, new_state, "; ".join(reasons), now, expected=old.state
    )
    # After a lost compare-and-set another worker changed the state (and alerts for it).
    new = store.get_state(user) if new_state != old.state else old
    return _Judgement(old, new, changed, reasons, stats)


async def _apply(
    store: AccountStore,
    changes: list[tuple[AccountState, AccountStats, RiskState, list[str]]],
    now: float,
) -> list[_Judgement]:
    """Write judged state changes, each a compare-and-set against the state judged from."""
    judgements = []
    for old, stats, new_state, reasons in changes:
        if store.pool is not None:  # PostgreSQL: one statement, on the loop
            changed, new = await store.set_state_on_loop(
                store.pool, old.user, new_state, "; ".join(reasons), now, expected=old.state
            )
            judgements.append(_Judgement(old, new, changed, reasons, stats))
            continue
        cas = functools.partial(store.set_state, expected=old.state)
        changed = await _call(store, cas, old.user, new_state, "; ".join(reasons), now)
        # After a lost compare-and-set another worker changed the state (and alerts for it).
        new = await _call(store, store.get_state, old.user)
        judgements.append(_Judgement(old, new, changed, reasons, stats))
        await asyncio.sleep(0)  # each call above may run on the loop: let requests in
    return judgements


async def _announce(state: AccountsHost, judgement: _Judgement) -> None:
    if judgement.changed:
        await announce_change(
            state.alerts,
            judgement.old.user,
            judgement.old.state,
            judgement.new.state,
            judgement.reasons,
        )


async def announce_change(
    alerts: Alerter, user: str, old: RiskState, new: RiskState, reasons: list[str]
) -> None:
    """Alert one state change: the incident ``<user>:<new state>`` opens, the one for the
    state left is resolved, so each transition fires once however many workers see it."""
    await alerts.resolve(ALERT_ACCOUNT_STATE, f"{user}:{old}")
    if new == "ok":
        await alerts.resolve(ALERT_AUTH_FAILURES, user)
    await alerts.alert(
        ALERT_ACCOUNT_STATE,
        f"{user}:{new}",
        {"user": user, "old_state": old, "new_state": new, "reasons": reasons},
    )


async def auth_failure(
    state: AccountsHost, user: str, client_ip: str
) -> tuple[AccountState, AccountStats]:
    """Record a failed login a gateway reported, then re-judge the user.

    Crossing the watch threshold raises ``auth_failure_burst`` for the user (once per
    incident, however many failures follow).
    """
    now = time.time()
    store = state.accounts

    def run() -> _Judgement:
        store.record_auth_failure(user, client_ip, now)
        return _judge(store, state.settings, user, now)

    judgement = await run_in_threadpool(run)
    stats = judgement.stats
    if stats.auth_failures_hour >= state.settings.account_auth_failures_watch:
        await state.alerts.alert(
            ALERT_AUTH_FAILURES,
            stats.user,
            {
                "user": stats.user,
                "failures": stats.auth_failures_hour,
                "client_ips": stats.auth_failure_ips_hour,
                "last_client_ip": client_ip,
            },
        )
    await _announce(state, judgement)
    return judgement.new, stats
