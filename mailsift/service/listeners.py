"""Where mailsift listens: a gateway listener, an admin listener, TLS 1.2+ on both.

Gateways reach scoring, events, feedback, leak scans and users' own lists; everything
else (training, the model, other users, audit, reports, diagnostics, tokens, metrics)
answers only on the admin listener, which binds loopback unless told otherwise. Both
listeners are sockets of the same worker processes, so they share one model.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

from mailsift.service.errors import error_response
from mailsift.service.http_protocol import HttpProtocol

__all__ = ["GATEWAY_PATHS", "ListenerGuard", "is_loopback", "serve", "tls_context"]

# Prefixes a gateway listener serves; all else is admin-only.
GATEWAY_PATHS = (
    "/v1/score",
    "/v1/events",
    "/v1/feedback",
    "/v1/dlp/scan",
    "/v1/admission/",
    "/v1/lists/",
    "/healthz",
    "/readyz",
)
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


class ListenerGuard:
    """Admin endpoints are not reachable through the gateway listener (404, as if absent)."""

    def __init__(self, app: ASGIApp, admin_port: int | None) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.admin_port is not None:
            server = scope.get("server")
            on_admin = server is not None and server[1] == self.admin_port
            if not on_admin and not scope["path"].startswith(GATEWAY_PATHS):
                response = error_response(404, "not_found", "Not Found")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _bind(host: str, port: int, *, per_worker: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = (_PerWorkerSocket if per_worker else socket.socket)(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if per_worker:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _PerWorkerSocket(socket.socket):
    """A listening address that each worker process binds for itself, with SO_REUSEPORT.

    Workers sharing one socket race for its connections, and one woken worker accepts a
    whole burst: measured under ``mailsift bench``, 14 of 16 keep-alive connections sat
    on one of two workers for the whole run, doubling its latency while the other idled.
    With a socket each, the kernel spreads new connections over the workers' sockets.
    Pickled into a worker (how the supervisor hands it over), this socket becomes a new
    one bound to the same address; the supervisor's own never listens, it only holds
    the port. A worker that exits takes its socket, and its share, with it.
    """

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        host, port = self.getsockname()[:2]
        return (_bind_in_worker, (host, port))


def _bind_in_worker(host: str, port: int) -> socket.socket:
    return _bind(host, port, per_worker=True)


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
    """Bind both listeners, then run the app in ``workers`` processes over them."""
    per_worker = workers > 1
    addresses = [(host, port)] + ([(admin_host, admin_port)] if admin_port is not None else [])
    if per_worker:
        for address in addresses:
            # SO_REUSEPORT would let a second mailsift on this port quietly share its
            # connections: a plain bind first fails, as it should, if anyone listens.
            _bind(*address).close()
    sockets = [_bind(*address, per_worker=per_worker) for address in addresses]
    config = uvicorn.Config(
        "mailsift.service.app:create_app",
        factory=True,
        workers=workers,
        log_config=log_config,
        access_log=access_log,
        http=HttpProtocol,
        proxy_headers=False,
        server_header=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_context_factory=tls_context if certfile else None,
    )
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        uvicorn.Server(config).run(sockets=sockets)
