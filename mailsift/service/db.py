"""Database engines for mailsift's durable state: SQLite by default, PostgreSQL by DSN.

Both backends share one SQLAlchemy Core code path. Only what must differ lives here:
URL normalisation, SQLite's pragmas and ``BEGIN IMMEDIATE``, PostgreSQL's write lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import PoolProxiedConnection
from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
log = logging.getLogger("mailsift.db")

SQLITE_FILENAME = "mailsift.db"
STATE_FILENAME = "state.db"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# How long a writer waits for another writer before giving up with an error: a wedged
# writer must surface as a failed request (and a failed /readyz), not as a hang.
LOCK_WAIT_SECONDS = 30.0
_NOWAIT_MAX_PAUSE_SECONDS = 0.005  # longest pause between tries of a call on the loop
CONNECT_TIMEOUT_SECONDS = 10
PRUNE_BATCH_ROWS = 500  # rows one housekeeping transaction deletes at most
CHECKPOINT_SECONDS = 1.0  # how often a worker checkpoints the state file's WAL (SQLite)
WAL_TRUNCATE_BYTES = 16 * 1024 * 1024  # a log past this is emptied at the next checkpoint
TRUNCATE_WAIT_MS = 10  # longest an emptying checkpoint waits for readers (holding writers)

_WRITE_OPTION = "mailsift_write"
# pg_advisory_xact_lock key: the bytes of "mailsift" read as a positive 64-bit integer.
_PG_WRITE_LOCK_KEY = int.from_bytes(b"mailsift", "big")
_PG_WRITE_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


@dataclass(frozen=True, slots=True)
class _SqliteFile:
    lock: threading.RLock
    durable: bool


# One writer at a time per SQLite file within a process. SQLite allows one writer per
# file anyway; without this, threads of one process contend for the file lock through
# SQLite's busy handler, which polls with sleeps of up to 100 ms, so under load a write
# of a fraction of a millisecond could wait for hundreds. Queued on a lock they take turns.
_SQLITE_FILES: weakref.WeakKeyDictionary[Engine, _SqliteFile] = weakref.WeakKeyDictionary()


class Busy(Exception):
    """A call told not to wait found the database's write lock taken (or a read of it
    momentarily busy); nothing was written. Retry it where waiting is allowed."""


def resolve_url(database_url: str | None, data_dir: Path) -> URL:
    """Turn the configured DSN into a URL for a driver we ship.

    Raises ValueError with a message that never contains the password.
    """
    if not database_url:
        return URL.create("sqlite+pysqlite", database=str(data_dir / SQLITE_FILENAME))
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        # from None: the parser's own message may quote the DSN, password included.
        raise ValueError(
            "database URL cannot be parsed; expected sqlite:///PATH or "
            "postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None
    backend = url.drivername.partition("+")[0]
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite database is not durable; use sqlite:///PATH")
        return url.set(drivername="sqlite+pysqlite")
    raise ValueError(f"unsupported database {backend!r}; use sqlite:///PATH or postgresql://...")


def redact(message: str, url: URL) -> str:
    """Remove the URL's password from a message, in every spelling a driver might use."""
    password = url.password
    if not password:
        return message
    for spelling in {password, quote(password, safe=""), quote_plus(password)}:
        message = message.replace(spelling, "***")
    return message


def describe(url: URL) -> str:
    """Where the database is, safe to log."""
    return url.render_as_string(hide_password=True)


def create_db_engine(url: URL, *, durable: bool = True) -> Engine:
    """An engine for a URL from `resolve_url`; connecting is deferred to first use.

    ``durable=False`` (SQLite only) syncs the WAL at checkpoints rather than at every
    commit: a process crash still loses nothing, a power cut may lose the last commits.
    That suits counters and audit rows, never the training log.
    """
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, durable)
    return _postgresql_engine(url)


@contextmanager
def write_transaction(
    engine: Engine, *, dry_run: bool = False, lock_key: int = _PG_WRITE_LOCK_KEY
) -> Iterator[Connection]:
    """A transaction holding the database-wide write lock from its first statement.

    Writers run one at a time and commit in the order they took the lock, so anything
    numbered under the lock becomes visible in number order. ``dry_run`` rolls back
    instead of committing (for readiness probes). On PostgreSQL ``lock_key`` picks the
    advisory lock, so unrelated writers (one user's counters) need not queue behind the
    training log; SQLite has one write lock per file whatever the key.
    """
    with _local_writer(engine), engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        transaction = conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                conn.execute(_PG_WRITE_LOCK, {"key": lock_key})
            yield conn
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()


def nowait_engine(engine: Engine) -> Engine | None:
    """For a SQLite engine, one on the same file whose calls never wait, for work done on
    the event loop itself; None on PostgreSQL (a network round trip belongs in a thread).

    Its connections have no busy timeout and it shares ``engine``'s writer lock in this
    process, so a write through :func:`nowait_write_transaction` either takes the write
    lock at once or raises :class:`Busy`. They never checkpoint the WAL either (that
    syncs the disk): the waiting engine's writers do.
    """
    sqlite_file = _SQLITE_FILES.get(engine)
    if sqlite_file is None:
        return None
    # Two: one stays checked out as the loop's own (see _held), one serves the rest.
    sibling = create_engine(engine.url, connect_args={"timeout": 0}, pool_size=2)
    sibling.dialect.use_insertmanyvalues_wo_returning = True
    on_connect = _sqlite_on_connect if sqlite_file.durable else _sqlite_on_connect_fast
    event.listen(sibling, "connect", on_connect)
    event.listen(sibling, "connect", _sqlite_on_connect_nowait)
    event.listen(sibling, "begin", _sqlite_on_begin)
    event.listen(sibling, "engine_disposed", _release_held)
    _SQLITE_FILES[sibling] = sqlite_file
    return sibling


@dataclass(slots=True)
class _Held:
    thread: int
    pooled: PoolProxiedConnection
    in_use: bool = False


# The driver connection a thread (the event loop's) keeps of each nowait engine.
_HELD: weakref.WeakKeyDictionary[Engine, _Held] = weakref.WeakKeyDictionary()


@contextmanager
def _driver_connection(engine: Engine) -> Iterator[sqlite3.Connection]:
    """A driver connection of a nowait engine for a call on the event loop.

    The first thread to ask keeps one checked out for good: the pool's checkout and
    reset cost 9 µs, half of what authenticating a gateway's token costs per message.
    Another thread, or a nested call, gets one from the pool as before. A connection a
    failed rollback left inside a transaction is rolled back before it is lent again.
    """
    held = _HELD.get(engine)
    if held is None:
        held = _HELD[engine] = _Held(threading.get_ident(), engine.raw_connection())
    if held.thread != threading.get_ident() or held.in_use:
        pooled = engine.raw_connection()
        try:
            db = pooled.driver_connection
            assert isinstance(db, sqlite3.Connection)
            yield db
        finally:
            pooled.close()
        return
    db = held.pooled.driver_connection
    assert isinstance(db, sqlite3.Connection)
    if db.in_transaction:
        db.rollback()
    held.in_use = True
    try:
        yield db
    finally:
        held.in_use = False


def _release_held(engine: Engine) -> None:
    held = _HELD.pop(engine, None)
    if held is not None:
        held.pooled.invalidate()


@contextmanager
def nowait_write_transaction(engine: Engine) -> Iterator[Connection]:
    """:func:`write_transaction` for an engine from :func:`nowait_engine`: :class:`Busy`
    instead of waiting, whether for another writer of this process or another process."""
    lock = _SQLITE_FILES[engine].lock
    if not lock.acquire(blocking=False):
        raise Busy
    try:
        with engine.connect() as conn, busy_as(Busy):
            conn.execution_options(**{_WRITE_OPTION: True})
            transaction = conn.begin()
            try:
                yield conn
            except BaseException:
                transaction.rollback()
                raise
            transaction.commit()
    finally:
        lock.release()


@contextmanager
def nowait_raw_transaction(engine: Engine) -> Iterator[sqlite3.Connection]:
    """:func:`nowait_write_transaction` on the driver's own connection, for statements
    compiled once to SQLite text: a few microseconds each instead of SQLAlchemy's tens,
    for the transaction every outbound message makes on the event loop."""
    lock = _SQLITE_FILES[engine].lock
    if not lock.acquire(blocking=False):
        raise Busy
    try:
        with _driver_connection(engine) as db, _sqlite_busy_as(Busy):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
    finally:
        lock.release()


@contextmanager
def nowait_raw_read(engine: Engine) -> Iterator[sqlite3.Connection]:
    """The driver connection of an engine from :func:`nowait_engine`, for a read on the
    event loop: in WAL mode a read never waits for writers; :class:`Busy` in the rare
    moments it would (the file being recovered)."""
    with _driver_connection(engine) as db, _sqlite_busy_as(Busy):
        yield db


async def nowait_first(nowait: Callable[[], T] | None, wait: Callable[[], T]) -> T:
    """``nowait()`` on the event loop itself, else ``wait()`` in a thread.

    ``nowait`` is a call that never waits (it raises :class:`Busy` instead), or None
    where there is none (PostgreSQL: a network round trip belongs in a thread). While
    the database is busy the loop retries after short sleeps, for as long as a writer
    would wait for the lock. Not a thread: on SQLite it would take the write lock and
    then, statement by statement, queue for the interpreter lock behind the busy loop,
    holding up every writer after it.
    """
    if nowait is None:
        return await run_in_threadpool(wait)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCK_WAIT_SECONDS
    pause = 0.0
    while True:
        try:
            return nowait()
        except Busy:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(_NOWAIT_MAX_PAUSE_SECONDS, pause + 0.0005)


def checkpoint(engine: Engine, truncate_over: int = WAL_TRUNCATE_BYTES) -> None:
    """Copy what SQLite's write-ahead log holds into the database file; keep the log small.

    A PASSIVE checkpoint waits for no reader or writer, but under constant writes it never
    catches up with them, and the log is only reused from its start once one has: it grew
    by 10 MB/s under ``mailsift bench --direction outbound``. So once the log is over
    ``truncate_over`` bytes, a TRUNCATE checkpoint follows: it holds writers off while it
    copies the few frames the PASSIVE one left and empties the log. Blocking: call it in
    a thread. Nothing on PostgreSQL.
    """
    if _SQLITE_FILES.get(engine) is None:
        return
    pooled = engine.raw_connection()
    try:
        db = pooled.driver_connection
        assert isinstance(db, sqlite3.Connection)
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        database = engine.url.database
        assert database is not None
        try:
            size = os.stat(database + "-wal").st_size
        except FileNotFoundError:
            return
        if size > truncate_over:
            # It holds writers off while it waits for readers: a long report query must
            # cost them a few milliseconds, then this round gives up and the next tries.
            db.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}")
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_SECONDS * 1000)}")
    finally:
        pooled.close()


async def keep_checkpointed(engine: Engine, every: float = CHECKPOINT_SECONDS) -> None:
    """Checkpoint ``engine``'s file every ``every`` seconds, in a thread (a lifespan task).

    Writes made on the event loop never checkpoint (that syncs the disk, and a commit
    that checkpoints holds this process's writer lock meanwhile): without this the log
    of a busy worker would only grow.
    """
    if _SQLITE_FILES.get(engine) is None:
        return
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(checkpoint, engine)
        except (sqlite3.Error, DBAPIError) as exc:  # the next round takes what this left
            log.warning("checkpoint of the state database failed: %s", type(exc).__name__)


def _delete_some(conn: Connection, table: Table, condition: ColumnElement[bool], limit: int) -> int:
    """Delete at most ``limit`` rows of ``table`` that match ``condition``; how many went."""
    key = list(table.primary_key.columns)
    chosen = select(*key).where(condition).limit(limit)
    result = conn.execute(delete(table).where(tuple_(*key).in_(chosen)))
    return max(result.rowcount, 0)


async def delete_in_turns(
    engine: Engine,
    nowait: Engine | None,
    table: Table,
    condition: ColumnElement[bool],
    *,
    lock_key: int,
    batch: int = PRUNE_BATCH_ROWS,
) -> int:
    """Delete every row of ``table`` matching ``condition``, ``batch`` rows a transaction,
    requests running in between; returns how many went.

    Housekeeping (an hour of expired counters or audit rows) deleted in one transaction
    would hold the write lock that every outbound admission needs for as long as it
    takes. On SQLite (``nowait`` from :func:`nowait_engine`) each batch runs on the event
    loop when the lock is free at once, about a millisecond; on PostgreSQL in a thread.
    """

    def waiting() -> int:
        with write_transaction(engine, lock_key=lock_key) as conn:
            return _delete_some(conn, table, condition, batch)

    def at_once() -> int:
        assert nowait is not None
        with nowait_write_transaction(nowait) as conn:
            return _delete_some(conn, table, condition, batch)

    deleted = 0
    while True:
        n = await nowait_first(None if nowait is None else at_once, waiting)
        deleted += n
        if n < batch:
            return deleted
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class HotStatement:
    """A statement run for (nearly) every message: its Core form for SQLAlchemy
    connections, and its SQLite text with the values of its literals, compiled once for
    the driver's own connection (:func:`nowait_raw_transaction`, :func:`raw_runner`)."""

    core: Callable[[str], Any]  # dialect name -> statement
    sql: str
    literals: dict[str, Any]


def hot_statement(core: Callable[[str], Any], *column_keys: str) -> HotStatement:
    """``core`` maps a dialect name to the statement; ``column_keys`` name an INSERT's
    columns (its parameters)."""
    compiled = core("sqlite").compile(
        dialect=sqlite.dialect(paramstyle="named"), column_keys=list(column_keys) or None
    )
    return HotStatement(core, str(compiled), dict(compiled.params))


Runner = Callable[[HotStatement, dict[str, Any]], Sequence[Any] | None]
"""Runs a hot statement in the transaction at hand: its first row, if it returns rows."""


def core_runner(conn: Connection) -> Runner:
    """Hot statements through SQLAlchemy, on any database."""

    def run(hot: HotStatement, params: dict[str, Any]) -> Sequence[Any] | None:
        result = conn.execute(hot.core(conn.dialect.name), params)
        return result.first() if result.returns_rows else None

    return run


def raw_runner(db: sqlite3.Connection) -> Runner:
    """Hot statements on a SQLite driver connection, as compiled once."""

    def run(hot: HotStatement, params: dict[str, Any]) -> Sequence[Any] | None:
        row: Sequence[Any] | None = db.execute(hot.sql, {**hot.literals, **params}).fetchone()
        return row

    return run


ManyRunner = Callable[[HotStatement, list[dict[str, Any]]], None]
"""Runs a hot statement once per parameter set, in the transaction at hand."""


def core_many(conn: Connection) -> ManyRunner:
    """Batches through SQLAlchemy, on any database."""

    def run(hot: HotStatement, rows: list[dict[str, Any]]) -> None:
        conn.execute(hot.core(conn.dialect.name), rows)

    return run


def raw_many(db: sqlite3.Connection) -> ManyRunner:
    """Batches on a SQLite driver connection, as compiled once."""

    def run(hot: HotStatement, rows: list[dict[str, Any]]) -> None:
        db.executemany(hot.sql, [{**hot.literals, **row} for row in rows])

    return run


@contextmanager
def _sqlite_busy_as(error: type[Exception]) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            raise error from None
        raise


def _is_busy(exc: BaseException | None) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@contextmanager
def busy_as(error: type[Exception]) -> Iterator[None]:
    """Raise ``error`` for SQLite's "database is locked" (or busy) inside the block."""
    try:
        yield
    except OperationalError as exc:
        if _is_busy(exc.orig):
            raise error from None
        raise


def _local_writer(engine: Engine) -> AbstractContextManager[object]:
    """This process's writer lock of a SQLite file; nothing on PostgreSQL, where writers
    with different lock keys may run side by side."""
    sqlite_file = _SQLITE_FILES.get(engine)
    return nullcontext() if sqlite_file is None else sqlite_file.lock


def private_dir(path: Path) -> Path:
    """Create the data dir ``path`` for mailsift's user alone (0700); an existing one open
    to group or others is tightened, and the log says so."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    """``chmod`` ``path`` to ``mode`` if it grants group or others anything."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not current & 0o077:
        return
    try:
        path.chmod(mode)
    except OSError as exc:
        log.warning("%s is open to other users (%04o); cannot tighten it: %s", path, current, exc)
        return
    log.warning("%s was open to other users (%04o): now %04o", path, current, mode)


def _private_sqlite_file(database: Path) -> None:
    """Create the database file 0600 before SQLite does, whatever the umask: SQLite
    creates its -wal and -shm files with the database file's mode. A new directory for
    it is 0700; an existing file (or -wal, -shm) open to others is tightened."""
    database.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    with suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    for suffix in ("", "-wal", "-shm", "-journal"):
        _tighten(database.with_name(database.name + suffix), PRIVATE_FILE_MODE)


def _sqlite_engine(url: URL, durable: bool = True) -> Engine:
    assert url.database is not None
    _private_sqlite_file(Path(url.database))
    # sqlite3's timeout is SQLite's busy timeout: wait for the write lock, don't fail.
    engine = create_engine(url, connect_args={"timeout": LOCK_WAIT_SECONDS})
    # A batch INSERT as multi-row statements rather than a statement per row: each SQLite
    # call releases the interpreter lock, and a thread must win it back from a busy event
    # loop, so row-by-row an audit batch kept the file's write lock for tens of ms.
    engine.dialect.use_insertmanyvalues_wo_returning = True
    event.listen(engine, "connect", _sqlite_on_connect if durable else _sqlite_on_connect_fast)
    event.listen(engine, "begin", _sqlite_on_begin)
    _SQLITE_FILES[engine] = _SqliteFile(threading.RLock(), durable)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # sqlite3 would otherwise open a deferred transaction itself; we emit BEGIN ourselves
    # so that writers can take the write lock up front (see _sqlite_on_begin).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        mode = _journal_mode_wal(cursor)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"SQLite cannot use WAL here (journal_mode={mode})")
        # FULL: a commit is on disk (WAL fsynced) before it returns.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _journal_mode_wal(cursor: sqlite3.Cursor) -> str:
    """Switch the file to WAL, retrying while another process holds it.

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection creates or
    recovers the file: processes that open a new log together would otherwise fail.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    pause = 0.005
    while True:
        try:
            return str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.1)


def _sqlite_on_connect_fast(dbapi_conn: Any, record: Any) -> None:
    _sqlite_on_connect(dbapi_conn, record)
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def _sqlite_on_connect_nowait(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred writer that read first can hit SQLITE_BUSY without waiting; IMMEDIATE
    # takes the write lock at BEGIN, honouring the busy timeout. Readers stay deferred.
    writes = bool(conn.get_execution_options().get(_WRITE_OPTION, False))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _postgresql_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = create_engine(
        url,
        connect_args=connect_args,
        # Each statement must see every commit made before it took the write lock;
        # a server default of REPEATABLE READ would freeze the snapshot too early.
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
    )
    event.listen(engine, "connect", _postgresql_on_connect)
    return engine


def _postgresql_on_connect(dbapi_conn: Any, _record: Any) -> None:
    with dbapi_conn.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{int(LOCK_WAIT_SECONDS * 1000)}ms'")
    dbapi_conn.commit()


def lock_key_for(name: str) -> int:
    """A PostgreSQL advisory-lock key for one named resource (e.g. one user's counters)."""
    import hashlib

    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def open_state_engine(
    database_url: str | None, data_dir: Path, training_log: Engine | None = None
) -> Engine:
    """The engine for operational state: limits, account risk, lists, audit trail.

    With PostgreSQL it is the same database as the training log (replicas share it),
    and ``training_log``'s engine when one is given: one connection pool per worker
    instead of two, since connections are what a PostgreSQL serving many replicas runs
    out of first (docs/scale-out.md). With SQLite a separate ``state.db`` so that
    frequent small writes neither wait for nor slow down the fully synchronous training log.
    """
    url = resolve_url(database_url, data_dir)
    if url.get_backend_name() == "sqlite":
        if not database_url:
            url = url.set(database=str(data_dir / STATE_FILENAME))
    elif training_log is not None and training_log.url == url:
        return training_log
    return create_db_engine(url, durable=False)
