"""The health watch: each condition alerts once per incident, clears, and alerts again."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from mailsift.learning.learner import ModelStatus
from mailsift.learning.trainlog import LogEntry
from mailsift.service import monitor
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.db import open_state_engine
from mailsift.service.metrics import ModelFacts
from mailsift.service.monitor import (
    ALERT_AUTH_FAILURE_RATE,
    ALERT_DISK_LOW,
    ALERT_GATEWAY_SILENT,
    ALERT_LOG_BEHIND,
    ALERT_MODEL_STALE,
    ALERT_SNAPSHOT_STALE,
    CLEAR_ROUNDS,
    KINDS,
    Facts,
    GatewaySeen,
    HealthWatch,
    assess,
    judged,
)
from mailsift.service.settings import Settings
from tests.service.webhook import Webhook

MiB = 1024 * 1024
HOUR = 3600.0
T0 = 1_700_000_000.0

# -- assess: pure, table-driven --------------------------------------------------------------

BASE = Settings(
    gateways="mx1, mx2",
    gateway_silence_minutes=10,
    disk_min_free_mb=100,
    model_max_age_hours=24,
    snapshot_max_age_hours=6,
    log_lag_alert_entries=50,
    auth_failure_burst_per_minute=20,
)
HEALTHY = Facts(
    host="h1",
    worker="h1:42",
    watching_since=T0 - HOUR,
    gateway_last_seen={"mx1": T0 - 60, "mx2": T0 - 120, "unlisted": T0 - 10 * HOUR},
    data_dir="/var/lib/mailsift",
    disk_free_bytes=5000 * MiB,
    model=ModelFacts(
        version="v+0",
        ham=100,
        spam=100,
        position=500,
        head=510,
        last_learned_at=T0 - HOUR,
        snapshot_position=480,
        snapshot_created_at=T0 - 2 * HOUR,
        unsnapshotted_since=T0 - HOUR,
    ),
    auth_failures_per_minute=3,
)


def model(**changes: Any) -> ModelFacts:
    return replace(HEALTHY.model, **changes)


ASSESS_CASES: list[tuple[str, Facts, set[tuple[str, str]]]] = [
    ("healthy", HEALTHY, set()),
    (
        "gateway silent for 11 minutes",
        replace(HEALTHY, gateway_last_seen={"mx1": T0 - 11 * 60, "mx2": T0}),
        {(ALERT_GATEWAY_SILENT, "mx1")},
    ),
    (
        "gateway never seen, watched for 11 minutes",
        replace(HEALTHY, gateway_last_seen={"mx1": T0}, watching_since=T0 - 11 * 60),
        {(ALERT_GATEWAY_SILENT, "mx2")},
    ),
    (
        "gateway never seen, watched for 5 minutes",
        replace(HEALTHY, gateway_last_seen={"mx1": T0}, watching_since=T0 - 5 * 60),
        set(),
    ),
    ("gateway calls unreadable", replace(HEALTHY, gateway_last_seen=None), set()),
    (
        "disk below the minimum",
        replace(HEALTHY, disk_free_bytes=99 * MiB),
        {(ALERT_DISK_LOW, "h1:/var/lib/mailsift")},
    ),
    ("disk at the minimum", replace(HEALTHY, disk_free_bytes=100 * MiB), set()),
    ("disk unknown", replace(HEALTHY, disk_free_bytes=None), set()),
    (
        "model learned nothing for 25 hours",
        replace(HEALTHY, model=model(last_learned_at=T0 - 25 * HOUR)),
        {(ALERT_MODEL_STALE, "h1")},
    ),
    ("model never learned", replace(HEALTHY, model=model(last_learned_at=None)), set()),
    (
        "log entry in no snapshot for 7 hours",
        replace(HEALTHY, model=model(unsnapshotted_since=T0 - 7 * HOUR)),
        {(ALERT_SNAPSHOT_STALE, "h1")},
    ),
    (
        "old snapshot, but it holds the whole log",
        replace(HEALTHY, model=model(snapshot_created_at=T0 - 99 * HOUR, unsnapshotted_since=None)),
        set(),
    ),
    (
        "worker 51 entries behind",
        replace(HEALTHY, model=model(position=459)),
        {(ALERT_LOG_BEHIND, "h1:42")},
    ),
    ("worker 50 entries behind", replace(HEALTHY, model=model(position=460)), set()),
    (
        "log unreadable, only an old snapshot known",
        replace(HEALTHY, model=model(head=None, last_learned_at=T0 - 99 * HOUR)),
        set(),
    ),
    (
        "20 auth failures in a minute",
        replace(HEALTHY, auth_failures_per_minute=20),
        {(ALERT_AUTH_FAILURE_RATE, "all")},
    ),
    ("auth failures unknown", replace(HEALTHY, auth_failures_per_minute=None), set()),
]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [pytest.param(f, e, id=name) for name, f, e in ASSESS_CASES],
)
def test_assess(facts: Facts, expected: set[tuple[str, str]]) -> None:
    incidents = assess(facts, BASE, T0)
    assert {(i.kind, i.key) for i in incidents} == expected
    for incident in incidents:
        assert incident.kind in KINDS
        assert incident.summary
    # What was judged active is also judged (never "undecided").
    assert expected <= judged(facts, BASE)


def test_unmeasured_facts_and_margins_decide_nothing() -> None:
    unknown = replace(
        HEALTHY,
        gateway_last_seen=None,
        disk_free_bytes=None,
        model=model(head=None),
        auth_failures_per_minute=None,
    )
    assert judged(unknown, BASE) == set()
    # Just back over the line is not yet clear: a hovering value cannot flap.
    hovering = replace(HEALTHY, disk_free_bytes=101 * MiB, model=model(position=480))
    decided = judged(hovering, BASE)
    assert (ALERT_DISK_LOW, "h1:/var/lib/mailsift") not in decided
    assert (ALERT_LOG_BEHIND, "h1:42") not in decided
    assert (ALERT_DISK_LOW, "h1:/var/lib/mailsift") in judged(HEALTHY, BASE)


# -- the shared stores --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = open_state_engine(None, tmp_path)
    else:
        engine = open_state_engine(request.getfixturevalue("pg_url"), tmp_path)
        with engine.begin() as conn:
            for name in ("gateway_seen", "account_auth_failures"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name} CASCADE")
    yield engine
    engine.dispose()


def test_gateway_calls_are_shared_between_workers(engine: Engine) -> None:
    first, second = GatewaySeen(engine), GatewaySeen(engine)
    assert first.note("mx1", T0)  # the first call flushes at once
    assert not first.note("mx1", T0 + 1)  # then at most every few seconds
    assert not first.note("mx2", T0 + 2)
    assert second.last_seen() == {}
    first.flush()
    assert second.last_seen() == {"mx1": T0 + 1, "mx2": T0 + 2}
    second.note("mx1", T0 + 100)
    second.flush()
    assert first.note("mx1", T0 + 50)  # due again after flush_seconds
    first.flush()  # an older call flushed later does not go back in time
    assert first.last_seen()["mx1"] == T0 + 100
    assert not first.note("mx1", T0 + 52)


def test_note_gateway_records_in_the_background(tmp_path: Path) -> None:
    engine = open_state_engine(None, tmp_path)
    worker = SimpleNamespace(gateway_seen=GatewaySeen(engine))
    other = GatewaySeen(engine)

    async def run() -> None:
        for gateway in ("mx1", None, "", "mx2", "mx1"):
            monitor.note_gateway(worker, gateway)
        await worker.gateway_seen.aclose()

    asyncio.run(run())
    assert set(other.last_seen()) == {"mx1", "mx2"}
    engine.dispose()


def test_gateway_names_are_bounded(engine: Engine) -> None:
    seen = GatewaySeen(engine, max_pending=3)
    for n in range(10):
        seen.note(f"gw{n}", T0 + n)
    seen.note("  ", T0)
    seen.note("gw0", T0 + 20)  # a known name is still updated
    assert seen.last_seen() == {"gw0": T0 + 20, "gw1": T0 + 1, "gw2": T0 + 2}


def test_auth_failures_per_minute_counts_all_users(engine: Engine) -> None:
    accounts = AccountStore(engine, Settings())
    minute = (T0 // 60) * 60
    for n in range(7):
        accounts.record_auth_failure(f"user{n % 3}@example.com", f"192.0.2.{n}", minute + 5)
    for _ in range(4):
        accounts.record_auth_failure("user9@example.com", "192.0.2.9", minute + 65)
    assert monitor.auth_failures_per_minute(engine, minute + 70) == 7  # the minute before
    assert monitor.auth_failures_per_minute(engine, minute + 125) == 4
    assert monitor.auth_failures_per_minute(engine, minute + 185) == 0


# -- the watch, against a real webhook ----------------------------------------------------


@dataclass
class StubLearner:
    position: int = 1
    snapshot_position: int = 1

    def status(self) -> ModelStatus:
        return ModelStatus("v+0", 50, 50, self.position, self.snapshot_position, None, 0.0)


@dataclass
class StubLog:
    times: list[float] = field(default_factory=list)

    def head(self) -> int:
        return len(self.times)

    def read(self, after: int, limit: int = 500) -> list[LogEntry]:
        stop = min(len(self.times), after + limit)
        return [
            LogEntry(p + 1, f"fp{p}", "ham", None, b"", b"", "test", "t", self.times[p])
            for p in range(after, stop)
        ]


@dataclass
class StubState:
    settings: Settings
    learner: StubLearner
    trainlog: StubLog
    state_engine: Engine
    alerts: Alerter
    gateway_seen: GatewaySeen
    accounts: AccountStore


def healthy(state: StubState, base: Settings, now: float) -> None:
    """Everything fine as of ``now``."""
    state.settings = base
    state.gateway_seen.note("mx1", now)
    state.trainlog.times = [now - 60]
    state.learner.position = state.learner.snapshot_position = 1


def provoke_gateway(state: StubState, base: Settings, now: float) -> None:
    state.gateway_seen = GatewaySeen(state.state_engine)  # nobody notes mx1 any more


def provoke_disk(state: StubState, base: Settings, now: float) -> None:
    state.settings = base.model_copy(update={"disk_min_free_mb": 2**40})


def provoke_model(state: StubState, base: Settings, now: float) -> None:
    state.trainlog.times = [now - 48 * HOUR]


def provoke_snapshot(state: StubState, base: Settings, now: float) -> None:
    state.trainlog.times = [now - 30 * HOUR, now]
    state.learner.position, state.learner.snapshot_position = 2, 0


def provoke_log_lag(state: StubState, base: Settings, now: float) -> None:
    state.trainlog.times = [now] * 20
    state.learner.snapshot_position = 20  # the snapshot has it; this worker does not


def provoke_auth(state: StubState, base: Settings, now: float) -> None:
    for n in range(6):
        state.accounts.record_auth_failure(f"user{n}@example.com", "198.51.100.7", now)


PROVOKE: dict[str, Callable[[StubState, Settings, float], None]] = {
    ALERT_GATEWAY_SILENT: provoke_gateway,
    ALERT_DISK_LOW: provoke_disk,
    ALERT_MODEL_STALE: provoke_model,
    ALERT_SNAPSHOT_STALE: provoke_snapshot,
    ALERT_LOG_BEHIND: provoke_log_lag,
    ALERT_AUTH_FAILURE_RATE: provoke_auth,
}


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture
def stub(tmp_path: Path, webhook: Webhook) -> Iterator[StubState]:
    base = Settings(
        data_dir=tmp_path,
        alert_webhook_url=webhook.url,
        gateways="mx1",
        gateway_silence_minutes=10,
        disk_min_free_mb=0,
        model_max_age_hours=24,
        snapshot_max_age_hours=24,
        log_lag_alert_entries=10,
        auth_failure_burst_per_minute=5,
    )
    engine = open_state_engine(None, tmp_path)
    state = StubState(
        base,
        StubLearner(),
        StubLog(),
        engine,
        Alerter(engine, base, backoff=0.01),
        GatewaySeen(engine),
        AccountStore(engine, base),
    )
    yield state
    engine.dispose()


def test_provoking_one_condition_raises_only_its_kind() -> None:
    assert set(PROVOKE) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_alert_fires_once_per_incident(kind: str, stub: StubState, webhook: Webhook) -> None:
    base = stub.settings
    start = time.time()
    watch = HealthWatch(stub, started_at=start)
    # Rounds 11 minutes apart: a gateway that misses one round has been silent too long.
    plan = [False, True, True, True] + [False] * CLEAR_ROUNDS + [True, True]

    async def run() -> list[int]:
        fired = []
        for n, active in enumerate(plan):
            now = start + n * 11 * 60
            healthy(stub, base, now)
            if active:
                PROVOKE[kind](stub, base, now)
            incidents = await watch.round(now)
            assert {i.kind for i in incidents} == ({kind} if active else set())
            await stub.alerts.drain(timeout=30)
            fired.append(len(webhook.received))
        return fired

    # Once when it starts, not again while it lasts; once more for the next incident.
    assert asyncio.run(run()) == [0, 1, 1, 1, 1, 1, 2, 2]
    assert {a["alert"] for a in webhook.received} == {kind}
    first, second = webhook.received
    assert first["key"] == second["key"]
    assert first["summary"]


def test_the_watch_loop_alerts_once_over_many_rounds(stub: StubState, webhook: Webhook) -> None:
    rounds = 0
    status = stub.learner.status

    def counted() -> ModelStatus:
        nonlocal rounds
        rounds += 1
        return status()

    stub.learner.status = counted  # type: ignore[method-assign]
    healthy(stub, stub.settings, time.time())
    provoke_disk(stub, stub.settings, time.time())
    stub.settings = stub.settings.model_copy(update={"monitor_seconds": 0.01})

    async def run() -> None:
        task = asyncio.create_task(monitor.watch(stub))
        deadline = time.monotonic() + 30
        while rounds < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stub.alerts.drain(timeout=30)

    asyncio.run(run())
    assert rounds >= 6
    assert [a["alert"] for a in webhook.received] == [ALERT_DISK_LOW]


# -- alert mail ---------------------------------------------------------------------------


class SmtpSink:
    """A minimal SMTP server on 127.0.0.1 that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                sender, rcpts = "", list[str]()
                self.reply("220 sink ESMTP")
                while line := self.rfile.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        self.reply("250 sink")
                    elif verb == b"MAIL":
                        sender, rcpts = line.decode().split(":", 1)[1].strip(), list[str]()
                        self.reply("250 ok")
                    elif verb == b"RCPT":
                        rcpts.append(line.decode().split(":", 1)[1].strip())
                        self.reply("250 ok")
                    elif verb == b"DATA":
                        self.reply("354 go on")
                        data = b"".join(iter(self.rfile.readline, b".\r\n"))
                        sink.messages.append((sender, rcpts, data))
                        self.reply("250 queued")
                    elif verb == b"QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_alert_mail_reaches_every_recipient() -> None:
    body = {
        "alert": "gateway_silent",
        "key": "mx1\r\nBcc: victim@example.net",
        "at": "2026-01-01T00:00:00+00:00",
        "summary": "gateway mx1 has not called for 12 minutes",
        "silent_minutes": 12.0,
    }
    with SmtpSink() as sink:
        settings = Settings(
            alert_smtp_host="127.0.0.1",
            alert_smtp_port=sink.port,
            alert_smtp_from="mailsift@example.org",
            alert_smtp_to="ops@example.org, security@example.org",
        )
        assert asyncio.run(monitor.mail_alert(settings, body))
    [(sender, rcpts, data)] = sink.messages
    assert sender == "<mailsift@example.org>"
    assert rcpts == ["<ops@example.org>", "<security@example.org>"]
    mail = message_from_bytes(data, policy=default_policy)
    assert mail["Subject"].startswith("[mailsift] gateway_silent: mx1")
    assert mail["Bcc"] is None  # a key cannot inject headers
    text = mail.get_body().get_content()  # type: ignore[union-attr]
    assert text.startswith("gateway mx1 has not called for 12 minutes")
    assert '"silent_minutes": 12.0' in text


def test_alert_mail_that_cannot_be_sent_is_reported_not_raised() -> None:
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as closed:
        port = closed.server_address[1]
    settings = Settings(alert_smtp_host="127.0.0.1", alert_smtp_port=port, alert_smtp_to="a@b.c")
    assert asyncio.run(monitor.mail_alert(settings, {"alert": "disk_low", "key": "h"})) is False
    assert asyncio.run(monitor.mail_alert(Settings(), {"alert": "disk_low", "key": "h"})) is False
