"""LISTEN/NOTIFY: what one replica commits reaches the others at once, not at their
next poll.

Writers call :func:`notify` inside their transaction (PostgreSQL delivers it at commit,
and not at all on a rollback). Each worker keeps one :class:`Listener` connection that
LISTENs on every channel and hands each payload to the handlers registered for it.

A notification can be missed: the listening connection may break between a commit and
its delivery. So the listener says when it (re)connects (:meth:`Listener.on_connect`),
and whoever caches must then drop what it cached (tokens) or catch up (the training
log's tail, which is also polled as before: notification only makes it sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from mailsift.service.pg.pool import conninfo

__all__ = ["CHANNEL_LOG", "CHANNEL_TOKENS", "Listener", "notify"]

log = logging.getLogger("mailsift.pg")

CHANNEL_LOG = "mailsift_log"
"""Payload: the position of the newest entry appended (the log's head)."""
CHANNEL_TOKENS = "mailsift_tokens"
"""Payload: the id of a token that was revoked."""
CHANNELS = (CHANNEL_LOG, CHANNEL_TOKENS)
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0)
"""Pauses between reconnection attempts (the last repeats)."""
KEEPALIVE_SECONDS = 5.0
"""How long the listener waits for a notification before it checks its connection."""

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def notify(conn: Connection, channel: str, payload: str) -> None:
    """Notify ``channel`` when ``conn``'s transaction commits; nothing on SQLite (one
    host: its workers poll a local file)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": channel, "payload": payload})


Handler = Callable[[str], None]


class Listener:
    """One worker's LISTEN connection; handlers run on the event loop, and must not block."""

    def __init__(self, url: URL) -> None:
        self._conninfo = conninfo(url)
        self._handlers: dict[str, list[Handler]] = {c: [] for c in CHANNELS}
        self._on_connect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        """Whether notifications are being received now: while False, anything cached
        on their strength may be stale."""
        self.connects = 0
        """How many times the connection was (re)established."""

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel].append(handler)

    def on_connect(self, handler: Callable[[], None]) -> None:
        """Call ``handler`` after every (re)connection: notifications may have been
        missed while none was up."""
        self._on_connect.append(handler)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected = False

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                await self._pause(failures, exc)
                failures += 1
                continue
            try:
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected, failures = True, 0
                    self.connects += 1
                    self._connected()
                    while True:
                        async for note in conn.notifies(timeout=KEEPALIVE_SECONDS):
                            self._dispatch(note.channel, note.payload)
                        # A network that drops silently would leave us waiting for good;
                        # a query now and then finds out (what arrives meanwhile waits).
                        await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                await self._pause(failures, exc)
                failures += 1
            finally:
                self.connected = False

    async def _pause(self, failures: int, exc: BaseException) -> None:
        self.connected = False
        if failures == 0:
            log.warning("notification listener disconnected: %s", type(exc).__name__)
        await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])

    def _connected(self) -> None:
        for handler in self._on_connect:
            _safely(handler)

    def _dispatch(self, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            _safely(handler, payload)


def _safely(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception as exc:  # one bad handler must not stop the listener
        log.error("notification handler failed: %s", type(exc).__name__)
