"""Labelling a recently scored message by fingerprint alone: the kept history."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.reasons import LABELLED_SPAM
from mailsift.service.history import HOUR, MessageHistory
from tests.service.server import ADMIN_TOKEN, Service, score, train, wait_for
from tests.service.test_feedback_e2e import create_token

FP = "0123456789abcdef0123456789abcdef"


def offer(n: int) -> bytes:
    return (
        f"From: Deals <deals{n}@bargain.example>\r\nTo: ann@corp.example\r\n"
        f"Subject: Garden furniture sale {n}\r\nMessage-ID: <sale{n}@bargain.example>\r\n\r\n"
        f"Teak benches and parasols at half price this week only, offer {n}.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("history") / "data") as service:
        with service.client() as admin:
            for n in range(4):
                train(admin, offer(500 + n), "ham")
        yield service


def label(svc: Service, fingerprint: str, what: str) -> subprocess.CompletedProcess[str]:
    token = svc.data_dir.parent / "admin.token"
    token.write_text(ADMIN_TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "label", fingerprint, what],
        env={**os.environ, "MAILSIFT_TOKEN_FILE": str(token), "MAILSIFT_ADMIN_URL": svc.url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_admin_labels_a_scored_message_by_its_fingerprint(svc: Service) -> None:
    raw = offer(1)
    with svc.client() as admin:
        first = score(admin, raw, "inbound", ("ann@corp.example",))
        fp = first["fingerprint"]
        before = admin.get("/v1/model").json()
        kept = svc.data_dir / "history"
        assert wait_for(lambda: any(raw in p.read_bytes() for p in kept.glob("*.msgs")), 5)
        files = list(kept.iterdir())
        assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
        assert {p.suffix for p in files} == {".msgs", ".idx"}

        r = admin.post(f"/v1/history/{fp}/label", params={"label": "spam"})
        assert r.status_code == 200, r.text
        assert r.json() | {"log_position": 0} == {
            "result": "learned",
            "log_position": 0,
            "fingerprint": fp,
            "scope": "shared",
            "held_by": "admin",
        }
        after = admin.get("/v1/model").json()
        assert after["spam"] == before["spam"] + 1
        again = score(admin, raw, "inbound", ("ann@corp.example",))
        assert again["verdict"] == "spam"
        assert LABELLED_SPAM in [x["name"] for x in again["reasons"]]

    # Only administrators label from history.
    ann = create_token(svc.data_dir, "--role", "user", "--address", "ann@corp.example")
    with svc.client(ann) as user:
        denied = user.post(f"/v1/history/{fp}/label", params={"label": "ham"})
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"

    # The command line does the same; a second label changes the held label.
    done = label(svc, fp, "ham")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"labelled {fp} ham: relabelled, held by admin"
    assert "label by=admin-token fingerprint=" in svc.log_path.read_text()


def test_unknown_and_malformed_fingerprints_are_clear_4xx(svc: Service) -> None:
    with svc.client() as admin:
        missing = admin.post(f"/v1/history/{FP}/label", params={"label": "spam"})
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        bad = admin.post("/v1/history/nothex/label", params={"label": "spam"})
        assert bad.status_code == 400 and "32 hex" in bad.json()["detail"]
        no_label = admin.post(f"/v1/history/{FP}/label")
        assert no_label.status_code == 422 or no_label.status_code == 400
    done = label(svc, FP, "spam")
    assert done.returncode == 1 and "404 not_found" in done.stderr
    for not_one in ("../../v1/train", FP.upper(), FP[:-1]):
        refused = label(svc, not_one, "spam")
        assert refused.returncode == 2 and "32 hex characters" in refused.stderr


def test_past_retention_the_answer_is_410(tmp_path: Path) -> None:
    env = {"MAILSIFT_HISTORY_RETENTION_HOURS": "1"}
    with Service(tmp_path / "data", env=env) as service, service.client() as admin:
        raw = offer(2)
        fp = score(admin, raw)["fingerprint"]
        kept = service.data_dir / "history"
        assert wait_for(lambda: any(kept.glob("*.idx")) and any(kept.glob("*.msgs")), 5)
        assert wait_for(lambda: fp.encode() in next(kept.glob("*.idx")).read_bytes(), 5)
        # Age the kept copy's hour two hours back, as the clock would.
        old = time.strftime("%Y%m%d%H", time.gmtime(time.time() - 2 * HOUR))
        for path in list(kept.iterdir()):
            path.rename(kept / (old + path.name[10:]))
        gone = admin.post(f"/v1/history/{fp}/label", params={"label": "spam"})
        assert gone.status_code == 410, gone.text
        assert gone.json()["error"] == "gone"
        assert "no longer kept" in gone.json()["detail"]


def test_with_history_off_nothing_is_kept_and_the_answer_says_so(tmp_path: Path) -> None:
    env = {"MAILSIFT_HISTORY_RETENTION_HOURS": "0"}
    with Service(tmp_path / "data", env=env) as service, service.client() as admin:
        fp = score(admin, offer(3))["fingerprint"]
        gone = admin.post(f"/v1/history/{fp}/label", params={"label": "spam"})
        assert gone.status_code == 410 and "not kept" in gone.json()["detail"]
        assert not (service.data_dir / "history").exists()


def test_the_gateway_listener_does_not_serve_history(tmp_path: Path) -> None:
    with Service(tmp_path / "data", split_listeners=True) as service:
        with service.client() as gateway_side:
            r = gateway_side.post(f"/v1/history/{FP}/label", params={"label": "spam"})
            assert r.status_code == 404 and r.json()["error"] == "not_found"
        with service.client(admin=True) as admin_side:
            r = admin_side.post(f"/v1/history/{FP}/label", params={"label": "spam"})
            assert r.status_code == 404 and "was scored here" in r.json()["detail"]


# --- the store itself -------------------------------------------------------------------


def test_prune_drops_hours_past_retention_and_the_oldest_over_the_size_bound(
    tmp_path: Path,
) -> None:
    now = time.time()
    history = MessageHistory(tmp_path, retention_hours=3, max_bytes=2500)
    for age, fp in ((5, "a"), (2, "b"), (1, "c"), (0, "d")):
        history.keep(fp * 32, b"x" * 1000, at=now - age * HOUR)
    history.flush()
    assert history.find("a" * 32, now) is None  # past retention already
    assert history.find("b" * 32, now) == b"x" * 1000
    assert history.prune(now) == 2  # 5 h old: past retention; 2 h old: over 2,500 bytes
    hours = {p.name[:10] for p in tmp_path.iterdir()}
    assert len(hours) == 2
    assert history.find("b" * 32, now) is None
    assert history.find("c" * 32, now) == history.find("d" * 32, now) == b"x" * 1000
    # The same content scored again in the hour is kept once.
    history.keep("d" * 32, b"x" * 1000, at=now)
    history.flush()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.msgs")) == 2000
    history.close()


def test_a_line_still_being_written_is_not_found_and_breaks_nothing(tmp_path: Path) -> None:
    history = MessageHistory(tmp_path, retention_hours=1, max_bytes=10**9)
    history.keep("e" * 32, b"kept")
    history.flush()
    (index,) = tmp_path.glob("*.idx")
    with index.open("ab") as out:
        out.write(b"f" * 32 + b" 4")  # the writer's next line, half on disk
    assert history.find("f" * 32) is None
    with index.open("ab") as out:
        out.write(b" x9\n")  # and a damaged one
    assert history.find("f" * 32) is None
    assert history.find("e" * 32) == b"kept"
    history.close()


def test_keeping_is_bounded_when_writing_falls_behind(tmp_path: Path) -> None:
    history = MessageHistory(tmp_path, retention_hours=1, max_bytes=10**9)
    history._stop.set()  # no writer: everything stays queued
    history._thread = object()  # type: ignore[assignment]
    big = b"y" * (16 * 1024 * 1024)
    for n in range(6):
        history.keep(f"{n:032x}", big)
    assert history.dropped == 2
    assert history.find(f"{3:032x}") == big  # queued messages are found before writing
