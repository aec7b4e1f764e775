"""The pure part of the policy server: requests, recipients, whose limit applies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailsift.gateway.policy import (
    BadRequest,
    RecipientList,
    decide_recipient,
    outbound_sender,
    parse_request,
)

NETS = (ipaddress.ip_network("10.0.0.0/8"),)


def test_a_request_is_name_value_lines_and_values_may_hold_equals() -> None:
    attrs = parse_request(
        ["request=smtpd_access_policy", "protocol_state=RCPT", "ccert_subject=CN=a=b", "sender="]
    )
    assert attrs == {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "ccert_subject": "CN=a=b",
        "sender": "",
    }


def test_a_line_without_equals_is_not_a_request() -> None:
    with pytest.raises(BadRequest):
        parse_request(["request=smtpd_access_policy", "garbage"])


def test_recipients_of_listed_domains_must_be_listed(tmp_path: Path) -> None:
    path = tmp_path / "recipients"
    path.write_text("Alice@Example.org\n# a comment\nbob@example.org  # trailing\n\n")
    recipients = RecipientList.load(path, ["corp.example."])
    assert recipients.exists("alice@example.org") is True
    assert recipients.exists("ALICE@example.org") is True
    assert recipients.exists("mallory@example.org") is False
    assert recipients.exists("anyone@corp.example") is False  # a judged domain, nobody listed
    assert recipients.exists("someone@elsewhere.example") is None  # not ours to judge
    assert decide_recipient(recipients, "mallory@example.org") == "550 5.1.1 no such user here"
    assert decide_recipient(recipients, "bob@example.org") is None
    assert decide_recipient(recipients, "x@elsewhere.example") is None


def test_without_a_list_nobody_is_refused() -> None:
    assert decide_recipient(RecipientList.load(None), "anyone@example.org") is None


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"client_address": "192.0.2.1", "sender": "x@remote.example"}, None),
        ({"client_address": "10.1.1.1", "sender": "carol@corp.example"}, "carol@corp.example"),
        (
            {"client_address": "192.0.2.1", "sasl_username": "carol", "sender": "c@corp.example"},
            "carol",
        ),
        ({"client_address": "10.1.1.1", "sender": ""}, None),  # a bounce: nobody's limit
        ({"sender": "x@remote.example"}, None),
    ],
)
def test_the_limit_is_the_sasl_users_or_an_internal_senders(
    attrs: dict[str, str], expected: str | None
) -> None:
    assert outbound_sender(attrs, NETS) == expected
