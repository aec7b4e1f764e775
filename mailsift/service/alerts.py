"""Alerts for administrators: a JSON webhook and the log, once per incident.

An incident is a ``(kind, key)`` pair, e.g. ``("account_state", "alice@example.com:suspended")``.
The first time it is raised it fires; raising it again does nothing until it is
resolved or has been quiet (not raised) for ``quiet_seconds``. The incident table lives
in the state database, so several workers and replicas that all notice the same thing
send one webhook between them, not one each.

Delivery runs in a background task with a short timeout and a few retries, in the order
the alerts were raised: an alert never fails, and never holds up for long, the request
that raised it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from mailsift.service.db import (
    Busy,
    lock_key_for,
    nowait_engine,
    nowait_first,
    nowait_write_transaction,
    write_transaction,
)
from mailsift.service.monitor import mail_alert
from mailsift.service.pg import incidents
from mailsift.service.pg.pool import AsyncPool
from mailsift.service.settings import Settings

__all__ = ["Alerter"]

log = logging.getLogger("mailsift.alerts")
T = TypeVar("T")

MAX_KIND = 64
MAX_KEY = 512

_metadata = MetaData()
_incidents = Table(
    "alert_incidents",
    _metadata,
    Column("kind", String(MAX_KIND), primary_key=True),
    Column("incident", String(MAX_KEY), primary_key=True),
    Column("opened_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("raised", Integer, nullable=False),
)


class Alerter:
    """Raises alerts; one per incident across every process sharing ``engine``."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        quiet_seconds: float = 3600.0,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.quiet_seconds = quiet_seconds
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._tasks: set[asyncio.Task[bool]] = set()
        self._last_delivery: asyncio.Task[bool] | None = None
        self._nowait = nowait_engine(engine)
        self.pool: AsyncPool | None = None
        """Set by the app on PostgreSQL: each raise and resolve is one statement on the
        event loop (:mod:`mailsift.service.pg.incidents`)."""
        self._next_prune = 0.0
        with write_transaction(engine, lock_key=lock_key_for("alerts:schema")) as conn:
            _metadata.create_all(conn)

    async def alert(
        self, kind: str, key: str, payload: dict[str, Any], *, now: float | None = None
    ) -> bool:
        """Raise an incident; True when it fired (new, or quiet long enough), False when it
        was already open or could not be recorded. Never raises."""
        now = time.time() if now is None else now
        kind, key = kind[:MAX_KIND], key[:MAX_KEY]
        try:
            if self.pool is not None:
                opened = await incidents.claim(self.pool, kind, key, now, self.quiet_seconds)
                if opened is not None and now >= self._next_prune:
                    self._next_prune = now + self.quiet_seconds / 10
                    await incidents.prune(self.pool, now - 2 * self.quiet_seconds)
            else:
                opened = await self._store(self._claim, kind, key, now)
        except Exception as exc:
            log.error("alert %s for %s not recorded: %s", kind, key, type(exc).__name__)
            return False
        if opened is None:
            return False
        body: dict[str, Any] = {
            "alert": kind,
            "key": key,
            "at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
        body.update((k, v) for k, v in payload.items() if k not in body)
        log.warning("alert %s for %s", kind, key)
        if self.settings.alert_smtp_host:
            mail = asyncio.create_task(mail_alert(self.settings, body))
            self._tasks.add(mail)
            mail.add_done_callback(self._tasks.discard)
        if self.settings.alert_webhook_url:
            try:
                content = json.dumps(body, default=str).encode()
            except (TypeError, ValueError) as exc:  # a caller's bug must not fail its request
                log.error("alert %s for %s has no JSON form: %s", kind, key, type(exc).__name__)
                return True
            task = asyncio.create_task(
                self._deliver(kind, key, opened, content, after=self._last_delivery)
            )
            self._last_delivery = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def resolve(self, kind: str, key: str) -> bool:
        """Close an incident so that the next raise fires again; True if one was open."""
        kind, key = kind[:MAX_KIND], key[:MAX_KEY]
        try:
            if self.pool is not None:
                return await incidents.resolve(self.pool, kind, key, None)
            return await self._store(self._resolve, kind, key, None)
        except Exception as exc:
            log.error("alert %s for %s not resolved: %s", kind, key, type(exc).__name__)
            return False

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for deliveries in flight (at shutdown, and in tests)."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Give deliveries in flight a moment to finish, then cancel the rest."""
        await self.drain(timeout)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- incident table -------------------------------------------------------------

    async def _store(self, call: Callable[..., T], *args: Any) -> T:
        """``call`` on the event loop when the table is in a local SQLite file and its
        write lock is free at once, else in a thread (see ``db.nowait_first``): a storm
        of state changes (a spam wave through many accounts) then costs each worker's
        outbound admissions no waits behind threads queueing for the interpreter lock."""
        nowait = None
        if self._nowait is not None:
            nowait = functools.partial(call, *args, nowait=True)
        return await nowait_first(nowait, functools.partial(call, *args))

    def _lock(self, kind: str, key: str) -> int:
        return lock_key_for(f"alert:{kind}:{key}")

    def _writing(self, kind: str, key: str, nowait: bool) -> AbstractContextManager[Connection]:
        if nowait:
            if self._nowait is None:
                raise Busy
            return nowait_write_transaction(self._nowait)
        return write_transaction(self.engine, lock_key=self._lock(kind, key))

    def _claim(self, kind: str, key: str, now: float, *, nowait: bool = False) -> float | None:
        """Record one raise; the incident's opening time when it fires, else None."""
        c = _incidents.c
        where = (c.kind == kind) & (c.incident == key)
        with self._writing(kind, key, nowait) as conn:
            last_seen = conn.execute(select(c.last_seen).where(where)).scalar_one_or_none()
            if last_seen is not None and now - last_seen < self.quiet_seconds:
                conn.execute(
                    _incidents.update()
                    .where(where)
                    .values(last_seen=max(now, last_seen), raised=c.raised + 1)
                )
                return None
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            values = {"opened_at": now, "last_seen": now, "raised": 1}
            ins = insert(_incidents).values(kind=kind, incident=key, **values)
            conn.execute(
                ins.on_conflict_do_update(index_elements=[c.kind, c.incident], set_=values)
            )
            # Incidents quiet for long are as good as gone; keep the table small.
            conn.execute(delete(_incidents).where(c.last_seen < now - 2 * self.quiet_seconds))
        return now

    def _resolve(
        self, kind: str, key: str, opened_at: float | None, *, nowait: bool = False
    ) -> bool:
        c = _incidents.c
        where = (c.kind == kind) & (c.incident == key)
        if opened_at is not None:
            where = where & (c.opened_at == opened_at)
        with self._writing(kind, key, nowait) as conn:
            return conn.execute(delete(_incidents).where(where)).rowcount > 0

    def open_incidents(self, now: float) -> list[tuple[str, str, float, float]]:
        """Incidents raised and not resolved, nor quiet past ``quiet_seconds``: (kind,
        incident, opened_at, last_seen), newest first (blocking; the console reads it)."""
        c = _incidents.c
        query = (
            select(c.kind, c.incident, c.opened_at, c.last_seen)
            .where(c.last_seen >= now - self.quiet_seconds)
            .order_by(c.last_seen.desc())
            .limit(100)
        )
        with self.engine.connect() as conn:
            return [(str(k), str(i), float(o), float(s)) for k, i, o, s in conn.execute(query)]

    # -- delivery -------------------------------------------------------------------

    async def _deliver(
        self,
        kind: str,
        key: str,
        opened_at: float,
        content: bytes,
        *,
        after: asyncio.Task[bool] | None = None,
    ) -> bool:
        """POST one alert, once ``after`` (the alert raised before it) is done: the
        webhook hears of a user going ok -> watch before watch -> suspended. Waiting is
        bounded by one request's timeout, so a webhook that is down does not turn a wave
        of alerts into a queue of retries minutes long."""
        url = self.settings.alert_webhook_url
        assert url is not None
        if after is not None and not after.done():
            await asyncio.wait([after], timeout=self.timeout)
        problem = ""
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                try:
                    response = await client.post(
                        url, content=content, headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                    continue
                if response.is_success:
                    log.info("alert %s for %s delivered", kind, key)
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the webhook refuses this alert; asking again will not help
        # The URL may carry a token: it is never logged.
        log.error("alert %s for %s not delivered to the webhook: %s", kind, key, problem)
        try:
            # Undelivered: let the next raise of this incident try again.
            if self.pool is not None:
                await incidents.resolve(self.pool, kind, key, opened_at)
            else:
                await self._store(self._resolve, kind, key, opened_at)
        except Exception as exc:
            log.error("alert %s for %s: %s", kind, key, type(exc).__name__)
        return False
