"""Per-user sending counters and risk states, shared by every worker and replica.

Everything lives in the state database (:func:`~mailsift.service.db.open_state_engine`)
so that limits hold across processes and restarts. :class:`AccountStore` is what the
rest of the service holds; it composes the parts, each with one job:

* :mod:`.schema`: the tables and the dialect's upserts;
* :mod:`.connections`: the engine, and whether a call may wait (:meth:`~AccountStore.nowait`);
* :mod:`.counters`: the limit check and failed logins, exact under the user's lock;
* :mod:`.pending`: the risk numbers queued in memory and flushed in batches;
* :mod:`.usage`: a user's numbers and usual hourly rate, as the risk rules read them;
* :mod:`.states`: the risk state machine, its history and this process's cached copy.

User names are compared case-insensitively (``Alice@Example.com`` and
``alice@example.com`` share one set of counters), so changing case cannot dodge a limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Engine

from mailsift.service.accounts import (
    AccountState,
    AccountStats,
    Limits,
    RiskState,
    SendingDecision,
    StateChange,
    UsualRate,
)
from mailsift.service.accounts.connections import Connections
from mailsift.service.accounts.counters import SendingCounters
from mailsift.service.accounts.pending import PendingCounts
from mailsift.service.accounts.schema import create_tables, normalise_user
from mailsift.service.accounts.states import STATE_CACHE_SECONDS, AccountStates
from mailsift.service.accounts.usage import AccountUsage
from mailsift.service.pg.functions import create_functions
from mailsift.service.pg.pool import AsyncPool
from mailsift.service.settings import Settings

__all__ = ["AccountStore", "normalise_user"]

T = TypeVar("T")


class AccountStore:
    """Sending counters, recipient domains, outcomes, auth failures and risk states.

    Methods are synchronous (call them through a threadpool) and take ``now`` so that
    tests and replays control time. Every write that must be exact for one user holds
    that user's lock (``limits:<user>``): on PostgreSQL an advisory lock, on SQLite the
    file's write lock.

    Only the limit check and the minute bucket it counts in are written by the request
    (:meth:`check_and_record`). What the risk rules read besides is queued in memory and
    written by :meth:`flush` in one transaction, every fraction of a second, so the risk
    numbers lag the limits by that much. Reading a user's numbers (:meth:`stats`)
    writes this process's queue first.
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
        self.db = Connections(engine)
        self.states = AccountStates(self.db, state_cache_seconds=state_cache_seconds)
        self.queue = PendingCounts(self.db)
        self.counters = SendingCounters(self.db, settings, self.states, self.queue)
        self.usage = AccountUsage(self.db, self.states, self.queue.write_best_effort)
        self.pool: AsyncPool | None = None
        """Set by the app on PostgreSQL: admission runs as one statement on the event
        loop (:meth:`SendingCounters.admit_on_loop`)."""
        create_tables(engine)
        if engine.dialect.name == "postgresql":
            create_functions(engine)

    @property
    def state_cache_seconds(self) -> float:
        """How long scoring uses a state this process read (settable, as before)."""
        return self.states.state_cache_seconds

    @state_cache_seconds.setter
    def state_cache_seconds(self, seconds: float) -> None:
        self.states.state_cache_seconds = seconds

    def close(self) -> None:
        """Release the connections of the no-wait engine (the caller owns ``engine``)."""
        self.db.close()

    # -- where calls run ------------------------------------------------------------

    @property
    def on_loop(self) -> bool:
        """Whether :meth:`nowait` can work here: SQLite, a local file."""
        return self.db.on_loop

    def nowait(self, call: Callable[..., T], *args: Any) -> T:
        """Run ``call`` (a method of this store) so that it never waits, for the event
        loop (see :meth:`Connections.nowait`)."""
        return self.db.nowait(call, *args)

    # -- limits and signals -----------------------------------------------------------

    def limits_for(self, user: str) -> Limits:
        """The settings' defaults with this user's overrides applied."""
        return self.counters.limits_for(user)

    def admit(
        self, user: str, recipients: list[str], now: float
    ) -> tuple[SendingDecision, AccountState]:
        """The sender's risk state and whether the message fits, in one transaction
        (:meth:`SendingCounters.admit`)."""
        return self.counters.admit(user, recipients, now)

    def check_and_record(
        self, user: str, recipients: list[str], now: float, *, dry_run: bool = False
    ) -> SendingDecision:
        """Whether one message fits under every limit, counted if so
        (:meth:`SendingCounters.check_and_record`)."""
        return self.counters.check_and_record(user, recipients, now, dry_run=dry_run)

    async def admit_on_loop(
        self, pool: AsyncPool, user: str, recipients: list[str], now: float
    ) -> tuple[SendingDecision, AccountState]:
        """:meth:`admit` in one statement on the event loop (PostgreSQL)."""
        return await self.counters.admit_on_loop(pool, user, recipients, now)

    def last_known_state(self, user: str) -> AccountState:
        """The user's state as this process last saw it, however long ago ("ok" if
        never): what scoring goes by while the database is away."""
        try:
            key = normalise_user(user)
        except ValueError:
            return AccountState(user, "ok", None, "")
        return self.states.last_known(key) or AccountState(key, "ok", None, "")

    def record_outcome(self, user: str, verdict: str, now: float) -> None:
        """Queue how one outbound message of ``user`` scored."""
        self.queue.record_outcome(user, verdict, now)

    def record_auth_failure(self, user: str, client_ip: str, now: float) -> int:
        """Count one failed login; returns the user's failures in the risk window."""
        return self.counters.record_auth_failure(user, client_ip, now)

    def pending(self) -> bool:
        """Whether :meth:`flush` has anything to do (no I/O)."""
        return self.queue.pending()

    def flush(self) -> set[str]:
        """Write what was queued; the users written since the last call, to re-judge."""
        return self.queue.flush()

    # -- numbers ----------------------------------------------------------------------

    def usual_hourly_rate(self, user: str, now: float) -> UsualRate:
        """What the user usually sends in an hour in which they send at all."""
        return self.usage.usual_hourly_rate(user, now)

    def stats(self, user: str, now: float) -> AccountStats:
        """The user's numbers for :func:`mailsift.service.accounts.risk.assess`, after
        writing this process's queue."""
        return self.usage.stats(user, now)

    def assessments(
        self, users: Iterable[str], now: float
    ) -> list[tuple[AccountState, AccountStats]]:
        """Many users' states and numbers at once; call :meth:`flush` first."""
        return self.usage.assessments(users, now)

    # -- risk state -------------------------------------------------------------------

    def get_state(self, user: str) -> AccountState:
        """The user's risk state as the database has it now."""
        return self.states.get_state(user)

    def cached_state(self, user: str) -> AccountState:
        """The user's risk state as this process last saw it (about a second at most)."""
        return self.states.cached_state(user)

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
        """Move the user to ``state`` (compare-and-set with ``expected``); True when
        this call changed it."""
        return self.states.set_state(user, state, reason, now, expected=expected, by=by)

    async def set_state_on_loop(
        self,
        pool: AsyncPool,
        user: str,
        state: RiskState,
        reason: str,
        now: float,
        *,
        expected: RiskState | None = None,
    ) -> tuple[bool, AccountState]:
        """:meth:`set_state` in one statement on the event loop (PostgreSQL): whether
        this call changed it, and the state now."""
        return await self.states.set_state_on_loop(
            pool, user, state, reason, now, expected=expected
        )

    def clear(self, user: str, by: str, now: float) -> AccountState:
        """An administrator's all-clear; the state before it.

        This process's queue is written first, so that what it holds from before the
        clear is not counted after it.
        """
        key = normalise_user(user)
        self.queue.write_best_effort()
        return self.states.clear(key, by, now)

    def not_ok(self, limit: int = 200) -> list[AccountState]:
        """Every account not in the ok state, the latest change first."""
        return self.states.not_ok(limit)

    def history(self, user: str, limit: int = 20) -> list[StateChange]:
        """The user's latest state changes, newest first."""
        return self.states.history(user, limit)

    # -- housekeeping -----------------------------------------------------------------

    async def prune_if_due(self, now: float) -> None:
        """:meth:`prune`, at most once an hour (the flusher calls it)."""
        await self.counters.prune_if_due(now)

    async def prune(self, now: float) -> None:
        """Drop buckets older than every window that reads them (all users)."""
        await self.counters.prune(now)
