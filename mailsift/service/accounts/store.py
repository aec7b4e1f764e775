"""Per-user sending counters and risk states, shared by every worker and replica.

Everything lives in the state database (:func:`~mailsift.service.db.open_state_engine`)
so that limits hold across processes and restarts. Counters are kept in one-minute
buckets: a rolling hour is the last 60 buckets, a rolling day the last 1440, without a
row per message. Hourly totals are kept longer, for the user's usual rate.

User names are compared case-insensitively (``Alice@Example.com`` and
``alice@example.com`` share one set of counters), so changing case cannot dodge a limit.
"""

from __future__ import annotations

import ipaddress
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    case,
    delete,
    func,
    select,
    update,
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
from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.settings import Settings

__all__ = ["AccountStore", "normalise_user"]

log = logging.getLogger("mailsift.accounts")

HOUR_MINUTES = 60
DAY_MINUTES = 24 * 60
MINUTE_RETENTION = 25 * 60  # minutes: a rolling day plus slack for clock skew
HOUR_RETENTION = 8 * 24  # hours: the usual rate looks back a week
USUAL_LOOKBACK_HOURS = 7 * 24
DOMAIN_RETENTION_SECONDS = 180 * 86400.0
PRUNE_EVERY_SECONDS = 3600.0
# An hour of ordinary mail is never judged against less than this, so that a user who
# sends two messages a day is not a "burst" at eleven.
USUAL_FLOOR_MESSAGES = 10.0
USUAL_FLOOR_RECIPIENTS = 50.0
MAX_USER = 320
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
    """The key one user's counters are kept under; ValueError when unusable."""
    key = user.strip().lower()
    if not key:
        raise ValueError("user must not be empty")
    if len(key) > MAX_USER:
        raise ValueError(f"user must be at most {MAX_USER} characters")
    return key


def _domain_of(address: str) -> str | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return domain[:MAX_DOMAIN]


def _insert(conn: Connection) -> Callable[[Table], Any]:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


class AccountStore:
    """Sending counters, recipient domains, outcomes, auth failures and risk states.

    Methods are synchronous (call them through a threadpool) and take ``now`` so that
    tests and replays control time. Every write for one user holds that user's lock
    (``limits:<user>``): on PostgreSQL an advisory lock, on SQLite the file's write lock.
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._overrides = _overrides(settings.limit_overrides)
        self._next_prune = 0.0
        with write_transaction(engine, lock_key=lock_key_for("accounts:schema")) as conn:
            _metadata.create_all(conn)

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

    def check_and_record(
        self, user: str, recipients: list[str], now: float, *, dry_run: bool = False
    ) -> SendingDecision:
        """Decide whether one message fits under every limit and, if so, count it.

        Atomic across processes: the counts are read and the message recorded under the
        user's lock, so N workers cannot each let the N-th message through. A refused
        message is not counted (the gateway's retry would otherwise count twice), and
        neither is anything with ``dry_run`` (mail of a suspended user, held anyway).
        """
        key = normalise_user(user)
        limits = self.limits_for(key)
        rcpts = {r.strip().lower() for r in recipients if r.strip()}
        domains = sorted({d for d in map(_domain_of, rcpts) if d})
        minute, hour = int(now // 60), int(now // 3600)
        with write_transaction(self.engine, lock_key=lock_key_for("limits:" + key)) as conn:
            messages_hour, recipients_hour, messages_day = self._sending_counts(
                conn, key, minute, minute - HOUR_MINUTES + 1
            )
            wanted = {
                "messages_per_hour": messages_hour + 1,
                "messages_per_day": messages_day + 1,
                "recipients_per_hour": recipients_hour + len(rcpts),
            }
            exceeded = tuple(name for name in LIMIT_NAMES if 0 < limits.of(name) < wanted[name])
            record = not exceeded and not dry_run
            new_domains = 0
            if record:
                self._count_message(conn, key, minute, hour, len(rcpts))
                new_domains = self._record_domains(conn, key, domains, now)
                messages_hour, recipients_hour, messages_day = (
                    wanted["messages_per_hour"],
                    wanted["recipients_per_hour"],
                    wanted["messages_per_day"],
                )
            new_domains_hour = self._new_domains_since(conn, key, now - 3600)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            self.prune(now)
        return SendingDecision(
            user=key,
            allowed=not exceeded,
            exceeded=exceeded,
            limits=limits,
            messages_hour=messages_hour,
            messages_day=messages_day,
            recipients_hour=recipients_hour,
            recipients=len(rcpts),
            recorded=record,
            new_domains=new_domains,
            new_domains_hour=new_domains_hour,
        )

    def _sending_counts(
        self, conn: Connection, key: str, minute: int, hour_start: int
    ) -> tuple[int, int, int]:
        m = _minutes.c
        in_hour = m.minute >= hour_start
        row = conn.execute(
            select(
                func.coalesce(func.sum(case((in_hour, m.messages), else_=0)), 0),
                func.coalesce(func.sum(case((in_hour, m.recipients), else_=0)), 0),
                func.coalesce(func.sum(m.messages), 0),
            ).where(m.user == key, m.minute >= minute - DAY_MINUTES + 1)
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    def _count_message(
        self, conn: Connection, key: str, minute: int, hour: int, recipients: int
    ) -> None:
        ins = _insert(conn)(_minutes).values(
            user=key, minute=minute, messages=1, recipients=recipients, scored=0, spam=0
        )
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[_minutes.c.user, _minutes.c.minute],
                set_={
                    "messages": _minutes.c.messages + ins.excluded.messages,
                    "recipients": _minutes.c.recipients + ins.excluded.recipients,
                },
            )
        )
        ins = _insert(conn)(_hours).values(user=key, hour=hour, messages=1, recipients=recipients)
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[_hours.c.user, _hours.c.hour],
                set_={
                    "messages": _hours.c.messages + ins.excluded.messages,
                    "recipients": _hours.c.recipients + ins.excluded.recipients,
                },
            )
        )

    def _record_domains(self, conn: Connection, key: str, domains: list[str], now: float) -> int:
        """Remember the recipient domains; returns how many this user never mailed before."""
        if not domains:
            return 0
        d = _domains.c
        known = set(
            conn.execute(select(d.domain).where(d.user == key, d.domain.in_(domains))).scalars()
        )
        fresh = [x for x in domains if x not in known]
        if known:
            conn.execute(
                update(_domains)
                .where(d.user == key, d.domain.in_(sorted(known)))
                .values(last_seen=now)
            )
        if fresh:
            conn.execute(
                _insert(conn)(_domains)
                .values(
                    [{"user": key, "domain": x, "first_seen": now, "last_seen": now} for x in fresh]
                )
                .on_conflict_do_nothing()
            )
        return len(fresh)

    def _new_domains_since(self, conn: Connection, key: str, since: float) -> int:
        d = _domains.c
        return int(
            conn.execute(
                select(func.count()).where(d.user == key, d.first_seen >= since)
            ).scalar_one()
        )

    # -- signals --------------------------------------------------------------------

    def record_outcome(self, user: str, verdict: str, now: float) -> None:
        """Count one scored outbound message of ``user``, and whether it was spam."""
        if verdict not in ("ham", "suspect", "spam"):
            raise ValueError(f"unknown verdict {verdict!r}")
        key = normalise_user(user)
        spam = int(verdict == "spam")
        with write_transaction(self.engine, lock_key=lock_key_for("limits:" + key)) as conn:
            ins = _insert(conn)(_minutes).values(
                user=key, minute=int(now // 60), messages=0, recipients=0, scored=1, spam=spam
            )
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[_minutes.c.user, _minutes.c.minute],
                    set_={
                        "scored": _minutes.c.scored + ins.excluded.scored,
                        "spam": _minutes.c.spam + ins.excluded.spam,
                    },
                )
            )

    def record_auth_failure(self, user: str, client_ip: str, now: float) -> int:
        """Count one failed login; returns the user's failures in the risk window."""
        key = normalise_user(user)
        ip = ipaddress.ip_address(client_ip.strip()).compressed
        minute = int(now // 60)
        with write_transaction(self.engine, lock_key=lock_key_for("limits:" + key)) as conn:
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
        with self.engine.connect() as conn:
            return self._usual(conn, key, int(now // 3600))

    def _usual(self, conn: Connection, key: str, hour: int) -> UsualRate:
        h = _hours.c
        rows = conn.execute(
            select(h.messages, h.recipients).where(
                h.user == key,
                h.hour >= hour - USUAL_LOOKBACK_HOURS,
                h.hour < hour,
                h.messages > 0,
            )
        ).all()
        if not rows:
            return UsualRate(USUAL_FLOOR_MESSAGES, USUAL_FLOOR_RECIPIENTS)
        return UsualRate(
            max(USUAL_FLOOR_MESSAGES, float(statistics.median(r[0] for r in rows))),
            max(USUAL_FLOOR_RECIPIENTS, float(statistics.median(r[1] for r in rows))),
        )

    def stats(self, user: str, now: float) -> AccountStats:
        """The user's numbers for :func:`mailsift.service.accounts.risk.assess`."""
        key = normalise_user(user)
        minute = int(now // 60)
        m, d = _minutes.c, _domains.c
        with self.engine.connect() as conn:
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
            new_domains = self._new_domains_since(conn, key, window.start)
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

    # -- risk state -----------------------------------------------------------------

    def get_state(self, user: str) -> AccountState:
        key = normalise_user(user)
        with self.engine.connect() as conn:
            return self._get_state(conn, key)

    def _get_state(self, conn: Connection, key: str) -> AccountState:
        s = _state.c
        row = conn.execute(select(s.state, s.since, s.reason).where(s.user == key)).first()
        if row is None:
            return AccountState(key, "ok", None, "")
        return AccountState(key, _risk_state(row[0]), float(row[1]), str(row[2]))

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
        with write_transaction(self.engine, lock_key=lock_key_for("limits:" + key)) as conn:
            old = self._get_state(conn, key).state
            if old == state or (expected is not None and old != expected):
                return False
            self._write_state(conn, key, old, state, reason, now, by, reset=False)
        log.warning("account %s: %s -> %s (%s)", key, old, state, reason[:200])
        return True

    def clear(self, user: str, by: str, now: float) -> AccountState:
        """An administrator's all-clear: back to ``ok``, judged afresh from now on.

        Returns the state before the clear. The risk window restarts, so the burst or
        the failed logins that led to the suspension do not suspend the user again.
        """
        key = normalise_user(user)
        with write_transaction(self.engine, lock_key=lock_key_for("limits:" + key)) as conn:
            previous = self._get_state(conn, key)
            self._write_state(
                conn, key, previous.state, "ok", f"cleared by {by}", now, by, reset=True
            )
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
        with self.engine.connect() as conn:
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

    def prune(self, now: float) -> None:
        """Drop buckets older than every window that reads them (all users)."""
        minute, hour = int(now // 60), int(now // 3600)
        try:
            with write_transaction(self.engine, lock_key=lock_key_for("accounts:prune")) as conn:
                conn.execute(delete(_minutes).where(_minutes.c.minute < minute - MINUTE_RETENTION))
                conn.execute(delete(_auth).where(_auth.c.minute < minute - MINUTE_RETENTION))
                conn.execute(delete(_hours).where(_hours.c.hour < hour - HOUR_RETENTION))
                conn.execute(
                    delete(_domains).where(_domains.c.last_seen < now - DOMAIN_RETENTION_SECONDS)
                )
        except Exception as exc:  # housekeeping must never fail a message
            log.error("pruning account counters failed: %s", type(exc).__name__)


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
