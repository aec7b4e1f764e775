"""Who calls, and how much they may send: checked before the app reads a byte of the body.

A hostile test sent ``POST /v1/events`` a 1 GB chunked body without a token: FastAPI
reads a JSON body whole before it resolves any dependency, so the 401 came after 4.9 s
and the worker grew from 286 to 3,341 MB. Here, for every request:

* the bearer token is checked before the app runs (401), except on :data:`PUBLIC_PATHS`;
  on the gateway listener an admin token acts as a gateway token
  (:meth:`~mailsift.service.auth.Principal.on_gateway_listener`);
* a path with control characters is refused (400): path parameters are identities
  that end up in logs and records;
* the body is counted while it is read, against the bound of the route's kind: a raw
  message (``MAILSIFT_MAX_MESSAGE_BYTES``) or anything else, JSON
  (``MAILSIFT_MAX_JSON_BYTES``); a declared length over it is refused before reading,
  a JSON route refuses another Content-Type (415).

The route is known only once the router has matched, so the body's bound is settled at
its first read, from ``scope["route"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsift.service.auth import PRINCIPAL_KEY, caller_of
from mailsift.service.console.session import PREFIX as CONSOLE
from mailsift.service.errors import ApiError, error_response
from mailsift.service.http.body import MESSAGE_TYPES
from mailsift.service.http.listeners import on_gateway_listener
from mailsift.service.schemas import CONTROL_CHARACTERS
from mailsift.service.settings import Settings

__all__ = ["PUBLIC_PATHS", "RequestGate", "takes_message"]

log = logging.getLogger("mailsift.http")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"})
"""Paths answered without a token; every other path, known or not, needs one, except
the console's (:func:`_console`)."""
JSON_TYPES = frozenset({"application/json"})


def takes_message(route: APIRoute) -> bool:
    """Whether the route's documented body is a raw message (its bound is the message's)."""
    body = (route.openapi_extra or {}).get("requestBody", {})
    return not MESSAGE_TYPES.isdisjoint(body.get("content", {}))


def _console(path: str) -> bool:
    """The operator console checks its own session cookie (a browser sends no bearer
    token); the listener guard keeps it off the gateway listener like every admin path."""
    return path == CONSOLE or path.startswith(f"{CONSOLE}/")


class RequestGate:
    """Pure ASGI middleware: authentication first, then a body bounded while it is read."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        try:
            if CONTROL_CHARACTERS.search(path):
                raise ApiError("the path must not contain control characters")
            if path not in PUBLIC_PATHS and not _console(path):
                principal = await caller_of(Request(scope))
                if on_gateway_listener(scope, self.settings.admin_port):
                    principal = principal.on_gateway_listener()
                scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        except ApiError as exc:
            await error_response(exc.status, exc.code, exc.detail)(scope, receive, send)
            return
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            answered = True
            await send(message)

        try:
            await self.app(scope, _BoundedBody(scope, receive, self.settings), sending)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when the shutdown grace is over (a stalled
            # upload, say): one line and a 503 the client may retry, not a traceback each.
            log.warning("%s %s cut short: the service is stopping", scope.get("method"), path)
            if not answered:
                with contextlib.suppress(Exception):
                    await error_response(503, "unavailable", "the service is stopping")(
                        scope, receive, send
                    )


class _BoundedBody:
    """The request's ``receive``, refusing a body over its route's bound (413)."""

    __slots__ = ("limit", "read", "receive", "scope", "settings")

    def __init__(self, scope: Scope, receive: Receive, settings: Settings) -> None:
        self.scope = scope
        self.receive = receive
        self.settings = settings
        self.limit = -1
        self.read = 0

    async def __call__(self) -> Message:
        if self.limit < 0:
            self.limit = self._settle()
        message = await self.receive()
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            if self.read > self.limit:
                raise HTTPException(413, f"the request body exceeds {self.limit} bytes")
        return message

    def _settle(self) -> int:
        """The bound of this route's body, checked against the declared type and length."""
        route = self.scope.get("route")
        headers = dict(self.scope["headers"])
        if isinstance(route, APIRoute) and takes_message(route):
            limit = self.settings.max_message_bytes
        else:
            limit = self.settings.max_json_bytes
            ctype = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
            takes_json = isinstance(route, APIRoute) and route.body_field is not None
            if takes_json and ctype.decode("latin-1") not in JSON_TYPES:
                raise HTTPException(415, "Content-Type must be application/json")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"a body of {int(declared)} bytes exceeds {limit} bytes")
        return limit
