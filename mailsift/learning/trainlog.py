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
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError, StatementError

from mailsift.learning.consensus import Tally, agreed_label
from mailsift.learning.sources import SHARED, Source, outranks
from mailsift.service.db import (
    create_db_engine,
    describe,
    redact,
    resolve_url,
    write_transaction,
)

Label = Literal["ham", "spam"]
Result = Literal["learned", "unchanged", "relabelled", "forgotten", "kept"]
SharedResult = Literal["pending", "learned", "relabelled", "withdrawn", "unchanged", "kept"]

SCHEMA_VERSION = "2"
MAX_SOURCE = 32
MAX_ACTOR = 320
MAX_ADDRESS = 320
MAX_VERSION = 32
DAY = 86_400.0
_PRUNED = "raw_pruned_through"
MAX_READ = 10_000
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")
_LABELS: frozenset[str] = frozenset(get_args(Label))


class TrainingLogError(Exception):
    """The log cannot be opened, read or written; the message never holds a password."""


@dataclass(frozen=True, slots=True)
class Example:
    """What the log keeps of one labelled message: the raw bytes (for a while, see
    :meth:`TrainingLog.prune_raw`) and its features, computed once when it is appended
    (:mod:`mailsift.models.stored`), so every replay learns exactly the same vectors."""

    raw: bytes
    features: bytes
    features_version: str
    sender: str | None = None
    """The message's From address: a personal layer learns the sender too."""


@dataclass(frozen=True, slots=True)
class _Stored:
    """An example as the columns hold it (raw bytes compressed)."""

    raw: bytes
    features: bytes | None
    features_version: str | None
    sender: str | None

    @classmethod
    def of(cls, example: Example) -> _Stored:
        return cls(
            zlib.compress(example.raw),
            example.features,
            example.features_version[:MAX_VERSION],
            _cap_address(example.sender),
        )


_NOTHING = _Stored(b"", None, None, None)


@dataclass(frozen=True, slots=True)
class LiveExample:
    """One example the shared layer holds now, at the position of the entry that set it."""

    position: int
    fingerprint: str
    label: Label
    features: bytes | None
    features_version: str | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append or forget did, and the position of the entry that holds the label.

    ``kept``: a higher source holds another label (``held_by``), which stays.
    """

    result: Result
    position: int
    held_by: Source | None = None


@dataclass(frozen=True, slots=True)
class SharedOutcome:
    """What a user's report did to the shared model.

    ``pending``: not (yet) agreed by enough users; ``kept``: an administrator's label
    stands; ``withdrawn``: users no longer agree, the consensus example was taken back.
    """

    result: SharedResult
    reports: int
    """Distinct users whose counted reports hold the reported label now."""
    needed: int
    counted: bool
    """Whether this report counts towards consensus (the user's daily allowance)."""
    position: int = 0
    """The shared entry written, when one was."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A user's report: its effect on the user's own layer, and on the shared one."""

    personal: AppendResult
    shared: SharedOutcome


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
    layer: str = SHARED
    """``""`` for the shared model, else the address of the user whose layer it is."""
    sender: str | None = None
    """The message's From address: a personal layer learns the sender too, so further
    mail from it is judged for that user alone."""
    features: bytes | None = None
    features_version: str | None = None
    undo_features: bytes | None = None
    """The features learned with ``undo_label`` (the earlier entry's)."""
    undo_features_version: str | None = None


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
    Column("layer", String(MAX_ADDRESS), nullable=False, server_default=""),
    Column("sender", String(MAX_ADDRESS)),
    Column("features", LargeBinary),  # None: an undo, or an entry from schema version 1
    Column("features_version", String(MAX_VERSION)),
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
    Column("source", String(MAX_SOURCE), nullable=False, server_default=Source.ADMIN.value),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_labels_label"),
)

# Each user's current report per message (their personal layer's labels), and whether it
# counts towards consensus: the consensus tally is a count over this table.
_reports = Table(
    "trainlog_reports",
    _metadata,
    Column("user", String(MAX_ADDRESS), primary_key=True),
    Column("fingerprint", String(128), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("position", _position, nullable=False),
    Column("counted", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_reports_label"),
    Index("trainlog_reports_fingerprint", "fingerprint", "label"),
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
        takes the label over (so a later forget by a lower one cannot undo it).
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
        stored = [_Stored.of(example) for _, _, example in items]
        with self._writing("append") as conn:
            return [
                _append(conn, fingerprint, label, one, source, actor)
                for (fingerprint, label, _), one in zip(items, stored, strict=True)
            ]

    def forget(self, fingerprint: str, *, actor: str) -> AppendResult:
        """An administrator takes a message back entirely: its shared example and every
        user's report of it. Unknown -> unchanged, 0."""
        _check_entry(fingerprint, Source.ADMIN, actor)
        with self._writing("forget") as conn:
            held = _shared(conn, fingerprint)
            position = 0
            if held is not None:
                position = _undo_shared(conn, fingerprint, held, Source.ADMIN, actor)
            reports = conn.execute(
                select(_reports.c.user, _reports.c.label, _reports.c.position).where(
                    _reports.c.fingerprint == fingerprint
                )
            ).all()
            for user, label, at in sorted(reports):
                position = _insert_entry(
                    conn, fingerprint, None, _as_label(label), int(at), _NOTHING, Source.ADMIN,
                    actor, layer=user,
                )  # fmt: skip
            conn.execute(delete(_reports).where(_reports.c.fingerprint == fingerprint))
            if position == 0:
                return AppendResult("unchanged", 0)
            return AppendResult("forgotten", position)

    def confirm(self, fingerprint: str, label: Label, *, actor: str) -> AppendResult | None:
        """An administrator confirms users' reports: the shared layer learns ``label``
        from the newest report of it; None when no user reported it so."""
        _check_label(label)
        _check_entry(fingerprint, Source.ADMIN, actor)
        with self._writing("confirm") as conn:
            newest = conn.execute(
                select(func.max(_reports.c.position)).where(
                    _reports.c.fingerprint == fingerprint, _reports.c.label == label
                )
            ).scalar()
            if newest is None:
                return None
            stored = _stored_at(conn, newest)
            held = _shared(conn, fingerprint)
            if held is not None and held[0] == label:
                _set_holder(conn, fingerprint, Source.ADMIN)
                return AppendResult("unchanged", held[1], Source.ADMIN)
            return _set_shared(conn, fingerprint, label, stored, Source.ADMIN, actor, held)

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
        stored = _Stored.of(example)
        with self._writing("report") as conn:
            current = _report_of(conn, user, fingerprint)
            if current is not None and current[0] == label:
                personal = AppendResult("unchanged", current[1])
                shared = _settle(conn, fingerprint, label, needed, current[2])
                return ReportResult(personal, shared)
            counted = _within_allowance(conn, user, fingerprint, per_user_per_day, now)
            position = _insert_entry(
                conn,
                fingerprint,
                label,
                None if current is None else current[0],
                None if current is None else current[1],
                stored,
                Source.USER,
                user,
                layer=user,
            )
            values = {"label": label, "position": position, "counted": int(counted)}
            if current is None:
                conn.execute(
                    insert(_reports).values(
                        user=user, fingerprint=fingerprint, created_at=now, **values
                    )
                )
                personal = AppendResult("learned", position)
            else:
                conn.execute(
                    update(_reports)
                    .where(_reports.c.user == user, _reports.c.fingerprint == fingerprint)
                    .values(created_at=now, **values)
                )
                personal = AppendResult("relabelled", position)
            return ReportResult(personal, _settle(conn, fingerprint, label, needed, counted))

    def withdraw(self, user: str, fingerprint: str, *, needed: int) -> ReportResult:
        """A user takes their own report back; consensus is counted again without it."""
        _check_entry(fingerprint, Source.USER, user)
        with self._writing("withdraw") as conn:
            current = _report_of(conn, user, fingerprint)
            if current is None:
                return ReportResult(
                    AppendResult("unchanged", 0), SharedOutcome("unchanged", 0, needed, False)
                )
            label, at, _ = current
            position = _insert_entry(
                conn, fingerprint, None, label, at, _NOTHING, Source.USER, user, layer=user
            )
            conn.execute(
                delete(_reports).where(
                    _reports.c.user == user, _reports.c.fingerprint == fingerprint
                )
            )
            shared = _settle(conn, fingerprint, label, needed, False)
            return ReportResult(AppendResult("forgotten", position), shared)

    def report_of(self, user: str, fingerprint: str) -> Label | None:
        """The label ``user``'s report gives ``fingerprint`` now, or None."""
        with self._reading("report lookup") as conn:
            current = _report_of(conn, user, fingerprint)
        return None if current is None else current[0]

    # -- reading -----------------------------------------------------------------------

    def read(self, after: int, limit: int = 500) -> list[LogEntry]:
        """Entries with position > ``after``, ascending, at most ``limit`` of them."""
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}")
        undone = _entries.alias("undone")
        query = (
            select(
                _entries,
                undone.c.raw.label("undo_raw"),
                undone.c.features.label("undo_features"),
                undone.c.features_version.label("undo_features_version"),
            )
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
                layer=row.layer,
                sender=row.sender,
                features=row.features,
                features_version=row.features_version,
                undo_features=row.undo_features,
                undo_features_version=row.undo_features_version,
            )
            for row in rows
        ]

    def read_meta(self, after: int, until: int, limit: int = MAX_READ) -> list[LogEntry]:
        """Entries in (``after``, ``until``], ascending, without their message bytes:
        what a process that loaded a snapshot at ``until`` replays into what a snapshot
        does not hold (users' layers, the labels of exact messages)."""
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}")
        e = _entries.c
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
            rows = conn.execute(query).all()
        return [
            LogEntry(
                position=row.position,
                fingerprint=row.fingerprint,
                label=_as_label(row.label),
                undo_label=_as_label(row.undo_label),
                raw=b"",
                undo_raw=b"",
                source=row.source,
                actor=row.actor,
                created_at=row.created_at,
                layer=row.layer,
                sender=row.sender,
            )
            for row in rows
        ]

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
                head = _head(conn)
                e, lab = _entries.c, _labels.c
                query = (
                    select(lab.position, lab.fingerprint, lab.label, e.features, e.features_version)
                    .join(_entries, e.position == lab.position)
                    .order_by(lab.position)
                )

                def rows() -> Iterator[LiveExample]:
                    result = conn.execution_options(yield_per=batch).execute(query)
                    for row in result:
                        label = _as_label(row.label)
                        assert label is not None
                        yield LiveExample(
                            int(row.position), row.fingerprint, label, row.features,
                            row.features_version,
                        )  # fmt: skip

                yield head, rows()

    def raw_at(self, position: int) -> bytes:
        """The raw message of an entry (empty once past raw retention, or an undo)."""
        with self._reading("read") as conn:
            packed = conn.execute(
                select(_entries.c.raw).where(_entries.c.position == position)
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
            upto = _first_at_or_after(conn, before) - 1
            done = conn.execute(select(_meta.c.value).where(_meta.c.key == _PRUNED)).scalar()
        start, total = int(done or 0), 0
        e = _entries.c
        while start < upto:
            end = min(start + batch, upto)
            with self._writing("prune") as conn:
                dropped = conn.execute(
                    update(_entries)
                    .where(
                        e.position > start,
                        e.position <= end,
                        e.features.is_not(None),
                        e.raw != b"",
                    )
                    .values(raw=b"")
                ).rowcount
                _set_meta(conn, _PRUNED, str(end))
            total += dropped
            start = end
        return total

    def head(self) -> int:
        """Highest committed position; 0 when the log is empty."""
        with self._reading("head") as conn:
            return _head(conn)

    def label_of(self, fingerprint: str) -> Label | None:
        """The shared label the fingerprint holds now, or None (never learned, forgotten)."""
        with self._reading("label lookup") as conn:
            current = _shared(conn, fingerprint)
        return None if current is None else current[0]

    def holder_of(self, fingerprint: str) -> tuple[Label, Source] | None:
        """The shared label and the source that holds it, or None."""
        with self._reading("label lookup") as conn:
            current = _shared(conn, fingerprint)
        return None if current is None else (current[0], current[2])

    def counts(self) -> dict[str, int]:
        """How many fingerprints hold each shared label now."""
        query = select(_labels.c.label, func.count()).group_by(_labels.c.label)
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
            lo = _first_at_or_after(conn, since)
            query = (
                select(_entries.c.label, func.count())
                .where(
                    _entries.c.position >= lo,
                    _entries.c.created_at >= since,
                    _entries.c.source == source.value,
                    _entries.c.label.is_not(None),
                    (_entries.c.layer != SHARED) if personal else (_entries.c.layer == SHARED),
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
            elif version == "1":
                _upgrade_from_1(conn)
                version = SCHEMA_VERSION
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


def _upgrade_from_1(conn: Connection) -> None:
    """Version 1 had one layer and free-form sources: every entry is shared; ``train``
    was an administrator, ``feedback`` a user whose report the shared model took. Its
    entries have no stored features: learners compute them from the raw bytes."""
    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    for statement in (
        "ALTER TABLE trainlog_entries ADD COLUMN layer VARCHAR(320) NOT NULL DEFAULT ''",
        "ALTER TABLE trainlog_entries ADD COLUMN sender VARCHAR(320)",
        f"ALTER TABLE trainlog_entries ADD COLUMN features {blob}",
        "ALTER TABLE trainlog_entries ADD COLUMN features_version VARCHAR(32)",
        "ALTER TABLE trainlog_labels ADD COLUMN source VARCHAR(32) NOT NULL DEFAULT 'admin'",
        "UPDATE trainlog_entries SET source = CASE source WHEN 'outbound' THEN 'outbound' "
        "WHEN 'feedback' THEN 'user' ELSE 'admin' END",
        "UPDATE trainlog_labels SET source = (SELECT e.source FROM trainlog_entries e "
        "WHERE e.position = trainlog_labels.position)",
    ):
        conn.execute(text(statement))
    conn.execute(update(_meta).where(_meta.c.key == "schema_version").values(value=SCHEMA_VERSION))


def _insert_entry(
    conn: Connection,
    fingerprint: str,
    label: Label | None,
    undo_label: Label | None,
    undo_position: int | None,
    stored: _Stored,
    source: Source,
    actor: str,
    *,
    layer: str = SHARED,
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
            raw=stored.raw,
            source=source.value,
            actor=actor[:MAX_ACTOR],
            created_at=time.time(),
            layer=layer,
            sender=stored.sender,
            features=stored.features,
            features_version=stored.features_version,
        )
    )
    return position


def _first_at_or_after(conn: Connection, since: float) -> int:
    """The first position created at or after ``since`` (head + 1 if none): positions and
    creation times grow together (appends run one at a time), so a bisection on the
    primary key finds it without reading the log."""
    lo, hi = 1, _head(conn) + 1  # the position lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        at = conn.execute(select(_entries.c.created_at).where(_entries.c.position == mid)).scalar()
        if at is not None and at >= since:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _set_meta(conn: Connection, key: str, value: str) -> None:
    if conn.execute(update(_meta).where(_meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(_meta).values(key=key, value=value))


def _head(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(_entries.c.position), 0))).scalar_one())


def _shared(conn: Connection, fingerprint: str) -> tuple[Label, int, Source] | None:
    query = select(_labels.c.label, _labels.c.position, _labels.c.source).where(
        _labels.c.fingerprint == fingerprint
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    label = _as_label(row.label)
    assert label is not None
    return label, int(row.position), _as_source(row.source)


def _append(
    conn: Connection,
    fingerprint: str,
    label: Label,
    stored: _Stored,
    source: Source,
    actor: str,
) -> AppendResult:
    held = _shared(conn, fingerprint)
    if held is not None:
        held_label, held_position, holder = held
        if held_label == label:
            if holder is not source and outranks(source, holder):
                _set_holder(conn, fingerprint, source)
            return AppendResult("unchanged", held_position, holder)
        if source is Source.OUTBOUND or not outranks(source, holder):
            return AppendResult("kept", held_position, holder)
    return _set_shared(conn, fingerprint, label, stored, source, actor, held)


def _set_holder(conn: Connection, fingerprint: str, source: Source) -> None:
    conn.execute(
        update(_labels).where(_labels.c.fingerprint == fingerprint).values(source=source.value)
    )


def _set_shared(
    conn: Connection,
    fingerprint: str,
    label: Label,
    stored: _Stored,
    source: Source,
    actor: str,
    held: tuple[Label, int, Source] | None,
) -> AppendResult:
    undo, undo_position = (None, None) if held is None else (held[0], held[1])
    position = _insert_entry(conn, fingerprint, label, undo, undo_position, stored, source, actor)
    values = {"label": label, "position": position, "source": source.value}
    if held is None:
        conn.execute(insert(_labels).values(fingerprint=fingerprint, **values))
        return AppendResult("learned", position, source)
    conn.execute(update(_labels).where(_labels.c.fingerprint == fingerprint).values(**values))
    return AppendResult("relabelled", position, source)


def _undo_shared(
    conn: Connection,
    fingerprint: str,
    held: tuple[Label, int, Source],
    source: Source,
    actor: str,
) -> int:
    position = _insert_entry(conn, fingerprint, None, held[0], held[1], _NOTHING, source, actor)
    conn.execute(delete(_labels).where(_labels.c.fingerprint == fingerprint))
    return position


def _stored_at(conn: Connection, position: int) -> _Stored:
    """The example an entry holds, to teach the shared layer what a user reported."""
    e = _entries.c
    row = conn.execute(
        select(e.raw, e.features, e.features_version, e.sender).where(e.position == position)
    ).one()
    return _Stored(row.raw, row.features, row.features_version, row.sender)


def _report_of(conn: Connection, user: str, fingerprint: str) -> tuple[Label, int, bool] | None:
    """A user's current report of a message: (label, position, counts towards consensus)."""
    query = select(_reports.c.label, _reports.c.position, _reports.c.counted).where(
        _reports.c.user == user, _reports.c.fingerprint == fingerprint
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    label = _as_label(row.label)
    assert label is not None
    return label, int(row.position), bool(row.counted)


def _within_allowance(
    conn: Connection, user: str, fingerprint: str, per_day: int, now: float
) -> bool:
    """Whether one more of ``user``'s reports may count towards consensus today."""
    if per_day <= 0:
        return False
    used = conn.execute(
        select(func.count())
        .select_from(_reports)
        .where(
            _reports.c.user == user,
            _reports.c.fingerprint != fingerprint,
            _reports.c.counted == 1,
            _reports.c.created_at > now - DAY,
        )
    ).scalar_one()
    return int(used) < per_day


def _tally(conn: Connection, fingerprint: str) -> Tally:
    query = (
        select(_reports.c.label, func.count())
        .where(_reports.c.fingerprint == fingerprint, _reports.c.counted == 1)
        .group_by(_reports.c.label)
    )
    found = {str(label): int(n) for label, n in conn.execute(query).all()}
    return Tally(spam=found.get("spam", 0), ham=found.get("ham", 0))


def _settle(
    conn: Connection, fingerprint: str, reported: Label, needed: int, counted: bool
) -> SharedOutcome:
    """Bring the shared label in line with what users agree on, unless an admin's holds."""
    tally = _tally(conn, fingerprint)
    agreed = agreed_label(tally, needed)
    held = _shared(conn, fingerprint)

    def outcome(result: SharedResult, position: int = 0) -> SharedOutcome:
        return SharedOutcome(result, tally.of(reported), needed, counted, position)

    def standing() -> SharedOutcome:
        if held is None:
            return outcome("pending")
        return outcome("unchanged" if held[0] == reported else "kept")

    if held is not None and held[2] is Source.ADMIN:
        return standing()
    if agreed is None:
        if held is not None and held[2] is Source.USER:
            withdrawn = _undo_shared(conn, fingerprint, held, Source.USER, "consensus withdrawn")
            return outcome("withdrawn", withdrawn)
        return outcome("pending") if held is None or held[0] != reported else standing()
    if held is not None and held[0] == agreed:
        if held[2] is Source.OUTBOUND:
            _set_holder(conn, fingerprint, Source.USER)
        return standing()
    newest = conn.execute(
        select(func.max(_reports.c.position)).where(
            _reports.c.fingerprint == fingerprint,
            _reports.c.label == agreed,
            _reports.c.counted == 1,
        )
    ).scalar_one()
    actor = f"consensus of {tally.of(agreed)} users"
    stored = _stored_at(conn, newest)
    done = _set_shared(conn, fingerprint, agreed, stored, Source.USER, actor, held)
    return outcome("learned" if held is None else "relabelled", done.position)


def _as_source(value: str) -> Source:
    try:
        return Source(value)
    except ValueError:
        raise TrainingLogError(f"training log holds an unknown source {value!r}") from None


def _cap_address(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().lower()[:MAX_ADDRESS] or None


def _check_address(value: str, what: str) -> None:
    if len(value) > MAX_ADDRESS:
        raise ValueError(f"{what} must be at most {MAX_ADDRESS} characters")


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


def _check_entry(fingerprint: str, source: Source, actor: str) -> None:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("fingerprint must be 1-128 lowercase hex digits")
    if not isinstance(source, Source):
        raise ValueError(f"source must be one of {', '.join(Source)}, not {source!r}")
    if len(actor) > MAX_ACTOR:
        raise ValueError(f"actor must be at most {MAX_ACTOR} characters")


def _error(summary: str, exc: SQLAlchemyError, url: URL) -> TrainingLogError:
    # A statement error's own text quotes the SQL parameters (message bytes); the driver's
    # error alone says what went wrong.
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = "; ".join(lines) or type(cause).__name__
    return TrainingLogError(redact(f"{summary} ({describe(url)}): {detail}", url))
