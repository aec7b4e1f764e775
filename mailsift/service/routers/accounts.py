"""Outbound accounts for administrators: a user's risk state and numbers, and the all-clear."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mailsift.service.accounts import AccountState, AccountStats, Limits, StateChange
from mailsift.service.accounts.flow import ALERT_AUTH_FAILURES, announce_change
from mailsift.service.accounts.store import normalise_user
from mailsift.service.deps import State
from mailsift.service.errors import BadRequest
from mailsift.service.schemas import ERRORS

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

UserPath = Annotated[str, Path(min_length=1, max_length=320, description="The sending user.")]
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
    by: Annotated[str, Query(min_length=1, max_length=320, description="Who clears it.")] = "admin",
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
