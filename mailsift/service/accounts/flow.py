"""What the edge calls around scoring one outbound message, and after an account event.

``before_outbound`` counts the message against its sender's limits and fetches their
risk state (for the ``limits`` and ``account`` checks); ``after_outbound`` records how
the message scored and re-judges the sender. Store calls run in a threadpool; alerts
are raised on every state change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from starlette.concurrency import run_in_threadpool

from mailsift.service.accounts import AccountState, AccountStats, RiskState, SendingDecision
from mailsift.service.accounts.risk import assess
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.settings import Settings

__all__ = [
    "ALERT_ACCOUNT_STATE",
    "ALERT_AUTH_FAILURES",
    "AccountsHost",
    "after_outbound",
    "announce_change",
    "auth_failure",
    "before_outbound",
    "reassess",
]

ALERT_ACCOUNT_STATE = "account_state"
ALERT_AUTH_FAILURES = "auth_failure_burst"


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

    Put the results in ``ctx.extra["sending"]`` and ``ctx.extra["account"]``. A
    suspended user's mail is held, so it is checked but not counted.
    """
    now = time.time()
    store = state.accounts

    def run() -> tuple[SendingDecision, AccountState]:
        account = store.get_state(user)
        suspended = account.state == "suspended"
        return store.check_and_record(user, recipients, now, dry_run=suspended), account

    return await run_in_threadpool(run)


async def after_outbound(state: AccountsHost, user: str, verdict: str) -> AccountState:
    """Record how ``user``'s message scored, re-judge them, alert on a change."""
    now = time.time()
    store = state.accounts

    def run() -> _Judgement:
        store.record_outcome(user, verdict, now)
        return _judge(store, state.settings, user, now)

    judgement = await run_in_threadpool(run)
    await _announce(state, judgement)
    return judgement.new


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
