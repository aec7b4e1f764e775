"""Exact corrections and identical replicas, over real HTTP.

A forget or relabel followed by ``POST /v1/model/rebuild`` gives every probe exactly the
score of a log that never held the mistake; replicas on PostgreSQL that learned batch
corpora, reports and forgets serve bit-identical scores, and so does a replica started
later with nothing but the database URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsift.learning.examples import example_of
from mailsift.learning.trainlog import open_training_log
from mailsift.models.features import FeatureConfig
from mailsift.models.parse import DEFAULT_LIMITS, TIME_BUDGET
from mailsift.models.stored import features_version
from mailsift.reasons import mime_reason
from mailsift.training.corpus import open_source
from tests.corpora import SPAMASSASSIN, require
from tests.learning.examples import slow_to_parse
from tests.service.server import Service, message, train, wait_for

RFC822 = {"content-type": "message/rfc822"}
BASE = [(message(n, spammy=bool(n % 2)), "spam" if n % 2 else "ham") for n in range(30)]
PROBES = [message(2000 + n, spammy=bool(n % 3 == 0)) for n in range(25)]


def logits(client: httpx.Client, raws: list[bytes]) -> list[float]:
    """The model's unrounded log-odds per message (exact across processes)."""
    out = []
    for raw in raws:
        r = client.post("/v1/score", params={"direction": "inbound"}, content=raw, headers=RFC822)
        assert r.status_code == 200, r.text
        out.append(r.json()["model"]["logit"])
    return out


def rebuild(client: httpx.Client) -> dict[str, Any]:
    r = client.post("/v1/model/rebuild", timeout=300)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Service, httpx.Client]]:
    env = {"MAILSIFT_REBUILD_EVERY_ENTRIES": "0", "MAILSIFT_REBUILD_EVERY_SECONDS": "0"}
    with Service(tmp_path / "data", env=env) as svc, svc.client() as admin:
        for raw, label in BASE:
            train(admin, raw, label)
        yield svc, admin


def test_a_forget_and_a_rebuild_restore_every_probe_score_exactly(
    site: tuple[Service, httpx.Client],
) -> None:
    _, admin = site
    before = logits(admin, PROBES)
    wrong = train(admin, PROBES[1], "spam")  # an ordinary message, taught as spam
    mistaken = logits(admin, PROBES)
    assert mistaken != before
    assert admin.delete(f"/v1/examples/{wrong['fingerprint']}").json()["result"] == "forgotten"
    online_undo = logits(admin, PROBES)
    assert online_undo != before  # the linear members stepped back, approximately
    done = rebuild(admin)
    assert done["rebuild"]["examples"] == len(BASE)
    assert done["published_id"] == done["rebuild"]["published_id"] >= 1
    assert done["log_position"] == done["log_head"]
    assert logits(admin, PROBES) == before  # float equality, every probe


def test_a_relabel_and_a_rebuild_equal_a_log_that_had_the_right_label(
    site: tuple[Service, httpx.Client], tmp_path: Path
) -> None:
    _, admin = site
    train(admin, PROBES[2], "spam")
    assert train(admin, PROBES[2], "ham")["result"] == "relabelled"
    rebuild(admin)
    relabelled = logits(admin, PROBES)
    with Service(tmp_path / "right") as right, right.client() as c:
        for raw, label in [*BASE, (PROBES[2], "ham")]:
            train(c, raw, label)
        assert logits(c, PROBES) == relabelled


def _token(data_dir: Path, env: dict[str, str], address: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "token", "create", "--role", "user",
         "--address", address],
        env={**os.environ, **env, "MAILSIFT_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()[-1]


@pytest.mark.corpus
@pytest.mark.slow
def test_replicas_on_postgresql_serve_identical_scores(tmp_path: Path, pg_url: str) -> None:
    messages = list(open_source(str(require(SPAMASSASSIN))))
    batch = tmp_path / "batch"
    for i, m in enumerate(messages[:1500]):
        (batch / str(m.label)).mkdir(parents=True, exist_ok=True)
        (batch / str(m.label) / f"{i}.eml").write_bytes(m.raw)
    probes = [m.raw for m in messages[-500:]]
    env = {
        "MAILSIFT_DATABASE_URL": pg_url,
        "MAILSIFT_REBUILD_EVERY_ENTRIES": "0",
        "MAILSIFT_REBUILD_EVERY_SECONDS": "0",
        "MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "1000",
    }
    with (
        Service(tmp_path / "a", env=env) as a,
        Service(tmp_path / "b", env=env) as b,
        a.client() as ca,
        b.client() as cb,
    ):
        # Batch corpora through the log (and its rebuild), as an administrator would.
        subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "train", str(batch)],
            env={**os.environ, **env, "MAILSIFT_DATA_DIR": str(tmp_path / "cli")},
            check=True, capture_output=True,
        )  # fmt: skip
        # Reports: three users agree on one message; one user alone on another.
        users = [f"u{n}@corp.example" for n in range(3)]
        tokens = {u: _token(tmp_path / "a", env, u) for u in users}
        for target in (probes[0], probes[1]):
            r = ca.post(
                "/v1/score", params={"direction": "inbound", "rcpt": users}, content=target,
                headers=RFC822,
            )  # fmt: skip
            assert r.status_code == 200
        for i, user in enumerate(users):
            with httpx.Client(base_url=a.url if i % 2 else b.url, timeout=30) as c:
                c.headers["authorization"] = f"Bearer {tokens[user]}"
                for target in (probes[0],) if i else (probes[0], probes[1]):
                    r = c.post(
                        "/v1/feedback", params={"label": "spam", "user": user}, content=target,
                        headers=RFC822,
                    )  # fmt: skip
                    assert r.status_code == 200, r.text
        # Administrators teach and forget, on either replica.
        wrong = train(cb, probes[2], "spam")
        train(ca, probes[3], "ham")
        assert cb.delete(f"/v1/examples/{wrong['fingerprint']}").json()["result"] == "forgotten"
        done = rebuild(ca)
        head = done["log_head"]

        def current(c: httpx.Client) -> bool:
            m = c.get("/v1/model").json()
            return bool(m["log_position"] == head and m["published_id"] == done["published_id"])

        assert wait_for(lambda: current(ca) and current(cb), timeout=30)
        first = logits(ca, probes)
        assert logits(cb, probes) == first  # float equality on 500 corpus messages
        with Service(tmp_path / "c", env=env) as c_svc, c_svc.client() as cc:
            assert wait_for(lambda: current(cc), timeout=60)
            assert logits(cc, probes) == first


def test_learning_stores_what_an_idle_machine_would_under_a_tiny_parse_budget(
    tmp_path: Path,
) -> None:
    raw = slow_to_parse()
    env = {"MAILSIFT_PARSE_TIME_BUDGET_MS": "1"}
    with Service(tmp_path / "data", env=env) as svc, svc.client() as admin:
        scored = admin.post(
            "/v1/score", params={"direction": "inbound"}, content=raw, headers=RFC822
        ).json()
        assert mime_reason(TIME_BUDGET) in [r["name"] for r in scored["reasons"]]  # scoring was cut
        taught = train(admin, raw, "spam")
    log = open_training_log(None, tmp_path / "data")
    try:
        (entry,) = [e for e in log.read(0) if e.position == taught["log_position"]]
    finally:
        log.close()
    idle = example_of(raw, FeatureConfig(), features_version(FeatureConfig()), DEFAULT_LIMITS)
    assert entry.features == idle.features
