"""Per-user sending counters and risk states, shared by every worker and replica.

Everything lives in the state database (:func:`~mailsift.service.db.open_state_engine`)
so that limits hold across processes and restarts. Counters are kept in one-minute
buckets: a rolling hour is the last 60 buckets, a rolling day the last 1440, without a
row per message. Hourly totals are kept longer, for the user's usual rate.

User names are compared case-insensitively (``Alice@Example.com`` and
``alice@example.com`` share one set of counters), so changing case cannot dodge a limit.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from mailsift.service.accounts import (
    LIMIT_NAMES,
    RISK_STATES,
    AccountState,
    AccountStats,
    Limits,
    RiskState,
    SendingDecision,
    StateChange,
    UsualRate,
)
from mailsift.service.db import (
    Busy,
    ManyRunner,
    Runner,
    busy_as,
    core_many,
    core_runner,
    delete_in_turns,
    hot_statement,
    lock_key_for,
    nowait_engine,
    nowait_raw_transaction,
    nowait_write_transaction,
    raw_many,
    raw_runner,
    write_transaction,
)
from mailsift.service.identity import MAX_IDENTITY, identity_key
from mailsift.service.settings import Settings

__all__ = ["AccountStore", "normalise_user"]

log = logging.getLogger("mailsift.accounts")
T = TypeVar("T")

HOUR_MINUTES = 60
DAY_MINUTES = 24 * 60
MINUTE_RETENTION = 25 * 60  # minutes: a rolling day plus slack for clock skew
HOUR_RETENTION = 8 * 24  # hours: the usual rate looks back a week
USUAL_LOOKBACK_HOURS = 7 * 24
DOMAIN_RETENTION_SECONDS = 180 * 86400.0
PRUNE_EVERY_SECONDS = 3600.0
STATE_CACHE_SECONDS = 1.0
"""How long this process scores with a risk state it read (its own changes show at once)."""
QUERY_CHUNK = 500  # users per grouped query: well under every driver's parameter limit
MAX_CACHED_USERS = 100_000
MAX_PENDING_ROWS = 1_000_000  # queued rows kept while the database is unreachable
# An hour of ordinary mail is never judged against less than this, so that a user who
# sends two messages a day is not a "burst" at eleven.
USUAL_FLOOR_MESSAGES = 10.0
USUAL_FLOOR_RECIPIENTS = 50.0
MAX_USER = MAX_IDENTITY
MAX_DOMAIN = 255
MAX_REASON = 1000

_metadata = MetaData()

_minutes = Table(
    "account_minutes",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("minute", Integer, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("scored", Integer, nullable=False),
    Column("spam", Integer, nullable=False),
)
Index("account_minutes_by_minute", _minutes.c.minute)

_hours = Table(
    "account_hours",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("hour", Integer, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("recipients", Integer, nullable=False),
)
Index("account_hours_by_hour", _hours.c.hour)

_domains = Table(
    "account_domains",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("domain", String(MAX_DOMAIN), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)
Index("account_domains_by_first_seen", _domains.c.user, _domains.c.first_seen)
Index("account_domains_by_last_seen", _domains.c.last_seen)

_auth = Table(
    "account_auth_failures",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("client_ip", String(64), primary_key=True),
    Column("minute", Integer, primary_key=True),
    Column("failures", Integer, nullable=False),
)
Index("account_auth_failures_by_user", _auth.c.user, _auth.c.minute)
Index("account_auth_failures_by_minute", _auth.c.minute)

_state = Table(
    "account_state",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("since", Float, nullable=False),
    Column("reason", String(MAX_REASON), nullable=False),
    # The administrator's last clear, and the counts its minute bucket already held then:
    # the risk window starts at that bucket minus those counts, to the message.
    Column("reset_at", Float, nullable=True),
    Column("reset_messages", Integer, nullable=False, default=0),
    Column("reset_recipients", Integer, nullable=False, default=0),
    Column("reset_scored", Integer, nullable=False, default=0),
    Column("reset_spam", Integer, nullable=False, default=0),
    Column("reset_auth", Integer, nullable=False, default=0),
)
_BASE_COLUMNS = ("messages", "recipients", "scored", "spam", "auth")


@dataclass(frozen=True, slots=True)
class _Window:
    """The risk window: from ``start`` (epoch seconds), i.e. from bucket ``minute`` less
    the ``base`` counts that bucket held before the window began."""

    minute: int
    start: float
    base: dict[str, int]


_history = Table(
    "account_state_history",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(MAX_USER), nullable=False),
    Column("at", Float, nullable=False),
    Column("old_state", String(16), nullable=False),
    Column("new_state", String(16), nullable=False),
    Column("reason", String(MAX_REASON), nullable=False),
    Column("by", String(MAX_USER), nullable=False),
)
Index("account_state_history_by_user", _history.c.user, _history.c.id)


def normalise_user(user: str) -> str:
    """The key one user's counters are kept under (:func:`identity_key`: checked after
    lower-casing); InvalidIdentity, a ValueError and a 400, when unusable."""
    return identity_key(user)


def _domain_of(address: str) -> str | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return domain[:MAX_DOMAIN]


def _insert(conn: Connection) -> Callable[[Table], Any]:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


# -- statements, built once: only their parameters change from call to call ------------

_m, _h, _d, _a, _s = _minutes.c, _hours.c, _domains.c, _auth.c, _state.c
_KEY = bindparam("key", type_=String)
_KEYS = bindparam("keys", expanding=True, type_=String)
_HOUR_START = bindparam("hour_start", type_=Integer)  # the first minute of the risk window
_DAY_START = bindparam("day_start", type_=Integer)
_SINCE = bindparam("since", type_=Float)
_FLUSH_LOCK_KEY = lock_key_for("accounts:flush")


def _in_hour(column: Any) -> Any:
    return func.coalesce(func.sum(case((_m.minute >= _HOUR_START, column), else_=0)), 0)


_SENDING_COUNTS = select(
    _in_hour(_m.messages), _in_hour(_m.recipients), func.coalesce(func.sum(_m.messages), 0)
).where(_m.user == _KEY, _m.minute >= _DAY_START)

_STATE_OF = select(_s.state, _s.since, _s.reason).where(_s.user == _KEY)
_STATE_ROWS = select(_s.user, _s.state, _s.since, _s.reason, _s.reset_at).where(_s.user.in_(_KEYS))
_MINUTES_BY_USER = (
    select(
        _m.user,
        _in_hour(_m.messages),
        _in_hour(_m.recipients),
        func.sum(_m.messages),
        _in_hour(_m.scored),
        _in_hour(_m.spam),
    )
    .where(_m.user.in_(_KEYS), _m.minute >= _DAY_START)
    .group_by(_m.user)
)
_AUTH_BY_USER = (
    select(_a.user, func.sum(_a.failures), func.count(func.distinct(_a.client_ip)))
    .where(_a.user.in_(_KEYS), _a.minute >= _HOUR_START)
    .group_by(_a.user)
)
_NEW_DOMAINS_BY_USER = (
    select(_d.user, func.count())
    .where(_d.user.in_(_KEYS), _d.first_seen >= _SINCE)
    .group_by(_d.user)
)
_KNOWN_SINCE_BY_USER = (
    select(_d.user, func.min(_d.first_seen)).where(_d.user.in_(_KEYS)).group_by(_d.user)
)
_ACTIVE_HOURS = select(_h.user, _h.messages, _h.recipients).where(
    _h.user.in_(_KEYS),
    _h.hour >= bindparam("from_hour", type_=Integer),
    _h.hour < bindparam("hour", type_=Integer),
    _h.messages > 0,
)


@dataclass(frozen=True, slots=True)
class _Upserts:
    """The dialect's ``INSERT … ON CONFLICT DO UPDATE`` statements; rows come as parameters."""

    sent: Any
    outcome: Any
    hour: Any
    domain: Any


@functools.cache
def _upserts(dialect: str) -> _Upserts:
    insert: Callable[[Table], Any] = postgresql.insert if dialect == "postgresql" else sqlite.insert
    minute = [_m.user, _m.minute]
    sent = insert(_minutes)
    outcome = insert(_minutes)
    hour = insert(_hours)
    domain = insert(_domains)
    new = domain.excluded
    return _Upserts(
        sent=sent.on_conflict_do_update(
            index_elements=minute,
            set_={
                "messages": _m.messages + sent.excluded.messages,
                "recipients": _m.recipients + sent.excluded.recipients,
            },
        ),
        outcome=outcome.on_conflict_do_update(
            index_elements=minute,
            set_={
                "scored": _m.scored + outcome.excluded.scored,
                "spam": _m.spam + outcome.excluded.spam,
            },
        ),
        hour=hour.on_conflict_do_update(
            index_elements=[_h.user, _h.hour],
            set_={
                "messages": _h.messages + hour.excluded.messages,
                "recipients": _h.recipients + hour.excluded.recipients,
            },
        ),
        # Flushes of several workers may land out of order: keep the earliest first sight.
        domain=domain.on_conflict_do_update(
            index_elements=[_d.user, _d.domain],
            set_={
                "first_seen": case(
                    (new.first_seen < _d.first_seen, new.first_seen), else_=_d.first_seen
                ),
                "last_seen": case(
                    (new.last_seen > _d.last_seen, new.last_seen), else_=_d.last_seen
                ),
            },
        ),
    )


_HOT_COUNTS = hot_statement(lambda _: _SENDING_COUNTS)
_HOT_STATE = hot_statement(lambda _: _STATE_OF)
_HOT_HOURS = hot_statement(
    lambda dialect: _upserts(dialect).hour, "user", "hour", "messages", "recipients"
)
_HOT_OUTCOMES = hot_statement(
    lambda dialect: _upserts(dialect).outcome,
    "user",
    "minute",
    "messages",
    "recipients",
    "scored",
    "spam",
)
_HOT_DOMAINS = hot_statement(
    lambda dialect: _upserts(dialect).domain, "user", "domain", "first_seen", "last_seen"
)
_HOT_SENT = hot_statement(
    lambda dialect: _upserts(dialect).sent,
    "user",
    "minute",
    "messages",
    "recipients",
    "scored",
    "spam",
)


class _Pending:
    """What this process recorded and has not written yet, summed per row it will update."""

    __slots__ = ("domains", "hours", "outcomes")

    def __init__(self) -> None:
        self.hours: dict[tuple[str, int], list[int]] = {}  # messages, recipients
        self.outcomes: dict[tuple[str, int], list[int]] = {}  # scored, spam
        self.domains: dict[tuple[str, str], list[float]] = {}  # first seen, last seen

    def __len__(self) -> int:
        return len(self.hours) + len(self.outcomes) + len(self.domains)

    def users(self) -> set[str]:
        return (
            {k[0] for k in self.hours}
            | {k[0] for k in self.outcomes}
            | {k[0] for k in self.domains}
        )

    def add_counts(self, into: dict[Any, list[int]], key: Any, first: int, second: int) -> None:
        row = into.get(key)
        if row is None:
            into[key] = [first, second]
        else:
            row[0] += first
            row[1] += second

    def add_domain(self, key: tuple[str, str], first: float, last: float) -> None:
        row = self.domains.get(key)
        if row is None:
            self.domains[key] = [first, last]
        else:
            row[0], row[1] = min(row[0], first), max(row[1], last)

    def absorb(self, other: _Pending) -> None:
        for key, (a, b) in other.hours.items():
            self.add_counts(self.hours, key, a, b)
        for key, (a, b) in other.outcomes.items():
            self.add_counts(self.outcomes, key, a, b)
        for where, (first, last) in other.domains.items():
            self.add_domain(where, first, last)


class AccountStore:
    """Sending counters, recipient domains, outcomes, auth failures and risk states.

    Methods are synchronous (call them through a threadpool) and take ``now`` so that
    tests and replays control time. Every write that must be exact for one user holds
    that user's lock (``limits:<user>``): on PostgreSQL an advisory lock, on SQLite the
    file's write lock.

    Only the limit check and the minute bucket it counts in are written by the request
    (:meth:`check_and_record`). What the risk rules read besides — the hourly roll-up
    behind the usual rate, recipient domains, how messages scored — is queued in memory
    and written by :meth:`flush` in one transaction, every fraction of a second, so the
    risk numbers lag the limits by that much (and a crashed process loses that much of
    them; a stopped one flushes first). Reading a user's numbers (:meth:`stats`) writes
    this process's queue first.

    :meth:`nowait` runs a method on the event loop itself without ever waiting, for the
    score path on SQLite: a thread resuming after each SQLite call has to win the
    interpreter lock back from the busy event loop, which turned a transaction of four
    statements into tens of milliseconds under load, all with the write lock held.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        state_cache_seconds: float = STATE_CACHE_SECONDS,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.state_cache_seconds = state_cache_seconds
        self._overrides = _overrides(settings.limit_overrides)
        self._next_prune = 0.0
        self._lock = threading.Lock()  # guards the queue and the users to judge
        # One flush at a time: a flush that starts after something was queued writes it,
        # or waits for the flush that took it to commit.
        self._flush_lock = threading.RLock()
        self._pending = _Pending()
        self._unjudged: set[str] = set()
        # user -> (when read or written (monotonic), state); see cached_state
        self._states: dict[str, tuple[float, AccountState]] = {}
        # user -> (clock hour, usual rate, domains known since); see assessments
        self._histories: dict[str, tuple[int, UsualRate, float | None]] = {}
        self._nowait_engine = nowait_engine(engine)
        self._mode = threading.local()  # .nowait: this thread is inside nowait()
        with write_transaction(engine, lock_key=lock_key_for("accounts:schema")) as conn:
            _metadata.create_all(conn)

    def close(self) -> None:
        """Release the connections of the no-wait engine (the caller owns ``engine``)."""
        if self._nowait_engine is not None:
            self._nowait_engine.dispose()

    # -- where calls run ------------------------------------------------------------

    @property
    def on_loop(self) -> bool:
        """Whether :meth:`nowait` can work here: SQLite, a local file."""
        return self._nowait_engine is not None

    def nowait(self, call: Callable[..., T], *args: Any) -> T:
        """Run ``call`` (a method of this store) so that it never waits, for the event
        loop: :class:`~mailsift.service.db.Busy` when it would have to (another writer
        holds the database, or this is PostgreSQL, whose round trips belong in a
        thread). Nothing is written then: call it again from a thread."""
        if self._nowait_engine is None:
            raise Busy
        self._mode.nowait = True
        try:
            return call(*args)
        finally:
            self._mode.nowait = False

    def _waits(self) -> bool:
        return not getattr(self._mode, "nowait", False)

    def _reading(self) -> AbstractContextManager[Connection]:
        if self._waits() or self._nowait_engine is None:
            return self.engine.connect()
        return _nowait_read(self._nowait_engine)

    def _writing(self, lock_key: int) -> AbstractContextManager[Connection]:
        if self._waits() or self._nowait_engine is None:
            return write_transaction(self.engine, lock_key=lock_key)
        return nowait_write_transaction(self._nowait_engine)

    @contextmanager
    def _flushing(self) -> Iterator[None]:
        if not self._flush_lock.acquire(blocking=self._waits()):
            raise Busy
        try:
            yield
        finally:
            self._flush_lock.release()

    # -- limits ---------------------------------------------------------------------

    def limits_for(self, user: str) -> Limits:
        """The settings' defaults with this user's overrides applied."""
        s = self.settings
        values = {
            "messages_per_hour": s.limit_messages_per_hour,
            "messages_per_day": s.limit_messages_per_day,
            "recipients_per_hour": s.limit_recipients_per_hour,
        }
        values.update(self._overrides.get(normalise_user(user), {}))
        return Limits(**values)

    def admit(
        self, user: str, recipients: list[str], now: float
    ) -> tuple[SendingDecision, AccountState]:
        """What scoring one outbound message needs, in one transaction: the sender's risk
        state, and whether the message fits under their limits (counted if so).

        The state is this process's copy while at most ``state_cache_seconds`` old, else
        read under the user's lock. A suspended user's message is checked but not
        counted (it is held anyway); see :meth:`check_and_record`.
        """
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = _recipients(recipients)
        cached = self._cached(key)
        read_at = time.monotonic()

        def admit(run: Runner) -> tuple[SendingDecision, AccountState]:
            account = cached or _account_state(key, run(_HOT_STATE, {"key": key}))
            suspended = account.state == "suspended"
            return self._check(run, key, limits, len(rcpts), now, dry_run=suspended), account

        if self._waits() or self._nowait_engine is None:
            with self._writing(lock_key_for("limits:" + key)) as conn:
                decision, account = admit(core_runner(conn))
        else:
            with nowait_raw_transaction(self._nowait_engine) as db:
                decision, account = admit(raw_runner(db))
        if cached is None:
            self._remember(account, read_at)
        if decision.recorded:
            self._queue_sent(key, rcpts, now)
        return decision, account

    def check_and_record(
        self, user: str, recipients: list[str], now: float, *, dry_run: bool = False
    ) -> SendingDecision:
        """Decide whether one message fits under every limit and, if so, count it.

        Atomic across processes: the counts are read and the message recorded under the
        user's lock, so N workers cannot each let the N-th message through. A refused
        message is not counted (the gateway's retry would otherwise count twice), and
        neither is anything with ``dry_run`` (mail of a suspended user, held anyway).
        The hourly roll-up and the recipient domains of a counted message are queued
        for :meth:`flush`.
        """
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = _recipients(recipients)
        with self._writing(lock_key_for("limits:" + key)) as conn:
            decision = self._check(core_runner(conn), key, limits, len(rcpts), now, dry_run=dry_run)
        if decision.recorded:
            self._queue_sent(key, rcpts, now)
        return decision

    def _check(
        self, run: Runner, key: str, limits: Limits, rcpts: int, now: float, *, dry_run: bool
    ) -> SendingDecision:
        """The limit check and the minute bucket's increment: all that must be exact."""
        minute = int(now // 60)
        row = run(
            _HOT_COUNTS,
            {
                "key": key,
                "hour_start": minute - HOUR_MINUTES + 1,
                "day_start": minute - DAY_MINUTES + 1,
            },
        )
        assert row is not None  # an aggregate: always one row
        messages_hour, recipients_hour, messages_day = int(row[0]), int(row[1]), int(row[2])
        wanted = {
            "messages_per_hour": messages_hour + 1,
            "messages_per_day": messages_day + 1,
            "recipients_per_hour": recipients_hour + rcpts,
        }
        exceeded = tuple(name for name in LIMIT_NAMES if 0 < limits.of(name) < wanted[name])
        record = not exceeded and not dry_run
        if record:
            run(
                _HOT_SENT,
                {
                    "user": key,
                    "minute": minute,
                    "messages": 1,
                    "recipients": rcpts,
                    "scored": 0,
                    "spam": 0,
                },
            )
            messages_hour, recipients_hour, messages_day = (
                wanted["messages_per_hour"],
                wanted["recipients_per_hour"],
                wanted["messages_per_day"],
            )
        return SendingDecision(
            user=key,
            allowed=not exceeded,
            exceeded=exceeded,
            limits=limits,
            messages_hour=messages_hour,
            messages_day=messages_day,
            recipients_hour=recipients_hour,
            recipients=rcpts,
            recorded=record,
        )

    def _queue_sent(self, key: str, rcpts: set[str], now: float) -> None:
        domains = {d for d in map(_domain_of, rcpts) if d}
        with self._lock:
            pending = self._pending
            pending.add_counts(pending.hours, (key, int(now // 3600)), 1, len(rcpts))
            for domain in domains:
                pending.add_domain((key, domain), now, now)

    # -- signals --------------------------------------------------------------------

    def record_outcome(self, user: str, verdict: str, now: float) -> None:
        """Count one scored outbound message of ``user``, and whether it was spam (queued
        for :meth:`flush`; never touches the database)."""
        if verdict not in ("ham", "suspect", "spam"):
            raise ValueError(f"unknown verdict {verdict!r}")
        key = normalise_user(user)
        with self._lock:
            pending = self._pending
            pending.add_counts(pending.outcomes, (key, int(now // 60)), 1, int(verdict == "spam"))

    def pending(self) -> bool:
        """Whether :meth:`flush` has anything to do (no I/O)."""
        return bool(self._pending) or bool(self._unjudged)

    def flush(self) -> set[str]:
        """Write what was queued, in one transaction; the users written since the last call.

        The caller re-judges those users: their numbers changed. On a database error
        (or :class:`~mailsift.service.db.Busy`) the queue is kept for the next flush.
        """
        with self._flushing():
            self._write_pending()
            with self._lock:
                users, self._unjudged = self._unjudged, set()
        return users

    async def prune_if_due(self, now: float) -> None:
        """:meth:`prune`, at most once an hour (the flusher calls it)."""
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            await self.prune(now)

    def _write_pending(self) -> None:
        with self._flushing():
            with self._lock:
                batch, self._pending = self._pending, _Pending()
            if not batch:
                return
            try:
                if self._waits() or self._nowait_engine is None:
                    with self._writing(_FLUSH_LOCK_KEY) as conn:
                        _write_batch(core_many(conn), batch)
                else:
                    with nowait_raw_transaction(self._nowait_engine) as db:
                        _write_batch(raw_many(db), batch)
            except Exception:
                with self._lock:
                    batch.absorb(self._pending)
                    if len(batch) <= MAX_PENDING_ROWS:
                        self._pending = batch
                    else:  # the database has been away for long: keep only what is new
                        self._pending = _Pending()
                        log.error("account counters lost: %d rows could not be written", len(batch))
                raise
            with self._lock:
                self._unjudged |= batch.users()

    def _write_pending_best_effort(self) -> None:
        try:
            self._write_pending()
        except Busy:
            raise
        except Exception as exc:  # a read must not fail because a write did
            log.error("writing queued account counters failed: %s", type(exc).__name__)

    def record_auth_failure(self, user: str, client_ip: str, now: float) -> int:
        """Count one failed login; returns the user's failures in the risk window."""
        key = normalise_user(user)
        ip = ipaddress.ip_address(client_ip.strip()).compressed
        minute = int(now // 60)
        with self._writing(lock_key_for("limits:" + key)) as conn:
            ins = _insert(conn)(_auth).values(user=key, client_ip=ip, minute=minute, failures=1)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[_auth.c.user, _auth.c.client_ip, _auth.c.minute],
                    set_={"failures": _auth.c.failures + ins.excluded.failures},
                )
            )
            window = self._window(conn, key, now)
            failures, _ips = self._auth_counts(conn, key, window)
        return failures

    def _auth_counts(self, conn: Connection, key: str, window: _Window) -> tuple[int, int]:
        """Failures and distinct client addresses in the window (addresses seen only
        just before a clear, in the clear's minute, still count: they are a display)."""
        a = _auth.c
        row = conn.execute(
            select(
                func.coalesce(func.sum(a.failures), 0), func.count(func.distinct(a.client_ip))
            ).where(a.user == key, a.minute >= window.minute)
        ).one()
        return max(0, int(row[0]) - window.base["auth"]), int(row[1])

    def _window(self, conn: Connection, key: str, now: float) -> _Window:
        """The risk window: the last hour, but nothing from before the last clear."""
        start = now - 3600
        minute = int(now // 60) - HOUR_MINUTES + 1
        s = _state.c
        row = conn.execute(
            select(s.reset_at, *(getattr(s, f"reset_{n}") for n in _BASE_COLUMNS)).where(
                s.user == key
            )
        ).first()
        if row is None or row[0] is None or row[0] <= start:
            return _Window(minute, start, dict.fromkeys(_BASE_COLUMNS, 0))
        reset_at = float(row[0])
        return _Window(
            int(reset_at // 60),
            reset_at,
            {n: int(v) for n, v in zip(_BASE_COLUMNS, row[1:], strict=True)},
        )

    def _base(self, conn: Connection, key: str, minute: int) -> dict[str, int]:
        """What the user's bucket ``minute`` holds now (taken at a clear)."""
        m, a = _minutes.c, _auth.c
        row = conn.execute(
            select(m.messages, m.recipients, m.scored, m.spam).where(
                m.user == key, m.minute == minute
            )
        ).first()
        auth = conn.execute(
            select(func.coalesce(func.sum(a.failures), 0)).where(a.user == key, a.minute == minute)
        ).scalar_one()
        counts = [int(v) for v in row] if row is not None else [0, 0, 0, 0]
        return {f"reset_{n}": v for n, v in zip(_BASE_COLUMNS, [*counts, int(auth)], strict=True)}

    def usual_hourly_rate(self, user: str, now: float) -> UsualRate:
        """Median messages and recipients over the hours of the past week in which the
        user sent anything (the current hour excluded), never below a floor.

        Only active hours count, so that nights and weekends do not make every working
        hour look like a burst; the median, so that one earlier burst does not become
        the norm.
        """
        key = normalise_user(user)
        self._write_pending_best_effort()
        with self._reading() as conn:
            return self._usual(conn, key, int(now // 3600))

    def _usual(self, conn: Connection, key: str, hour: int) -> UsualRate:
        rows = conn.execute(
            _ACTIVE_HOURS,
            {"keys": [key], "from_hour": hour - USUAL_LOOKBACK_HOURS, "hour": hour},
        ).all()
        return _usual_of([(int(r[1]), int(r[2])) for r in rows])

    def stats(self, user: str, now: float) -> AccountStats:
        """The user's numbers for :func:`mailsift.service.accounts.risk.assess`, after
        writing this process's queue."""
        key = normalise_user(user)
        self._write_pending_best_effort()
        with self._reading() as conn:
            return self._stats(conn, key, now)

    def _stats(self, conn: Connection, key: str, now: float) -> AccountStats:
        minute = int(now // 60)
        m, d = _minutes.c, _domains.c
        window = self._window(conn, key, now)
        in_window = m.minute >= window.minute
        row = conn.execute(
            select(
                func.coalesce(func.sum(case((in_window, m.messages), else_=0)), 0),
                func.coalesce(func.sum(case((in_window, m.recipients), else_=0)), 0),
                func.coalesce(func.sum(m.messages), 0),
                func.coalesce(func.sum(case((in_window, m.scored), else_=0)), 0),
                func.coalesce(func.sum(case((in_window, m.spam), else_=0)), 0),
            ).where(m.user == key, m.minute >= minute - DAY_MINUTES + 1)
        ).one()
        failures, ips = self._auth_counts(conn, key, window)
        new_domains = int(
            conn.execute(
                select(func.count()).where(d.user == key, d.first_seen >= window.start)
            ).scalar_one()
        )
        known_since = conn.execute(
            select(func.min(d.first_seen)).where(d.user == key)
        ).scalar_one_or_none()
        usual = self._usual(conn, key, int(now // 3600))
        return AccountStats(
            user=key,
            at=now,
            window_start=window.start,
            messages_hour=max(0, int(row[0]) - window.base["messages"]),
            recipients_hour=max(0, int(row[1]) - window.base["recipients"]),
            messages_day=int(row[2]),
            scored_hour=max(0, int(row[3]) - window.base["scored"]),
            spam_hour=max(0, int(row[4]) - window.base["spam"]),
            new_domains_hour=new_domains,
            auth_failures_hour=failures,
            auth_failure_ips_hour=ips,
            usual=usual,
            domains_known_since=None if known_since is None else float(known_since),
        )

    def assessments(
        self, users: Iterable[str], now: float
    ) -> list[tuple[AccountState, AccountStats]]:
        """Many users' states and numbers at once, in a few grouped queries (what a
        flush re-judges). Reads only what is written: call :meth:`flush` first."""
        keys = sorted({normalise_user(u) for u in users})
        out: list[tuple[AccountState, AccountStats]] = []
        with self._reading() as conn:
            for i in range(0, len(keys), QUERY_CHUNK):
                out.extend(self._assess_chunk(conn, keys[i : i + QUERY_CHUNK], now))
        return out

    def _assess_chunk(
        self, conn: Connection, keys: list[str], now: float
    ) -> list[tuple[AccountState, AccountStats]]:
        minute, start = int(now // 60), now - 3600
        read_at = time.monotonic()
        out: list[tuple[AccountState, AccountStats]] = []
        plain: dict[str, AccountState] = {}
        rows = {str(r[0]): r for r in conn.execute(_STATE_ROWS, {"keys": keys})}
        for key in keys:
            row = rows.get(key)
            account = (
                AccountState(key, "ok", None, "")
                if row is None
                else AccountState(key, _risk_state(row[1]), float(row[2]), str(row[3]))
            )
            self._remember(account, read_at)
            if row is not None and row[4] is not None and float(row[4]) > start:
                out.append((account, self._stats(conn, key, now)))  # cleared within the hour
            else:
                plain[key] = account
        if not plain:
            return out
        users = list(plain)
        hour_start, day_start = minute - HOUR_MINUTES + 1, minute - DAY_MINUTES + 1
        sums = {
            str(r[0]): r[1:]
            for r in conn.execute(
                _MINUTES_BY_USER, {"keys": users, "hour_start": hour_start, "day_start": day_start}
            )
        }
        auth = {
            str(r[0]): r[1:]
            for r in conn.execute(_AUTH_BY_USER, {"keys": users, "hour_start": hour_start})
        }
        fresh = {
            str(r[0]): int(r[1])
            for r in conn.execute(_NEW_DOMAINS_BY_USER, {"keys": users, "since": start})
        }
        histories = self._history_of(conn, users, int(now // 3600))
        for key, account in plain.items():
            counts = sums.get(key, (0, 0, 0, 0, 0))
            failures = auth.get(key, (0, 0))
            usual, known_since = histories[key]
            stats = AccountStats(
                user=key,
                at=now,
                window_start=start,
                messages_hour=int(counts[0]),
                recipients_hour=int(counts[1]),
                messages_day=int(counts[2]),
                scored_hour=int(counts[3]),
                spam_hour=int(counts[4]),
                new_domains_hour=fresh.get(key, 0),
                auth_failures_hour=int(failures[0]),
                auth_failure_ips_hour=int(failures[1]),
                usual=usual,
                domains_known_since=known_since,
            )
            out.append((account, stats))
        return out

    def _history_of(
        self, conn: Connection, keys: list[str], hour: int
    ) -> dict[str, tuple[UsualRate, float | None]]:
        """Usual rate and mailing history since: both stand still within a clock hour (the
        usual rate leaves the current hour out), so they are read once an hour per user."""
        found: dict[str, tuple[UsualRate, float | None]] = {}
        missing = []
        for key in keys:
            hit = self._histories.get(key)
            if hit is not None and hit[0] == hour:
                found[key] = hit[1], hit[2]
            else:
                missing.append(key)
        if not missing:
            return found
        if len(self._histories) > MAX_CACHED_USERS:
            self._histories.clear()
        active: dict[str, list[tuple[int, int]]] = {key: [] for key in missing}
        for r in conn.execute(
            _ACTIVE_HOURS,
            {"keys": missing, "from_hour": hour - USUAL_LOOKBACK_HOURS, "hour": hour},
        ):
            active[str(r[0])].append((int(r[1]), int(r[2])))
        known = {
            str(r[0]): float(r[1])
            for r in conn.execute(_KNOWN_SINCE_BY_USER, {"keys": missing})
            if r[1] is not None
        }
        for key in missing:
            usual = _usual_of(active[key])
            self._histories[key] = (hour, usual, known.get(key))
            found[key] = usual, known.get(key)
        return found

    # -- risk state -----------------------------------------------------------------

    def get_state(self, user: str) -> AccountState:
        """The user's risk state as the database has it now."""
        key = normalise_user(user)
        read_at = time.monotonic()
        with self._reading() as conn:
            account = self._get_state(conn, key)
        self._remember(account, read_at)
        return account

    def cached_state(self, user: str) -> AccountState:
        """The user's risk state as this process read or wrote it at most
        ``state_cache_seconds`` ago: what scoring uses, so that a state another worker
        changed holds here within about a second, without a read per message."""
        key = normalise_user(user)
        return self._cached(key) or self.get_state(key)

    def _cached(self, key: str) -> AccountState | None:
        hit = self._states.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.state_cache_seconds:
            return None
        return hit[1]

    def _remember(self, account: AccountState, read_at: float) -> None:
        """Cache a state read (or written) at ``read_at``, unless a newer one is cached."""
        hit = self._states.get(account.user)
        if hit is not None and hit[0] > read_at:
            return
        if len(self._states) > MAX_CACHED_USERS:
            oldest = time.monotonic() - self.state_cache_seconds
            self._states = {k: v for k, v in self._states.items() if v[0] > oldest}
        self._states[account.user] = (read_at, account)

    def _get_state(self, conn: Connection, key: str) -> AccountState:
        return _account_state(key, conn.execute(_STATE_OF, {"key": key}).first())

    def set_state(
        self,
        user: str,
        state: RiskState,
        reason: str,
        now: float,
        *,
        expected: RiskState | None = None,
        by: str = "mailsift",
    ) -> bool:
        """Move the user to ``state``; True when this call changed it.

        With ``expected`` it is a compare-and-set: nothing happens unless the user is
        still in that state, so two workers judging the same user change it (and
        alert) once, and an administrator's clear made meanwhile is not overwritten.
        """
        key = normalise_user(user)
        _risk_state(state)
        with self._writing(lock_key_for("limits:" + key)) as conn:
            old = self._get_state(conn, key).state
            if old == state or (expected is not None and old != expected):
                self._states.pop(key, None)  # another worker changed it: read afresh
                return False
            self._write_state(conn, key, old, state, reason, now, by, reset=False)
        self._remember(AccountState(key, state, now, reason[:MAX_REASON]), time.monotonic())
        log.warning("account %s: %s -> %s (%s)", key, old, state, reason[:200])
        return True

    def clear(self, user: str, by: str, now: float) -> AccountState:
        """An administrator's all-clear: back to ``ok``, judged afresh from now on.

        Returns the state before the clear. The risk window restarts, so the burst or
        the failed logins that led to the suspension do not suspend the user again.
        (This process's queue is written first, so that what it holds from before the
        clear is not counted after it.)
        """
        key = normalise_user(user)
        self._write_pending_best_effort()
        reason = f"cleared by {by}"
        with self._writing(lock_key_for("limits:" + key)) as conn:
            previous = self._get_state(conn, key)
            self._write_state(conn, key, previous.state, "ok", reason, now, by, reset=True)
        self._remember(AccountState(key, "ok", now, reason[:MAX_REASON]), time.monotonic())
        log.warning("account %s: %s -> ok (cleared by %s)", key, previous.state, by)
        return previous

    def _write_state(
        self,
        conn: Connection,
        key: str,
        old: RiskState,
        new: RiskState,
        reason: str,
        now: float,
        by: str,
        *,
        reset: bool,
    ) -> None:
        reason = reason[:MAX_REASON]
        values: dict[str, Any] = {"state": new, "since": now, "reason": reason}
        if reset:
            values["reset_at"] = now
            values.update(self._base(conn, key, int(now // 60)))
        ins = _insert(conn)(_state).values(user=key, **values)
        conn.execute(ins.on_conflict_do_update(index_elements=[_state.c.user], set_=values))
        conn.execute(
            _history.insert().values(
                user=key, at=now, old_state=old, new_state=new, reason=reason, by=by[:MAX_USER]
            )
        )

    def history(self, user: str, limit: int = 20) -> list[StateChange]:
        """The user's latest state changes, newest first."""
        key = normalise_user(user)
        h = _history.c
        with self._reading() as conn:
            rows = conn.execute(
                select(h.at, h.old_state, h.new_state, h.reason, h.by)
                .where(h.user == key)
                .order_by(h.id.desc())
                .limit(limit)
            ).all()
        return [
            StateChange(float(r[0]), _risk_state(r[1]), _risk_state(r[2]), str(r[3]), str(r[4]))
            for r in rows
        ]

    # -- housekeeping ---------------------------------------------------------------

    async def prune(self, now: float) -> None:
        """Drop buckets older than every window that reads them (all users), a few
        hundred rows a transaction, requests served in between (see
        :func:`~mailsift.service.db.delete_in_turns`): an hour of expired minute buckets
        is every active user's, too many for one transaction that every outbound
        admission would wait behind."""
        try:
            for table, condition in _expired(now):
                await delete_in_turns(
                    self.engine, self._nowait_engine, table, condition, lock_key=_PRUNE_LOCK_KEY
                )
        except Exception as exc:  # housekeeping must never fail a message
            log.error("pruning account counters failed: %s", type(exc).__name__)


_PRUNE_LOCK_KEY = lock_key_for("accounts:prune")


def _expired(now: float) -> list[tuple[Table, ColumnElement[bool]]]:
    """Each counter table, and which of its rows no window reads any more."""
    minute, hour = int(now // 60), int(now // 3600)
    return [
        (_minutes, _minutes.c.minute < minute - MINUTE_RETENTION),
        (_auth, _auth.c.minute < minute - MINUTE_RETENTION),
        (_hours, _hours.c.hour < hour - HOUR_RETENTION),
        (_domains, _domains.c.last_seen < now - DOMAIN_RETENTION_SECONDS),
    ]


def _write_batch(many: ManyRunner, batch: _Pending) -> None:
    # Sorted, so that two flushes on PostgreSQL lock rows in the same order.
    if batch.hours:
        many(
            _HOT_HOURS,
            [
                {"user": u, "hour": h, "messages": n, "recipients": r}
                for (u, h), (n, r) in sorted(batch.hours.items())
            ],
        )
    if batch.outcomes:
        many(
            _HOT_OUTCOMES,
            [
                {"user": u, "minute": m, "messages": 0, "recipients": 0, "scored": n, "spam": spam}
                for (u, m), (n, spam) in sorted(batch.outcomes.items())
            ],
        )
    if batch.domains:
        many(
            _HOT_DOMAINS,
            [
                {"user": u, "domain": d, "first_seen": first, "last_seen": last}
                for (u, d), (first, last) in sorted(batch.domains.items())
            ],
        )


def _account_state(key: str, row: Sequence[Any] | None) -> AccountState:
    """A state from its row (state, since, reason); a user never judged is ok."""
    if row is None:
        return AccountState(key, "ok", None, "")
    return AccountState(key, _risk_state(row[0]), float(row[1]), str(row[2]))


@contextmanager
def _nowait_read(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, busy_as(Busy):
        yield conn


def _recipients(recipients: list[str]) -> set[str]:
    """Distinct recipients: the same address twice, in any case, is one."""
    return {r.strip().lower() for r in recipients if r.strip()}


def _usual_of(active_hours: list[tuple[int, int]]) -> UsualRate:
    if not active_hours:
        return UsualRate(USUAL_FLOOR_MESSAGES, USUAL_FLOOR_RECIPIENTS)
    return UsualRate(
        max(USUAL_FLOOR_MESSAGES, float(statistics.median(r[0] for r in active_hours))),
        max(USUAL_FLOOR_RECIPIENTS, float(statistics.median(r[1] for r in active_hours))),
    )


def _risk_state(value: object) -> RiskState:
    for state in RISK_STATES:
        if value == state:
            return state
    raise ValueError(f"unknown account state {value!r}")


def _overrides(raw: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per-user overrides keyed like the counters; unknown limit names are logged and
    ignored rather than refused, so a typo does not stop the service."""
    known: set[str] = set(LIMIT_NAMES)
    result: dict[str, dict[str, int]] = {}
    for user, limits in raw.items():
        try:
            key = normalise_user(user)
        except ValueError:
            log.warning("limit override for an unusable user name ignored")
            continue
        good = {}
        for name, value in limits.items():
            if name in known and isinstance(value, int) and value >= 0:
                good[name] = value
            else:
                log.warning("limit override %r for %s ignored", name, key)
        result[key] = good
    return result
