"""Outbound accounts for administrators: a user's risk state and numbers, and the all-clear.

``gateway_router`` holds the one question a gateway may ask about an account: may this
sender send one more message now (a policy server asks it at ``RCPT``, before the
message exists, so it must not count anything)?"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mailsift.service.accounts import (
    AccountState,
    AccountStats,
    Limits,
    SendingDecision,
    StateChange,
)
from mailsift.service.accounts.flow import ALERT_AUTH_FAILURES, announce_change
from mailsift.service.accounts.store import normalise_user
from mailsift.service.deps import State
from mailsift.service.errors import BadRequest
from mailsift.service.schemas import ERRORS, IDENTITY_PATTERN

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
gateway_router = APIRouter(prefix="/v1/admission", tags=["accounts"])

UserPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=IDENTITY_PATTERN,
        description="The sending user (no control characters).",
    ),
]
RiskName = Literal["ok", "watch", "suspended"]


class StatsOut(BaseModel):
    window_start: str
    messages_hour: int
    recipients_hour: int
    messages_day: int
    scored_hour: int
    spam_hour: int
    spam_share: float
    new_domains_hour: int
    auth_failures_hour: int
    auth_failure_ips_hour: int
    usual_messages_per_hour: float
    usual_recipients_per_hour: float


class ChangeOut(BaseModel):
    at: str
    old_state: RiskName
    new_state: RiskName
    reason: str
    by: str


class AccountOut(BaseModel):
    user: str
    state: RiskName
    since: str | None
    reason: str
    limits: dict[str, int]
    stats: StatsOut
    history: list[ChangeOut]


class AdmissionOut(BaseModel):
    user: str
    decision: Literal["allow", "defer"]
    state: RiskName
    reason: str
    messages_hour: int
    messages_day: int
    recipients_hour: int
    limits: dict[str, int]
    exceeded: list[str]


class ClearOut(BaseModel):
    user: str
    state: RiskName
    previous: RiskName
    changed: bool


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _key(user: str) -> str:
    try:
        return normalise_user(user)
    except ValueError as exc:
        raise BadRequest(f"user: {exc}") from None


def _stats(stats: AccountStats) -> dict[str, object]:
    return {
        "window_start": _iso(stats.window_start),
        "messages_hour": stats.messages_hour,
        "recipients_hour": stats.recipients_hour,
        "messages_day": stats.messages_day,
        "scored_hour": stats.scored_hour,
        "spam_hour": stats.spam_hour,
        "spam_share": round(stats.spam_share, 4),
        "new_domains_hour": stats.new_domains_hour,
        "auth_failures_hour": stats.auth_failures_hour,
        "auth_failure_ips_hour": stats.auth_failure_ips_hour,
        "usual_messages_per_hour": stats.usual.messages,
        "usual_recipients_per_hour": stats.usual.recipients,
    }


def _change(change: StateChange) -> dict[str, object]:
    return {**asdict(change), "at": _iso(change.at)}


@router.get("/{user}", response_model=AccountOut, responses=ERRORS)
async def get_account(state: State, user: UserPath) -> dict[str, object]:
    """A user's risk state, why, their sending numbers and limits, and recent changes."""
    key = _key(user)
    store = state.accounts
    now = time.time()

    def read() -> tuple[AccountState, AccountStats, Limits, list[StateChange]]:
        return (
            store.get_state(key),
            store.stats(key, now),
            store.limits_for(key),
            store.history(key),
        )

    account, stats, limits, history = await run_in_threadpool(read)
    return {
        "user": key,
        "state": account.state,
        "since": _iso(account.since),
        "reason": account.reason,
        "limits": asdict(limits),
        "stats": _stats(stats),
        "history": [_change(c) for c in history],
    }


@router.post("/{user}/clear", response_model=ClearOut, responses=ERRORS)
async def clear_account(
    state: State,
    user: UserPath,
    by: Annotated[
        str,
        Query(min_length=1, max_length=320, pattern=IDENTITY_PATTERN, description="Who clears it."),
    ] = "admin",
) -> dict[str, object]:
    """An administrator's all-clear: the user is back to ok and judged afresh from now."""
    key = _key(user)
    previous = await run_in_threadpool(state.accounts.clear, key, by, time.time())
    changed = previous.state != "ok"
    if changed:
        await announce_change(state.alerts, key, previous.state, "ok", [f"cleared by {by}"])
    else:
        await state.alerts.resolve(ALERT_AUTH_FAILURES, key)
    return {"user": key, "state": "ok", "previous": previous.state, "changed": changed}


@gateway_router.get("/{user}", response_model=AdmissionOut, responses=ERRORS)
async def admission(
    state: State,
    user: UserPath,
    rcpts: Annotated[
        int, Query(ge=1, le=1000, description="Recipients the next message would have.")
    ] = 1,
) -> dict[str, object]:
    """May this sender send one more message now? Counts nothing (for RCPT-time policy)."""
    key = _key(user)
    store = state.accounts
    now = time.time()
    recipients = [f"rcpt{i}@admission.invalid" for i in range(rcpts)]

    def read() -> tuple[AccountState, SendingDecision]:
        # The same exact check scoring makes, without recording: message N+1 is refused
        # here exactly when /v1/score would refuse it.
        return store.get_state(key), store.check_and_record(key, recipients, now, dry_run=True)

    account, sending = await run_in_threadpool(read)
    decision: Literal["allow", "defer"] = "allow"
    reason = ""
    if account.state == "suspended" and state.settings.account_suspend_action == "defer":
        decision, reason = "defer", "account suspended"
    elif not sending.allowed:
        decision = "defer"
        reason = "over the limit: " + ", ".join(sending.exceeded)
    return {
        "user": key,
        "decision": decision,
        "state": account.state,
        "reason": reason,
        "messages_hour": sending.messages_hour,
        "messages_day": sending.messages_day,
        "recipients_hour": sending.recipients_hour,
        "limits": asdict(sending.limits),
        "exceeded": list(sending.exceeded),
    }
