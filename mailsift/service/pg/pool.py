"""A per-worker pool of psycopg async connections, for calls made on the event loop.

The synchronous SQLAlchemy engine stays for everything rare (administration, flushes,
start-up); the calls made for (nearly) every message use this pool instead, so they
cost one round trip on the loop and no thread hop. Connections are in autocommit mode:
each hot call is one statement, hence one short transaction.

A database that goes away makes a call fail fast (the pool's wait is bounded by
``timeout``); the pool replaces broken connections by itself once it answers again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import URL

from mailsift.service.db import CONNECT_TIMEOUT_SECONDS, LOCK_WAIT_SECONDS

__all__ = ["POOL_TIMEOUT_SECONDS", "AsyncPool", "Unreachable", "conninfo"]

log = logging.getLogger("mailsift.pg")

POOL_TIMEOUT_SECONDS = 2.0
"""Longest a call waits for a connection: past it the database counts as unreachable."""
PROBE_TIMEOUT_SECONDS = 0.25
"""How long a call waits for a connection while the database is known to be away: the
message should not wait for what is unlikely to come (the pool keeps reconnecting)."""
RECONNECT_SECONDS = 3600.0
"""How long the pool keeps trying to replace a lost connection before it logs and
starts over (it never stops trying while calls ask for connections)."""


class Unreachable(Exception):
    """The database could not be reached (or the connection broke mid-call)."""


def conninfo(url: URL) -> str:
    """A libpq connection string for a ``postgresql+psycopg`` URL from
    :func:`~mailsift.service.db.resolve_url`."""
    plain = url.set(drivername="postgresql")
    if "connect_timeout" not in plain.query:
        plain = plain.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_SECONDS)})
    return plain.render_as_string(hide_password=False)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # As the synchronous engine's connections: a wedged lock holder fails the call.
    await conn.execute(f"SET lock_timeout = '{int(LOCK_WAIT_SECONDS * 1000)}ms'")


class AsyncPool:
    """``size`` autocommit connections of one worker; open it on the worker's loop."""

    def __init__(self, url: URL, *, size: int, timeout: float = POOL_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self.failures = 0
        """Calls that found the database unreachable."""
        self._away = False
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo(url),
            min_size=1,
            max_size=max(1, size),
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            timeout=timeout,
            reconnect_timeout=RECONNECT_SECONDS,
            name="mailsift",
        )

    async def open(self) -> None:
        """Start the pool without waiting for the database: a replica must start (and
        serve from what it knows) while the database is away."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for one call; :class:`Unreachable` when none can be had or it
        breaks (the pool discards a broken connection on its return)."""
        timeout = PROBE_TIMEOUT_SECONDS if self._away else self.timeout
        try:
            async with self._pool.connection(timeout=timeout) as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self.failures += 1
            self._away = True
            raise Unreachable(type(exc).__name__) from None
        self._away = False

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """One statement, its first row."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchone()

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> int:
        """One statement; the rows it changed."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        """Append ``rows`` to ``table`` with one COPY (one statement, one transaction):
        the cheapest way in for a batch, on the database and here alike."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        async with (
            self.connection() as conn,
            conn.cursor() as cursor,
            cursor.copy(statement) as copy,
        ):
            for row in rows:
                await copy.write_row(row)

    def stats(self) -> dict[str, int]:
        """The pool's own counters (connections, waits, errors), for metrics."""
        return dict(self._pool.get_stats())
