"""Three replicas (processes, one worker each) on one PostgreSQL, as a site that has
outgrown one machine runs them (#14).

The database is a private cluster on a free port (tests/service/private_pg.py), because
one test stops it for ten seconds: the machine's shared PostgreSQL must never be.
Skipped only where PostgreSQL's server programs are not installed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from mailsift.reasons import LIMITS_UNAVAILABLE, PERSONAL_REPORT, limit_reason
from tests.gateway.processes import gateway_token
from tests.service.private_pg import PrivateCluster, find_bin
from tests.service.server import Service, feedback, message, wait_for

pytestmark = pytest.mark.slow

REPLICAS = 3
LIMIT = 5  # messages per hour per sender: below every risk rule's floor (10 an hour)
OUTAGE_SECONDS = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    db = PrivateCluster(bin_dir)
    try:
        db.start()
        yield db
    finally:
        db.destroy()


@pytest.fixture(scope="module")
def replicas(
    cluster: PrivateCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Service]]:
    env = {
        "MAILSIFT_DATABASE_URL": cluster.url,
        "MAILSIFT_LIMIT_MESSAGES_PER_HOUR": str(LIMIT),
        # Polling slower than the 1 s the test allows: only notification can make it.
        "MAILSIFT_LOG_POLL_SECONDS": "5",
    }
    root = tmp_path_factory.mktemp("replicas")
    services = [
        Service(root / f"replica{i}", workers=1, env=env).start(timeout=60) for i in range(REPLICAS)
    ]
    try:
        yield services
    finally:
        for service in services:
            service.kill()


@pytest.fixture(scope="module")
def gateway(replicas: list[Service]) -> str:
    """A stored gateway token: checked against the database (then its cache)."""
    first = replicas[0]
    return gateway_token(first.data_dir, first.env)


def _outbound(client: httpx.Client, user: str, n: int, queue_id: str = "") -> httpx.Response:
    return client.post(
        "/v1/score",
        params={
            "direction": "outbound",
            "user": user,
            "mail_from": user,
            "rcpt": f"peer{n}@elsewhere.example",
            "queue_id": queue_id or f"q{n}",
        },
        content=message(n, spammy=False),
        headers={"content-type": "message/rfc822"},
    )


def _names(answer: dict[str, Any]) -> set[str]:
    return {r["name"] for r in answer["reasons"]}


def test_sending_limits_are_exact_across_replicas(replicas: list[Service], gateway: str) -> None:
    user = "limits@example.org"
    clients = [r.client(gateway) for r in replicas]
    attempts = 4 * LIMIT
    # Every replica at once, several requests each in flight.
    with ThreadPoolExecutor(max_workers=3 * REPLICAS) as pool:
        answers = list(
            pool.map(lambda n: _outbound(clients[n % REPLICAS], user, n), range(attempts))
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    deferred = [limit_reason("messages_per_hour") in _names(a.json()) for a in answers]
    assert deferred.count(False) == LIMIT
    # Message N+1 is deferred whichever replica it reaches.
    for i, client in enumerate(clients):
        again = _outbound(client, user, attempts + i).json()
        assert again["action"] == "defer"
        assert limit_reason("messages_per_hour") in _names(again)
    for client in clients:
        client.close()


def _report_seen(service: Service, raw: bytes, user: str) -> bool:
    with service.client() as client:
        answer = client.post(
            "/v1/score",
            params={"direction": "inbound", "rcpt": user},
            content=raw,
            headers={"content-type": "message/rfc822"},
        ).json()
    return PERSONAL_REPORT in _names(answer["recipients"][0])


def test_feedback_on_one_replica_is_visible_on_the_others_within_a_second(
    replicas: list[Service],
) -> None:
    raw = message(9001, spammy=True)
    user = "reporter@example.org"
    first, others = replicas[0], replicas[1:]
    assert not any(_report_seen(r, raw, user) for r in replicas)
    with first.client() as admin:
        feedback(admin, raw, "spam", user)
        acknowledged = time.monotonic()
    for other in others:
        assert wait_for(lambda other=other: _report_seen(other, raw, user), timeout=1.0)
    elapsed = time.monotonic() - acknowledged
    assert elapsed < 1.0 + 0.5  # the second request's own time, at most
    for other in others:
        with other.client() as admin:
            model = admin.get("/v1/model").json()
        assert model["notifications"] is True
        assert model["lag"] == 0 and model["behind"] is False


class _Load:
    """Inbound and outbound scoring at every replica from background threads, every
    answer kept, until stopped."""

    def __init__(self, replicas: list[Service], token: str) -> None:
        self.replicas = replicas
        self.token = token
        self.answers: list[tuple[float, str, int, dict[str, Any] | None, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, d), daemon=True)
            for i in range(len(replicas))
            for d in ("inbound", "outbound")
        ]
        self._lock = threading.Lock()
        self._n = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _next(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def _run(self, i: int, direction: str) -> None:
        with self.replicas[i].client(self.token) as client:
            client.timeout = httpx.Timeout(30)
            while not self._stop.is_set():
                n = self._next()
                queue_id = f"load-{n}"
                params: dict[str, Any] = {"direction": direction, "queue_id": queue_id}
                if direction == "outbound":
                    user = f"sender{n % 7}@example.org"
                    params |= {"user": user, "mail_from": user, "rcpt": "x@elsewhere.example"}
                started = time.monotonic()
                try:
                    r = client.post(
                        "/v1/score",
                        params=params,
                        content=message(n, spammy=n % 3 == 0),
                        headers={"content-type": "message/rfc822"},
                    )
                    body = r.json() if r.status_code == 200 else None
                    status = r.status_code
                except httpx.HTTPError:
                    body, status = None, 0
                self.answers.append((started, direction, status, body, queue_id))
                time.sleep(0.02)


def _audit_queue_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT queue_id FROM audit_events WHERE queue_id LIKE 'load-%'")
        return {str(r[0]) for r in rows}


def test_a_database_outage_keeps_scoring_loses_nothing_and_heals(
    replicas: list[Service], gateway: str, cluster: PrivateCluster
) -> None:
    # Acknowledged before the outage: a report, on every replica.
    raw = message(9002, spammy=True)
    user = "before@example.org"
    assert not _report_seen(replicas[0], raw, user)  # delivered to them first
    with replicas[0].client() as admin:
        feedback(admin, raw, "spam", user)
    for r in replicas:  # every replica has seen the token, and the report
        assert wait_for(lambda r=r: _report_seen(r, raw, user), timeout=2.0)
    load = _Load(replicas, gateway)
    load.start()
    time.sleep(2.0)
    down_at = time.monotonic()
    cluster.stop()
    try:
        time.sleep(OUTAGE_SECONDS / 2)
        # While it is away: feedback is refused (not acknowledged, so nothing to lose).
        with replicas[1].client() as admin:
            refused = admin.post(
                "/v1/feedback",
                params={"label": "ham", "user": user},
                content=raw,
                headers={"content-type": "message/rfc822"},
            )
        assert refused.status_code == 503, refused.text
        for r in replicas:
            with r.client() as admin:
                model = admin.get("/v1/model")
            assert model.status_code == 503  # says the log cannot be read
        time.sleep(OUTAGE_SECONDS / 2 - 0.5)
    finally:
        up_at = time.monotonic()
        cluster.start()

    # Recovery without a restart: outbound limits checked again on every replica.
    def healed() -> bool:
        recent = [a for a in load.answers if a[0] > time.monotonic() - 1.0]
        out = [a for a in recent if a[1] == "outbound"]
        return bool(out) and all(
            a[3] is not None and LIMITS_UNAVAILABLE not in _names(a[3]) for a in out
        )

    assert wait_for(healed, timeout=30.0)
    load.stop()

    during = [a for a in load.answers if down_at + 1.0 < a[0] < up_at - 0.5]
    inbound = [a for a in during if a[1] == "inbound"]
    outbound = [a for a in during if a[1] == "outbound"]
    assert inbound and outbound
    # Scoring kept answering: inbound with the last known state...
    assert all(a[2] == 200 for a in inbound), {a[2] for a in inbound}
    # ...outbound by the documented rule: deferred, the limits could not be checked.
    assert all(a[2] == 200 for a in outbound), {a[2] for a in outbound}
    assert all(
        a[3] is not None and a[3]["action"] == "defer" and LIMITS_UNAVAILABLE in _names(a[3])
        for a in outbound
    )
    # Nothing acknowledged is lost: every scored message's audit row reached the
    # database (written once it was back), and the report from before the outage.
    acknowledged = {a[4] for a in load.answers if a[2] == 200}
    assert wait_for(lambda: acknowledged <= _audit_queue_ids(cluster.url), timeout=10.0)
    for r in replicas:
        assert _report_seen(r, raw, user)
    # Learning reaches every replica again, by notification.
    raw2 = message(9003, spammy=True)
    assert not _report_seen(replicas[2], raw2, user)
    with replicas[2].client() as admin:
        feedback(admin, raw2, "spam", user)
    for r in replicas:
        assert wait_for(lambda r=r: _report_seen(r, raw2, user), timeout=5.0)
        with r.client() as admin:
            model = admin.get("/v1/model").json()
        assert wait_for(lambda r=r: _notifications(r), timeout=5.0)
        assert model["lag"] == 0


def _notifications(service: Service) -> bool:
    with service.client() as admin:
        return bool(admin.get("/v1/model").json()["notifications"])
