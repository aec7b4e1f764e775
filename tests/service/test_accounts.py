"""Outbound accounts: sending limits across processes, risk rules, checks, routers, flow."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from mailsift.learning.outbound import OutboundQuota
from mailsift.models.ensemble import Score
from mailsift.models.parse import parse_message
from mailsift.reasons import ACCOUNT_SUSPENDED, ACCOUNT_WATCH, limit_reason
from mailsift.service.accounts import (
    AccountState,
    AccountStats,
    RiskState,
    SendingDecision,
    UsualRate,
)
from mailsift.service.accounts.flow import (
    after_outbound,
    before_outbound,
    flush_outbound,
    record_outbound,
)
from mailsift.service.accounts.risk import assess
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.checks.account import account_reasons
from mailsift.service.checks.base import CheckContext, Direction, Envelope
from mailsift.service.checks.limits import limit_reasons
from mailsift.service.db import Busy, open_state_engine, write_transaction
from mailsift.service.errors import install_error_handlers
from mailsift.service.routers import accounts as accounts_router
from mailsift.service.routers import events as events_router
from mailsift.service.settings import Settings
from tests.service.test_alerts import Webhook, webhook  # noqa: F401 - fixture

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)  # the start of a clock hour
DEADLINE_SECONDS = 60.0


def fresh_user(prefix: str = "user") -> str:
    """A user no other test touched (PostgreSQL keeps one database per module)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings keyword arguments that place the state database on one backend."""
    if request.param == "sqlite":
        return {"data_dir": tmp_path / "data"}
    return {"data_dir": tmp_path, "database_url": request.getfixturevalue("pg_url")}


class Opened:
    """Stores opened during a test, closed at its end."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []
        self.stores: list[AccountStore] = []

    def engine(self, settings: Settings) -> Engine:
        engine = open_state_engine(settings.database_url, settings.data_dir)
        self.engines.append(engine)
        return engine

    def store(self, settings: Settings, **options: Any) -> AccountStore:
        store = AccountStore(self.engine(settings), settings, **options)
        self.stores.append(store)
        return store


@pytest.fixture
def opened() -> Iterator[Opened]:
    holder = Opened()
    yield holder
    for store in holder.stores:
        store.close()
    for engine in holder.engines:
        engine.dispose()


def send(store: AccountStore, user: str, n: int, now: float, rcpts: int = 1) -> list[bool]:
    recipients = [f"r{i}@dest{i}.example" for i in range(rcpts)]
    return [store.check_and_record(user, recipients, now).allowed for _ in range(n)]


# --- limits ------------------------------------------------------------------------------


def test_messages_per_hour(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(limit_messages_per_hour=5, **where))
    user = fresh_user()
    assert send(store, user, 5, T0) == [True] * 5
    for _ in range(3):  # the gateway retries; the deferred attempts are not counted
        refused = store.check_and_record(user, ["x@example.org"], T0 + 60)
        assert not refused.allowed and not refused.recorded
        assert refused.exceeded == ("messages_per_hour",)
        assert (refused.messages_hour, refused.limits.messages_per_hour) == (5, 5)
    assert store.stats(user, T0 + 60).messages_hour == 5
    # The rolling hour moves on: the first five leave the window together.
    assert store.check_and_record(user, ["x@example.org"], T0 + 3599).allowed is False
    assert send(store, user, 5, T0 + 3600) == [True] * 5
    assert send(store, user, 1, T0 + 3600) == [False]


def test_recipients_per_hour(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(limit_recipients_per_hour=10, **where))
    user = fresh_user()
    assert send(store, user, 3, T0, rcpts=3) == [True] * 3
    refused = store.check_and_record(user, ["a@a.example", "b@b.example", "c@c.example"], T0)
    assert refused.exceeded == ("recipients_per_hour",)
    assert (refused.recipients_hour, refused.recipients) == (9, 3)
    # One more recipient fits; the same address twice is one recipient.
    one = store.check_and_record(user, ["a@a.example", "A@A.example "], T0)
    assert one.allowed and (one.recipients, one.recipients_hour) == (1, 10)
    assert not store.check_and_record(user, ["z@z.example"], T0).allowed


def test_messages_per_day(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(limit_messages_per_hour=0, limit_messages_per_day=4, **where))
    user = fresh_user()
    assert [send(store, user, 1, T0 + h * 3600)[0] for h in range(4)] == [True] * 4
    refused = store.check_and_record(user, [], T0 + 10 * 3600)
    assert refused.exceeded == ("messages_per_day",)
    assert (refused.messages_day, refused.messages_hour) == (4, 0)
    assert send(store, user, 1, T0 + 86400) == [True]  # the first left the rolling day


def test_every_exceeded_limit_is_named(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(
        Settings(
            limit_messages_per_hour=2,
            limit_messages_per_day=2,
            limit_recipients_per_hour=2,
            **where,
        )
    )
    user = fresh_user()
    assert send(store, user, 2, T0) == [True, True]
    refused = store.check_and_record(user, ["a@x.example"], T0)
    assert refused.exceeded == ("messages_per_hour", "messages_per_day", "recipients_per_hour")


def test_overrides_and_unlimited(where: dict[str, Any], opened: Opened) -> None:
    bulk, free, plain = fresh_user("bulk"), fresh_user("free"), fresh_user("plain")
    store = opened.store(
        Settings(
            limit_messages_per_hour=3,
            limit_overrides={
                bulk.upper(): {"messages_per_hour": 6},
                free: {"messages_per_hour": 0, "messages_per_day": 0},
            },
            **where,
        )
    )
    assert send(store, bulk, 7, T0) == [True] * 6 + [False]
    assert send(store, free, 50, T0) == [True] * 50
    assert send(store, plain, 4, T0) == [True] * 3 + [False]
    assert store.limits_for(bulk).messages_per_day == 1000  # the default where not overridden


def test_user_names_share_counters_whatever_their_case(
    where: dict[str, Any], opened: Opened
) -> None:
    store = opened.store(Settings(limit_messages_per_hour=2, **where))
    user = fresh_user()
    assert send(store, user, 1, T0) == [True]
    assert send(store, user.upper(), 1, T0) == [True]
    assert send(store, f"  {user.title()} ", 1, T0) == [False]


def test_dry_run_is_not_counted(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(limit_messages_per_hour=1, **where))
    user = fresh_user()
    for _ in range(3):
        decision = store.check_and_record(user, ["a@b.example"], T0, dry_run=True)
        assert decision.allowed and not decision.recorded
    assert send(store, user, 2, T0) == [True, False]


def test_counts_survive_reopening(where: dict[str, Any], opened: Opened) -> None:
    settings = Settings(limit_messages_per_hour=3, **where)
    user = fresh_user()
    assert send(opened.store(settings), user, 3, T0) == [True] * 3
    reopened = opened.store(settings)
    assert send(reopened, user, 1, T0 + 120) == [False]
    assert reopened.stats(user, T0 + 120).messages_hour == 3


def _sender(
    where: dict[str, Any],
    users: tuple[str, str],
    barrier: Barrier,
    out: Queue[tuple[int, int]],
) -> None:
    """One worker process: tries 8 messages for each user, all in the same minute."""
    settings = Settings(limit_messages_per_hour=10, limit_recipients_per_hour=20, **where)
    engine = open_state_engine(settings.database_url, settings.data_dir)
    store = AccountStore(engine, settings)
    barrier.wait(timeout=DEADLINE_SECONDS)
    by_messages = sum(send(store, users[0], 8, T0))
    by_recipients = sum(send(store, users[1], 8, T0, rcpts=3))
    engine.dispose()
    out.put((by_messages, by_recipients))


def test_two_processes_share_the_limits(where: dict[str, Any], opened: Opened) -> None:
    settings = Settings(limit_messages_per_hour=10, limit_recipients_per_hour=20, **where)
    opened.store(settings)  # tables exist before the workers race
    users = (fresh_user("messages"), fresh_user("recipients"))
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like real workers
    barrier = ctx.Barrier(2)
    out: Queue[tuple[int, int]] = ctx.Queue()
    procs = [ctx.Process(target=_sender, args=(where, users, barrier, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results: list[tuple[int, int]] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while len(results) < 2:
            assert time.monotonic() < deadline, "workers did not finish in time"
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not failed, f"worker processes failed: {failed}"
            try:
                results.append(out.get(timeout=0.05))
            except queue.Empty:
                continue
    finally:
        for proc in procs:
            proc.join(timeout=DEADLINE_SECONDS)
            if proc.is_alive():
                proc.kill()
    # 16 tries against a limit of 10 messages; 16 x 3 recipients against 20 (6 x 3 = 18).
    assert sum(r[0] for r in results) == 10
    assert sum(r[1] for r in results) == 6
    store = opened.store(settings)  # as after a restart
    assert send(store, users[0], 1, T0 + 300) == [False]
    stats = store.stats(users[1], T0 + 300)
    assert (stats.messages_hour, stats.recipients_hour) == (6, 18)


def test_new_recipient_domains(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(**where))
    user = fresh_user()
    store.check_and_record(user, ["a@One.example", "b@two.example.", "not-an-address"], T0)
    assert store.stats(user, T0).new_domains_hour == 2
    store.check_and_record(user, ["c@one.example", "d@three.example"], T0 + 60)
    assert store.stats(user, T0 + 60).new_domains_hour == 3
    store.check_and_record(user, ["e@two.example"], T0 + 7200)
    later = store.stats(user, T0 + 7200)
    assert (later.new_domains_hour, later.domains_known_since) == (0, T0)


def test_risk_numbers_are_queued_and_written_by_the_flush(
    where: dict[str, Any], opened: Opened
) -> None:
    settings = Settings(**where)
    worker, other = opened.store(settings), opened.store(settings)  # two processes
    user = fresh_user()
    assert worker.check_and_record(user, ["a@one.example", "b@two.example"], T0).recorded
    worker.record_outcome(user, "spam", T0)
    assert worker.pending()
    seen = other.stats(user, T0 + 1)
    # The limit counts are exact at once; the rest waits for the worker's flush.
    assert (seen.messages_hour, seen.recipients_hour) == (1, 2)
    assert (seen.scored_hour, seen.new_domains_hour, seen.domains_known_since) == (0, 0, None)
    assert worker.flush() == {user}
    assert not worker.pending() and worker.flush() == set()
    seen = other.stats(user, T0 + 1)
    assert (seen.scored_hour, seen.spam_hour, seen.new_domains_hour) == (1, 1, 2)
    assert seen.domains_known_since == T0
    # The hourly roll-up came along: that hour is part of the user's history now.
    for _ in range(29):
        worker.check_and_record(user, ["a@one.example"], T0 + 60)
    worker.flush()
    assert other.usual_hourly_rate(user, T0 + 3600) == UsualRate(30.0, 50.0)


def test_nowait_gives_way_to_another_writer_and_counts_once(tmp_path: Path, opened: Opened) -> None:
    settings = Settings(data_dir=tmp_path / "data", limit_messages_per_hour=1)
    store = opened.store(settings)
    assert store.on_loop
    user = fresh_user()
    store.record_outcome(user, "ham", T0)
    with write_transaction(opened.engine(settings)):  # another process is writing
        with pytest.raises(Busy):
            store.nowait(store.admit, user, ["a@b.example"], T0)
        with pytest.raises(Busy):
            store.nowait(store.flush)
    decision, account = store.nowait(store.admit, user, ["a@b.example"], T0)
    assert decision.recorded and account.state == "ok"
    assert not store.nowait(store.admit, user, ["a@b.example"], T0)[0].allowed
    assert store.nowait(store.flush) == {user}  # the queue survived the busy attempt
    assert store.stats(user, T0).scored_hour == 1


def test_nowait_is_never_tried_on_postgresql(pg_url: str, tmp_path: Path, opened: Opened) -> None:
    store = opened.store(Settings(data_dir=tmp_path, database_url=pg_url))
    assert not store.on_loop
    with pytest.raises(Busy):
        store.nowait(store.admit, fresh_user(), [], T0)


def test_scoring_holds_a_state_a_while_and_sees_its_own_changes_at_once(
    where: dict[str, Any], opened: Opened
) -> None:
    settings = Settings(**where)
    worker = opened.store(settings, state_cache_seconds=3600)
    other = opened.store(settings)
    user = fresh_user()
    assert worker.admit(user, ["a@b.example"], T0)[1].state == "ok"
    assert other.set_state(user, "suspended", "elsewhere", T0 + 1)
    assert worker.cached_state(user).state == "ok"  # read within the cache's lifetime
    assert worker.get_state(user).state == "suspended"  # a read refreshes the copy
    decision, account = worker.admit(user, ["a@b.example"], T0 + 2)
    assert account.state == "suspended" and not decision.recorded  # held, not counted
    worker.clear(user, "admin", T0 + 3)
    assert worker.cached_state(user).state == "ok"
    assert other.set_state(user, "watch", "again", T0 + 4)
    worker.state_cache_seconds = 0.0
    assert worker.admit(user, ["a@b.example"], T0 + 5)[1].state == "watch"


def test_outbound_learning_budget_is_shared_spread_out_and_checked_in_memory_first(
    where: dict[str, Any], opened: Opened
) -> None:
    settings = Settings(outbound_learn_per_minute=3, outbound_learn_per_user_per_hour=2, **where)
    one, two = (OutboundQuota(opened.engine(settings), settings) for _ in range(2))
    alice, bob, carol = fresh_user("alice"), fresh_user("bob"), fresh_user("carol")
    # Three a minute: one at once, then one every 20 seconds, never more at a time.
    assert one.open(T0) and one.take(alice, T0)
    assert not two.take(bob, T0 + 19)  # all workers together: nothing left until 0:20
    assert not two.open(T0 + 19.9)  # and this worker knows it without asking the database
    assert one.open(T0 + 19.9)  # the other one has not looked yet
    assert two.open(T0 + 21) and two.take(alice, T0 + 21)
    assert not one.take(alice, T0 + 45)  # her hourly share (two) is used
    assert one.take(bob, T0 + 45)  # the budget had refilled; that was not spent
    assert not one.take(carol, T0 + 59) and not one.open(T0 + 60)
    assert one.take(carol, T0 + 70)
    # A long quiet spell saves up a single example, not a burst.
    assert two.take(carol, T0 + 3000) and not two.take(bob, T0 + 3000)
    for no_budget in (
        Settings(outbound_learn_per_minute=0, **where),
        Settings(outbound_learn_per_user_per_hour=0, **where),
    ):
        quota = OutboundQuota(opened.engine(no_budget), no_budget)
        assert not quota.open(T0 + 180) and not quota.take(fresh_user(), T0 + 180)
    off = Settings(outbound_learning=False, **where)
    assert not OutboundQuota(opened.engine(off), off).open(T0 + 180)


def test_outbound_learning_budget_on_the_event_loop(tmp_path: Path, opened: Opened) -> None:
    settings = Settings(data_dir=tmp_path / "data", outbound_learn_per_user_per_hour=1)
    quota = OutboundQuota(opened.engine(settings), settings)
    user = fresh_user()
    try:
        # Another process is writing.
        with write_transaction(opened.engine(settings)), pytest.raises(Busy):
            quota.take(user, T0, wait=False)
        assert quota.take(user, T0, wait=False)  # nothing was used by the busy attempt
        assert not quota.take(user, T0 + 1, wait=False)
        assert asyncio.run(quota.claim(fresh_user()))
    finally:
        quota.close()


# --- signals and state -------------------------------------------------------------------


def test_outcomes_and_auth_failures(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(**where))
    user = fresh_user()
    for verdict in ["spam", "ham", "suspect", "spam"]:
        store.record_outcome(user, verdict, T0)
    assert store.record_auth_failure(user, "192.0.2.1", T0) == 1
    assert store.record_auth_failure(user, "2001:db8:0::1", T0 + 60) == 2
    assert store.record_auth_failure(user.upper(), "192.0.2.1", T0 + 60) == 3
    stats = store.stats(user, T0 + 120)
    assert (stats.scored_hour, stats.spam_hour, stats.spam_share) == (4, 2, 0.5)
    assert (stats.auth_failures_hour, stats.auth_failure_ips_hour) == (3, 2)
    assert store.stats(user, T0 + 3600 + 120).auth_failures_hour == 0
    with pytest.raises(ValueError):
        store.record_auth_failure(user, "not-an-ip", T0)
    with pytest.raises(ValueError):
        store.record_outcome(user, "maybe", T0)


def test_usual_hourly_rate_is_the_median_of_active_hours(
    where: dict[str, Any], opened: Opened
) -> None:
    store = opened.store(Settings(limit_messages_per_hour=0, limit_recipients_per_hour=0, **where))
    quiet, busy = fresh_user("quiet"), fresh_user("busy")
    assert store.usual_hourly_rate(quiet, T0) == UsualRate(10.0, 50.0)  # no history: the floor
    send(store, quiet, 3, T0 - 5 * 3600)
    assert store.usual_hourly_rate(quiet, T0) == UsualRate(10.0, 50.0)
    for hours_ago, n in [(30, 20), (20, 22), (10, 24), (2, 400)]:
        send(store, busy, n, T0 - hours_ago * 3600, rcpts=4)
    send(store, busy, 500, T0)  # the current hour does not count
    assert store.usual_hourly_rate(busy, T0 + 60) == UsualRate(23.0, 92.0)
    # A week later the history has aged out.
    assert store.usual_hourly_rate(busy, T0 + 8 * 86400) == UsualRate(10.0, 50.0)


def test_state_compare_and_set_and_history(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(**where))
    user = fresh_user()
    assert store.get_state(user) == AccountState(user, "ok", None, "")
    assert store.set_state(user, "watch", "burst", T0, expected="ok")
    assert not store.set_state(user, "suspended", "lost race", T0 + 1, expected="ok")
    assert not store.set_state(user, "watch", "same again", T0 + 2)
    assert store.set_state(user, "suspended", "spam", T0 + 3, expected="watch")
    assert store.get_state(user) == AccountState(user, "suspended", T0 + 3, "spam")
    previous = store.clear(user, "admin@example.com", T0 + 4)
    assert previous.state == "suspended"
    assert store.get_state(user).state == "ok"
    assert [(c.old_state, c.new_state, c.by) for c in store.history(user)] == [
        ("suspended", "ok", "admin@example.com"),
        ("watch", "suspended", "mailsift"),
        ("ok", "watch", "mailsift"),
    ]


def test_clear_restarts_the_risk_window(where: dict[str, Any], opened: Opened) -> None:
    store = opened.store(Settings(**where))
    user = fresh_user()
    for _ in range(20):
        store.record_auth_failure(user, "198.51.100.7", T0)
        store.record_outcome(user, "spam", T0)
    send(store, user, 5, T0)
    store.clear(user, "admin", T0 + 30)
    after = store.stats(user, T0 + 90)
    assert (after.auth_failures_hour, after.scored_hour, after.messages_hour) == (0, 0, 0)
    assert after.messages_day == 5  # the limits still count what was sent
    store.record_auth_failure(user, "198.51.100.7", T0 + 90)
    assert store.stats(user, T0 + 100).auth_failures_hour == 1


def test_prune_drops_only_expired_buckets(where: dict[str, Any], opened: Opened) -> None:
    """The worker's hourly prune: from the event loop, a few hundred rows a transaction."""
    store = opened.store(Settings(**where))
    old, recent = fresh_user("old"), fresh_user("recent")
    send(store, old, 2, T0)
    store.record_auth_failure(old, "192.0.2.9", T0)
    send(store, recent, 2, T0 + 26 * 3600)
    asyncio.run(store.prune(T0 + 26 * 3600))
    assert store.stats(old, T0 + 60).messages_hour == 0
    assert store.stats(old, T0 + 60).auth_failures_hour == 0
    assert store.stats(recent, T0 + 26 * 3600).messages_hour == 2


# --- risk rules --------------------------------------------------------------------------

NOW = T0 + 10 * 86400


def stats(**changes: Any) -> AccountStats:
    calm = AccountStats(
        user="u@example.com",
        at=NOW,
        window_start=NOW - 3600,
        messages_hour=5,
        recipients_hour=10,
        messages_day=40,
        scored_hour=5,
        spam_hour=0,
        new_domains_hour=1,
        auth_failures_hour=0,
        auth_failure_ips_hour=0,
        usual=UsualRate(10.0, 50.0),
        domains_known_since=NOW - 30 * 86400,
    )
    return dataclasses.replace(calm, **changes)


def state(name: RiskState = "ok", since: float | None = None) -> AccountState:
    return AccountState("u@example.com", name, since, "earlier" if name != "ok" else "")


AUTH_WATCH = {"auth_failures_hour": 5, "auth_failure_ips_hour": 3}
SPAM_WATCH = {"scored_hour": 10, "spam_hour": 3}
BURST = {"messages_hour": 51}

RULES: list[tuple[str, dict[str, Any], AccountState, RiskState, str]] = [
    ("calm", {}, state(), "ok", ""),
    ("auth below watch", {"auth_failures_hour": 4}, state(), "ok", ""),
    ("auth at watch", AUTH_WATCH, state(), "watch", "5 authentication failures"),
    ("auth at suspend", {"auth_failures_hour": 20}, state(), "suspended", "20 authentication"),
    ("spam share at watch", SPAM_WATCH, state(), "watch", "3 of 10 outbound"),
    ("spam share below watch", {"scored_hour": 10, "spam_hour": 2}, state(), "ok", ""),
    ("spam share at suspend", {"scored_hour": 10, "spam_hour": 6}, state(), "suspended", "60%"),
    ("all spam, too few to judge", {"scored_hour": 9, "spam_hour": 9}, state(), "ok", ""),
    ("volume at 5x usual", {"messages_hour": 50}, state(), "ok", ""),
    ("volume over 5x usual", BURST, state(), "watch", "51 messages"),
    ("volume against a higher usual", {**BURST, "usual": UsualRate(20, 50)}, state(), "ok", ""),
    ("fan-out", {"recipients_hour": 251}, state(), "watch", "251 recipients"),
    ("new domains", {"new_domains_hour": 25}, state(), "watch", "25 recipient domains"),
    ("new domains, below", {"new_domains_hour": 24}, state(), "ok", ""),
    (
        "new domains, history under a day",
        {"new_domains_hour": 80, "domains_known_since": NOW - 3600},
        state(),
        "ok",
        "",
    ),
    (
        "new domains, no history",
        {"new_domains_hour": 80, "domains_known_since": None},
        state(),
        "ok",
        "",
    ),
    ("two families", {**AUTH_WATCH, **BURST}, state(), "watch", "51 messages"),
    ("three families", {**AUTH_WATCH, **BURST, **SPAM_WATCH}, state(), "suspended", "3 of 10"),
    (
        "burst and fan-out are one family",
        {**AUTH_WATCH, **BURST, "recipients_hour": 400},
        state(),
        "watch",
        "400 recipients",
    ),
    (
        "watch, suspend signal",
        {"auth_failures_hour": 25},
        state("watch", NOW - 60),
        "suspended",
        "",
    ),
    ("suspended is sticky", {}, state("suspended", NOW - 86400 * 5), "suspended", "earlier"),
    ("watch holds an hour", {}, state("watch", NOW - 600), "watch", "holds"),
    ("watch decays when calm", {}, state("watch", NOW - 3600), "ok", ""),
    ("watch stays while signalled", BURST, state("watch", NOW - 7200), "watch", "51 messages"),
]


@pytest.mark.parametrize(
    ("changes", "current", "expected", "why"),
    [pytest.param(c, s, e, w, id=name) for name, c, s, e, w in RULES],
)
def test_assess(
    changes: dict[str, Any], current: AccountState, expected: RiskState, why: str
) -> None:
    new_state, reasons = assess(stats(**changes), current, Settings())
    assert new_state == expected
    assert why in "; ".join(reasons)
    if expected == "ok":
        assert reasons == []


def test_assess_follows_the_settings() -> None:
    strict = Settings(account_auth_failures_watch=1, account_burst_factor=2.0)
    assert assess(stats(auth_failures_hour=1), state(), strict)[0] == "watch"
    assert assess(stats(messages_hour=21), state(), strict)[0] == "watch"
    assert assess(stats(messages_hour=21), state(), Settings())[0] == "ok"


# --- checks ------------------------------------------------------------------------------


def context(
    direction: Direction,
    settings: Settings,
    *,
    sending: SendingDecision | None = None,
    account: AccountState | None = None,
) -> CheckContext:
    message = parse_message(b"Subject: hello\r\n\r\nhi there\r\n")
    return CheckContext(
        message,
        Envelope(direction, "u@example.com", ("r@example.org",), user="u@example.com"),
        Score(0.1, -2.2, {}),
        True,
        settings,
        sending=sending,
        account=account,
    )


def decision(*exceeded: Any) -> SendingDecision:
    from mailsift.service.accounts import Limits

    return SendingDecision(
        user="u@example.com",
        allowed=not exceeded,
        exceeded=tuple(exceeded),
        limits=Limits(200, 1000, 1000),
        messages_hour=200,
        messages_day=321,
        recipients_hour=999,
        recipients=3,
        recorded=not exceeded,
    )


def test_limit_check() -> None:
    settings = Settings()
    over = decision("messages_per_hour", "recipients_per_hour")
    reasons = list(limit_reasons(context("outbound", settings, sending=over)))
    assert [(r.name, r.action, r.weight) for r in reasons] == [
        (limit_reason("messages_per_hour"), "defer", 0.0),
        (limit_reason("recipients_per_hour"), "defer", 0.0),
    ]
    assert "200 messages in the last hour" in reasons[0].detail and "200" in reasons[0].detail
    assert "999 recipients" in reasons[1].detail and "1000" in reasons[1].detail
    day = list(limit_reasons(context("outbound", settings, sending=decision("messages_per_day"))))
    assert [(r.name, r.action) for r in day] == [(limit_reason("messages_per_day"), "defer")]
    assert list(limit_reasons(context("outbound", settings, sending=decision()))) == []
    assert list(limit_reasons(context("inbound", settings, sending=over))) == []
    assert list(limit_reasons(context("outbound", settings))) == []


@pytest.mark.parametrize("action", ["defer", "quarantine"])
def test_account_check(action: str) -> None:
    settings = Settings(account_suspend_action=action)
    suspended = AccountState("u@example.com", "suspended", T0, "20 authentication failures")
    [reason] = account_reasons(context("outbound", settings, account=suspended))
    assert (reason.name, reason.action) == (ACCOUNT_SUSPENDED, action)
    assert "20 authentication failures" in reason.detail
    watched = AccountState("u@example.com", "watch", T0, "burst")
    [reason] = account_reasons(context("outbound", settings, account=watched))
    assert (reason.name, reason.action) == (ACCOUNT_WATCH, None)
    assert 0 < reason.weight <= 1
    ok = AccountState("u@example.com", "ok", None, "")
    assert list(account_reasons(context("outbound", settings, account=ok))) == []
    assert list(account_reasons(context("inbound", settings, account=suspended))) == []
    assert list(account_reasons(context("outbound", settings))) == []


# --- flow and routers --------------------------------------------------------------------


@pytest.fixture
def host(
    where: dict[str, Any],
    opened: Opened,
    webhook: Webhook,  # noqa: F811
) -> Iterator[SimpleNamespace]:
    """What the service state offers these helpers: settings, accounts, alerts."""
    settings = Settings(
        alert_webhook_url=webhook.url,
        limit_messages_per_hour=0,
        limit_messages_per_day=0,
        limit_recipients_per_hour=0,
        **where,
    )
    store = opened.store(settings)
    yield SimpleNamespace(settings=settings, accounts=store, alerts=Alerter(store.engine, settings))


def test_flow_suspends_a_spamming_account_and_alerts_once(
    host: SimpleNamespace,
    webhook: Webhook,  # noqa: F811
) -> None:
    user = fresh_user("stolen")

    async def run() -> list[RiskState]:
        seen = []
        for _ in range(5):
            decision, account = await before_outbound(host, user, ["friend@example.org"])
            assert decision.recorded and account.state == "ok"
            seen.append((await after_outbound(host, user, "ham")).state)
        for _ in range(20):
            await before_outbound(host, user, ["victim@example.net"])
            seen.append((await after_outbound(host, user, "spam")).state)
        decision, account = await before_outbound(host, user, ["victim@example.net"])
        assert account.state == "suspended"
        assert not decision.recorded  # held mail is not counted
        await host.alerts.drain(timeout=30)
        return seen

    seen = asyncio.run(run())
    assert seen[:9] == ["ok"] * 9  # fewer than account_min_messages judged: no opinion
    assert seen[-1] == "suspended"
    transitions = [(b["old_state"], b["new_state"]) for b in webhook.bodies("account_state")]
    assert transitions in ([("ok", "suspended")], [("ok", "watch"), ("watch", "suspended")])
    assert all(b["user"] == user for b in webhook.bodies())


def test_the_flush_judges_what_workers_queued_and_alerts_once(
    host: SimpleNamespace,
    webhook: Webhook,  # noqa: F811
) -> None:
    """Two workers queue a spamming user's outcomes; their flushes judge and alert once."""
    settings = host.settings
    store = AccountStore(host.accounts.engine, settings)
    other = SimpleNamespace(
        settings=settings, accounts=store, alerts=Alerter(store.engine, settings)
    )
    user = fresh_user("queued")

    async def run() -> list[dict[str, RiskState]]:
        judged: list[dict[str, RiskState]] = []
        for worker in (host, other):
            for _ in range(6):
                decision, account = await before_outbound(worker, user, ["x@victim.example"])
                assert decision.recorded and account.state == "ok"
                record_outbound(worker, user, "spam")
            judged.append({u: a.state for u, a in (await flush_outbound(worker)).items()})
        assert await flush_outbound(host) == {}  # nothing queued: nothing judged
        await host.alerts.drain(timeout=30)
        await other.alerts.drain(timeout=30)
        return judged

    try:
        judged = asyncio.run(run())
    finally:
        store.close()
    assert judged == [{user: "ok"}, {user: "suspended"}]  # 6 scored: too few to judge
    assert host.accounts.get_state(user).state == "suspended"
    assert [(b["old_state"], b["new_state"]) for b in webhook.bodies("account_state")] == [
        ("ok", "suspended")
    ]


def make_app(host: SimpleNamespace) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(events_router.router)
    app.include_router(accounts_router.router)
    app.state.mailsift = host
    return app


def test_events_and_accounts_routers(
    host: SimpleNamespace,
    webhook: Webhook,  # noqa: F811
) -> None:
    user = fresh_user("login")
    event = {"type": "auth_failure", "user": user.upper(), "client_ip": "203.0.113.5"}
    with TestClient(make_app(host)) as client:

        def drain() -> None:
            assert client.portal is not None
            client.portal.call(host.alerts.drain, 30.0)

        states = []
        for n in range(20):
            response = client.post("/v1/events", json={**event, "client_ip": f"203.0.113.{n}"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["user"], body["auth_failures_hour"]) == (user, n + 1)
            states.append(body["state"])
        assert states == ["ok"] * 4 + ["watch"] * 15 + ["suspended"]
        drain()
        assert [(b["old_state"], b["new_state"]) for b in webhook.bodies("account_state")] == [
            ("ok", "watch"),
            ("watch", "suspended"),
        ]
        [burst] = webhook.bodies("auth_failure_burst")
        assert (burst["key"], burst["failures"]) == (user, 5)

        account = client.get(f"/v1/accounts/{user}").json()
        assert (account["state"], account["stats"]["auth_failures_hour"]) == ("suspended", 20)
        assert account["stats"]["auth_failure_ips_hour"] == 20
        assert "20 authentication failures" in account["reason"]
        assert account["since"] is not None and account["limits"]["messages_per_hour"] == 0
        assert [h["new_state"] for h in account["history"]] == ["suspended", "watch"]

        cleared = client.post(f"/v1/accounts/{user}/clear", params={"by": "root@example.com"})
        assert cleared.json() == {
            "user": user,
            "state": "ok",
            "previous": "suspended",
            "changed": True,
        }
        again = client.post(f"/v1/accounts/{user}/clear").json()
        assert (again["previous"], again["changed"]) == ("ok", False)
        account = client.get(f"/v1/accounts/{user}").json()
        assert (account["state"], account["stats"]["auth_failures_hour"]) == ("ok", 0)

        # Judged afresh: it takes the watch threshold again, and the alerts fire again.
        for _ in range(5):
            client.post("/v1/events", json=event)
        drain()
    assert [b["new_state"] for b in webhook.bodies("account_state")] == [
        "watch",
        "suspended",
        "ok",
        "watch",
    ]
    assert len(webhook.bodies("auth_failure_burst")) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"type": "login_ok", "user": "a@example.com", "client_ip": "192.0.2.1"},
        {"type": "auth_failure", "user": "a@example.com", "client_ip": "999.1.1.1"},
        {"type": "auth_failure", "user": "a" * 321, "client_ip": "192.0.2.1"},
        {"type": "auth_failure", "user": "   ", "client_ip": "192.0.2.1"},
        {"type": "auth_failure", "user": "a@example.com"},
        {"user": "a@example.com", "client_ip": "192.0.2.1"},
    ],
)
def test_events_refuse_bad_input(host: SimpleNamespace, body: dict[str, str]) -> None:
    with TestClient(make_app(host)) as client:
        response = client.post("/v1/events", json=body)
        assert response.status_code == 400
        assert set(response.json()) == {"error", "detail"}
        assert client.post("/v1/events", content=b"not json").status_code == 400
        assert client.get(f"/v1/accounts/{'a' * 321}").status_code == 400
