"""Where mailsift listens: a gateway listener, an admin listener, TLS 1.2+ on both.

Gateways reach scoring, events, feedback, leak scans, users' own lists and temporary
addresses, and whether a recipient is a live temporary address; everything
else (training, the model, other users, audit, reports, diagnostics, tokens, metrics)
answers only on the admin listener, which binds loopback unless told otherwise. Both
listeners are sockets of the same worker processes, so they share one model.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from mailsift.service.errors import error_response
from mailsift.service.http.balance import shared_listener
from mailsift.service.http.protocol import HttpProtocol
from mailsift.service.http.supervisor import Supervisor, WorkersFailed

__all__ = [
    "GATEWAY_PATHS",
    "SHUTDOWN_GRACE_SECONDS",
    "ListenError",
    "ListenerGuard",
    "is_loopback",
    "on_gateway_listener",
    "serve",
    "tls_context",
]

log = logging.getLogger("mailsift.listeners")

# Prefixes a gateway listener serves; all else is admin-only.
GATEWAY_PATHS = (
    "/v1/score",
    "/v1/events",
    "/v1/feedback",
    "/v1/dlp/scan",
    "/v1/admission/",
    "/v1/lists/",
    "/v1/aliases",
    "/v1/recipients/",
    "/healthz",
    "/readyz",
)
SHUTDOWN_GRACE_SECONDS = 10
"""After SIGTERM, requests under way get this long to finish; then the worker stops,
whatever connections its clients keep open (a gateway's idle keep-alive pool would
otherwise hold it until systemd's stop timeout kills it)."""
# Forward secrecy and AEAD only (TLS 1.3 suites are always on and all modern).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS:!SHA1"


def tls_context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context with SSLv3, TLS 1.0 and 1.1 refused and a modern cipher list."""
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def on_gateway_listener(scope: Scope, admin_port: int | None) -> bool:
    """Whether the request came in on the gateway listener of a split pair (with one
    listener for everything, there is no gateway-only side)."""
    if admin_port is None:
        return False
    server = scope.get("server")
    return server is None or server[1] != admin_port


class ListenerGuard:
    """Admin endpoints are not reachable through the gateway listener (404, as if absent)."""

    def __init__(self, app: ASGIApp, admin_port: int | None) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and on_gateway_listener(scope, self.admin_port)
            and not scope["path"].startswith(GATEWAY_PATHS)
        ):
            response = error_response(404, "not_found", "Not Found")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ListenError(Exception):
    """A listener's address could not be bound: taken by another process, not an
    address of this machine, or a port this user may not bind."""

    def __init__(self, listener: str, host: str, port: int, cause: OSError) -> None:
        self.listener = listener
        """``gateway``, ``admin``, or ``gateway and admin`` (one listener for both)."""
        self.address = _address(host, port)
        self.errno = cause.errno
        self.reason = cause.strerror or str(cause)
        super().__init__(f"the {listener} listener cannot bind {self.address}: {self.reason}")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(
    *,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int | None,
    workers: int,
    certfile: str | None,
    keyfile: str | None,
    log_config: dict[str, Any],
    access_log: bool,
) -> None:
    """Bind both listeners, log where they listen, then run the app in ``workers``
    processes over them; :class:`ListenError` if one cannot be bound (nothing started),
    :class:`WorkersFailed` if the workers kept dying.

    Several workers share each listener and accept from it by turns, the least-loaded
    first (:mod:`mailsift.service.http.balance`).
    """
    if admin_port is None:
        listeners = [("gateway and admin", host, port)]
    else:
        listeners = [("gateway", host, port), ("admin", admin_host, admin_port)]
    config = uvicorn.Config(
        "mailsift.service.app:create_app",
        factory=True,
        workers=workers,
        loop="mailsift.service.http.balance:BalancingLoop",
        log_config=log_config,
        access_log=access_log,
        http=HttpProtocol,
        ws="none",  # no WebSocket endpoints: no upgrade path for a client to try
        proxy_headers=False,
        server_header=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_context_factory=tls_context if certfile else None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    with contextlib.ExitStack() as bound:

        def listen(listener: str, host: str, port: int) -> socket.socket:
            try:
                if workers == 1:
                    return bound.enter_context(_bind(host, port))
                return bound.enter_context(shared_listener(host, port))
            except OSError as exc:
                raise ListenError(listener, host, port, exc) from exc

        sockets = [listen(*listener) for listener in listeners]
        scheme, tls = ("https", "TLS on") if certfile else ("http", "TLS off")
        for (listener, _, _), sock in zip(listeners, sockets, strict=True):
            bound_host, bound_port = sock.getsockname()[:2]
            log.info(
                "%s listener on %s://%s (%s)",
                listener,
                scheme,
                _address(bound_host, bound_port),
                tls,
            )
        if workers == 1:
            uvicorn.Server(config).run(sockets=sockets)
        else:
            supervisor = Supervisor(config, sockets=sockets)
            supervisor.run()
            if supervisor.failure is not None:
                raise WorkersFailed(supervisor.failure)
