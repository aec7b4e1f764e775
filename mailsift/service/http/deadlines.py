"""Deadlines on what a client sends, and a quiet, orderly end to a request cut short.

uvicorn's httptools protocol has a keep-alive timeout and nothing else: a hostile test
held 2,000 connections open for over 75 s by sending half a request head, or a full head
and then nothing of the body. Here:

* the request head must be complete within ``MAILSIFT_HTTP_HEAD_TIMEOUT_SECONDS`` of the
  connection (or, on a kept-alive connection, of the request's first byte): a total, so
  a head sent a byte at a time does not keep it open;
* a body may pause for at most ``MAILSIFT_HTTP_BODY_IDLE_SECONDS`` (an idle bound: a
  large message over a slow link is fine while it moves). Time the app spends not
  reading (reading paused by flow control) does not count against the client.

Either answers 408 with the JSON error body when an answer can still be given, then
closes. A client that goes away mid-body is one short log line, never a traceback.

When the answer is given before the request's body is all in (a 401, a 413), reading
the rest would let the client push the whole body through the parser. The answer
instead says ``connection: close``, the connection is half-closed after it, and it is
no longer read: a client sending on stalls once the socket buffers are full (a few
MiB). After :data:`LINGER_SECONDS` it is closed; until then a client can read the
answer without a reset destroying it (a close with unread data sends one). A linger
that read and dropped let a client at loopback speed push a whole 1 GiB in 0.7 s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from mailsift.service.errors import error_body
from mailsift.service.http.limits import BoundedHttpToolsProtocol
from mailsift.service.settings import get_settings

__all__ = ["LINGER_SECONDS", "TimedHttpToolsProtocol"]

log = logging.getLogger("mailsift.http")

LINGER_SECONDS = 2.0
"""How long a connection answered early stays half-open, not read, before it closes."""


class TimedHttpToolsProtocol(BoundedHttpToolsProtocol):
    """The bounded protocol with head and body deadlines (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._head_seconds = settings.http_head_timeout_seconds
        self._body_idle = settings.http_body_idle_seconds
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._in_message = False
        self._body_at = 0.0
        self._body_bytes = 0
        self._lingering = False
        self._ended = False  # this connection's end is logged already (a timeout)
        self._keep_alive = True  # what the request asked for, once its body is in
        self._unfinished: RequestResponseCycle | None = None  # its body is still coming
        self._shutting_down = False

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._head_seconds, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        quiet = self._in_head or self._lingering or self._ended
        if self._in_message and not quiet and cycle is not None:
            log.info(
                "client %s closed the connection during the request body of %s %s "
                "(%d bytes received)",
                _peer(self.client),
                cycle.scope["method"],
                cycle.scope["path"],
                self._body_bytes,
            )
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is given: what was read already is dropped unparsed
        super().data_received(data)

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._in_message = True
        self._body_bytes = 0
        if self._timer is None:  # a later request on a kept-alive connection
            self._arm(self._head_seconds, self._head_expired)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        self._body_at = self.loop.time()
        self._arm(self._body_idle, self._body_stalled)
        # Until the body is all in, an answer says "connection: close" (and the
        # connection lingers, then closes): the rest of the body is never parsed.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._keep_alive = cycle.keep_alive
            cycle.keep_alive = False
            self._unfinished = cycle

    def on_body(self, body: bytes) -> None:
        self._body_at = self.loop.time()
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._unfinished = None
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not self._shutting_down:
            cycle.keep_alive = self._keep_alive
        super().on_message_complete()

    def shutdown(self) -> None:
        self._shutting_down = True
        super().shutdown()

    def on_response_complete(self) -> None:
        if self._lingering:
            return  # closing already (the answer said connection: close)
        unfinished = self._unfinished
        if unfinished is not None and unfinished.response_complete:
            # Answered before the body was all in: do not read the rest (module doc).
            # (A pipelined request whose body is still coming has no answer yet.)
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()

    # -- closing -----------------------------------------------------------------------------

    def close_or_linger(self, transport: asyncio.Transport) -> None:
        """Close ``transport`` (the socket's own); mid-request, half-close and linger."""
        if self._lingering:
            return  # the linger's timer closes it
        if not self._in_message:
            transport.close()
            return
        self._lingering = True
        self._disarm()
        transport.pause_reading()  # the client's sending stalls once the buffers are full
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _head_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._ended = True
        if self._in_head:
            log.info(
                "closed the connection of %s: no complete request head within %g s",
                _peer(self.client),
                self._head_seconds,
            )
            self._answer_408("the request head did not arrive in time")
        else:
            self._abandon()

    def _body_stalled(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        waited = self.loop.time() - self._body_at
        if self.flow.read_paused or waited < self._body_idle:
            # The app is not reading (not the client's doing), or bytes came meanwhile.
            self._arm(max(self._body_idle - waited, 0.05), self._body_stalled)
            return
        self._ended = True
        cycle = self.cycle
        log.info(
            "closed the connection of %s: the body of %s %s sent nothing for %g s "
            "(%d bytes received)",
            _peer(self.client),
            cycle.scope["method"],
            cycle.scope["path"],
            self._body_idle,
            self._body_bytes,
        )
        started = cycle.response_started
        cycle.disconnected = True  # the app's receive() now ends; its answer is dropped
        cycle.message_event.set()
        if started:
            self._abandon()
        else:
            self._answer_408("the request body stalled")

    def _answer_408(self, detail: str) -> None:
        body = error_body("request_timeout", detail)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self._abandon()

    def _abandon(self) -> None:
        """Close without lingering: a client that stalls gets no more time."""
        self._in_message = False
        self.transport.close()

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
