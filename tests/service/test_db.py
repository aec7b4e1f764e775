"""The event loop's own SQLite connection (``nowait`` reads and transactions)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailsift.service.db import (
    nowait_engine,
    nowait_raw_read,
    nowait_raw_transaction,
    open_state_engine,
)


@pytest.fixture
def loop_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_state_engine(None, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    sibling = nowait_engine(engine)
    assert sibling is not None
    yield sibling
    sibling.dispose()
    engine.dispose()


def _values(engine: Engine) -> list[int]:
    with nowait_raw_read(engine) as db:
        return [v for (v,) in db.execute("SELECT v FROM t ORDER BY v")]


def test_the_loop_keeps_one_connection_and_lends_it_again(loop_engine: Engine) -> None:
    with nowait_raw_read(loop_engine) as first:
        pass
    with nowait_raw_transaction(loop_engine) as second:
        second.execute("INSERT INTO t VALUES (1)")
    assert first is second
    assert _values(loop_engine) == [1]


def test_a_read_inside_a_transaction_leaves_the_transaction_alone(loop_engine: Engine) -> None:
    with nowait_raw_transaction(loop_engine) as db:
        db.execute("INSERT INTO t VALUES (1)")
        with nowait_raw_read(loop_engine) as other:
            assert other is not db
        db.execute("INSERT INTO t VALUES (2)")
    assert _values(loop_engine) == [1, 2]


def test_a_transaction_left_open_is_rolled_back_before_the_connection_is_lent(
    loop_engine: Engine,
) -> None:
    with nowait_raw_read(loop_engine) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (9)")  # as if a failed ROLLBACK had left it
    assert _values(loop_engine) == []
    with nowait_raw_transaction(loop_engine) as db:  # the write lock is free again
        db.execute("INSERT INTO t VALUES (3)")
    assert _values(loop_engine) == [3]


def test_another_thread_gets_its_own_connection(loop_engine: Engine) -> None:
    with nowait_raw_read(loop_engine) as mine:
        pass
    theirs: list[sqlite3.Connection] = []

    def read() -> None:
        with nowait_raw_read(loop_engine) as db:
            theirs.append(db)
            db.execute("SELECT 1").fetchone()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine


def test_disposing_the_engine_closes_the_kept_connection(loop_engine: Engine) -> None:
    with nowait_raw_read(loop_engine) as db:
        pass
    loop_engine.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        db.execute("SELECT 1")
