"""The training log: the one append-only, durable sequence of labelled examples.

Every model in every process and replica is a replay of this log in position order, so
positions must be gap-free and must become visible in order: a reader that has applied
up to N can never later find an entry below N. Appends therefore run one at a time under
a database-wide write lock (see `db.write_transaction`), and the label check, the entry
and the current-label update commit as one transaction.

Two layers share the one sequence. *Shared* entries (layer ``""``) teach the model every
recipient's verdict comes from; *personal* entries (layer = a user's address) are that
user's own reports and change only their verdicts. Who may set a shared label is decided
here, inside the same transaction, so every replica replays the same decisions: a lower
:class:`~mailsift.learning.sources.Source` never replaces a higher one's label, and
users' reports reach the shared layer only by consensus (:mod:`.consensus`).
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    case,
    delete,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError, StatementError

from mailsift.learning import log_rows
from mailsift.learning import log_schema as schema
from mailsift.learning.log_rows import DAY
from mailsift.learning.log_schema import SCHEMA_VERSION
from mailsift.learning.records import (
    MAX_ADDRESS,
    NOTHING,
    AppendResult,
    Example,
    Label,
    LiveExample,
    LogEntry,
    ReportResult,
    Result,
    SharedOutcome,
    SharedResult,
    Stored,
    TrainingLogError,
)
from mailsift.learning.sources import SHARED, Source, Via
from mailsift.service.db import (
    create_db_engine,
    describe,
    redact,
    resolve_url,
    write_transaction,
)
from mailsift.service.pg.notify import CHANNEL_LOG, notify

__all__ = [
    "DAY",
    "SCHEMA_VERSION",
    "AppendResult",
    "Example",
    "Label",
    "LiveExample",
    "LogEntry",
    "ReportResult",
    "Result",
    "SharedOutcome",
    "SharedResult",
    "TrainingLog",
    "TrainingLogError",
    "open_training_log",
]

MAX_READ = 10_000
PRUNED = "raw_pruned_through"
"""Meta key: raw bytes are dropped up to this position."""
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")
_LABELS: frozenset[str] = frozenset(get_args(Label))


class TrainingLog:
    """Durable, ordered log of labelled examples; safe across threads and processes."""

    def __init__(self, engine: Engine, url: URL) -> None:
        """Use `open_training_log`; this assumes the schema exists."""
        self._engine = engine
        self._url = url
        self._write_lock = threading.Lock()  # queue this process's writers in Python
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The log's database, for what lives beside the log (published models)."""
        return self._engine

    # -- the shared layer --------------------------------------------------------------

    def append(
        self, fingerprint: str, label: Label, example: Example, *, source: Source, actor: str
    ) -> AppendResult:
        """Set the shared label of ``fingerprint``; returns once the entry is committed.

        A source never replaces the label of a higher one (``kept``); outbound mail only
        ever adds, so it never relabels anything. The same label from a higher source
        takes the label over (so a lower source can no longer change it).
        """
        (result,) = self.append_many([(fingerprint, label, example)], source=source, actor=actor)
        return result

    def append_many(
        self,
        items: Sequence[tuple[str, Label, Example]],
        *,
        source: Source,
        actor: str,
    ) -> list[AppendResult]:
        """:meth:`append` for each item in order, in one transaction (batch training)."""
        if source is Source.USER:
            raise ValueError("users teach the shared layer only through report()")
        for fingerprint, label, _ in items:
            _check_label(label)
            _check_entry(fingerprint, source, actor)
        stored = [Stored.of(example) for _, _, example in items]
        with self._writing("append") as conn:
            return [
                log_rows.append(conn, fingerprint, label, one, source, actor)
                for (fingerprint, label, _), one in zip(items, stored, strict=True)
            ]

    def forget(self, fingerprint: str, *, actor: str) -> AppendResult:
        """An administrator takes a message back entirely: its shared example and every
        user's report of it. Nothing left to take back -> unchanged, at the newest entry
        about the message (the one that took it back; 0 if it was never logged)."""
        _check_entry(fingerprint, Source.ADMIN, actor)
        with self._writing("forget") as conn:
            held = log_rows.shared(conn, fingerprint)
            position = 0
            if held is not None:
                position = log_rows.undo_shared(conn, fingerprint, held, Source.ADMIN, actor)
            reports = conn.execute(
                select(
                    schema.reports.c.user, schema.reports.c.label, schema.reports.c.position
                ).where(schema.reports.c.fingerprint == fingerprint)
            ).all()
            for user, label, at in sorted(reports):
                undone = log_rows.as_label(label)
                position = log_rows.insert_entry(
                    conn, fingerprint, None, undone, int(at), NOTHING, Source.ADMIN, actor,
                    layer=user,
                )  # fmt: skip
            conn.execute(delete(schema.reports).where(schema.reports.c.fingerprint == fingerprint))
            if position == 0:
                return AppendResult("unchanged", log_rows.newest_entry(conn, fingerprint))
            return AppendResult("forgotten", position)

    def confirm(self, fingerprint: str, label: Label, *, actor: str) -> AppendResult | None:
        """An administrator confirms users' reports: the shared layer learns ``label``
        from the newest report of it; None when no user reported it so."""
        _check_label(label)
        _check_entry(fingerprint, Source.ADMIN, actor)
        with self._writing("confirm") as conn:
            newest = conn.execute(
                select(func.max(schema.reports.c.position)).where(
                    schema.reports.c.fingerprint == fingerprint, schema.reports.c.label == label
                )
            ).scalar()
            if newest is None:
                return None
            stored = log_rows.stored_at(conn, newest)
            held = log_rows.shared(conn, fingerprint)
            if held is not None and held[0] == label:
                log_rows.set_holder(conn, fingerprint, Source.ADMIN)
                return AppendResult("unchanged", held[1], Source.ADMIN)
            return log_rows.set_shared(conn, fingerprint, label, stored, Source.ADMIN, actor, held)

    # -- users' reports ----------------------------------------------------------------

    def report(
        self,
        user: str,
        fingerprint: str,
        label: Label,
        example: Example,
        *,
        needed: int,
        per_user_per_day: int,
        via: Via = "api",
        now: float | None = None,
    ) -> ReportResult:
        """A user's report: their personal layer learns it at once; the shared layer only
        when ``needed`` users agree (each user's reports count towards that up to
        ``per_user_per_day`` a day). One transaction, so replicas replay one decision."""
        _check_label(label)
        _check_entry(fingerprint, Source.USER, user)
        _check_address(user, "user")
        if not user:
            raise ValueError("user must not be empty")
        now = time.time() if now is None else now
        stored = Stored.of(example)
        with self._writing("report") as conn:
            current = log_rows.report_of(conn, user, fingerprint)
            if current is not None and current[0] == label:
                personal = AppendResult("unchanged", current[1])
                shared = log_rows.settle(conn, fingerprint, label, needed, current[2])
                return ReportResult(personal, shared)
            counted = log_rows.within_allowance(conn, user, fingerprint, per_user_per_day, now)
            position = log_rows.insert_entry(
                conn,
                fingerprint,
                label,
                None if current is None else current[0],
                None if current is None else current[1],
                stored,
                Source.USER,
                user,
                layer=user,
                via=via,
            )
            values = {"label": label, "position": position, "counted": int(counted)}
            if current is None:
                conn.execute(
                    insert(schema.reports).values(
                        user=user, fingerprint=fingerprint, created_at=now, **values
                    )
                )
                personal = AppendResult("learned", position)
            else:
                conn.execute(
                    update(schema.reports)
                    .where(
                        schema.reports.c.user == user, schema.reports.c.fingerprint == fingerprint
                    )
                    .values(created_at=now, **values)
                )
                personal = AppendResult("relabelled", position)
            return ReportResult(
                personal, log_rows.settle(conn, fingerprint, label, needed, counted)
            )

    def withdraw(self, user: str, fingerprint: str, *, needed: int) -> ReportResult:
        """A user takes their own report back; consensus is counted again without it."""
        _check_entry(fingerprint, Source.USER, user)
        with self._writing("withdraw") as conn:
            current = log_rows.report_of(conn, user, fingerprint)
            if current is None:
                # Nothing to take back: the positions at which that was already so.
                mine = log_rows.newest_entry(conn, fingerprint, user)
                held = log_rows.shared(conn, fingerprint)
                shared_at = log_rows.shared_position(conn, fingerprint, held)
                return ReportResult(
                    AppendResult("unchanged", mine),
                    SharedOutcome("unchanged", 0, needed, False, shared_at),
                )
            label, at, _ = current
            position = log_rows.insert_entry(
                conn, fingerprint, None, label, at, NOTHING, Source.USER, user, layer=user
            )
            conn.execute(
                delete(schema.reports).where(
                    schema.reports.c.user == user, schema.reports.c.fingerprint == fingerprint
                )
            )
            shared = log_rows.settle(conn, fingerprint, label, needed, False)
            return ReportResult(AppendResult("forgotten", position), shared)

    def report_of(self, user: str, fingerprint: str) -> Label | None:
        """The label ``user``'s report gives ``fingerprint`` now, or None."""
        with self._reading("report lookup") as conn:
            current = log_rows.report_of(conn, user, fingerprint)
        return None if current is None else current[0]

    # -- reading -----------------------------------------------------------------------

    def read(
        self, after: int, limit: int = 500, *, features_version: str | None = None
    ) -> list[LogEntry]:
        """Entries with position > ``after``, ascending, at most ``limit`` of them.

        With ``features_version``, an entry whose stored features are of that version
        comes without its message bytes (``raw`` empty): a follower learns from the
        features and would only read and decompress the bytes to drop them, a quarter
        of what every worker of every replica reads per entry.
        """
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}")
        e = schema.entries.c
        undone = schema.entries.alias("undone")
        query = (
            select(
                *(column for column in schema.entries.c if column.name != "raw"),
                _bytes_unless(e.raw, e.features_version, features_version).label("raw"),
                _bytes_unless(undone.c.raw, undone.c.features_version, features_version).label(
                    "undo_raw"
                ),
                undone.c.features.label("undo_features"),
                undone.c.features_version.label("undo_features_version"),
            )
            .outerjoin(undone, undone.c.position == schema.entries.c.undo_position)
            .where(schema.entries.c.position > after)
            .order_by(schema.entries.c.position)
            .limit(limit)
        )
        with self._reading("read") as conn:
            return [_entry(row) for row in conn.execute(query).all()]

    def read_meta(self, after: int, until: int, limit: int = MAX_READ) -> list[LogEntry]:
        """Entries in (``after``, ``until``], ascending, without their message bytes:
        what a process that loaded a snapshot at ``until`` replays into what a snapshot
        does not hold (users' layers, the labels of exact messages)."""
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}")
        e = schema.entries.c
        query = (
            select(
                e.position,
                e.fingerprint,
                e.label,
                e.undo_label,
                e.source,
                e.actor,
                e.created_at,
                e.layer,
                e.sender,
            )
            .where(e.position > after, e.position <= until)
            .order_by(e.position)
            .limit(limit)
        )
        with self._reading("read") as conn:
            return [_entry(row) for row in conn.execute(query).all()]

    @contextmanager
    def live_examples(self, batch: int = 1000) -> Iterator[tuple[int, Iterator[LiveExample]]]:
        """The shared layer's live examples (relabels and forgets applied) as of one
        position, in the order of the entries that set them: ``(position, examples)``.

        One read transaction (REPEATABLE READ on PostgreSQL), so the examples are exactly
        those of the log up to ``position`` however many appends land meanwhile.
        """
        with self._guard("read"), self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                head = log_rows.head(conn)
                e, lab = schema.entries.c, schema.labels.c
                query = (
                    select(lab.position, lab.fingerprint, lab.label, e.features, e.features_version)
                    .join(schema.entries, e.position == lab.position)
                    .order_by(lab.position)
                )

                def rows() -> Iterator[LiveExample]:
                    result = conn.execution_options(yield_per=batch).execute(query)
                    for row in result:
                        yield LiveExample(
                            int(row.position), row.fingerprint, log_rows.held_label(row.label),
                            row.features, row.features_version,
                        )  # fmt: skip

                yield head, rows()

    def raw_at(self, position: int) -> bytes:
        """The raw message of an entry (empty once past raw retention, or an undo)."""
        with self._reading("read") as conn:
            packed = conn.execute(
                select(schema.entries.c.raw).where(schema.entries.c.position == position)
            ).scalar()
        return zlib.decompress(packed) if packed else b""

    def prune_raw(self, before: float, *, batch: int = 500) -> int:
        """Drop the raw bytes of entries created before ``before`` (their stored features
        are all learning needs); returns how many were dropped.

        Each call starts where the last one stopped (a marker in the log's meta table),
        so an hourly prune reads only the entries that aged since, in short write
        transactions of ``batch`` positions. Entries from before features were stored
        keep their bytes: learning still needs them.
        """
        with self._reading("prune") as conn:
            upto = log_rows.first_at_or_after(conn, before) - 1
            done = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == PRUNED)
            ).scalar()
        start, total = int(done or 0), 0
        e = schema.entries.c
        while start < upto:
            end = min(start + batch, upto)
            with self._writing("prune") as conn:
                dropped = conn.execute(
                    update(schema.entries)
                    .where(
                        e.position > start,
                        e.position <= end,
                        e.features.is_not(None),
                        e.raw != b"",
                    )
                    .values(raw=b"")
                ).rowcount
                log_rows.set_meta(conn, PRUNED, str(end))
            total += dropped
            start = end
        return total

    def head(self) -> int:
        """Highest committed position; 0 when the log is empty."""
        with self._reading("head") as conn:
            return log_rows.head(conn)

    def label_of(self, fingerprint: str) -> Label | None:
        """The shared label the fingerprint holds now, or None (never learned, forgotten)."""
        with self._reading("label lookup") as conn:
            current = log_rows.shared(conn, fingerprint)
        return None if current is None else current[0]

    def holder_of(self, fingerprint: str) -> tuple[Label, Source] | None:
        """The shared label and the source that holds it, or None."""
        with self._reading("label lookup") as conn:
            current = log_rows.shared(conn, fingerprint)
        return None if current is None else (current[0], current[2])

    def counts(self) -> dict[str, int]:
        """How many fingerprints hold each shared label now."""
        query = select(schema.labels.c.label, func.count()).group_by(schema.labels.c.label)
        with self._reading("count") as conn:
            found = {str(label): int(n) for label, n in conn.execute(query).all()}
        return {label: found.get(label, 0) for label in sorted(_LABELS)}

    def label_counts_since(
        self, since: float, *, source: Source, personal: bool = False
    ) -> dict[str, int]:
        """Entries from ``source`` created at or after ``since`` that set each label, on
        the shared layer (or, with ``personal``, on users' own layers).

        Positions and creation times grow together (appends run one at a time), so the
        window's first position is found by bisection on the primary key and only the
        window's rows are read, never the whole log with its message bytes.
        """
        with self._reading("count") as conn:
            lo = log_rows.first_at_or_after(conn, since)
            query = (
                select(schema.entries.c.label, func.count())
                .where(
                    schema.entries.c.position >= lo,
                    schema.entries.c.created_at >= since,
                    schema.entries.c.source == source.value,
                    schema.entries.c.label.is_not(None),
                    (schema.entries.c.layer != SHARED)
                    if personal
                    else (schema.entries.c.layer == SHARED),
                )
                .group_by(schema.entries.c.label)
            )
            found = {str(label): int(n) for label, n in conn.execute(query).all()}
        return {label: found.get(label, 0) for label in sorted(_LABELS)}

    def ping(self) -> None:
        """Raise TrainingLogError unless the log can be read and written right now."""
        with self._writing("readiness check", dry_run=True) as conn:
            log_rows.head(conn)
            # A real write (rolled back) proves the database is not read-only.
            conn.execute(
                update(schema.meta)
                .where(schema.meta.c.key == "schema_version")
                .values(value=schema.meta.c.value)
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
            if not dry_run and conn.dialect.name == "postgresql":
                # Every replica hears of the new head when this commits.
                notify(conn, CHANNEL_LOG, str(log_rows.head(conn)))

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
            schema.metadata.create_all(conn)
            version = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).scalar()
            if version is None:
                conn.execute(insert(schema.meta).values(key="schema_version", value=SCHEMA_VERSION))
            elif version in ("1", "2"):
                (schema.upgrade_from_1 if version == "1" else schema.upgrade_from_2)(conn)
                version = SCHEMA_VERSION
            if version in (None, SCHEMA_VERSION):
                # create_all makes a table's indexes only with the table: a log from
                # before an index was added gets it here, once.
                for index in schema.entries.indexes:
                    index.create(conn, checkfirst=True)
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


def _bytes_unless(raw: Any, version: Any, wanted: str | None) -> Any:
    """The column ``raw``, or NULL where ``version`` is ``wanted`` (no bytes needed)."""
    if wanted is None:
        return raw
    return case((version == wanted, null()), else_=raw)


def _entry(row: Row[Any, *tuple[Any, ...]]) -> LogEntry:
    """A log entry from a row; the columns a query left out (message bytes, features)
    come back empty."""
    found = row._mapping
    raw, undo_raw = found.get("raw"), found.get("undo_raw")
    return LogEntry(
        position=row.position,
        fingerprint=row.fingerprint,
        label=log_rows.as_label(row.label),
        undo_label=log_rows.as_label(row.undo_label),
        raw=zlib.decompress(raw) if raw else b"",
        undo_raw=zlib.decompress(undo_raw) if undo_raw else b"",
        source=row.source,
        actor=row.actor,
        created_at=row.created_at,
        layer=row.layer,
        sender=row.sender,
        features=found.get("features"),
        features_version=found.get("features_version"),
        undo_features=found.get("undo_features"),
        undo_features_version=found.get("undo_features_version"),
    )


def _check_address(value: str, what: str) -> None:
    if len(value) > MAX_ADDRESS:
        raise ValueError(f"{what} must be at most {MAX_ADDRESS} characters")


def _check_label(label: str) -> None:
    if label not in _LABELS:
        raise ValueError(f"label must be 'ham' or 'spam', not {label!r}")


def _check_entry(fingerprint: str, source: Source, actor: str) -> None:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("fingerprint must be 1-128 lowercase hex digits")
    if not isinstance(source, Source):
        raise ValueError(f"source must be one of {', '.join(Source)}, not {source!r}")
    if len(actor) > schema.MAX_ACTOR:
        raise ValueError(f"actor must be at most {schema.MAX_ACTOR} characters")


def _error(summary: str, exc: SQLAlchemyError, url: URL) -> TrainingLogError:
    # A statement error's own text quotes the SQL parameters (message bytes); the driver's
    # error alone says what went wrong.
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = "; ".join(lines) or type(cause).__name__
    return TrainingLogError(redact(f"{summary} ({describe(url)}): {detail}", url))
