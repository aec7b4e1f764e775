"""``mailsift bench`` against a real server: every message counted once, none failed;
rebuilds overlap the measured requests when asked for."""

from __future__ import annotations

import pytest

from mailsift.training.bench import run_bench
from mailsift.training.corpus import LabelledMessage
from tests.service.server import message


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_bench_measures_every_message_once_after_the_warmup(direction: str) -> None:
    messages = [message(i, spammy=i % 3 == 0) for i in range(40)]
    result = run_bench(
        messages,
        workers=1,
        concurrency=4,
        rounds=2,
        direction=direction,
        warmup=10,
        baseline=False,
    )
    assert result.requests == 80  # the warm-up is not among them
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.msgs_per_s > 0 and result.rss_mb > 0
    assert result.server_cpu_ms_per_msg > 0 and result.client_cpu_ms_per_msg > 0
    assert set(result.as_dict()) >= {"msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "rss_mb"}


def test_bench_rebuilds_during_the_measured_phase_from_the_trained_log() -> None:
    training = [
        LabelledMessage("spam" if i % 3 == 0 else "ham", message(i, spammy=i % 3 == 0), f"m{i}")
        for i in range(60)
    ]
    result = run_bench(
        [m.raw for m in training],
        workers=1,
        concurrency=4,
        training=training,
        rounds=2,
        baseline=False,
        rebuild_during=True,
    )
    assert result.requests == 120 and result.errors == 0
    assert result.rebuilds is not None and result.rebuilds >= 1
    assert result.rebuild_errors == 0
    assert result.rebuild_mean_s is not None and result.rebuild_mean_s > 0
    assert result.rebuild_busy_share is not None and 0 < result.rebuild_busy_share <= 1
    assert result.rebuilds_in_phase is not None and result.rebuilds_in_phase <= result.rebuilds
    assert result.as_dict()["rebuilds"] == result.rebuilds


def test_bench_spreads_the_load_over_replicas_on_one_database(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILSIFT_DATABASE_URL", pg_url)
    messages = [message(i, spammy=i % 3 == 0) for i in range(40)]
    result = run_bench(
        messages, concurrency=4, rounds=2, direction="outbound", baseline=False, replicas=2
    )
    assert result.requests == 80 and result.errors == 0
    assert result.per_replica is not None and len(result.per_replica) == 2
    assert sum(r.requests for r in result.per_replica) == result.requests
    assert all(r.requests > 0 and r.server_cpu_ms_per_msg > 0 for r in result.per_replica)
    assert result.db_cpu_ms_per_msg is not None and result.db_cpu_ms_per_msg >= 0
    assert [set(r) for r in result.as_dict()["replicas"]] == [
        {"requests", "errors", "msgs_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_msg", "rss_mb"}
    ] * 2


def test_bench_refuses_replicas_without_a_shared_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAILSIFT_DATABASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="MAILSIFT_DATABASE_URL"):
        run_bench([message(1, spammy=False)], replicas=2, baseline=False)
