"""Token before body, every body bounded, roles by listener: walked over every operation.

The operations come from the app's own table of its routes (``tests/service/routes.py``),
so a route added later is walked too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsift.service.app import create_app
from mailsift.service.http.deadlines import LINGER_SECONDS
from mailsift.service.http.operations import Operation
from mailsift.service.schemas import FINGERPRINT_PATTERN, IDENTITY_PATTERN
from mailsift.service.settings import Settings
from tests.service.routes import body_operations, concrete, operations
from tests.service.server import ADMIN_TOKEN, Service, message

GiB = 1 << 30
CHUNK = 1 << 20
MAX_JSON = 4096
MAX_MESSAGE = 64 * 1024
QUERY = "direction=inbound&label=spam&user=alice%40example.org"
"""Every query parameter a body operation requires (the others ignore what they do not use)."""
IDENTITIES = frozenset({"user", "by", "actor", "entry", "mail_from", "rcpt"})
EVENT = {"type": "auth_failure", "user": "alice@example.org", "client_ip": "192.0.2.1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "MAILSIFT_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "MAILSIFT_MAX_JSON_BYTES": str(MAX_JSON),
        "MAILSIFT_FEEDBACK_REQUIRE_SCORED": "false",
    }
    with Service(tmp_path_factory.mktemp("gate") / "data", env=env) as svc:
        yield svc


def content_type(op: Operation) -> str:
    return "message/rfc822" if op.body == "message" else "application/json"


@dataclass
class Upload:
    status: int
    body: dict[str, str]
    answered_after: float
    """Seconds from the head to the answer's arrival."""
    closed: bool
    """The server closed its side after answering (instead of reading on)."""
    sent: int
    cut_off: bool
    """The server stopped taking the body before the client had sent it all."""


def chunked_upload(port: int, op: Operation, token: str | None, total: int, rate: float) -> Upload:
    """Stream a chunked body of ``total`` bytes at ``rate`` bytes/s while reading the answer."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"{op.method} {concrete(op)}?{QUERY} HTTP/1.1\r\nHost: t\r\n{auth}"
        f"Content-Type: {content_type(op)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sent, cut_off = 0, threading.Event()

    def pump() -> None:
        nonlocal sent
        try:
            while sent < total:
                sock.sendall(piece)
                sent += CHUNK
                time.sleep(CHUNK / rate)
        except OSError:
            cut_off.set()

    started = time.monotonic()
    sock.sendall(head)
    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head_bytes.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    answered = time.monotonic() - started
    closed = False
    with contextlib.suppress(OSError):
        closed = sock.recv(65536) == b""
    sender.join(timeout=LINGER_SECONDS + 10)
    sock.close()
    return Upload(
        int(answer[9:12]), json.loads(rest[:length]), answered, closed, sent, cut_off.is_set()
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_every_body_operation_refuses_a_tokenless_upload_before_reading_it(
    service: Service,
) -> None:
    """1 GiB chunked bodies at 100 MiB/s, to every POST/PUT/PATCH operation at once: each
    is answered 401 at once, and the server stops taking the body after a few MiB."""
    ops = body_operations()
    assert {op.body for op in ops} == {"message", "json", "none"}  # guard: all kinds walked
    assert service.proc is not None
    before = rss_mib(service.proc.pid)
    with ThreadPoolExecutor(len(ops)) as pool:
        uploads = list(
            pool.map(lambda op: chunked_upload(service.port, op, None, GiB, 100 * CHUNK), ops)
        )
    grown = rss_mib(service.proc.pid) - before
    for op, up in zip(ops, uploads, strict=True):
        where = f"{op.method} {op.path}"
        assert up.status == 401 and up.body["error"] == "unauthorized", (where, up)
        assert up.answered_after < 1.5, (where, up.answered_after)
        assert up.closed, where
        # The server stopped reading: the client got no further than the socket buffers.
        assert up.cut_off and up.sent <= 32 * CHUNK, (where, up.sent)
    assert grown < 64, f"the worker grew {grown:.0f} MiB"


def test_every_body_an_operation_reads_is_bounded_while_read(service: Service) -> None:
    """With a valid token, a chunked body over the operation's bound is a 413 (the JSON
    bound for JSON, the message bound for raw messages), before the rest is sent."""
    readers = [op for op in body_operations() if op.body != "none"]
    assert {op.body for op in readers} == {"message", "json"}
    with ThreadPoolExecutor(len(readers)) as pool:
        uploads = list(
            pool.map(
                lambda op: chunked_upload(service.port, op, ADMIN_TOKEN, GiB, 100 * CHUNK),
                readers,
            )
        )
    for op, up in zip(readers, uploads, strict=True):
        where = f"{op.method} {op.path}"
        assert up.status == 413 and up.body["error"] == "message_too_large", (where, up)
        assert up.closed and up.cut_off and up.sent <= 32 * CHUNK, (where, up.sent)


def test_a_declared_length_over_the_bound_and_a_wrong_type_are_refused(service: Service) -> None:
    with service.client() as c:
        big = c.post("/v1/events", content=b"{" + b" " * MAX_JSON + b"}", headers=JSON)
        assert big.status_code == 413 and big.json()["error"] == "message_too_large"
        wrong = c.post("/v1/events", content=json.dumps(EVENT), headers=TEXT)
        assert wrong.status_code == 415 and wrong.json()["error"] == "unsupported_media_type"
        assert c.post("/v1/events", json=EVENT).status_code == 200


JSON = {"content-type": "application/json"}
TEXT = {"content-type": "text/plain"}


def test_a_wrong_method_is_405_with_allow_and_the_json_shape(service: Service) -> None:
    with service.client() as c:
        r = c.get("/v1/score")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert set(r.json()) == {"error", "detail"} and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "line",
    [b"GET /v1/\xff HTTP/1.1", b"GET /\xffhealthz HTTP/1.1", b"G\xffT /healthz HTTP/1.1"],
)
def test_bytes_that_are_not_http_get_the_json_error_shape(service: Service, line: bytes) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(line + b"\r\nHost: t\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"] == "bad_request"


def test_a_path_with_control_characters_is_400(service: Service) -> None:
    with service.client() as c:
        r = c.get("/v1/accounts/alice%0A@example.org")
        assert r.status_code == 400 and "control characters" in r.json()["detail"]


# -- roles by listener ---------------------------------------------------------------------


def test_the_gateway_listener_serves_gateway_operations_only_whatever_the_token(
    tmp_path: Path,
) -> None:
    """An admin token on the gateway listener: every operation that is not a gateway one
    is refused (404 for the admin listener's paths, 403 for the rest); gateway
    operations work; the admin listener still does what the gateway one refused."""
    ops = [op for op in operations() if op.roles is not None]
    gateway_ops = [op for op in ops if "gateway" in op.roles]  # type: ignore[operator]
    assert gateway_ops and len(gateway_ops) < len(ops)
    with Service(tmp_path / "data", split_listeners=True) as svc:
        with svc.client() as gw:
            for op in ops:
                where = f"{op.method} {op.path}"
                if op in gateway_ops:
                    r = gw.request(op.method, concrete(op), params=QUERY, **_valid_body(op))
                    assert r.status_code == 200, (where, r.text)
                    continue
                r = gw.request(op.method, concrete(op), params=QUERY, **_valid_body(op))
                expected = 403 if op.on_gateway_listener else 404
                assert r.status_code == expected, (where, r.status_code, r.text)
                assert set(r.json()) == {"error", "detail"}, where
            # The three the hostile test did: a global block entry, another user's list,
            # a report for another user.
            block = "/v1/lists/block/evil.example"
            assert gw.put(block, params={"scope": "global"}).status_code == 403
            assert (
                gw.put(block, params={"scope": "user", "user": "bob@example.org"}).status_code
                == 403
            )
            report = gw.post(
                "/v1/feedback",
                params={"label": "spam", "user": "bob@example.org"},
                content=message(1, True),
                headers={"content-type": "message/rfc822"},
            )
            assert report.status_code == 403
        with svc.client(admin=True) as admin:
            assert admin.put(block, params={"scope": "global"}).status_code == 201


def _valid_body(op: Operation) -> dict[str, object]:
    if op.body == "message":
        return {"content": message(7, False), "headers": {"content-type": "message/rfc822"}}
    if op.body == "json":
        return {"json": EVENT}
    return {}


# -- the OpenAPI document --------------------------------------------------------------------


def test_the_openapi_document_states_each_operations_refusals() -> None:
    spec = create_app(Settings(data_dir=Path("unused"))).openapi()
    for op in operations():
        responses = spec["paths"][op.path][op.method.lower()]["responses"]
        expected = {"400", "408", "431"}
        if op.roles is not None:
            expected |= {"401", "403", "404"}
        if op.body != "none":
            expected |= {"413", "415"}
        if op.body == "message":
            expected.add("422")
        assert expected <= set(responses), (op, sorted(responses))
        if op.body == "none":
            assert "413" not in responses and "415" not in responses, op
        for status in expected:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (op, status)


def test_the_openapi_document_states_the_real_constraints() -> None:
    spec = create_app(Settings(data_dir=Path("unused"))).openapi()

    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        found = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
        assert found, (path, method, name)
        return dict(found[0]["schema"])

    def patterns(schema: dict[str, Any]) -> set[str]:
        found = {str(schema["pattern"])} if "pattern" in schema else set()
        inner = [*schema.get("anyOf", []), *([schema["items"]] if "items" in schema else [])]
        for alternative in inner:
            found |= patterns(alternative)
        return found

    for path in spec["paths"]:
        for method, entry in spec["paths"][path].items():
            for p in entry.get("parameters", []):
                if p["name"] == "fingerprint":
                    assert patterns(p["schema"]) == {FINGERPRINT_PATTERN}, (path, method)
                searched = path in ("/v1/audit", "/v1/reports/outbound")  # filters, not kept
                if p["name"] in IDENTITIES and not searched:
                    assert IDENTITY_PATTERN in patterns(p["schema"]), (path, p["name"])
    event = spec["components"]["schemas"]["AuthFailureEvent"]["properties"]
    assert patterns(event["user"]) == {IDENTITY_PATTERN}
    ip_formats = [{"format": "ipv4"}, {"format": "ipv6"}]
    assert event["client_ip"]["anyOf"] == ip_formats
    assert parameter("/v1/score", "post", "client_ip")["anyOf"] == ip_formats
    for name in ("since", "until"):
        alternatives = parameter("/v1/audit", "get", name)["anyOf"]
        assert {"type": "string", "format": "date-time", "maxLength": 64} in alternatives
        assert any("pattern" in a for a in alternatives)
