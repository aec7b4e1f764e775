"""Stalled heads and bodies are closed after their deadline; a dropped upload is one line."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.server import Service, score_head, wait_for

HEAD_SECONDS = 1.0
BODY_IDLE = 1.5
SLACK = 1.5
"""Seconds past a deadline by which the connection must be closed."""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "MAILSIFT_HTTP_HEAD_TIMEOUT_SECONDS": str(HEAD_SECONDS),
        "MAILSIFT_HTTP_BODY_IDLE_SECONDS": str(BODY_IDLE),
    }
    with Service(tmp_path_factory.mktemp("deadlines") / "data", env=env) as svc:
        yield svc


def until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and after how many seconds."""
    started = time.monotonic()
    sock.settimeout(limit)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer, time.monotonic() - started


def test_a_connection_that_sends_nothing_is_closed(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        answer, waited = until_closed(s, HEAD_SECONDS + SLACK + 5)
    assert answer == b"" and waited < HEAD_SECONDS + SLACK


def test_half_a_head_is_408_and_closed(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(b"POST /v1/score?direction=inbound HTTP/1.1\r\nHost: t\r\n")
        answer, waited = until_closed(s, HEAD_SECONDS + SLACK + 5)
    assert waited < HEAD_SECONDS + SLACK
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


def test_a_head_sent_a_byte_at_a_time_does_not_outlive_the_deadline(service: Service) -> None:
    head = score_head(10)
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        started = time.monotonic()
        try:
            for byte in head:
                s.sendall(bytes([byte]))
                time.sleep(0.1)  # 0.1 s apart: never idle long, never done in time
        except OSError:
            pass
        answer, _ = until_closed(s, HEAD_SECONDS + SLACK + 5)
    assert time.monotonic() - started < HEAD_SECONDS + SLACK
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_408_and_closed(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(score_head(10_000) + b"From: a@example.org\r\n")
        answer, waited = until_closed(s, BODY_IDLE + SLACK + 5)
    assert waited < BODY_IDLE + SLACK
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


def test_a_body_that_keeps_moving_is_not_cut_off(service: Service) -> None:
    """The body bound is on idleness: a slow body that never pauses long is served."""
    raw = b"From: a@example.org\r\nSubject: slow\r\n\r\n" + b"slow but steady\r\n" * 4
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(score_head(len(raw)))
        for i in range(0, len(raw), 20):
            s.sendall(raw[i : i + 20])
            time.sleep(BODY_IDLE / 4)  # the whole body takes longer than the idle bound
        answer, _ = until_closed_or_answered(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def until_closed_or_answered(sock: socket.socket) -> tuple[bytes, float]:
    sock.settimeout(10)
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer, 0.0


def test_a_client_gone_mid_upload_is_one_short_line_and_no_traceback(service: Service) -> None:
    log = service.log_path
    before = log.read_text().splitlines()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", service.port)) as s:
            s.sendall(score_head(1_000_000) + b"From: a@example.org\r\n" + b"x" * 50_000)
            time.sleep(0.2)  # the app is waiting for the rest of the body
    assert wait_for(lambda: len(_new_lines(log, before)) >= 5, timeout=5), _new_lines(log, before)
    time.sleep(0.5)  # anything more that would come
    new = _new_lines(log, before)
    assert len(new) == 5, new
    assert all("closed the connection during the request body" in line for line in new), new
    assert all(len(line) < 250 for line in new)
    assert "Traceback" not in log.read_text()


def _new_lines(log: Path, before: list[str]) -> list[str]:
    return log.read_text().splitlines()[len(before) :]


def test_a_pipelined_request_whose_body_is_still_coming_is_served(service: Service) -> None:
    """The first answer must not close the connection because the second request's body
    is not all in yet: that one has no answer yet."""
    raw = b"From: a@example.org\r\nSubject: pipelined\r\n\r\nhello there\r\n"
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + score_head(len(raw)) + raw[:10])
        time.sleep(0.3)
        s.sendall(raw[10:])
        answer = b""
        while answer.count(b"HTTP/1.1 200 ") < 2 or not answer.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 2
