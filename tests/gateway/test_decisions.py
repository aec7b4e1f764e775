"""The pure part of the milter: direction, and a service answer -> what the MTA is told."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailsift.gateway.client import ScoreAnswer, ServiceUnavailable
from mailsift.gateway.decisions import Reply, direction_of, outcome_of, unavailable_outcome
from mailsift.gateway.milter import strip_brackets
from mailsift.gateway.settings import GatewaySettings

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


def answer(action: str, verdict: str = "ham", *reasons: str, score: float = 0.1) -> ScoreAnswer:
    return ScoreAnswer(score=score, verdict=verdict, action=action, reasons=reasons)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client", "user", "expected"),
    [
        (ipaddress.ip_address("192.0.2.7"), None, "inbound"),
        (ipaddress.ip_address("10.1.2.3"), None, "outbound"),
        (ipaddress.ip_address("2001:db8::1"), None, "outbound"),
        (ipaddress.ip_address("192.0.2.7"), "alice@example.org", "outbound"),
        ("192.0.2.7", None, "inbound"),
        ("10.9.9.9", None, "outbound"),
        (None, None, "outbound"),  # local submission, no network client
        (Path("/run/milter.sock"), None, "outbound"),
        ("localhost", None, "outbound"),
    ],
)
def test_direction_is_outbound_for_authenticated_or_internal_clients(
    client: object, user: str | None, expected: str
) -> None:
    assert direction_of(client, user, NETS) == expected  # type: ignore[arg-type]


def test_accept_adds_the_three_headers_and_nothing_else() -> None:
    outcome = outcome_of(answer("accept", "ham", "model", "auth_spf_pass", score=0.01234), "[SPAM]")
    assert outcome.kind == "accept"
    assert dict(outcome.headers) == {
        "X-Mailsift-Score": "0.0123",
        "X-Mailsift-Verdict": "ham",
        "X-Mailsift-Reasons": "model, auth_spf_pass",
    }
    assert outcome.subject_prefix is None and outcome.reply is None


def test_tag_prefixes_the_subject_with_the_setting() -> None:
    outcome = outcome_of(answer("tag", "suspect", "model", score=0.4), "[SPAM?]")
    assert outcome.kind == "accept"
    assert outcome.subject_prefix == "[SPAM?]"
    assert dict(outcome.headers)["X-Mailsift-Verdict"] == "suspect"


def test_quarantine_holds_with_headers_and_a_reason() -> None:
    outcome = outcome_of(answer("quarantine", "suspect", "dlp_card"), "")
    assert outcome.kind == "quarantine"
    assert outcome.headers and "sensitive data" in outcome.reason


@pytest.mark.parametrize(
    ("reasons", "verdict", "words"),
    [
        (("model",), "spam", "looks like spam"),
        (("dlp_private_key",), "ham", "sensitive data"),
        (("list_blocked",), "ham", "refused by policy"),
    ],
)
def test_reject_is_a_550_with_a_short_reason_and_no_content(
    reasons: tuple[str, ...], verdict: str, words: str
) -> None:
    outcome = outcome_of(answer("reject", verdict, *reasons), "")
    assert outcome.kind == "reject"
    assert outcome.reply is not None
    assert (outcome.reply.code, outcome.reply.status) == (550, "5.7.1")
    assert words in outcome.reply.text


def test_defer_is_a_451_that_says_try_again() -> None:
    outcome = outcome_of(answer("defer", "ham", "limit_messages_per_hour"), "")
    assert outcome.reply == Reply(451, "4.7.1", "sending limit reached, try again later")
    assert str(outcome.reply) == "451 4.7.1 sending limit reached, try again later"


def test_a_long_reasons_list_is_cut_at_a_comma() -> None:
    many = tuple(f"reason_number_{i}" for i in range(40))
    value = dict(outcome_of(answer("accept", "ham", *many), "").headers)["X-Mailsift-Reasons"]
    assert len(value) <= 200 and value.endswith(", ...")


def test_service_unavailable_fails_open_or_closed() -> None:
    passed = unavailable_outcome("open")
    assert passed.kind == "accept" and not passed.headers
    closed = unavailable_outcome("closed")
    assert closed.kind == "defer" and closed.reply is not None
    assert closed.reply.code == 451 and closed.reply.status.startswith("4.")


def test_an_answer_without_a_known_action_is_no_answer() -> None:
    with pytest.raises(ServiceUnavailable):
        ScoreAnswer.from_json({"score": 0.1, "verdict": "ham", "action": "bounce", "reasons": []})
    with pytest.raises(ServiceUnavailable):
        ScoreAnswer.from_json({"action": "accept"})


def test_brackets_of_smtp_addresses_are_stripped() -> None:
    assert strip_brackets("<a@example.org>") == "a@example.org"
    assert strip_brackets("<>") == ""
    assert strip_brackets("a@example.org") == "a@example.org"


def test_settings_refuse_a_bad_network_and_two_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="internal_networks"):
        GatewaySettings(internal_networks="10.0.0.0/8, not-a-net")
    token = tmp_path / "token"
    token.write_text("msk_secret\n")
    with pytest.raises(ValueError, match="not both"):
        GatewaySettings(token="x", token_file=token)
    assert GatewaySettings(token_file=token).bearer() == "msk_secret"
    assert len(GatewaySettings(internal_networks="10.0.0.0/8,192.168.1.0/24").networks) == 2
