"""A user's numbers as the risk rules see them, and their usual hourly rate.

Reading is its own job: it is what a flush re-judges for many users at once, in a few
grouped queries (:meth:`AccountUsage.assessments`), and what an administrator reads for
one (:meth:`AccountUsage.stats`). Hourly totals are kept for a week for the usual rate,
which stands still within a clock hour and so is read once an hour per user.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Float, Integer, bindparam, case, func, select

from mailsift.service.accounts import AccountState, AccountStats, UsualRate, schema
from mailsift.service.accounts.connections import Connections
from mailsift.service.accounts.schema import (
    DAY_START,
    HOUR_START,
    KEYS,
    in_hour,
    normalise_user,
)
from mailsift.service.accounts.states import MAX_CACHED_USERS, AccountStates, risk_state
from mailsift.service.accounts.window import (
    DAY_MINUTES,
    HOUR_MINUTES,
    auth_counts,
    risk_window,
)

__all__ = ["AccountUsage"]

USUAL_LOOKBACK_HOURS = 7 * 24
QUERY_CHUNK = 500  # users per grouped query: well under every driver's parameter limit
# An hour of ordinary mail is never judged against less than this, so that a user who
# sends two messages a day is not a "burst" at eleven.
USUAL_FLOOR_MESSAGES = 10.0
USUAL_FLOOR_RECIPIENTS = 50.0

_m, _h, _d, _a, _s = (
    schema.minutes.c,
    schema.hours.c,
    schema.domains.c,
    schema.auth.c,
    schema.state.c,
)
_SINCE = bindparam("since", type_=Float)

_STATE_ROWS = select(_s.user, _s.state, _s.since, _s.reason, _s.reset_at).where(_s.user.in_(KEYS))
_MINUTES_BY_USER = (
    select(
        _m.user,
        in_hour(_m.messages),
        in_hour(_m.recipients),
        func.sum(_m.messages),
        in_hour(_m.scored),
        in_hour(_m.spam),
    )
    .where(_m.user.in_(KEYS), _m.minute >= DAY_START)
    .group_by(_m.user)
)
_AUTH_BY_USER = (
    select(_a.user, func.sum(_a.failures), func.count(func.distinct(_a.client_ip)))
    .where(_a.user.in_(KEYS), _a.minute >= HOUR_START)
    .group_by(_a.user)
)
_NEW_DOMAINS_BY_USER = (
    select(_d.user, func.count())
    .where(_d.user.in_(KEYS), _d.first_seen >= _SINCE)
    .group_by(_d.user)
)
_KNOWN_SINCE_BY_USER = (
    select(_d.user, func.min(_d.first_seen)).where(_d.user.in_(KEYS)).group_by(_d.user)
)
_ACTIVE_HOURS = select(_h.user, _h.messages, _h.recipients).where(
    _h.user.in_(KEYS),
    _h.hour >= bindparam("from_hour", type_=Integer),
    _h.hour < bindparam("hour", type_=Integer),
    _h.messages > 0,
)


class AccountUsage:
    """Reads users' numbers; keeps each user's usual rate for the clock hour.

    ``write_queue`` writes this process's queued numbers (:mod:`.pending`) before a
    single user's numbers are read, so that they include what this process saw.
    """

    def __init__(
        self, db: Connections, states: AccountStates, write_queue: Callable[[], None]
    ) -> None:
        self.db = db
        self.states = states
        self.write_queue = write_queue
        # user -> (clock hour, usual rate, domains known since); see assessments
        self._histories: dict[str, tuple[int, UsualRate, float | None]] = {}

    def usual_hourly_rate(self, user: str, now: float) -> UsualRate:
        """Median messages and recipients over the hours of the past week in which the
        user sent anything (the current hour excluded), never below a floor.

        Only active hours count, so that nights and weekends do not make every working
        hour look like a burst; the median, so that one earlier burst does not become
        the norm.
        """
        key = normalise_user(user)
        self.write_queue()
        with self.db.reading() as conn:
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
        self.write_queue()
        with self.db.reading() as conn:
            return self._stats(conn, key, now)

    def _stats(self, conn: Connection, key: str, now: float) -> AccountStats:
        minute = int(now // 60)
        m, d = _m, _d  # the minute buckets and the recipient domains
        window = risk_window(conn, key, now)
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
        failures, ips = auth_counts(conn, key, window)
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
        flush re-judges). Reads only what is written: flush the queue first
        (:meth:`~mailsift.service.accounts.pending.PendingCounts.flush`)."""
        keys = sorted({normalise_user(u) for u in users})
        out: list[tuple[AccountState, AccountStats]] = []
        with self.db.reading() as conn:
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
                else AccountState(key, risk_state(row[1]), float(row[2]), str(row[3]))
            )
            self.states.remember(account, read_at)
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


def _usual_of(active_hours: list[tuple[int, int]]) -> UsualRate:
    if not active_hours:
        return UsualRate(USUAL_FLOOR_MESSAGES, USUAL_FLOOR_RECIPIENTS)
    return UsualRate(
        max(USUAL_FLOOR_MESSAGES, float(statistics.median(r[0] for r in active_hours))),
        max(USUAL_FLOOR_RECIPIENTS, float(statistics.median(r[1] for r in active_hours))),
    )
