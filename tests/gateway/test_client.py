"""The gateway's HTTP client: how it reads ``/v1/score``'s answer, and against a real
service, envelopes of every legal size."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mailsift.gateway.client import (
    GatewayMisconfigured,
    RecipientVerdict,
    RequestRefused,
    ScoreAnswer,
    ScoreRequest,
    ServiceClient,
    ServiceUnavailable,
    recipients_that_fit,
)
from mailsift.gateway.settings import GatewaySettings
from mailsift.reasons import MODEL, PERSONAL_SENDER
from tests.gateway.processes import gateway_token
from tests.service.server import Service, message

LONGEST = "a" * 64 + "@" + ("d" * 63 + ".") * 3 + "d" * 63  # 320 characters, the most
SHARED = {"score": 0.02, "verdict": "ham", "action": "accept", "reasons": [{"name": MODEL}]}
BOB = {
    "rcpt": "Bob@Example.test",
    "verdict": "spam",
    "action": "tag",
    "score": 0.93,
    "reasons": [{"name": PERSONAL_SENDER, "weight": 3.0, "detail": "reported"}],
}
CAROL = {"rcpt": "carol@example.test", "verdict": "ham", "action": "accept", "score": 0.02}


def test_per_recipient_verdicts_are_read_beside_the_shared_one() -> None:
    answer = ScoreAnswer.from_json({**SHARED, "recipients": [BOB, {**CAROL, "reasons": []}]})
    assert (answer.verdict, answer.action, answer.reasons) == ("ham", "accept", (MODEL,))
    assert answer.recipients == (
        RecipientVerdict("bob@example.test", "spam", "tag", 0.93, (PERSONAL_SENDER,)),
        RecipientVerdict("carol@example.test", "ham", "accept", 0.02, ()),
    )


@pytest.mark.parametrize(
    "recipients",
    [None, "bob", {"rcpt": "bob@example.test"}, 42, [], [None, "x", 3]],
)
def test_a_missing_or_malformed_recipients_field_is_no_per_recipient_verdict(
    recipients: Any,
) -> None:
    body = SHARED if recipients is None else {**SHARED, "recipients": recipients}
    answer = ScoreAnswer.from_json(body)
    assert answer.action == "accept" and answer.recipients == ()


@pytest.mark.parametrize(
    "broken",
    [
        {**BOB, "action": "bounce"},
        {**BOB, "rcpt": None},
        {**BOB, "score": "high"},
        {**BOB, "reasons": [{"weight": 1}]},
        {k: v for k, v in BOB.items() if k != "verdict"},
    ],
)
def test_a_malformed_recipient_entry_is_skipped_and_the_others_kept(broken: Any) -> None:
    answer = ScoreAnswer.from_json({**SHARED, "recipients": [broken, CAROL]})
    assert [r.rcpt for r in answer.recipients] == ["carol@example.test"]


def test_an_answer_without_the_shared_fields_is_still_no_answer() -> None:
    with pytest.raises(ServiceUnavailable):
        ScoreAnswer.from_json({"recipients": [BOB, CAROL]})
    with pytest.raises(ServiceUnavailable):
        ScoreAnswer.from_json([SHARED])


def test_recipients_are_kept_in_order_until_the_budget_is_spent() -> None:
    rcpt = [f"user{i}@example.org" for i in range(5)]
    assert recipients_that_fit(rcpt) == rcpt
    cost = len("&rcpt=") + len("user0@example.org")
    assert recipients_that_fit(rcpt, budget=2 * cost) == rcpt[:2]
    assert 150 < len(recipients_that_fit([LONGEST] * 1000)) < 1000


def test_a_message_to_a_thousand_of_the_longest_addresses_is_scored(tmp_path: Path) -> None:
    assert len(LONGEST) == 320
    with Service(tmp_path / "data") as svc:
        settings = GatewaySettings(
            service_url=svc.url, token=SecretStr(gateway_token(svc.data_dir, svc.env))
        )

        async def score() -> str:
            client = ServiceClient(settings)
            try:
                request = ScoreRequest(message(1, spammy=False), "inbound", rcpt=[LONGEST] * 1000)
                return (await client.score(request)).verdict
            finally:
                await client.aclose()

        assert asyncio.run(score()) in ("ham", "spam", "suspect")


class _Status(BaseHTTPRequestHandler):
    """Answers every request with the status its path names (``/v1/score`` aside: the
    test's ``status``), in the service's error shape."""

    status = 200

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": "x", "detail": "what the service said"}).encode()
        self.send_response(type(self).status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        (500, ServiceUnavailable),  # an outage: the fail mode applies
        (502, ServiceUnavailable),
        (503, ServiceUnavailable),
        (408, ServiceUnavailable),
        (413, GatewayMisconfigured),  # the service takes less than the gateway sends
        (429, ServiceUnavailable),
        (401, GatewayMisconfigured),  # the token: closed whatever the fail mode
        (403, GatewayMisconfigured),
        (404, GatewayMisconfigured),  # a wrong --service-url
        (405, GatewayMisconfigured),
        (415, GatewayMisconfigured),
        (400, RequestRefused),  # what the client sent: refused, never passed
        (422, RequestRefused),
    ],
)
def test_each_answer_the_service_gives_is_an_outage_a_misconfiguration_or_a_refusal(
    status: int, raised: type[Exception]
) -> None:
    handler = type("Handler", (_Status,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = GatewaySettings(
            service_url=f"http://127.0.0.1:{server.server_address[1]}",
            token=SecretStr("msk_secret-never-shown"),
        )

        async def both() -> list[Exception]:
            client = ServiceClient(settings)
            found: list[Exception] = []
            try:
                for call in (
                    client.score(ScoreRequest(b"Subject: x\r\n\r\nx", "outbound")),
                    client.admission("carol@example.test"),
                ):
                    try:
                        await call
                    except Exception as exc:
                        found.append(exc)
            finally:
                await client.aclose()
            return found

        found = asyncio.run(both())
    finally:
        server.shutdown()
        server.server_close()
    assert [type(e) for e in found] == [raised, raised]
    assert all("msk_" not in str(e) for e in found)
    if raised is RequestRefused:
        assert "what the service said" in str(found[0])
    if status in (401, 403):
        assert "token" in str(found[0])
