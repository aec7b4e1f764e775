"""The audit trail: one row per verdict, for message tracking and outbound reports.

A row holds who, when, which way and what was decided — time, direction, gateway, queue
id, Message-ID, envelope sender and From address, recipients, user, score, verdict,
action, reason names and weights, a DLP summary (types, counts, severities), model
version, fingerprint — and never the subject, the body or any finding's value, so the
trail can be kept and searched without becoming a second copy of the mail.

Scoring must not wait for it: :meth:`AuditTrail.record` appends to an in-memory buffer
and returns; :meth:`AuditTrail.run` (a background task) writes the buffer every
``flush_seconds`` or as soon as ``batch_rows`` rows wait, a short transaction per batch
(on SQLite from the event loop, see :meth:`AuditTrail.drain`), and prunes rows past
``settings.audit_retention_days`` now and then. The buffer is bounded: while the database
is down the oldest rows are dropped and counted (:attr:`AuditTrail.dropped`), so memory
stays bounded and scoring goes on. Rows reach the database within about
``flush_seconds``; :meth:`flush` writes everything now (shutdown, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    insert,
    or_,
    select,
)

from mailsift.reasons import LIMIT_PREFIX
from mailsift.service.checks.personal import personal_key
from mailsift.service.db import (
    PRUNE_BATCH_ROWS,
    Busy,
    delete_in_turns,
    hot_statement,
    lock_key_for,
    nowait_engine,
    nowait_first,
    nowait_raw_transaction,
    raw_many,
    write_transaction,
)
from mailsift.service.pg.pool import AsyncPool
from mailsift.service.settings import Settings

if TYPE_CHECKING:
    from mailsift.models.parse import ParsedMessage
    from mailsift.service.checks.base import Envelope, Reason

__all__ = ["AUDIT_EVENTS", "AuditRecord", "AuditTrail", "audit_record", "dlp_summary", "event_of"]

log = logging.getLogger("mailsift.audit")

DAY = 86_400.0
MAX_SEARCH = 1000
MAX_RECIPIENTS = 1000
_LOCK_KEY = lock_key_for("mailsift.audit")
_SEVERITY_ORDER = {"low": 1, "medium": 2, "high": 3}

_metadata = MetaData()
_id = BigInteger().with_variant(Integer, "sqlite")  # SQLite: alias the rowid
AUDIT_TABLE = "audit_events"
"""Every serving process creates it at start: diagnostics take it as the state's sign."""
_events = Table(
    AUDIT_TABLE,
    _metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("created_at", Double, nullable=False),
    Column("direction", String(8), nullable=False),
    Column("gateway", String(255)),
    Column("queue_id", String(255)),
    Column("message_id", String(998)),
    Column("mail_from", String(320)),
    Column("from_addr", String(320)),
    Column("owner", String(320)),  # the authenticated user
    Column("account", String(320)),  # user, else mail_from: whom outbound reports group by
    Column("recipients", Text, nullable=False),  # JSON list
    Column("rcpt_count", Integer, nullable=False),
    Column("score", Double, nullable=False),
    Column("verdict", String(8), nullable=False),
    Column("action", String(16), nullable=False),
    Column("reasons", Text, nullable=False),  # JSON [[name, weight], ...]
    Column("limit_hits", String(1000)),  # comma-joined limit_* reason names, or NULL
    Column("dlp", Text, nullable=False),  # JSON [[type, count, severity], ...]
    Column("dlp_findings", Integer, nullable=False),
    Column("model_version", String(64)),
    Column("fingerprint", String(128)),
    Column("account_state", String(16)),
    Index("audit_events_created_at", "created_at"),
    Index("audit_events_message_id", "message_id"),
    Index("audit_events_mail_from", "mail_from"),
    Index("audit_events_from_addr", "from_addr"),
    Index("audit_events_owner", "owner"),
    Index("audit_events_account", "direction", "account", "created_at"),
)
AUDIT_EVENTS = _events
"""The trail's table, for read-only views of it (the operator console's search)."""
# Added after the first release: created on its own for trails that predate it.
_BY_FINGERPRINT = Index("audit_events_fingerprint", _events.c.fingerprint)


_COLUMNS = tuple(c.name for c in _events.columns if c.name != "id")
"""The columns a row is written with, in :func:`_to_row`'s order."""
_INSERT = hot_statement(lambda _: insert(_events), *_COLUMNS)


class FindingLike(Protocol):
    """What the audit keeps of a DLP finding (``dlp.scan.Finding`` fits)."""

    @property
    def type(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def severity(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One verdict as the audit trail keeps it: metadata only, by construction."""

    time: float
    direction: str
    score: float
    verdict: str
    action: str
    gateway: str | None = None
    queue_id: str | None = None
    message_id: str | None = None
    mail_from: str | None = None
    from_addr: str | None = None
    recipients: tuple[str, ...] = ()
    user: str | None = None
    reasons: tuple[tuple[str, float], ...] = ()
    dlp: tuple[tuple[str, int, str], ...] = ()
    """(type, count, severity) per finding."""
    model_version: str | None = None
    fingerprint: str | None = None
    account_state: str | None = None


def audit_record(
    envelope: Envelope,
    message: ParsedMessage,
    *,
    score: float,
    verdict: str,
    action: str,
    reasons: Iterable[Reason],
    model_version: str | None,
    fingerprint: str | None,
    dlp: Iterable[FindingLike] = (),
    account_state: str | None = None,
    now: float | None = None,
) -> AuditRecord:
    """Build the row for one scored message; takes only the Message-ID and From from it."""
    return AuditRecord(
        time=time.time() if now is None else now,
        direction=envelope.direction,
        score=float(score),
        verdict=verdict,
        action=action,
        gateway=envelope.gateway,
        queue_id=envelope.queue_id,
        message_id=next((v for k, v in message.headers if k == "message-id"), None),
        mail_from=envelope.mail_from,
        from_addr=message.from_addr or None,
        recipients=tuple(envelope.rcpt),
        user=envelope.user,
        reasons=tuple((r.name, float(r.weight)) for r in reasons),
        dlp=dlp_summary(dlp),
        model_version=model_version,
        fingerprint=fingerprint,
        account_state=account_state,
    )


def dlp_summary(findings: Iterable[FindingLike]) -> tuple[tuple[str, int, str], ...]:
    """Types, counts and severities only: never a sample, redacted or not."""
    return tuple((str(f.type), int(f.count), str(f.severity)) for f in findings)


class AuditTrail:
    """Buffered, batched writer and reader of the audit trail on the state database."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        flush_seconds: float = 0.5,
        batch_rows: int = 500,
        loop_batch_rows: int = 100,
        max_buffer: int = 100_000,
        prune_every_seconds: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._nowait = nowait_engine(engine)
        self.pool: AsyncPool | None = None
        """Set by the app on PostgreSQL: batches are written by COPY on the event loop."""
        self._settings = settings
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self.loop_batch_rows = loop_batch_rows
        self.max_buffer = max_buffer
        self.prune_every_seconds = prune_every_seconds
        self._buffer: deque[AuditRecord] = deque()
        self._lock = threading.Lock()  # guards the buffer and the counters
        self._flushing = threading.Lock()  # one writer at a time keeps rows in order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self.dropped = 0
        """Rows lost because the buffer was full (the database was down or too slow)."""
        self.written = 0
        self._dropped_logged = 0
        with write_transaction(engine, lock_key=_LOCK_KEY) as conn:
            _metadata.create_all(conn)  # under the write lock: processes race to create
            _BY_FINGERPRINT.create(conn, checkfirst=True)

    # --- writing -----------------------------------------------------------------------

    def record(self, row: AuditRecord) -> None:
        """Queue a row; never blocks on the database."""
        with self._lock:
            if len(self._buffer) >= self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(row)
            wake = len(self._buffer) >= self.batch_rows and not self._wake_pending
            if wake:
                self._wake_pending = True
        if wake and self._loop is not None and self._wake is not None:
            # RuntimeError: the loop is closing; the final flush takes the rows.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Write every row queued so far, in batches; returns rows written.

        On a database error the unwritten rows go back to the front of the buffer and the
        error propagates; the next flush retries them.
        """
        written = 0
        with self._flushing:
            target = len(self._buffer)
            while written < target:
                batch = self._take(self.batch_rows)
                if not batch:
                    break
                # Rows are built before the write lock is taken: every worker's admission
                # of outbound mail waits for that lock, and this thread shares the GIL
                # with a busy event loop, so each step under the lock may wait its turn.
                rows = [_to_row(r) for r in batch]
                try:
                    self._insert(rows)
                except Exception:
                    self._requeue(batch)
                    raise
                written += len(batch)
                self.written += len(batch)
        return written

    async def drain(self) -> int:
        """Write every row queued so far from the event loop; returns rows written.

        On SQLite each batch of ``loop_batch_rows`` is one short transaction on the loop
        itself, taken only when the write lock is free at once (as outbound admission
        does): from a thread, every statement would first wait its turn for the
        interpreter lock behind the busy loop while holding the file's write lock, and
        each worker's admissions would wait out those turns (10-30 ms every flush under
        ``mailsift bench --direction outbound``). On PostgreSQL, :meth:`flush` in a thread.
        """
        if self.pool is not None:
            return await self._drain_copy(self.pool)
        if self._nowait is None:
            return await asyncio.to_thread(self.flush)
        written = 0
        target = len(self._buffer)
        while written < target:
            batch = self._take(self.loop_batch_rows)
            if not batch:
                break
            rows = [_to_row(r) for r in batch]
            try:
                await nowait_first(
                    functools.partial(self._insert_nowait, rows),
                    functools.partial(self._insert, rows),
                )
            except BaseException:
                self._requeue(batch)
                raise
            written += len(batch)
            self.written += len(batch)
            await asyncio.sleep(0)  # requests in flight go first between batches
        return written

    async def _drain_copy(self, pool: AsyncPool) -> int:
        """:meth:`drain` on PostgreSQL: each batch one COPY on the event loop, no thread
        (its row building under the interpreter lock took the loop's turns) and no
        statement per row."""
        if not self._flushing.acquire(blocking=False):
            return 0  # a thread is flushing (shutdown): the rows wait their turn, in order
        try:
            written = 0
            target = len(self._buffer)
            while written < target:
                batch = self._take(self.batch_rows)
                if not batch:
                    break
                rows = [tuple(_to_row(r).values()) for r in batch]
                try:
                    await pool.copy_rows(AUDIT_TABLE, _COLUMNS, rows)
                except BaseException:
                    self._requeue(batch)
                    raise
                written += len(batch)
                self.written += len(batch)
            return written
        finally:
            self._flushing.release()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            conn.execute(insert(_events), rows)

    def _insert_nowait(self, rows: list[dict[str, Any]]) -> None:
        assert self._nowait is not None
        if not self._flushing.acquire(blocking=False):
            raise Busy  # a thread is flushing: the rows wait their turn, in order
        try:
            with nowait_raw_transaction(self._nowait) as db:
                raw_many(db)(_INSERT, rows)
        finally:
            self._flushing.release()

    def _take(self, n: int) -> list[AuditRecord]:
        with self._lock:
            return [self._buffer.popleft() for _ in range(min(n, len(self._buffer)))]

    def _requeue(self, batch: list[AuditRecord]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(batch))
            while len(self._buffer) > self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1

    async def run(self) -> None:
        """Background flusher and pruner; cancel it, then call :meth:`flush`, at shutdown."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        next_prune = self._loop.time()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
                self._wake.clear()
                with self._lock:
                    self._wake_pending = False
                try:
                    await self.drain()
                    if self._loop.time() >= next_prune:
                        next_prune = self._loop.time() + self.prune_every_seconds
                        await self.prune(time.time())
                except Exception as exc:  # keep going: the buffer holds rows until it works
                    log.warning("audit flush failed (%d rows buffered): %s", self.buffered, exc)
                if self.dropped != self._dropped_logged:
                    log.warning("audit buffer full: %d rows dropped so far", self.dropped)
                    self._dropped_logged = self.dropped
        finally:
            self._loop = self._wake = None

    async def prune(self, now: float, *, batch: int = PRUNE_BATCH_ROWS) -> int:
        """Delete rows older than the retention, ``batch`` rows a transaction, requests
        served in between (see :func:`~mailsift.service.db.delete_in_turns`); returns
        rows deleted."""
        return await delete_in_turns(
            self._engine, self._nowait, _events, self._expired(now), lock_key=_LOCK_KEY, batch=batch
        )

    def _expired(self, now: float) -> ColumnElement[bool]:
        return _events.c.created_at < now - self._settings.audit_retention_days * DAY

    # --- reading -----------------------------------------------------------------------

    def search(
        self,
        *,
        message_id: str | None = None,
        sender: str | None = None,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        verdict: str | None = None,
        direction: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """A message's history, newest first; ``sender`` matches envelope sender or From."""
        query = select(_events)
        if message_id:
            query = query.where(_events.c.message_id == _message_id(message_id))
        if sender:
            addr = sender.strip().lower()
            query = query.where(or_(_events.c.mail_from == addr, _events.c.from_addr == addr))
        if user:
            query = query.where(_events.c.owner == user.strip().lower())
        if since is not None:
            query = query.where(_events.c.created_at >= since)
        if until is not None:
            query = query.where(_events.c.created_at < until)
        if verdict:
            query = query.where(_events.c.verdict == verdict)
        if direction:
            query = query.where(_events.c.direction == direction)
        query = query.order_by(_events.c.created_at.desc(), _events.c.id.desc())
        query = query.limit(max(1, min(limit, MAX_SEARCH)))
        with self._engine.connect() as conn:
            return [event_of(row._mapping) for row in conn.execute(query)]

    def scored(self, fingerprint: str) -> bool:
        """Whether a message with ``fingerprint`` is on the trail (or waiting to be)."""
        with self._lock:
            if any(row.fingerprint == fingerprint for row in self._buffer):
                return True
        query = select(_events.c.id).where(_events.c.fingerprint == fingerprint).limit(1)
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None

    def scored_for(self, fingerprint: str, address: str) -> bool:
        """Whether a message with ``fingerprint`` was scored with ``address`` (lower-case,
        no brackets) among its recipients: what lets a user report only their own mail.
        Looks at this process's rows still waiting to be written too."""
        with self._lock:
            for row in self._buffer:
                if row.fingerprint == fingerprint and address in map(personal_key, row.recipients):
                    return True
        query = (
            select(_events.c.recipients)
            .where(_events.c.fingerprint == fingerprint)
            .order_by(_events.c.id.desc())
            .limit(MAX_SEARCH)
        )
        with self._engine.connect() as conn:
            for (recipients,) in conn.execute(query):
                if address in (personal_key(str(r)) for r in _json_list(recipients)):
                    return True
        return False

    def count_since(self, since: float, *, direction: str | None = None) -> int:
        """Verdicts recorded at or after ``since``, optionally of one direction."""
        query = select(func.count()).select_from(_events).where(_events.c.created_at >= since)
        if direction:
            query = query.where(_events.c.direction == direction)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def gateways_last_seen(self, gateways: Iterable[str], *, since: float) -> dict[str, float]:
        """When each named gateway's latest verdict at or after ``since`` was recorded.

        A gateway missing from the result was not seen in the window. One query per
        gateway, newest first on the time index: an active gateway costs a few rows
        however long the trail is.
        """
        seen: dict[str, float] = {}
        with self._engine.connect() as conn:
            for name in sorted({g.strip()[:255] for g in gateways if g.strip()}):
                at = conn.execute(
                    select(_events.c.created_at)
                    .where(_events.c.gateway == name, _events.c.created_at >= since)
                    .order_by(_events.c.created_at.desc())
                    .limit(1)
                ).scalar()
                if at is not None:
                    seen[name] = float(at)
        return seen

    def outbound_report(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Per sending user: volume, recipients, spam share, DLP findings, limit hits, states."""
        where = [_events.c.direction == "outbound", _events.c.created_at >= since]
        if until is not None:
            where.append(_events.c.created_at < until)
        e = _events.c
        totals = (
            select(
                e.account,
                func.count().label("messages"),
                func.sum(e.rcpt_count).label("recipients"),
                func.sum(case((e.verdict == "spam", 1), else_=0)).label("spam"),
                func.sum(case((e.verdict == "suspect", 1), else_=0)).label("suspect"),
                func.sum(case((e.dlp_findings > 0, 1), else_=0)).label("dlp_messages"),
                func.sum(e.dlp_findings).label("dlp_findings"),
                func.sum(case((e.limit_hits.is_not(None), 1), else_=0)).label("limit_hits"),
            )
            .where(*where)
            .group_by(e.account)
        )
        states = (
            select(e.account, e.account_state, func.count().label("n"))
            .where(*where, e.account_state.is_not(None))
            .group_by(e.account, e.account_state)
        )
        limits = (
            select(e.account, e.limit_hits, func.count().label("n"))
            .where(*where, e.limit_hits.is_not(None))
            .group_by(e.account, e.limit_hits)
        )
        leaks = select(e.account, e.dlp).where(*where, e.dlp_findings > 0)
        report: dict[str, dict[str, Any]] = {}
        with self._engine.connect() as conn:
            for row in conn.execute(totals):
                messages = int(row.messages)
                report[row.account or ""] = {
                    "user": row.account or "",
                    "messages": messages,
                    "recipients": int(row.recipients or 0),
                    "spam": int(row.spam or 0),
                    "suspect": int(row.suspect or 0),
                    "spam_share": round(int(row.spam or 0) / messages, 4) if messages else 0.0,
                    "dlp_messages": int(row.dlp_messages or 0),
                    "dlp_findings": int(row.dlp_findings or 0),
                    "dlp_by_type": {},
                    "dlp_max_severity": None,
                    "limit_hits": int(row.limit_hits or 0),
                    "limits": {},
                    "account_states": {},
                }
            for row in conn.execute(states):
                report[row.account or ""]["account_states"][row.account_state] = int(row.n)
            for row in conn.execute(limits):
                counts = report[row.account or ""]["limits"]
                for name in str(row.limit_hits).split(","):
                    counts[name] = counts.get(name, 0) + int(row.n)
            for row in conn.execute(leaks):
                entry = report[row.account or ""]
                for kind, count, severity in _json_list(row.dlp):
                    entry["dlp_by_type"][kind] = entry["dlp_by_type"].get(kind, 0) + int(count)
                    worst = entry["dlp_max_severity"]
                    if _SEVERITY_ORDER.get(severity, 0) > _SEVERITY_ORDER.get(worst or "", 0):
                        entry["dlp_max_severity"] = severity
        return sorted(report.values(), key=lambda r: (-r["messages"], r["user"]))


# --- rows ----------------------------------------------------------------------------------


def _cap(value: str | None, n: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:n] if value else None


def _addr(value: str | None) -> str | None:
    return _cap(value.lower() if value else None, 320)


def _message_id(value: str) -> str:
    return value.strip().strip("<>").strip()[:998]


def _to_row(r: AuditRecord) -> dict[str, Any]:
    recipients = [a.strip().lower()[:320] for a in r.recipients[:MAX_RECIPIENTS]]
    limits = sorted({name for name, _ in r.reasons if name.startswith(LIMIT_PREFIX)})
    user = _addr(r.user)
    mail_from = _addr(r.mail_from)
    return {
        "created_at": r.time,
        "direction": r.direction[:8],
        "gateway": _cap(r.gateway, 255),
        "queue_id": _cap(r.queue_id, 255),
        "message_id": _message_id(r.message_id or "") or None,
        "mail_from": mail_from,
        "from_addr": _addr(r.from_addr),
        "owner": user,
        "account": user or mail_from or "",
        "recipients": json.dumps(recipients),
        "rcpt_count": len(r.recipients),
        "score": r.score,
        "verdict": r.verdict[:8],
        "action": r.action[:16],
        "reasons": json.dumps([[name[:64], round(w, 4)] for name, w in r.reasons]),
        "limit_hits": ",".join(limits)[:1000] or None,
        "dlp": json.dumps([[t[:64], int(c), s[:16]] for t, c, s in r.dlp]),
        "dlp_findings": sum(int(c) for _, c, _ in r.dlp),
        "model_version": _cap(r.model_version, 64),
        "fingerprint": _cap(r.fingerprint, 128),
        "account_state": _cap(r.account_state, 16),
    }


def event_of(row: Any) -> dict[str, Any]:
    """A stored row as the API and the console show it."""
    return {
        "id": int(row["id"]),
        "time": datetime.fromtimestamp(row["created_at"], UTC).isoformat(),
        "timestamp": float(row["created_at"]),
        "direction": row["direction"],
        "gateway": row["gateway"],
        "queue_id": row["queue_id"],
        "message_id": row["message_id"],
        "mail_from": row["mail_from"],
        "from": row["from_addr"],
        "recipients": _json_list(row["recipients"]),
        "user": row["owner"],
        "score": float(row["score"]),
        "verdict": row["verdict"],
        "action": row["action"],
        "reasons": [{"name": n, "weight": w} for n, w in _json_list(row["reasons"])],
        "dlp": [{"type": t, "count": c, "severity": s} for t, c, s in _json_list(row["dlp"])],
        "model_version": row["model_version"],
        "fingerprint": row["fingerprint"],
        "account_state": row["account_state"],
    }


def _json_list(text: str | None) -> Sequence[Any]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []
