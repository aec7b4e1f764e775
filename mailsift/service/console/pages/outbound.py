"""Outbound: each sending user's volume, limit hits, leak incidents (types and counts,
never values) and account state with its reason; clear an account."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.accounts import AccountState
from mailsift.service.accounts.flow import ALERT_AUTH_FAILURES, announce_change
from mailsift.service.accounts.store import normalise_user
from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleChange, ConsoleSession, Session
from mailsift.service.deps import State
from mailsift.service.state import ServiceState

router = APIRouter()

DAY = 86_400.0
MAX_USERS = 200


def _report(state: ServiceState, now: float) -> tuple[list[dict[str, Any]], list[AccountState]]:
    """Yesterday's senders with their states, and every account not ok."""
    flagged = state.accounts.not_ok(MAX_USERS)
    by_user = {account.user: account for account in flagged}
    users = state.audit.outbound_report(now - DAY)[:MAX_USERS]
    for user in users:
        account = by_user.get(user["user"])
        user["state"] = account.state if account else "ok"
        user["state_reason"] = account.reason if account else ""
    return users, flagged


async def _outbound_page(
    request: Request,
    session: Session,
    state: ServiceState,
    *,
    status: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> Response:
    users, flagged = await run_in_threadpool(_report, state, time.time())
    return page(
        request,
        "outbound.html",
        session,
        active="outbound",
        users=users,
        flagged=flagged,
        notice=notice,
        error=error,
        status=status,
    )


@router.get("/outbound")
async def outbound(request: Request, session: ConsoleSession, state: State) -> Response:
    return await _outbound_page(request, session, state)


@router.post("/outbound/clear")
async def clear(request: Request, session: ConsoleChange, state: State) -> Response:
    """As ``POST /v1/accounts/{user}/clear``: back to ok, judged afresh from now."""
    form = await request.form()
    try:
        key = normalise_user(str(form.get("user", "")))
    except ValueError as exc:
        return await _outbound_page(request, session, state, status=400, error=f"user: {exc}")
    by = session.principal.name
    previous = await run_in_threadpool(state.accounts.clear, key, by, time.time())
    if previous.state != "ok":
        await announce_change(state.alerts, key, previous.state, "ok", [f"cleared by {by}"])
    else:
        await state.alerts.resolve(ALERT_AUTH_FAILURES, key)
    return await _outbound_page(
        request, session, state, notice=f"{key} cleared (was {previous.state})."
    )
