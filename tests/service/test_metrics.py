"""Prometheus metrics: the exposition parses, moves with traffic, and pools workers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mailsift.learning.learner import ModelStatus
from mailsift.learning.tail import LogTail
from mailsift.learning.trainlog import LogEntry, TrainingLogError
from mailsift.reasons import limit_reason
from mailsift.service import metrics
from mailsift.service.checks.base import Reason
from mailsift.service.dlp.scan import DlpReport, Finding
from mailsift.service.leftovers import clean_leftovers
from mailsift.service.routers import metrics as metrics_router

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
NOW_ISH = 1_700_000_000.0


def parse(text: str) -> Samples:
    """Every sample of an exposition; raises if the Prometheus parser refuses it."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def entry(position: int, created_at: float) -> LogEntry:
    return LogEntry(position, f"fp{position}", "ham", None, b"", b"", "test", "t", created_at)


@dataclass
class StubLearner:
    position: int = 7
    snapshot_position: int = 5
    snapshot_created_at: float | None = None

    def status(self) -> ModelStatus:
        return ModelStatus(
            version=f"snap+{self.position - self.snapshot_position}",
            ham=11,
            spam=13,
            log_position=self.position,
            snapshot_position=self.snapshot_position,
            snapshot_created_at=self.snapshot_created_at,
            updated_at=0.0,
        )


@dataclass
class StubLog:
    times: list[float] = field(default_factory=list)
    broken: bool = False

    def head(self) -> int:
        if self.broken:
            raise TrainingLogError("log unreachable")
        return len(self.times)

    def read(self, after: int, limit: int = 500) -> list[LogEntry]:
        return [
            entry(p + 1, self.times[p]) for p in range(after, min(len(self.times), after + limit))
        ]


@dataclass
class StubState:
    learner: StubLearner
    trainlog: StubLog
    tail: LogTail = field(default_factory=lambda: LogTail(behind_after=5.0))


def build_app(state: StubState) -> FastAPI:
    app = FastAPI()
    app.add_middleware(metrics.MetricsMiddleware)
    app.include_router(metrics_router.router)
    app.state.mailsift = state

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/private")
    async def private() -> None:
        raise HTTPException(401, "no token")

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    @app.post("/score")
    async def score(verdict: str, direction: str = "outbound") -> dict[str, str]:
        dlp = DlpReport(
            (Finding("credit_card", "card numbers", 2, "medium", 0.9, ("body",), ("****",)),),
            "quarantine",
        )
        reasons = [Reason(limit_reason("messages_per_hour"), 0.0, "over", action="defer")]
        action = "defer" if verdict == "spam" else "accept"
        metrics.observe_verdict(direction, verdict, action, reasons, dlp)
        return {"verdict": verdict}

    return app


@pytest.fixture
def state() -> StubState:
    now = time.time()
    return StubState(StubLearner(snapshot_created_at=now - 600), StubLog([now - 60] * 9))


@pytest.fixture
def client(state: StubState) -> Iterator[TestClient]:
    with TestClient(build_app(state), raise_server_exceptions=False) as c:
        yield c


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_requests_count_under_route_templates_and_status_classes(client: TestClient) -> None:
    before = scrape(client)
    for n in (1, 2, 3):
        assert client.get(f"/items/{n}").status_code == 200
    assert client.get("/items/x").status_code == 422
    assert client.get("/private").status_code == 401
    assert client.get("/broken").status_code == 500
    assert client.get("/no/such/path/42").status_code == 404
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "mailsift_http_requests_total"
    item = {"method": "GET", "route": "/items/{item_id}"}
    assert moved(total, **item, status="2xx") == 3
    assert moved(total, **item, status="4xx") == 1
    assert moved(total, method="GET", route="/private", status="4xx") == 1
    assert moved(total, method="GET", route="/broken", status="5xx") == 1
    assert moved(total, method="GET", route="unmatched", status="4xx") == 1
    assert moved("mailsift_http_request_duration_seconds_count", **item, status="2xx") == 3
    assert moved("mailsift_http_request_duration_seconds_sum", **item, status="2xx") > 0
    assert moved("mailsift_auth_failures_total", source="api") == 1
    # Raw paths never become label values.
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(r and ("/items/1" in r or "42" in r) for r in routes)


def test_verdicts_actions_dlp_and_limits_move(client: TestClient) -> None:
    before = scrape(client)
    for verdict in ("spam", "ham", "ham", "spam"):
        assert client.post("/score", params={"verdict": verdict}).status_code == 200
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mailsift_verdicts_total", direction="outbound", verdict="spam") == 2
    assert moved("mailsift_verdicts_total", direction="outbound", verdict="ham") == 2
    assert moved("mailsift_actions_total", direction="outbound", action="defer") == 2
    assert moved("mailsift_actions_total", direction="outbound", action="accept") == 2
    assert (
        moved(
            "mailsift_dlp_findings_total",
            direction="outbound",
            type="credit_card",
            severity="medium",
        )
        == 4
    )
    assert moved("mailsift_limit_hits_total", limit="messages_per_hour") == 4
    share = value(after, "mailsift_spam_share_recent", direction="outbound")
    assert 0.0 < share < 1.0
    # Series for what has not happened yet exist at zero, so rates work from the start.
    assert (
        "mailsift_verdicts_total",
        frozenset({("direction", "inbound"), ("verdict", "suspect")}),
    ) in after


def test_recent_spam_share_follows_the_latest_verdicts() -> None:
    for _ in range(metrics.SHARE_WINDOW):
        metrics.observe_verdict("inbound", "ham", "accept", [], None)
    low = value(
        parse(metrics.exposition()[0].decode()), "mailsift_spam_share_recent", direction="inbound"
    )
    for _ in range(metrics.SHARE_WINDOW):
        metrics.observe_verdict("inbound", "spam", "quarantine", [], None)
    high = value(
        parse(metrics.exposition()[0].decode()), "mailsift_spam_share_recent", direction="inbound"
    )
    assert low < 0.01
    assert high > 0.6


def test_login_failures_are_counted_apart_from_api_ones() -> None:
    before = parse(metrics.exposition()[0].decode())
    metrics.observe_auth_failure("login")
    after = parse(metrics.exposition()[0].decode())
    name = "mailsift_auth_failures_total"
    assert value(after, name, source="login") - value(before, name, source="login") == 1
    assert value(after, name, source="api") == value(before, name, source="api")


def test_model_gauges_describe_the_scraped_worker(client: TestClient, state: StubState) -> None:
    samples = scrape(client)
    assert value(samples, "mailsift_training_log_head") == 9
    assert value(samples, "mailsift_training_log_position") == 7
    assert value(samples, "mailsift_training_log_lag_entries") == 2
    assert value(samples, "mailsift_model_examples", label="spam") == 13
    assert value(samples, "mailsift_snapshot_log_position") == 5
    assert 60 <= value(samples, "mailsift_model_age_seconds") < 600  # newest entry, not snapshot
    assert 600 <= value(samples, "mailsift_snapshot_age_seconds") < 3600
    assert value(samples, "mailsift_model_info", version="snap+2") == 1

    state.learner.position = 9  # the worker catches up
    samples = scrape(client)
    assert value(samples, "mailsift_training_log_lag_entries") == 0
    assert value(samples, "mailsift_training_log_behind") == 0
    assert value(samples, "mailsift_model_info", version="snap+4") == 1
    assert ("mailsift_model_info", frozenset({("version", "snap+2")})) not in samples


def test_a_worker_long_short_of_the_head_is_behind(client: TestClient, state: StubState) -> None:
    state.tail.behind_after = 0.05
    samples = scrape(client)  # 7 of 9 applied: not at the head
    assert value(samples, "mailsift_training_log_behind") == 0  # not for long yet
    time.sleep(0.1)
    samples = scrape(client)
    assert value(samples, "mailsift_training_log_behind") == 1
    assert value(samples, "mailsift_training_log_at_head_age_seconds") >= 0.05
    state.learner.position = 9
    samples = scrape(client)
    assert value(samples, "mailsift_training_log_behind") == 0


def test_unknown_ages_and_an_unreadable_log_are_nan_not_zero(
    client: TestClient, state: StubState
) -> None:
    state.learner.snapshot_created_at = None
    state.trainlog.broken = True
    samples = scrape(client)  # still answers
    assert math.isnan(value(samples, "mailsift_training_log_lag_entries"))
    assert math.isnan(value(samples, "mailsift_model_age_seconds"))
    assert math.isnan(value(samples, "mailsift_snapshot_age_seconds"))


# -- several processes --------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    from mailsift.service import metrics

    assert metrics.MULTIPROCESS_DIR, "not in multiprocess mode"
    n = int(sys.argv[1])
    scope = {"type": "http", "method": "POST", "route": SimpleNamespace(path="/v1/score")}
    for _ in range(n):
        metrics.observe_request(scope, 200, 0.01)
        metrics.observe_verdict("inbound", "spam", "quarantine", [], None)
    metrics.publish_model(
        metrics.ModelFacts(f"v{n}", 1, 1, 10, 10 + n, None, 0, None, None), now=0.0
    )
    """
)
COLLECTOR = textwrap.dedent(
    """
    import sys
    from mailsift.service import metrics

    sys.stdout.write(metrics.exposition()[0].decode())
    """
)


def run_python(code: str, *args: str, multiproc_dir: Path) -> str:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(multiproc_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_processes_write_and_a_third_collects(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    run_python(WRITER, "3", multiproc_dir=shared)
    run_python(WRITER, "4", multiproc_dir=shared)  # the later measurement
    samples = parse(run_python(COLLECTOR, multiproc_dir=shared))
    scored = {"method": "POST", "route": "/v1/score", "status": "2xx"}
    assert value(samples, "mailsift_http_requests_total", **scored) == 7
    assert value(samples, "mailsift_http_request_duration_seconds_count", **scored) == 7
    assert value(samples, "mailsift_verdicts_total", direction="inbound", verdict="spam") == 7
    # Gauges are the freshest measurement, not a sum over processes.
    assert value(samples, "mailsift_training_log_lag_entries") == 4


def test_serve_prepares_a_fresh_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    data = tmp_path / "data"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = data / f"metrics-{int(gone.stdout)}"
    alive = data / f"metrics-{os.getppid()}"
    mine = data / f"metrics-{os.getpid()}"
    for path in (dead, alive, mine):
        path.mkdir(parents=True)
        (path / "counter_1.db").write_bytes(b"old")

    clean_leftovers(data, data / "model.snapshot")  # as serve does first
    prepared = metrics.prepare_multiprocess_dir(data)

    assert prepared == mine
    assert os.environ[metrics.MULTIPROC_ENV] == str(mine)
    assert list(mine.iterdir()) == []  # counters start at zero with the service
    assert not dead.exists()  # left by a run that has ended
    assert (alive / "counter_1.db").exists()  # another running service's
