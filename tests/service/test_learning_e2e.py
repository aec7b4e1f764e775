"""End to end: durability across SIGKILL, replicas and workers agreeing, snapshot reload."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.server import Service, message, score, train, wait_for

RFC822 = {"content-type": "message/rfc822"}


def test_nothing_acknowledged_is_lost_on_sigkill(tmp_path: Path) -> None:
    """Examples stream in; the server is SIGKILLed mid-stream; every ack survives."""
    data = tmp_path / "data"
    acked: list[dict[str, Any]] = []
    stop = threading.Event()
    svc = Service(data, env={"MAILSIFT_SNAPSHOT_EVERY_ENTRIES": "25"}).start()

    def send() -> None:
        with svc.client() as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = c.post(
                        "/v1/train",
                        params={"label": "spam" if n % 2 else "ham"},
                        content=message(n, spammy=bool(n % 2)),
                        headers=RFC822,
                    )
                except httpx.HTTPError:
                    return  # the server died under us: this one was never acknowledged
                if r.status_code == 200:
                    acked.append(r.json())

    sender = threading.Thread(target=send)
    sender.start()
    assert wait_for(lambda: (data / "model.snapshot").exists(), timeout=60)
    floor = len(acked) + 20  # kill well after a snapshot, with a tail to replay
    assert wait_for(lambda: len(acked) >= floor, timeout=60)
    svc.kill()  # SIGKILL, no shutdown hooks
    stop.set()
    sender.join(timeout=30)
    assert acked and all(a["result"] == "learned" for a in acked)
    top = max(int(a["log_position"]) for a in acked)

    with Service(data).start() as again, again.client() as c:
        model = c.get("/v1/model").json()
        assert model["log_position"] >= top
        assert model["log_position"] == model["log_head"]
        # Every acknowledged example is in the model: ham + spam counts cover them all.
        assert model["ham"] + model["spam"] == model["log_head"] >= len(acked)
        # And relearning any acknowledged one is a no-op: the log holds them.
        n = len(acked)
        assert (
            train(c, message(n, spammy=bool(n % 2)), "spam" if n % 2 else "ham")["result"]
            == "unchanged"
        )
        assert model["snapshot_position"] > 0  # snapshots were written, tail replayed on top


def test_two_workers_on_sqlite_agree(tmp_path: Path) -> None:
    with Service(tmp_path / "data", workers=2).start() as svc:
        seen: dict[int, dict[str, Any]] = {}
        with svc.client() as c:
            train(c, message(1, spammy=False), "ham")
            result = train(c, message(2, spammy=True), "spam")

        def both_workers_current() -> bool:
            # A fresh connection per request lets the kernel spread them over the workers.
            with svc.client() as fresh:
                m = fresh.get("/v1/model").json()
            seen[m["worker"]] = m
            return len(seen) == 2 and all(
                v["log_position"] == result["log_position"] for v in seen.values()
            )

        assert wait_for(both_workers_current, timeout=10)
        scores = set()
        for _ in range(20):
            with svc.client() as fresh:
                scores.add(score(fresh, message(2, spammy=True))["score"])
        assert len(scores) == 1, scores


def test_replicas_on_postgresql_agree_within_two_seconds(tmp_path: Path, pg_url: str) -> None:
    env = {"MAILSIFT_DATABASE_URL": pg_url}
    with (
        Service(tmp_path / "a", env=env).start() as a,
        Service(tmp_path / "b", env=env).start() as b,
        a.client() as ca,
        b.client() as cb,
    ):
        for n in range(3):
            train(ca, message(100 + n, spammy=False), "ham")
            train(ca, message(100 + n, spammy=True), "spam")
        target = message(7, spammy=True)
        assert wait_for(lambda: score(cb, target)["score"] == score(ca, target)["score"], timeout=2)
        before = score(cb, target)["score"]
        sent = time.monotonic()
        train(ca, target, "ham")  # taught to replica A only, against its looks
        assert wait_for(lambda: score(cb, target)["score"] < before, timeout=2)
        assert time.monotonic() - sent <= 2.0
        assert score(ca, target)["score"] == score(cb, target)["score"]
        assert (
            ca.get("/v1/model").json()["log_position"] == cb.get("/v1/model").json()["log_position"]
        )


def _corpus(root: Path, n: int) -> Path:
    for label in ("ham", "spam"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i}.eml").write_bytes(message(500 + i, spammy=label == "spam"))
    return root


def test_train_teaches_through_the_log_and_the_service_swaps_in_its_rebuild(
    tmp_path: Path,
) -> None:
    corpus = _corpus(tmp_path / "corpus", 15)
    data = tmp_path / "data"
    with (
        Service(data, env={"MAILSIFT_SNAPSHOT_CHECK_SECONDS": "3600"}).start() as svc,
        svc.client() as c,
    ):
        train(c, message(1, spammy=True), "spam")  # something learned through the log first
        assert c.get("/v1/model").json()["spam"] == 1
        done = subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "train", str(corpus)],
            env={**os.environ, "MAILSIFT_DATA_DIR": str(data)},
            check=True,
            capture_output=True,
            text=True,
        )
        assert "appended 30 examples to the training log" in done.stdout
        assert "published model 1" in done.stdout
        model = c.post("/v1/model/reload").json()
        assert (model["ham"], model["spam"]) == (15, 16)
        assert model["published_id"] == 1 and model["log_position"] == model["log_head"] == 31
        # The same corpus again adds nothing: the log holds it.
        again = subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "train", str(corpus), "--no-rebuild"],
            env={**os.environ, "MAILSIFT_DATA_DIR": str(data)},
            check=True,
            capture_output=True,
            text=True,
        )
        assert "appended 0 examples" in again.stdout and "30 already there" in again.stdout


def test_service_swaps_in_a_published_model_by_itself(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus", 1)
    data = tmp_path / "data"
    with Service(data).start() as svc, svc.client() as c:
        subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "train", str(corpus)],
            env={**os.environ, "MAILSIFT_DATA_DIR": str(data)},
            check=True,
            capture_output=True,
        )
        assert wait_for(lambda: c.get("/v1/model").json()["published_id"] == 1, timeout=10)
        assert c.get("/v1/model").json()["ham"] == 1


@pytest.mark.parametrize("broken", [b"", b"not a snapshot at all"])
def test_a_broken_snapshot_is_refused_and_the_service_still_starts(
    tmp_path: Path, broken: bytes
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "model.snapshot").write_bytes(broken)
    with Service(data).start() as svc, svc.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/model").json()["ham"] == 0
