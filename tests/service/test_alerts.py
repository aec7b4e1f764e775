"""Alerts: one webhook POST per incident across workers, retries, never a failure upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from mailsift.service.alerts import Alerter
from mailsift.service.db import open_state_engine
from mailsift.service.settings import Settings


@dataclass
class Webhook:
    """A real HTTP server on 127.0.0.1 that records every POST it receives.

    ``statuses`` are answered in order, then 200 for every further request.
    """

    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: bytes) -> int:
        with self.lock:
            self.received.append(json.loads(body))
            return self.statuses.pop(0) if self.statuses else 200

    def bodies(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.received if kind is None or b["alert"] == kind]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.headers["Content-Type"] == "application/json"
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(hook.answer(body))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=s3cret-token"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Where the state database lives, as Settings keyword arguments."""
    if request.param == "sqlite":
        yield {"data_dir": tmp_path / "data"}
        return
    pg_url: str = request.getfixturevalue("pg_url")
    yield {"data_dir": tmp_path, "database_url": pg_url}
    engine = open_state_engine(pg_url, tmp_path)
    with engine.begin() as conn:  # the next test starts with no incidents
        conn.execute(text("DELETE FROM alert_incidents"))
    engine.dispose()


@pytest.fixture
def engines(settings_for: dict[str, Any]) -> Iterator[list[Engine]]:
    """Two engines on the same state database: two workers' connections."""
    settings = Settings(**settings_for)
    opened = [open_state_engine(settings.database_url, settings.data_dir) for _ in range(2)]
    yield opened
    for engine in opened:
        engine.dispose()


def _settings(webhook: Webhook | None, **extra: Any) -> Settings:
    return Settings(alert_webhook_url=webhook.url if webhook else None, **extra)


def _alerters(engines: list[Engine], settings: Settings, **kwargs: Any) -> list[Alerter]:
    return [Alerter(engine, settings, backoff=0.01, **kwargs) for engine in engines]


async def _drain(*alerters: Alerter) -> None:
    for alerter in alerters:
        await alerter.drain(timeout=30)


def test_one_post_per_incident_across_two_workers(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    settings = _settings(webhook, **settings_for)
    first, second = _alerters(engines, settings)
    payload = {"user": "alice@example.com", "old_state": "ok", "new_state": "suspended"}

    async def run() -> list[bool]:
        raises = [
            (first if n % 2 else second).alert(
                "account_state", "alice@example.com:suspended", payload
            )
            for n in range(20)
        ]
        fired = await asyncio.gather(*raises)
        await _drain(first, second)
        return list(fired)

    fired = asyncio.run(run())
    assert fired.count(True) == 1
    [body] = webhook.bodies()
    assert body["alert"] == "account_state"
    assert body["key"] == "alice@example.com:suspended"
    assert datetime.fromisoformat(body["at"]).tzinfo is not None
    assert {k: body[k] for k in payload} == payload


def test_alerts_reach_the_webhook_in_the_order_raised(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    """A user's ok -> watch arrives before watch -> suspended, even when the first POST
    is refused once and retried while the second is already raised."""
    webhook.statuses = [503]
    alerter, _ = _alerters(engines, _settings(webhook, **settings_for))

    async def run() -> None:
        assert await alerter.alert("account_state", "carol@example.com:watch", {})
        assert await alerter.alert("account_state", "carol@example.com:suspended", {})
        await _drain(alerter)

    asyncio.run(run())
    keys = [b["key"] for b in webhook.bodies()]
    assert keys == ["carol@example.com:watch"] * 2 + ["carol@example.com:suspended"]


def test_resolve_lets_the_incident_fire_again(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    first, second = _alerters(engines, _settings(webhook, **settings_for))

    async def run() -> list[bool]:
        results = [await first.alert("auth_failure_burst", "bob", {"failures": 5})]
        results.append(await second.alert("auth_failure_burst", "bob", {"failures": 6}))
        results.append(await second.resolve("auth_failure_burst", "bob"))
        results.append(await second.resolve("auth_failure_burst", "bob"))  # nothing open now
        results.append(await first.alert("auth_failure_burst", "bob", {"failures": 7}))
        results.append(await second.alert("auth_failure_burst", "bob", {"failures": 8}))
        await _drain(first, second)
        return results

    assert asyncio.run(run()) == [True, False, True, False, True, False]
    assert [b["failures"] for b in webhook.bodies()] == [5, 7]


def test_incidents_are_per_kind_and_key(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for))

    async def run() -> list[bool]:
        incidents = [("a", "x"), ("a", "y"), ("b", "x"), ("a", "x"), ("b", "x")]
        fired = [await alerter.alert(kind, key, {}) for kind, key in incidents]
        await _drain(alerter)
        return fired

    assert asyncio.run(run()) == [True, True, True, False, False]
    assert sorted((b["alert"], b["key"]) for b in webhook.bodies()) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
    ]


def test_fires_again_after_a_quiet_period(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for), quiet_seconds=600)
    t0 = 1_700_000_000.0

    async def run() -> list[bool]:
        fired = []
        # Raised every 500 s: never quiet for 600 s, so one incident throughout.
        for n in range(5):
            fired.append(await alerter.alert("k", "u", {}, now=t0 + 500 * n))
        fired.append(await alerter.alert("k", "u", {}, now=t0 + 2000 + 600))
        await _drain(alerter)
        return fired

    assert asyncio.run(run()) == [True, False, False, False, False, True]
    assert len(webhook.bodies()) == 2


def test_server_errors_are_retried(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    webhook.statuses = [500, 503]
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for), attempts=3)

    async def run() -> None:
        assert await alerter.alert("k", "retry", {"n": 1})
        await _drain(alerter)
        assert not await alerter.alert("k", "retry", {"n": 2})  # delivered: still open

    asyncio.run(run())
    assert [b["n"] for b in webhook.bodies()] == [1, 1, 1]


def test_a_refusing_webhook_is_not_asked_again(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    webhook.statuses = [400]
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for), attempts=3)

    async def run() -> None:
        assert await alerter.alert("k", "refused", {})
        await _drain(alerter)

    asyncio.run(run())
    assert len(webhook.bodies()) == 1


def test_undelivered_alert_never_raises_and_fires_at_the_next_raise(
    engines: list[Engine], settings_for: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nobody listens on: every attempt is refused.
    settings = Settings(alert_webhook_url="http://127.0.0.1:9/hook?token=s3cret", **settings_for)
    [alerter] = _alerters(engines[:1], settings, attempts=2, timeout=2)

    async def run() -> list[bool]:
        fired = [await alerter.alert("k", "down", {})]
        await _drain(alerter)
        fired.append(await alerter.alert("k", "down", {}))
        await _drain(alerter)
        return fired

    with caplog.at_level(logging.INFO, logger="mailsift.alerts"):
        assert asyncio.run(run()) == [True, True]
    assert "not delivered" in caplog.text
    assert "s3cret" not in caplog.text


def test_logged_without_payload_or_secrets(
    engines: list[Engine], settings_for: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    [alerter] = _alerters(engines[:1], _settings(None, **settings_for))
    with caplog.at_level(logging.INFO, logger="mailsift.alerts"):
        assert asyncio.run(alerter.alert("account_state", "carol:watch", {"secret": "hunter2"}))
    assert "account_state" in caplog.text and "carol:watch" in caplog.text
    assert "hunter2" not in caplog.text


def test_payload_cannot_replace_the_envelope(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for))

    async def run() -> None:
        await alerter.alert("real", "k", {"alert": "fake", "key": "fake", "extra": 1})
        await _drain(alerter)

    asyncio.run(run())
    [body] = webhook.bodies()
    assert (body["alert"], body["key"], body["extra"]) == ("real", "k", 1)


def test_a_broken_database_does_not_reach_the_caller(
    engines: list[Engine], webhook: Webhook, settings_for: dict[str, Any]
) -> None:
    [alerter] = _alerters(engines[:1], _settings(webhook, **settings_for))
    with engines[0].begin() as conn:
        conn.execute(text("DROP TABLE alert_incidents"))
    try:
        assert asyncio.run(alerter.alert("k", "x", {})) is False
        assert asyncio.run(alerter.resolve("k", "x")) is False
    finally:
        Alerter(engines[0], alerter.settings)  # recreate the table for the next test
    assert webhook.bodies() == []
