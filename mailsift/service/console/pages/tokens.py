"""Tokens: list, create (the secret shown once, on the answer to the creating form),
revoke."""

from __future__ import annotations

from typing import get_args

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.auth import Role
from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleChange, ConsoleSession, Session
from mailsift.service.deps import State
from mailsift.service.state import ServiceState

router = APIRouter()

ROLES: tuple[str, ...] = get_args(Role)


async def _tokens_page(
    request: Request,
    session: Session,
    state: ServiceState,
    *,
    status: int = 200,
    notice: str | None = None,
    error: str | None = None,
    secret: str | None = None,
) -> Response:
    tokens = await run_in_threadpool(state.tokens.list)
    return page(
        request,
        "tokens.html",
        session,
        active="tokens",
        tokens=sorted(tokens, key=lambda t: (t.revoked_at is not None, -t.created_at)),
        roles=ROLES,
        secret=secret,
        notice=notice,
        error=error,
        status=status,
    )


@router.get("/tokens")
async def tokens(request: Request, session: ConsoleSession, state: State) -> Response:
    return await _tokens_page(request, session, state)


@router.post("/tokens")
async def create(request: Request, session: ConsoleChange, state: State) -> Response:
    form = await request.form()
    role, name = str(form.get("role", "")), str(form.get("name", "")).strip()
    addresses = str(form.get("addresses", "")).replace(",", " ").split()
    if not name:
        return await _tokens_page(request, session, state, status=400, error="Give it a name.")
    try:
        info, secret = await run_in_threadpool(state.tokens.create, role, name, addresses)  # type: ignore[arg-type]
    except ValueError as exc:
        return await _tokens_page(request, session, state, status=400, error=str(exc))
    return await _tokens_page(
        request,
        session,
        state,
        notice=f"Token {info.id} ({info.role}) created. Copy its secret now: it is shown once.",
        secret=secret,
    )


@router.post("/tokens/{token_id}/revoke")
async def revoke(request: Request, session: ConsoleChange, state: State, token_id: str) -> Response:
    done = await run_in_threadpool(state.tokens.revoke, token_id)
    if not done:
        return await _tokens_page(
            request, session, state, status=404, error=f"No live token {token_id}."
        )
    return await _tokens_page(request, session, state, notice=f"Token {token_id} revoked.")
