"""Signing in with an admin token, and out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from mailsift.service.console.render import page
from mailsift.service.console.session import (
    PREFIX,
    ConsoleChange,
    admin_of,
    end_session,
    start_session,
)
from mailsift.service.deps import State

router = APIRouter()


def _secure(state: State) -> bool:
    return state.settings.tls_certfile is not None


@router.get("/login")
async def login_form(request: Request) -> Response:
    return page(request, "login.html", None)


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    form = await request.form()
    token = form.get("token")
    principal = await admin_of(token, state) if isinstance(token, str) else None
    if principal is None:
        return page(
            request,
            "login.html",
            None,
            status=401,
            error="That is not an admin token of this service (or it was revoked).",
        )
    assert isinstance(token, str)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    start_session(response, token.strip(), secure=_secure(state))
    return response


@router.post("/logout")
async def logout(session: ConsoleChange, state: State) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    end_session(response, secure=_secure(state))
    return response
