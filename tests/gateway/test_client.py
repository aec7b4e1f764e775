"""The gateway's HTTP client: how it reads ``/v1/score``'s answer, and against a real
service, envelopes of every legal size."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mailsift.gateway.client import (
    RecipientVerdict,
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
