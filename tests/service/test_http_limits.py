"""The request head is bounded while it is parsed: 431 with a JSON body, never a 500."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from mailsift.gateway.client import recipients_that_fit
from mailsift.service.http.limits import MAX_HEADER_BYTES, MAX_URL_BYTES
from tests.service.server import ADMIN_TOKEN, Service, message


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("limits") / "data") as svc:
        yield svc


def exchange(svc: Service, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
        # The server may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1]:
                break
    status = int(answer[9:12])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def score_head(path: str, extra: bytes = b"", length: int = 0) -> bytes:
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            f"Content-Type: message/rfc822\r\nContent-Length: {length}\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


def test_header_fields_over_the_bound_are_431(service: Service) -> None:
    big = b"X-Padding: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    status, body = exchange(service, score_head("/v1/score?direction=inbound", big))
    assert status == 431
    assert json.loads(body)["error"] == "request_head_too_large"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_BYTES // 8))
    assert exchange(service, score_head("/healthz", many))[0] == 431


def test_the_envelope_a_gateway_sends_fits_and_more_is_431(service: Service) -> None:
    longest = "a" * 64 + "@" + ("d" * 63 + ".") * 3 + "d" * 63
    raw = message(1, spammy=False)
    rcpt = recipients_that_fit([longest] * 1000)
    query = "&".join(["direction=inbound"] + [f"rcpt={quote(r, safe='@')}" for r in rcpt])
    assert len(query) < MAX_URL_BYTES
    status, body = exchange(service, score_head(f"/v1/score?{query}", length=len(raw)), raw)
    assert status == 200, body[:300]
    over = "/v1/score?direction=inbound&x=" + "y" * MAX_URL_BYTES
    status, body = exchange(service, score_head(over, length=len(raw)), raw)
    assert status == 431 and "request line" in json.loads(body)["detail"]
