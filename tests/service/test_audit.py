"""The audit trail: buffered writes, search, the outbound report, pruning, the HTTP resource."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from mailsift.models.parse import parse_message
from mailsift.reasons import MODEL, dlp_reason, limit_reason
from mailsift.service.audit import MAX_SEARCH, AuditRecord, AuditTrail, audit_record
from mailsift.service.checks.base import Envelope, Reason
from mailsift.service.db import checkpoint, open_state_engine
from mailsift.service.errors import BadRequest, install_error_handlers
from mailsift.service.routers import audit as audit_router
from mailsift.service.routers.audit import parse_time
from mailsift.service.settings import Settings

SETTINGS = Settings(audit_retention_days=30)
NOW = 1_750_000_000.0
DAY = 86_400.0
DEADLINE_SECONDS = 20.0


@dataclass(frozen=True)
class Finding:
    """Shaped like dlp.scan.Finding, with the fields the audit must not keep."""

    type: str
    count: int
    severity: str
    description: str = "card numbers"
    samples: tuple[str, ...] = ()


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    return state_engine


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    opened = open_state_engine(None, tmp_path)
    yield opened
    opened.dispose()


@pytest.fixture
def trail(engine: Engine) -> AuditTrail:
    return AuditTrail(engine, SETTINGS)


def row(**changes: object) -> AuditRecord:
    base = AuditRecord(
        time=NOW,
        direction="inbound",
        score=0.02,
        verdict="ham",
        action="accept",
        gateway="mx1",
        queue_id="4Xyz1",
        message_id="<m1@shop.example>",
        mail_from="bounce@shop.example",
        from_addr="news@shop.example",
        recipients=("alice@example.org",),
        user=None,
        reasons=((MODEL, -3.9),),
        model_version="v1+0",
        fingerprint="0" * 32,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def ids(found: list[dict[str, object]]) -> list[object]:
    return [r["queue_id"] for r in found]


# --- record, flush, search ------------------------------------------------------------------


def test_record_flush_search_by_each_filter(trail: AuditTrail) -> None:
    trail.record(row(queue_id="a"))
    trail.record(
        row(
            queue_id="b",
            time=NOW + 10,
            message_id="<m2@shop.example>",
            verdict="spam",
            action="quarantine",
            score=0.97,
        )
    )
    trail.record(
        row(
            queue_id="c",
            time=NOW + 20,
            direction="outbound",
            message_id="m3@example.org",
            mail_from="Alice@Example.org",
            from_addr="alice@example.org",
            recipients=("x@partner.example", "y@partner.example"),
            user="Alice@Example.org",
        )
    )
    assert trail.search() == []  # nothing is written before a flush
    assert trail.flush() == 3 and trail.buffered == 0

    assert ids(trail.search()) == ["c", "b", "a"]  # newest first
    assert ids(trail.search(message_id="<m2@shop.example>")) == ["b"]
    assert ids(trail.search(message_id="m2@shop.example")) == ["b"]
    assert ids(trail.search(message_id=" <m3@example.org> ")) == ["c"]
    assert ids(trail.search(sender="BOUNCE@shop.example")) == ["b", "a"]  # envelope sender
    assert ids(trail.search(sender="news@shop.example")) == ["b", "a"]  # From
    assert ids(trail.search(sender="alice@example.org")) == ["c"]
    assert ids(trail.search(user="alice@example.org")) == ["c"]
    assert ids(trail.search(since=NOW + 10)) == ["c", "b"]
    assert ids(trail.search(until=NOW + 10)) == ["a"]
    assert ids(trail.search(since=NOW + 5, until=NOW + 15)) == ["b"]
    assert ids(trail.search(verdict="spam")) == ["b"]
    assert ids(trail.search(direction="outbound")) == ["c"]
    assert ids(trail.search(direction="inbound", verdict="ham")) == ["a"]
    assert ids(trail.search(limit=1)) == ["c"]
    assert trail.search(sender="nobody@shop.example") == []

    (found,) = trail.search(message_id="m3@example.org")
    assert found["recipients"] == ["x@partner.example", "y@partner.example"]
    assert found["user"] == "alice@example.org"
    assert found["from"] == "alice@example.org"
    assert found["time"] == datetime.fromtimestamp(NOW + 20, UTC).isoformat()
    assert found["reasons"] == [{"name": MODEL, "weight": -3.9}]
    assert found["model_version"] == "v1+0" and found["fingerprint"] == "0" * 32


def test_nothing_of_the_subject_or_body_is_stored(trail: AuditTrail, engine: Engine) -> None:
    secrets = ["SUBJECT-7f3a", "BODY-9c1e", "HTML-55d0", "ATTACHED-e2b7", "SAMPLE-0b4d"]
    raw = (
        b"From: Ann <ann@shop.example>\r\nTo: bob@example.org\r\n"
        b"Subject: quarterly SUBJECT-7f3a\r\nMessage-ID: <unique-42@shop.example>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain BODY-9c1e\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>html HTML-55d0</p>\r\n"
        b'--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="a.csv"'
        b"\r\n\r\ncol\r\nATTACHED-e2b7\r\n--b--\r\n"
    )
    message = parse_message(raw)
    assert "SUBJECT-7f3a" in message.subject and "BODY-9c1e" in message.text  # the control
    record = audit_record(
        Envelope("outbound", "ann@shop.example", ("bob@example.org",), user="ann@shop.example"),
        message,
        score=0.9,
        verdict="spam",
        action="reject",
        reasons=[Reason(dlp_reason("credit_card"), 3.0, "found SAMPLE-0b4d in body (BODY-9c1e)")],
        model_version="v2",
        fingerprint="f" * 32,
        dlp=[Finding("credit_card", 2, "high", samples=("SAMPLE-0b4d",))],
        account_state="ok",
    )
    trail.record(record)
    trail.flush()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM audit_events")).all()
    assert len(rows) == 1
    stored = " ".join(str(cell) for cell in rows[0])
    assert "unique-42@shop.example" in stored and "credit_card" in stored  # what is kept
    for secret in secrets:
        assert secret not in stored, secret
    assert "card numbers" not in stored  # the finding's description is not kept either
    (found,) = trail.search(message_id="unique-42@shop.example")
    assert found["dlp"] == [{"type": "credit_card", "count": 2, "severity": "high"}]
    assert found["reasons"] == [{"name": dlp_reason("credit_card"), "weight": 3.0}]


def test_the_buffer_is_bounded_and_counts_what_it_drops(engine: Engine) -> None:
    trail = AuditTrail(engine, SETTINGS, max_buffer=3)
    for n in range(5):
        trail.record(row(queue_id=str(n)))
    assert (trail.buffered, trail.dropped) == (3, 2)
    assert trail.flush() == 3
    assert sorted(ids(trail.search())) == ["2", "3", "4"]  # the oldest were dropped


def test_rows_wait_in_the_buffer_while_the_database_is_down(engine: Engine, tmp_path: Path) -> None:
    trail = AuditTrail(engine, SETTINGS, batch_rows=2)
    for n in range(3):
        trail.record(row(queue_id=str(n)))
    trail._engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/state.db")
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        trail.flush()
    assert trail.buffered == 3 and trail.dropped == 0
    trail.record(row(queue_id="3"))
    trail._engine = engine
    assert trail.flush() == 4
    assert ids(trail.search(limit=10)) == ["3", "2", "1", "0"]  # in order, none lost


def test_the_background_flusher_writes_a_full_batch_without_waiting(engine: Engine) -> None:
    trail = AuditTrail(engine, SETTINGS, flush_seconds=3600.0, batch_rows=50)

    async def scenario() -> int:
        task = asyncio.create_task(trail.run())
        await asyncio.sleep(0)  # let it start
        for n in range(50):
            trail.record(row(queue_id=str(n), time=time.time()))  # the 50th wakes it
        deadline = time.monotonic() + DEADLINE_SECONDS
        while trail.written < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return trail.written

    assert asyncio.run(scenario()) == 50
    assert len(trail.search(limit=100)) == 50


def test_drain_writes_from_the_loop_and_waits_out_another_processes_writer(
    sqlite_engine: Engine,
) -> None:
    """SQLite: batches are written on the event loop only when the write lock is free at
    once; while another process holds it the loop goes on serving and no row is lost."""
    engine = sqlite_engine
    trail = AuditTrail(engine, SETTINGS, loop_batch_rows=7)
    for n in range(20):
        trail.record(row(queue_id=str(n)))
    assert engine.url.database is not None
    other = sqlite3.connect(engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the file

    async def scenario() -> int:
        drain = asyncio.create_task(trail.drain())
        for _ in range(20):  # the loop keeps turning while the rows wait
            await asyncio.sleep(0.005)
        assert not drain.done() and trail.written == 0
        other.execute("COMMIT")
        return await asyncio.wait_for(drain, DEADLINE_SECONDS)

    try:
        assert asyncio.run(scenario()) == 20
    finally:
        other.close()
    assert trail.buffered == 0
    assert sorted(int(str(q)) for q in ids(trail.search(limit=100))) == list(range(20))


def _written_on_the_loop(engine: Engine, rows: int) -> tuple[AuditTrail, Path]:
    """A trail whose ``rows`` went in through the loop's writes, which never checkpoint,
    and the database file."""
    trail = AuditTrail(engine, SETTINGS)
    for n in range(rows):
        trail.record(row(queue_id=str(n)))
    assert asyncio.run(trail.drain()) == rows
    assert engine.url.database is not None
    return trail, Path(engine.url.database)


def test_checkpoint_moves_what_loop_writes_logged_into_the_database_file(
    sqlite_engine: Engine,
) -> None:
    """Writes on the loop never checkpoint; :func:`checkpoint` (a thread, every second in
    a worker) does, so the write-ahead log of a busy worker does not only grow."""
    trail, main = _written_on_the_loop(sqlite_engine, 2000)
    before = main.stat().st_size
    checkpoint(sqlite_engine)
    assert main.stat().st_size > before + 100_000  # the rows now live in the file itself
    assert len(trail.search(limit=MAX_SEARCH)) == MAX_SEARCH


def test_checkpoint_empties_a_log_grown_past_its_bound(sqlite_engine: Engine) -> None:
    """Under constant writes a PASSIVE checkpoint never lets the log start over: past
    ``truncate_over`` bytes the checkpoint empties it, so it stays bounded."""
    trail, main = _written_on_the_loop(sqlite_engine, 500)
    log = main.with_name(main.name + "-wal")
    grown = log.stat().st_size
    checkpoint(sqlite_engine)  # under the default bound: copied, not emptied
    assert log.stat().st_size == grown > 0
    checkpoint(sqlite_engine, truncate_over=grown - 1)
    assert log.stat().st_size == 0
    assert len(trail.search(limit=MAX_SEARCH)) == 500  # nothing lost on the way


def test_checkpoint_gives_up_at_once_on_a_long_reader_and_empties_the_log_later(
    sqlite_engine: Engine,
) -> None:
    """Emptying the log waits for readers while holding writers off: behind a long report
    query it gives up within milliseconds, and a later round does it."""
    _, main = _written_on_the_loop(sqlite_engine, 200)
    log = main.with_name(main.name + "-wal")
    reader = sqlite3.connect(main, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_events").fetchone()  # holds a snapshot
        started = time.monotonic()
        checkpoint(sqlite_engine, truncate_over=0)
        assert time.monotonic() - started < 1.0  # not the 30 s a writer would wait
        assert log.stat().st_size > 0
        reader.execute("COMMIT")
    finally:
        reader.close()
    checkpoint(sqlite_engine, truncate_over=0)
    assert log.stat().st_size == 0


def test_the_background_flusher_writes_on_its_interval_and_prunes(engine: Engine) -> None:
    trail = AuditTrail(engine, SETTINGS, flush_seconds=0.05)
    trail.record(row(queue_id="old", time=time.time() - 31 * DAY))
    trail.flush()

    async def scenario() -> None:
        task = asyncio.create_task(trail.run())
        trail.record(row(queue_id="new", time=time.time()))
        deadline = time.monotonic() + DEADLINE_SECONDS
        # The prune runs after the write, in turns that yield to the loop: wait for both
        # (waiting for the write alone cancelled a prune still under way on a busy machine).
        while time.monotonic() < deadline:
            if trail.written >= 2 and ids(trail.search()) == ["new"]:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert ids(trail.search()) == ["new"]  # the old row was pruned on the way


# --- pruning --------------------------------------------------------------------------------


def test_prune_deletes_rows_past_the_retention(trail: AuditTrail) -> None:
    for n in range(5):
        trail.record(row(queue_id=f"old{n}", time=NOW - 31 * DAY - n))
    trail.record(row(queue_id="edge", time=NOW - 30 * DAY + 1))
    trail.record(row(queue_id="new", time=NOW))
    trail.flush()
    assert asyncio.run(trail.prune(NOW, batch=2)) == 5  # in several small transactions
    assert ids(trail.search()) == ["new", "edge"]
    assert asyncio.run(trail.prune(NOW)) == 0


def test_prune_serves_the_loop_between_batches(trail: AuditTrail) -> None:
    for n in range(5):
        trail.record(row(queue_id=f"old{n}", time=NOW - 31 * DAY - n))
    trail.record(row(queue_id="new", time=NOW))
    trail.flush()

    async def scenario() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        deleted = await trail.prune(NOW, batch=2)  # three transactions
        task.cancel()
        return deleted, ticks

    deleted, ticks = asyncio.run(scenario())
    assert deleted == 5 and ticks >= 2  # other tasks ran between the batches
    assert ids(trail.search()) == ["new"]


# --- the outbound report --------------------------------------------------------------------


def test_outbound_report_aggregates_per_user(trail: AuditTrail) -> None:
    alice, bob = "alice@example.org", "bob@example.org"
    out = {"direction": "outbound"}
    trail.record(row(**out, user=alice, recipients=("a@x.example", "b@x.example")))
    trail.record(
        row(
            **out,
            user=alice,
            verdict="spam",
            recipients=("c@x.example",),
            dlp=(("credit_card", 3, "medium"), ("iban", 1, "low")),
            account_state="watch",
        )
    )
    trail.record(
        row(
            **out,
            user=alice,
            verdict="suspect",
            reasons=((limit_reason("messages_per_hour"), 0.0), (MODEL, 1.0)),
            dlp=(("credit_card", 200, "high"),),
            account_state="watch",
        )
    )
    trail.record(row(**out, user=alice, reasons=((limit_reason("messages_per_hour"), 0.0),)))
    trail.record(row(**out, user=None, mail_from="Bob@Example.org", verdict="spam"))
    trail.record(row(user=alice, verdict="spam"))  # inbound: not in the outbound report
    trail.record(row(**out, user=bob, time=NOW - 2 * DAY))  # before `since`
    trail.flush()

    report = {r["user"]: r for r in trail.outbound_report(NOW - DAY)}
    assert set(report) == {alice, bob}
    a = report[alice]
    assert (a["messages"], a["recipients"], a["spam"], a["suspect"]) == (4, 5, 1, 1)
    assert a["spam_share"] == 0.25
    assert (a["dlp_messages"], a["dlp_findings"]) == (2, 204)
    assert a["dlp_by_type"] == {"credit_card": 203, "iban": 1}
    assert a["dlp_max_severity"] == "high"
    assert a["limit_hits"] == 2 and a["limits"] == {limit_reason("messages_per_hour"): 2}
    assert a["account_states"] == {"watch": 2}
    b = report[bob]  # no authenticated user: grouped by envelope sender
    assert (b["messages"], b["spam_share"], b["dlp_findings"], b["limit_hits"]) == (
        1,
        1.0,
        0,
        0,
    )
    assert [r["user"] for r in trail.outbound_report(NOW - DAY)] == [alice, bob]
    assert trail.outbound_report(NOW - DAY, until=NOW - DAY / 2) == []
    assert len(trail.outbound_report(NOW - 3 * DAY)) == 2


# --- HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1750000000", 1_750_000_000.0),
        ("1750000000.5", 1_750_000_000.5),
        ("2025-06-15T15:06:40Z", 1_750_000_000.0),
        ("2025-06-15T17:06:40+02:00", 1_750_000_000.0),
        ("2025-06-15T17:06:40 02:00", 1_750_000_000.0),  # a "+" the query string ate
        ("2025-06-15T15:06:40", 1_750_000_000.0),  # no zone: UTC
        ("2025-06-15", 1_749_945_600.0),
    ],
)
def test_parse_time(value: str, expected: float) -> None:
    assert parse_time(value, "since") == expected


@pytest.mark.parametrize("value", ["yesterday", "-5", "nan", "inf", "1e30", "2025-13-01", ""])
def test_parse_time_refuses(value: str) -> None:
    with pytest.raises(BadRequest, match="since"):
        parse_time(value, "since")


@pytest.fixture
def client(trail: AuditTrail) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(audit_router.router)
    app.state.mailsift = SimpleNamespace(settings=SETTINGS, audit=trail)
    with TestClient(app) as c:
        yield c


def test_http_audit_search(client: TestClient, trail: AuditTrail) -> None:
    trail.record(row(queue_id="a"))
    trail.record(row(queue_id="b", time=NOW + 60, verdict="spam", direction="outbound"))
    trail.flush()
    body = client.get("/v1/audit", params={"message_id": "<m1@shop.example>"}).json()
    assert body["count"] == 2 and [e["queue_id"] for e in body["events"]] == ["b", "a"]
    assert body["events"][0]["from"] == "news@shop.example"
    since = datetime.fromtimestamp(NOW + 30, UTC).isoformat()
    assert client.get("/v1/audit", params={"since": since}).json()["count"] == 1
    assert client.get("/v1/audit", params={"since": str(NOW + 30)}).json()["count"] == 1
    assert client.get("/v1/audit", params={"verdict": "spam"}).json()["count"] == 1
    assert client.get("/v1/audit", params={"direction": "inbound"}).json()["count"] == 1
    assert client.get("/v1/audit", params={"sender": "news@shop.example"}).json()["count"] == 2
    for bad in ({"since": "last tuesday"}, {"verdict": "maybe"}, {"limit": "0"}):
        response = client.get("/v1/audit", params=bad)
        assert response.status_code == 400 and response.json()["error"] == "bad_request"


def test_http_outbound_report(client: TestClient, trail: AuditTrail) -> None:
    trail.record(row(direction="outbound", user="alice@example.org", time=time.time()))
    trail.flush()
    body = client.get("/v1/reports/outbound").json()  # default: the last day
    assert [u["user"] for u in body["users"]] == ["alice@example.org"]
    assert body["users"][0]["messages"] == 1
    later = client.get("/v1/reports/outbound", params={"since": str(time.time() + 60)})
    assert later.json()["users"] == []
    bad = client.get("/v1/reports/outbound", params={"since": "soon"})
    assert bad.status_code == 400 and "since" in bad.json()["detail"]
