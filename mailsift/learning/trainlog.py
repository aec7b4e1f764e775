"""The training log: the one append-only, durable sequence of labelled examples.

Every model in every process and replica is a replay of this log in position order, so
positions must be gap-free and must become visible in order: a reader that has applied
up to N can never later find an entry below N. Appends therefore run one at a time under
a database-wide write lock (see `db.write_transaction`), and the label check, the entry
and the current-label update commit as one transaction.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError, StatementError

from mailsift.service.db import (
    create_db_engine,
    describe,
    redact,
    resolve_url,
    write_transaction,
)

Label = Literal["ham", "spam"]
Result = Literal["learned", "unchanged", "relabelled", "forgotten"]

SCHEMA_VERSION = "1"
MAX_SOURCE = 32
MAX_ACTOR = 320
MAX_READ = 10_000
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")
_LABELS: frozenset[str] = frozenset(get_args(Label))


class TrainingLogError(Exception):
    """The log cannot be opened, read or written; the message never holds a password."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append or forget did, and the position of the entry that holds the label."""

    result: Result
    position: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One example; replaying ``undo_label`` then ``label`` per entry rebuilds any model."""

    position: int
    fingerprint: str
    label: Label | None
    undo_label: Label | None
    raw: bytes
    undo_raw: bytes
    """The bytes that were learned with ``undo_label`` (the earlier entry's ``raw``):
    unlearning must see exactly the message that was learned, not today's copy of it,
    whose transport headers differ."""
    source: str
    actor: str
    created_at: float


_metadata = MetaData()
_position = BigInteger().with_variant(Integer, "sqlite")  # SQLite: alias the rowid

_entries = Table(
    "trainlog_entries",
    _metadata,
    Column("position", _position, primary_key=True, autoincrement=False),
    Column("fingerprint", String(128), nullable=False),
    Column("label", String(4)),
    Column("undo_label", String(4)),
    Column("undo_position", _position),  # the entry whose example undo_label takes back
    Column("raw", LargeBinary, nullable=False),
    Column("source", String(MAX_SOURCE), nullable=False),
    Column("actor", String(MAX_ACTOR), nullable=False),
    Column("created_at", Double, nullable=False),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_entries_label"),
    CheckConstraint("undo_label IN ('ham', 'spam')", name="trainlog_entries_undo_label"),
    CheckConstraint("label IS NOT NULL OR undo_label IS NOT NULL", name="trainlog_entries_op"),
)

# The label each fingerprint holds now, and the entry that gave it: lets an append
# decide learned / unchanged / relabelled without scanning the log.
_labels = Table(
    "trainlog_labels",
    _metadata,
    Column("fingerprint", String(128), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("position", _position, nullable=False),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_labels_label"),
)

_meta = Table(
    "trainlog_meta",
    _metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


class TrainingLog:
    """Durable, ordered log of labelled examples; safe across threads and processes."""

    def __init__(self, engine: Engine, url: URL) -> None:
        """Use `open_training_log`; this assumes the schema exists."""
        self._engine = engine
        self._url = url
        self._write_lock = threading.Lock()  # queue this process's writers in Python
        self._closed = False

    def append(
        self, fingerprint: str, label: Label, raw: bytes, *, source: str, actor: str
    ) -> AppendResult:
        """Record ``label`` for ``fingerprint``; returns once the entry is committed."""
        _check_label(label)
        _check_entry(fingerprint, source, actor)
        packed = zlib.compress(raw)
        with self._writing("append") as conn:
            current = _current(conn, fingerprint)
            if current is not None and current[0] == label:
                return AppendResult("unchanged", current[1])
            undo = None if current is None else current[0]
            undo_position = None if current is None else current[1]
            position = _insert_entry(
                conn, fingerprint, label, undo, undo_position, packed, source, actor
            )
            if current is None:
                conn.execute(
                    insert(_labels).values(fingerprint=fingerprint, label=label, position=position)
                )
                return AppendResult("learned", position)
            conn.execute(
                update(_labels)
                .where(_labels.c.fingerprint == fingerprint)
                .values(label=label, position=position)
            )
            return AppendResult("relabelled", position)

    def forget(self, fingerprint: str, *, source: str, actor: str) -> AppendResult:
        """Undo a fingerprint's example entirely (a wrong report); unknown -> unchanged, 0."""
        _check_entry(fingerprint, source, actor)
        with self._writing("forget") as conn:
            current = _current(conn, fingerprint)
            if current is None:
                return AppendResult("unchanged", 0)
            position = _insert_entry(
                conn, fingerprint, None, current[0], current[1], b"", source, actor
            )
            conn.execute(delete(_labels).where(_labels.c.fingerprint == fingerprint))
            return AppendResult("forgotten", position)

    def read(self, after: int, limit: int = 500) -> list[LogEntry]:
        """Entries with position > ``after``, ascending, at most ``limit`` of them."""
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}")
        undone = _entries.alias("undone")
        query = (
            select(_entries, undone.c.raw.label("undo_raw"))
            .outerjoin(undone, undone.c.position == _entries.c.undo_position)
            .where(_entries.c.position > after)
            .order_by(_entries.c.position)
            .limit(limit)
        )
        with self._reading("read") as conn:
            rows = conn.execute(query).all()
        return [
            LogEntry(
                position=row.position,
                fingerprint=row.fingerprint,
                label=_as_label(row.label),
                undo_label=_as_label(row.undo_label),
                raw=zlib.decompress(row.raw) if row.raw else b"",
                undo_raw=zlib.decompress(row.undo_raw) if row.undo_raw else b"",
                source=row.source,
                actor=row.actor,
                created_at=row.created_at,
            )
            for row in rows
        ]

    def head(self) -> int:
        """Highest committed position; 0 when the log is empty."""
        with self._reading("head") as conn:
            return _head(conn)

    def label_of(self, fingerprint: str) -> Label | None:
        """The label the fingerprint holds now, or None if never learned or forgotten."""
        with self._reading("label lookup") as conn:
            current = _current(conn, fingerprint)
        return None if current is None else current[0]

    def counts(self) -> dict[str, int]:
        """How many fingerprints hold each label now."""
        query = select(_labels.c.label, func.count()).group_by(_labels.c.label)
        with self._reading("count") as conn:
            found = {str(label): int(n) for label, n in conn.execute(query).all()}
        return {label: found.get(label, 0) for label in sorted(_LABELS)}

    def label_counts_since(self, since: float, *, source: str) -> dict[str, int]:
        """Entries from ``source`` created at or after ``since`` that set each label.

        Positions and creation times grow together (appends run one at a time), so the
        window's first position is found by bisection on the primary key and only the
        window's rows are read, never the whole log with its message bytes.
        """
        with self._reading("count") as conn:
            lo, hi = 1, _head(conn) + 1  # the first position in the window lies in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                at = conn.execute(
                    select(_entries.c.created_at).where(_entries.c.position == mid)
                ).scalar()
                if at is not None and at >= since:
                    hi = mid
                else:
                    lo = mid + 1
            query = (
                select(_entries.c.label, func.count())
                .where(
                    _entries.c.position >= lo,
                    _entries.c.created_at >= since,
                    _entries.c.source == source,
                    _entries.c.label.is_not(None),
                )
                .group_by(_entries.c.label)
            )
            found = {str(label): int(n) for label, n in conn.execute(query).all()}
        return {label: found.get(label, 0) for label in sorted(_LABELS)}

    def ping(self) -> None:
        """Raise TrainingLogError unless the log can be read and written right now."""
        with self._writing("readiness check", dry_run=True) as conn:
            _head(conn)
            # A real write (rolled back) proves the database is not read-only.
            conn.execute(
                update(_meta).where(_meta.c.key == "schema_version").values(value=_meta.c.value)
            )

    def close(self) -> None:
        """Release all connections; the log cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    @contextmanager
    def _writing(self, action: str, *, dry_run: bool = False) -> Iterator[Connection]:
        with (
            self._write_lock,
            self._guard(action),
            write_transaction(self._engine, dry_run=dry_run) as conn,
        ):
            yield conn

    @contextmanager
    def _reading(self, action: str) -> Iterator[Connection]:
        with self._guard(action), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        if self._closed:
            raise TrainingLogError("training log is closed")
        try:
            yield
        except SQLAlchemyError as exc:
            raise _error(f"training log {action} failed", exc, self._url) from exc


def open_training_log(database_url: str | None, data_dir: Path) -> TrainingLog:
    """Open (creating if needed) the log: SQLite under ``data_dir`` unless a DSN is given."""
    try:
        url = resolve_url(database_url, data_dir)
    except ValueError as exc:
        raise TrainingLogError(str(exc)) from None
    engine = create_db_engine(url)
    try:
        with write_transaction(engine) as conn:
            # Under the write lock, so processes starting together create tables once.
            _metadata.create_all(conn)
            version = conn.execute(
                select(_meta.c.value).where(_meta.c.key == "schema_version")
            ).scalar()
            if version is None:
                conn.execute(insert(_meta).values(key="schema_version", value=SCHEMA_VERSION))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _error("cannot open training log", exc, url) from exc
    if version not in (None, SCHEMA_VERSION):
        engine.dispose()
        raise TrainingLogError(
            f"training log at {describe(url)} has schema version {version}; "
            f"this mailsift reads version {SCHEMA_VERSION}"
        )
    return TrainingLog(engine, url)


def _insert_entry(
    conn: Connection,
    fingerprint: str,
    label: Label | None,
    undo_label: Label | None,
    undo_position: int | None,
    packed: bytes,
    source: str,
    actor: str,
) -> int:
    # Numbered under the write lock, so head + 1 is gap-free and commits in order.
    position = _head(conn) + 1
    conn.execute(
        insert(_entries).values(
            position=position,
            fingerprint=fingerprint,
            label=label,
            undo_label=undo_label,
            undo_position=undo_position,
            raw=packed,
            source=source,
            actor=actor,
            created_at=time.time(),
        )
    )
    return position


def _head(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(_entries.c.position), 0))).scalar_one())


def _current(conn: Connection, fingerprint: str) -> tuple[Label, int] | None:
    query = select(_labels.c.label, _labels.c.position).where(_labels.c.fingerprint == fingerprint)
    row = conn.execute(query).first()
    if row is None:
        return None
    label = _as_label(row.label)
    assert label is not None
    return label, int(row.position)


def _as_label(value: str | None) -> Label | None:
    if value is None:
        return None
    if value == "ham":
        return "ham"
    if value == "spam":
        return "spam"
    raise TrainingLogError(f"training log holds an unknown label {value!r}")


def _check_label(label: str) -> None:
    if label not in _LABELS:
        raise ValueError(f"label must be 'ham' or 'spam', not {label!r}")


def _check_entry(fingerprint: str, source: str, actor: str) -> None:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("fingerprint must be 1-128 lowercase hex digits")
    if not source or len(source) > MAX_SOURCE:
        raise ValueError(f"source must be 1-{MAX_SOURCE} characters")
    if len(actor) > MAX_ACTOR:
        raise ValueError(f"actor must be at most {MAX_ACTOR} characters")


def _error(summary: str, exc: SQLAlchemyError, url: URL) -> TrainingLogError:
    # A statement error's own text quotes the SQL parameters (message bytes); the driver's
    # error alone says what went wrong.
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = "; ".join(lines) or type(cause).__name__
    return TrainingLogError(redact(f"{summary} ({describe(url)}): {detail}", url))
