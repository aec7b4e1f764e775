"""Who is signed in to the console, and whether a change really came from its page.

The session cookie holds the admin token itself: HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it), Secure when the service speaks TLS,
scoped to ``/console`` and gone when the browser closes. Each request checks it exactly
as a bearer token is checked, so revoking the token ends its console sessions at once
in every worker, and no session table or background expiry is needed.

CSRF: every change is a POST carrying ``csrf``, an HMAC of a fixed purpose keyed with
the session's token. A page of this console can embed it; another site cannot compute
it, and it needs no state on the server (any worker can check it).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.auth import Principal
from mailsift.service.state import ServiceState

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "PREFIX",
    "ConsoleChange",
    "ConsoleSession",
    "CsrfRefused",
    "Session",
    "SignInRequired",
    "admin_of",
    "csrf_token",
    "end_session",
    "start_session",
]

PREFIX = "/console"
COOKIE = "mailsift_console"
CSRF_FIELD = "csrf"
_CSRF_PURPOSE = b"mailsift console csrf v1"
MAX_TOKEN_CHARS = 4096
"""Longer than any token this service issues or accepts as its seeded one."""


class SignInRequired(Exception):
    """No valid admin session: the console answers with its sign-in page."""


class CsrfRefused(Exception):
    """A change without this session's CSRF token (403)."""


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf: str


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), _CSRF_PURPOSE, hashlib.sha256).hexdigest()


async def admin_of(token: str, state: ServiceState) -> Principal | None:
    """The admin ``token`` stands for (seeded or stored, not revoked); None otherwise."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    seeded = state.settings.admin_token
    if seeded is not None and hmac.compare_digest(
        token.encode(), seeded.get_secret_value().encode()
    ):
        return Principal("admin-token", "admin")
    principal = await run_in_threadpool(state.tokens.verify, token)
    return principal if principal is not None and principal.role == "admin" else None


def start_session(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, token, path=PREFIX, httponly=True, secure=secure, samesite="strict")


def end_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, secure=secure, samesite="strict")


async def _session(request: Request) -> Session:
    token = request.cookies.get(COOKIE, "")
    principal = await admin_of(token, request.app.state.mailsift) if token else None
    if principal is None:
        raise SignInRequired
    return Session(principal, csrf_token(token))


async def _change(request: Request) -> Session:
    """A signed-in session whose form carries its CSRF token (a urlencoded POST)."""
    session = await _session(request)
    form = await request.form()
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not hmac.compare_digest(given, session.csrf):
        raise CsrfRefused
    return session


ConsoleSession = Annotated[Session, Depends(_session)]
ConsoleChange = Annotated[Session, Depends(_change)]
