"""The pure part of the policy server: requests, recipients, whose limit applies, and
the log line of a refusal."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailsift.gateway.policy import (
    MAX_LOGGED,
    BadRequest,
    RecipientList,
    decide_recipient,
    log_value,
    outbound_sender,
    parse_request,
    refusal_line,
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
        # An internal client without a login: its address, whatever MAIL FROM it chose.
        ({"client_address": "10.1.1.1", "sender": "carol@corp.example"}, "client:10.1.1.1"),
        ({"client_address": "10.1.1.1", "sender": "dave@corp.example"}, "client:10.1.1.1"),
        ({"client_address": "10.1.1.1", "sender": ""}, "client:10.1.1.1"),  # <> too
        (
            {"client_address": "192.0.2.1", "sasl_username": "carol", "sender": "c@corp.example"},
            "carol",
        ),
        ({"sender": "x@remote.example"}, None),
    ],
)
def test_the_limit_is_the_sasl_users_or_an_internal_clients(
    attrs: dict[str, str], expected: str | None
) -> None:
    assert outbound_sender(attrs, NETS) == expected


def test_with_identity_source_header_a_client_without_login_is_left_to_end_of_message() -> None:
    """The identity header is in the message, which Postfix has not received at RCPT."""
    internal = {"client_address": "10.1.1.1", "sender": "carol@corp.example"}
    assert outbound_sender(internal, NETS, "header") is None
    assert outbound_sender({**internal, "sasl_username": "carol"}, NETS, "header") == "carol"


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("carol@corp.example", "carol@corp.example"),
        ("", "-"),
        (None, "-"),
        ("over the limit: messages_per_hour", '"over the limit: messages_per_hour"'),
        ("550 5.1.1 no such user here", '"550 5.1.1 no such user here"'),
        # A newline would forge a second log line; ESC starts a terminal sequence; U+202E
        # turns the rest of the line around on screen.
        ("x@a.example\nrefused queue_id=FAKE", '"x@a.example\\x0arefused queue_id=FAKE"'),
        ("\x1b[31mred@a.example", "\\x1b[31mred@a.example"),
        ("gnp.exe\u202e@a.example", "gnp.exe\\u202e@a.example"),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("a=b", '"a=b"'),
        ("é@exämple.org", "é@exämple.org"),  # printable non-ASCII stays readable
    ],
)
def test_a_logged_value_is_one_field_whatever_it_holds(value: str | None, logged: str) -> None:
    assert log_value(value) == logged


def test_a_long_value_is_cut() -> None:
    logged = log_value("a" * 5000)
    assert logged == "a" * MAX_LOGGED + "…"


def test_a_refusal_is_one_line_with_who_whom_and_why() -> None:
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "queue_id": "",
        "client_address": "192.0.2.9",
        "sender": "x@remote.example",
        "recipient": "no\nbody@example.org",
        "sasl_username": "",
    }
    line = refusal_line(attrs, None, "550 5.1.1 no such user here", "unknown recipient")
    assert line == (
        "refused queue_id=- client=192.0.2.9 user=- sender=x@remote.example "
        'recipient=no\\x0abody@example.org reason="unknown recipient" '
        'answer="550 5.1.1 no such user here"'
    )
    assert "\n" not in line
