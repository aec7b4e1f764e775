"""The PostgreSQL paths taken per message (mailsift/service/pg/), against a real
PostgreSQL: the one-statement admission agrees with the synchronous one and is exact
under concurrency, alert incidents fire once, audit rows arrive by COPY, and a revoked
token stops working in a worker whose cache held it, by notification."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from mailsift.learning.trainlog import open_training_log
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.audit import AuditRecord, AuditTrail
from mailsift.service.auth import TokenStore
from mailsift.service.db import STATE_FILENAME, open_state_engine, resolve_url
from mailsift.service.pg.link import PgLink, pg_link
from mailsift.service.settings import Settings
from mailsift.service.token_cache import TokenCache
from tests.service.server import free_port


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=pg_url, limit_messages_per_hour=7)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    opened = open_state_engine(settings.database_url, settings.data_dir)
    yield opened
    opened.dispose()


def _link(settings: Settings) -> PgLink:
    link = pg_link(settings)
    assert link is not None
    return link


def test_a_pg_link_exists_only_for_postgresql(tmp_path: Path, settings: Settings) -> None:
    assert pg_link(Settings(data_dir=tmp_path)) is None
    assert resolve_url(settings.database_url, tmp_path).get_backend_name() == "postgresql"


def test_a_worker_keeps_one_connection_pool_for_the_log_and_the_state(
    settings: Settings, tmp_path: Path
) -> None:
    """On PostgreSQL the state lives in the log's database, so it takes the log's engine:
    one SQLAlchemy pool per worker, not two (connections are what replicas exhaust
    first). On SQLite the state keeps its own file, never waiting on the log's syncs."""
    log = open_training_log(settings.database_url, settings.data_dir)
    lite = open_training_log(None, tmp_path / "lite")
    try:
        assert open_state_engine(settings.database_url, settings.data_dir, log.engine) is log.engine
        state = open_state_engine(None, tmp_path / "lite", lite.engine)
        assert state is not lite.engine
        assert str(state.url.database).endswith(STATE_FILENAME)
        state.dispose()
    finally:
        log.close()
        lite.close()


def test_admission_in_one_statement_is_exact_and_shares_counts_with_the_sync_path(
    settings: Settings, engine: Engine
) -> None:
    store = AccountStore(engine, settings)
    user = f"one-statement-{time.time_ns()}@example.org"
    now = time.time()

    async def run() -> list[bool]:
        link = _link(settings)
        await link.open()
        try:
            # Two messages the synchronous way, then many at once on the loop.
            for _ in range(2):
                assert store.check_and_record(user, ["a@x.example"], now).allowed
            answers = await asyncio.gather(
                *(store.admit_on_loop(link.pool, user, ["b@y.example"], now) for _ in range(12))
            )
            return [decision.allowed for decision, _ in answers]
        finally:
            await link.aclose()

    allowed = asyncio.run(run())
    assert allowed.count(True) == 5  # 7 an hour, 2 taken before
    refused = store.check_and_record(user, ["c@z.example"], now)
    assert not refused.allowed and refused.messages_hour == 7
    assert refused.exceeded == ("messages_per_hour",)


def test_alert_incidents_fire_once_across_workers_and_again_after_a_resolve(
    settings: Settings, engine: Engine
) -> None:
    alerters = [Alerter(engine, settings), Alerter(engine, settings)]
    key = f"u{time.time_ns()}@example.org:suspended"

    async def run() -> tuple[list[bool], bool, bool]:
        links = [_link(settings), _link(settings)]
        for alerter, link in zip(alerters, links, strict=True):
            await link.open()
            alerter.pool = link.pool
        try:
            fired = await asyncio.gather(
                *(alerters[n % 2].alert("account_state", key, {}) for n in range(20))
            )
            resolved = await alerters[0].resolve("account_state", key)
            again = await alerters[1].alert("account_state", key, {})
            return list(fired), resolved, again
        finally:
            for link in links:
                await link.aclose()

    fired, resolved, again = asyncio.run(run())
    assert fired.count(True) == 1
    assert resolved and again
    with engine.connect() as conn:
        raised = conn.execute(
            text("SELECT raised FROM alert_incidents WHERE incident = :key"), {"key": key}
        ).scalar_one()
    assert raised == 1


def test_audit_rows_arrive_by_copy_in_order(settings: Settings, engine: Engine) -> None:
    trail = AuditTrail(engine, settings)
    gateway = f"copy-{time.time_ns()}"
    for n in range(7):
        trail.record(
            AuditRecord(
                time=time.time(), direction="inbound", score=n / 10, verdict="ham",
                action="accept", gateway=gateway, queue_id=f"q{n}", recipients=("a@b.example",),
                reasons=(("model", -1.5),),
            )
        )  # fmt: skip

    async def run() -> int:
        link = _link(settings)
        await link.open()
        trail.pool = link.pool
        try:
            return await trail.drain()
        finally:
            await link.aclose()

    assert asyncio.run(run()) == 7
    rows = trail.search(limit=100)
    mine = [r for r in rows if r["gateway"] == gateway]
    assert [r["queue_id"] for r in mine] == [f"q{n}" for n in reversed(range(7))]
    assert [r["score"] for r in mine] == [n / 10 for n in reversed(range(7))]


def test_a_revoked_token_fails_at_once_in_a_worker_that_cached_it(
    settings: Settings, engine: Engine
) -> None:
    tokens = TokenStore(engine)
    info, secret = tokens.create("gateway", "mta-1")

    async def run() -> tuple[bool, bool, int, bool]:
        link = _link(settings)
        await link.open()
        cache = TokenCache(link.pool, link.listener)
        try:
            deadline = time.monotonic() + 10
            while not link.listener.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            first = await cache.verify(secret) is not None
            second = await cache.verify(secret) is not None  # from the cache
            hits = cache.hits
            await asyncio.to_thread(tokens.revoke, info.id)
            deadline = time.monotonic() + 5
            while await cache.verify(secret) is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            revoked = await cache.verify(secret) is None
            return first, second, hits, revoked
        finally:
            await link.aclose()

    first, second, hits, revoked = asyncio.run(run())
    assert first and second and hits == 1
    assert revoked


def test_a_state_change_in_one_statement_is_a_compare_and_set_with_history(
    settings: Settings, engine: Engine
) -> None:
    store = AccountStore(engine, settings)
    user = f"cas-{time.time_ns()}@example.org"
    now = time.time()

    async def run() -> list[tuple[bool, str]]:
        link = _link(settings)
        await link.open()
        try:
            out = []
            for state, expected in (("watch", "ok"), ("suspended", "ok"), ("suspended", "watch")):
                changed, current = await store.set_state_on_loop(
                    link.pool, user, state, f"to {state}", now, expected=expected
                )
                out.append((changed, current.state))
            # Two workers judging at once from the same state: one changes it.
            races = await asyncio.gather(
                *(
                    store.set_state_on_loop(
                        link.pool, user, "watch", "race", now, expected="suspended"
                    )
                    for _ in range(6)
                )
            )
            out.extend((changed, current.state) for changed, current in races)
            return out
        finally:
            await link.aclose()

    answers = asyncio.run(run())
    assert answers[:3] == [(True, "watch"), (False, "watch"), (True, "suspended")]
    assert [changed for changed, _ in answers[3:]].count(True) == 1
    assert {state for _, state in answers[3:]} == {"watch"}
    history = store.history(user)
    assert [(h.old_state, h.new_state) for h in history] == [
        ("suspended", "watch"),
        ("watch", "suspended"),
        ("ok", "watch"),
    ]
    assert store.get_state(user).state == "watch"


def test_without_notifications_tokens_are_read_per_request_and_revocation_holds(
    pg_url: str, tmp_path: Path, engine: Engine
) -> None:
    """A worker whose listener cannot connect (MAILSIFT_PG_LISTEN_URL pointing nowhere)
    trusts no cached token: every request reads the row, so a revocation holds at once."""
    closed = free_port()
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        pg_listen_url=f"postgresql://postgres@127.0.0.1:{closed}/postgres",
    )
    tokens = TokenStore(engine)
    info, secret = tokens.create("gateway", "mta-2")

    async def run() -> tuple[bool, bool, bool, int, int]:
        link = _link(settings)
        await link.open()
        cache = TokenCache(link.pool, link.listener)
        try:
            await asyncio.sleep(0.3)  # the listener has tried, and failed
            first = await cache.verify(secret) is not None
            second = await cache.verify(secret) is not None
            await asyncio.to_thread(tokens.revoke, info.id)
            revoked = await cache.verify(secret) is None
            return link.listener.connected, first and second, revoked, cache.hits, cache.reads
        finally:
            await link.aclose()

    connected, verified, revoked, hits, reads = asyncio.run(run())
    assert not connected
    assert verified and revoked
    assert hits == 0 and reads == 3
