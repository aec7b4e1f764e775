"""The gateway's HTTP client against a real service: envelopes of every legal size."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import SecretStr

from mailsift.gateway.client import ScoreRequest, ServiceClient, recipients_that_fit
from mailsift.gateway.settings import GatewaySettings
from tests.gateway.processes import gateway_token
from tests.service.server import Service, message

LONGEST = "a" * 64 + "@" + ("d" * 63 + ".") * 3 + "d" * 63  # 320 characters, the most


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
