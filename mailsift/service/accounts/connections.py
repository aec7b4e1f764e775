"""Where the account store's calls run: a thread that may wait, or the event loop.

The counters, the usage figures and the state machine share one of these, so that
:meth:`Connections.nowait` switches all of them at once and the no-wait engine is
opened (and disposed of) once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from mailsift.service.db import (
    Busy,
    busy_as,
    nowait_engine,
    nowait_write_transaction,
    write_transaction,
)

__all__ = ["Connections"]

T = TypeVar("T")


class Connections:
    """The state database's engine, and whether this thread may wait for it.

    :meth:`nowait` runs a call on the event loop itself without ever waiting, for the
    score path on SQLite: a thread resuming after each SQLite call has to win the
    interpreter lock back from the busy event loop, which turned a transaction of four
    statements into tens of milliseconds under load, all with the write lock held.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.nowait_engine = nowait_engine(engine)
        self._mode = threading.local()  # .nowait: this thread is inside nowait()

    def close(self) -> None:
        """Release the connections of the no-wait engine (the caller owns ``engine``)."""
        if self.nowait_engine is not None:
            self.nowait_engine.dispose()

    @property
    def on_loop(self) -> bool:
        """Whether :meth:`nowait` can work here: SQLite, a local file."""
        return self.nowait_engine is not None

    def nowait(self, call: Callable[..., T], *args: Any) -> T:
        """Run ``call`` so that it never waits, for the event loop:
        :class:`~mailsift.service.db.Busy` when it would have to (another writer holds
        the database, or this is PostgreSQL, whose round trips belong in a thread).
        Nothing is written then: call it again from a thread."""
        if self.nowait_engine is None:
            raise Busy
        self._mode.nowait = True
        try:
            return call(*args)
        finally:
            self._mode.nowait = False

    def waits(self) -> bool:
        """Whether this call may wait: it is not inside :meth:`nowait`."""
        return not getattr(self._mode, "nowait", False)

    def reading(self) -> AbstractContextManager[Connection]:
        if self.waits() or self.nowait_engine is None:
            return self.engine.connect()
        return _nowait_read(self.nowait_engine)

    def writing(self, lock_key: int) -> AbstractContextManager[Connection]:
        if self.waits() or self.nowait_engine is None:
            return write_transaction(self.engine, lock_key=lock_key)
        return nowait_write_transaction(self.nowait_engine)


@contextmanager
def _nowait_read(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, busy_as(Busy):
        yield conn
