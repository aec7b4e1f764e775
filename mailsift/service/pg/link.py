"""One worker's link to PostgreSQL beyond the SQLAlchemy engine: its async pool and its
notification listener, opened and closed with the worker."""

from __future__ import annotations

from dataclasses import dataclass

from mailsift.service.db import resolve_url
from mailsift.service.pg.notify import Listener
from mailsift.service.pg.pool import AsyncPool
from mailsift.service.settings import Settings

__all__ = ["PgLink", "pg_link"]


@dataclass(frozen=True, slots=True)
class PgLink:
    pool: AsyncPool
    listener: Listener

    async def open(self) -> None:
        """Start both without waiting for the database (it may be away at start-up)."""
        await self.pool.open()
        self.listener.start()

    async def aclose(self) -> None:
        await self.listener.aclose()
        await self.pool.close()


def pg_link(settings: Settings) -> PgLink | None:
    """The link for a PostgreSQL database; None on SQLite. Opens nothing yet."""
    url = resolve_url(settings.database_url, settings.data_dir)
    if url.get_backend_name() != "postgresql":
        return None
    listen = (
        resolve_url(settings.pg_listen_url, settings.data_dir) if settings.pg_listen_url else url
    )
    return PgLink(AsyncPool(url, size=settings.pg_pool_size), Listener(listen))
