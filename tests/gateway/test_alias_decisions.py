"""The gateway's pure part of temporary addresses: which recipients are rewritten to whom,
how that combines with Junk marks and refusals, and the milter edits that do it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kilter.protocol.messages import AddHeader, AddRecipient, RemoveRecipient

from mailsift.gateway.client import ScoreAnswer, ServiceClient
from mailsift.gateway.decisions import (
    ALIAS_HEADER,
    AliasRecipient,
    JunkMark,
    alias_recipients,
    junk_marks,
    outcome_of,
)
from mailsift.gateway.milter import edits_for
from mailsift.gateway.policy import DUNNO, PolicyServer
from mailsift.gateway.settings import GatewaySettings
from tests.gateway.test_milter import shape
from tests.service.server import free_port

ALIAS, OWNER, CAROL = "t-abcdefghij@example.test", "bob@example.test", "carol@example.test"


def _answer(*recipients: dict[str, Any], action: str = "accept") -> ScoreAnswer:
    return ScoreAnswer.from_json(
        {
            "score": 0.1,
            "verdict": "ham",
            "action": action,
            "reasons": [],
            "recipients": list(recipients),
        }
    )


def _own(rcpt: str, *, owner: str | None = None, action: str = "accept") -> dict[str, Any]:
    item: dict[str, Any] = {
        "rcpt": rcpt,
        "score": 0.1,
        "verdict": "spam" if action == "quarantine" else "ham",
        "action": action,
        "reasons": [],
    }
    if owner is not None:
        item["alias"] = {"owner": owner}
    return item


def test_a_live_alias_is_rewritten_to_its_owner_inbound_only() -> None:
    answer = _answer(_own(ALIAS, owner=OWNER), _own(CAROL))
    rcpts = ["T-ABCDEFGHIJ@example.test", CAROL]  # as the client spelled it
    assert alias_recipients(answer, "inbound", rcpts) == (
        AliasRecipient("T-ABCDEFGHIJ@example.test", OWNER),
    )
    assert alias_recipients(answer, "outbound", rcpts) == ()
    rejected = _answer(_own(ALIAS, owner=OWNER), action="reject")
    assert alias_recipients(rejected, "inbound", rcpts) == ()


def test_an_owner_that_is_not_a_plain_address_is_ignored() -> None:
    for bad in ("bob@example.test>\r\nRCPT", "two@at@x", "bob", "", "bob @x"):
        answer = _answer(_own(ALIAS, owner=bad))
        assert answer.recipients == ()  # the malformed entry is skipped
        assert alias_recipients(answer, "inbound", [ALIAS]) == ()


def test_milter_edits_replace_the_alias_by_its_owner_and_name_it_in_a_header() -> None:
    answer = _answer(_own(ALIAS, owner=OWNER), _own(CAROL))
    aliases = alias_recipients(answer, "inbound", [ALIAS, CAROL])
    outcome = outcome_of(answer, "", rcpts=[ALIAS, CAROL], aliases=aliases)
    forged = [("X-Mailsift-Alias", b"someone@else.test")]
    edits = edits_for(forged, outcome)
    headers = [e for e in edits if isinstance(e, AddHeader)]
    assert shape([h for h in headers if h.name == ALIAS_HEADER]) == shape(
        [AddHeader(ALIAS_HEADER, ALIAS.encode())]
    )
    recipients = [e for e in edits if isinstance(e, AddRecipient | RemoveRecipient)]
    assert shape(recipients) == shape([RemoveRecipient(f"<{ALIAS}>"), AddRecipient(f"<{OWNER}>")])
    # The sender's own X-Mailsift-Alias header is deleted first.
    assert shape(edits[:1])[0][0] == "ChangeHeader"


def test_a_stricter_copy_through_an_alias_goes_to_the_owners_junk() -> None:
    answer = _answer(_own(ALIAS, owner=OWNER, action="quarantine"))
    aliases = alias_recipients(answer, "inbound", [ALIAS])
    junk = junk_marks(answer, "inbound", [ALIAS], JunkMark(), aliases)
    assert [(j.rcpt, j.marked) for j in junk] == [(ALIAS, "bob+junk@example.test")]
    outcome = outcome_of(answer, "", junk, rcpts=[ALIAS], aliases=aliases)
    recipients = [
        e for e in edits_for([], outcome) if isinstance(e, AddRecipient | RemoveRecipient)
    ]
    assert shape(recipients) == shape(
        [RemoveRecipient(f"<{ALIAS}>"), AddRecipient("<bob+junk@example.test>")]
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_recipient_the_service_cannot_check_is_deferred_whatever_the_fail_mode(
    tmp_path: Path, mode: str
) -> None:
    """An unlisted recipient may be a live temporary address: with the service down the
    policy server can neither accept it (it may not exist) nor refuse it for good (it
    may), so it answers 4xx. A listed recipient needs no call and is not held up."""
    listed = tmp_path / "recipients"
    listed.write_text(f"{OWNER}\n")
    settings = GatewaySettings(
        service_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        recipients_file=listed,
        fail_mode=mode,  # type: ignore[arg-type]
        timeout_seconds=2,
    )

    async def ask(recipient: str) -> str:
        client = ServiceClient(settings)
        try:
            request = {
                "request": "smtpd_access_policy",
                "protocol_state": "RCPT",
                "client_address": "192.0.2.7",
                "sender": "orders@shop.example",
                "recipient": recipient,
            }
            return await PolicyServer(client, settings).answer(request)
        finally:
            await client.aclose()

    assert asyncio.run(ask(ALIAS)).startswith("DEFER 4.3.0 ")
    assert asyncio.run(ask(OWNER)) == DUNNO
