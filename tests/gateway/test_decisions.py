"""The pure part of the milter: direction, and a service answer -> what the MTA is told."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from kilter.protocol.messages import AddRecipient, RemoveRecipient

from mailsift.gateway.client import RecipientVerdict, ScoreAnswer, ServiceUnavailable
from mailsift.gateway.decisions import (
    JunkMark,
    JunkRecipient,
    Reply,
    client_identity,
    direction_of,
    is_local_submission,
    junk_marks,
    misconfigured_outcome,
    outcome_of,
    owner_refusals,
    refused_outcome,
    stricter,
    unavailable_outcome,
)
from mailsift.gateway.milter import edits_for, strip_brackets
from mailsift.gateway.settings import GatewaySettings
from mailsift.reasons import MODEL, PERSONAL_SENDER, dlp_reason, limit_reason

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
BOB, CAROL = "bob@example.test", "carol@example.test"
MARK = JunkMark()


def answer(
    action: str,
    verdict: str = "ham",
    *reasons: str,
    score: float = 0.1,
    recipients: tuple[RecipientVerdict, ...] = (),
) -> ScoreAnswer:
    return ScoreAnswer(
        score=score,
        verdict=verdict,
        action=action,  # type: ignore[arg-type]
        reasons=reasons,
        recipients=recipients,
    )


def personal(rcpt: str, action: str, verdict: str) -> RecipientVerdict:
    return RecipientVerdict(rcpt, verdict, action, 0.5, (PERSONAL_SENDER,))  # type: ignore[arg-type]


def bob_junks(action: str = "accept", verdict: str = "ham") -> ScoreAnswer:
    """The message's verdict for everyone; bob's own is spam (he reported the sender)."""
    return answer(
        action,
        verdict,
        MODEL,
        recipients=(personal(BOB, "tag", "spam"), personal(CAROL, action, verdict)),
    )


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
    outcome = outcome_of(answer("accept", "ham", MODEL, "auth_spf_pass", score=0.01234), "[SPAM]")
    assert outcome.kind == "accept"
    assert dict(outcome.headers) == {
        "X-Mailsift-Score": "0.0123",
        "X-Mailsift-Verdict": "ham",
        "X-Mailsift-Reasons": "model, auth_spf_pass",
    }
    assert outcome.subject_prefix is None and outcome.reply is None


def test_tag_prefixes_the_subject_with_the_setting() -> None:
    outcome = outcome_of(answer("tag", "suspect", MODEL, score=0.4), "[SPAM?]")
    assert outcome.kind == "accept"
    assert outcome.subject_prefix == "[SPAM?]"
    assert dict(outcome.headers)["X-Mailsift-Verdict"] == "suspect"


def test_quarantine_holds_with_headers_and_a_reason() -> None:
    outcome = outcome_of(answer("quarantine", "suspect", dlp_reason("card")), "")
    assert outcome.kind == "quarantine"
    assert outcome.headers and "sensitive data" in outcome.reason


@pytest.mark.parametrize(
    ("reasons", "verdict", "words"),
    [
        ((MODEL,), "spam", "looks like spam"),
        ((dlp_reason("private_key"),), "ham", "sensitive data"),
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
    outcome = outcome_of(answer("defer", "ham", limit_reason("messages_per_hour")), "")
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
    # What `postconf -h mynetworks` prints, pasted as it is (the README's step 2).
    mynetworks = "127.0.0.0/8 192.0.2.0/24 [::ffff:127.0.0.0]/104 [::1]/128 [fe80::]/64"
    expected = "127.0.0.0/8,192.0.2.0/24,::ffff:127.0.0.0/104,::1/128,fe80::/64"
    assert GatewaySettings(internal_networks=mynetworks).networks == tuple(
        ipaddress.ip_network(n) for n in expected.split(",")
    )
    with pytest.raises(ValueError, match="internal_networks"):
        GatewaySettings(internal_networks="127.0.0.0/8 hash:/etc/postfix/network_table")


# -- per-recipient verdicts: which copies are marked for Junk --------------------------


@pytest.mark.parametrize(
    ("message", "mine", "is_stricter"),
    [
        (("accept", "ham"), ("accept", "ham"), False),
        (("accept", "ham"), ("tag", "suspect"), True),
        (("accept", "ham"), ("accept", "suspect"), True),  # the verdict alone ranks higher
        (("tag", "suspect"), ("tag", "spam"), True),
        (("tag", "spam"), ("quarantine", "spam"), True),  # the action alone goes further
        (("quarantine", "spam"), ("reject", "spam"), True),
        (("tag", "spam"), ("accept", "ham"), False),  # looser: the user's own "not spam"
        (("tag", "suspect"), ("tag", "suspect"), False),
        (("accept", "ham"), ("accept", "unheard-of"), False),  # unknown verdicts never rank
        (("accept", "unheard-of"), ("accept", "spam"), False),
    ],
)
def test_stricter_means_a_higher_verdict_or_a_further_action(
    message: tuple[str, str], mine: tuple[str, str], is_stricter: bool
) -> None:
    assert stricter(personal(BOB, *mine), answer(*message)) is is_stricter


@pytest.mark.parametrize(
    ("rcpt", "mark", "marked"),
    [
        ("bob@example.test", MARK, "bob+junk@example.test"),
        ("bob+lists@example.test", MARK, "bob+junk@example.test"),  # its detail is replaced
        ("bob+a+b@example.test", MARK, "bob+junk@example.test"),
        ("Bob@Example.TEST", MARK, "Bob+junk@Example.TEST"),  # spelled as the client did
        ("bob-lists@example.test", JunkMark("spam", "+-"), "bob+spam@example.test"),
        ("bob-lists@example.test", MARK, "bob-lists+junk@example.test"),  # '-' is no delimiter
        ("postmaster", MARK, "postmaster+junk"),  # no domain: the MTA appends its own
        ("bob+junk@example.test", MARK, None),  # already marked
        ('"bob smith"@example.test', MARK, None),  # quoted: left alone
        ("+bob@example.test", MARK, None),  # starts with the delimiter: not an extension
        ("@example.test", MARK, None),
        ("", MARK, None),
    ],
)
def test_the_mark_replaces_the_address_extension(
    rcpt: str, mark: JunkMark, marked: str | None
) -> None:
    assert mark.address(rcpt) == marked


def test_only_the_recipient_with_the_stricter_verdict_is_marked() -> None:
    marks = junk_marks(bob_junks(), "inbound", [BOB, CAROL], MARK)
    assert marks == (JunkRecipient(BOB, "bob+junk@example.test"),)
    outcome = outcome_of(bob_junks(), "[SPAM?]", marks)
    assert outcome.kind == "accept" and outcome.subject_prefix is None  # carol's is untouched
    assert dict(outcome.headers)["X-Mailsift-Verdict"] == "ham"  # the shared verdict
    assert outcome.junk == marks


def test_envelope_recipients_are_matched_case_blind_and_kept_as_the_client_spelled_them() -> None:
    marks = junk_marks(bob_junks(), "inbound", ["Bob@Example.test", "Bob@Example.test"], MARK)
    assert marks == (JunkRecipient("Bob@Example.test", "Bob+junk@Example.test"),)


@pytest.mark.parametrize("action", ["accept", "tag", "quarantine"])
def test_every_delivered_outcome_keeps_the_marks(action: str) -> None:
    verdict = "ham" if action == "accept" else "suspect"
    stricter_bob = answer(
        action,
        verdict,
        recipients=(personal(BOB, "quarantine", "spam"), personal(CAROL, action, verdict)),
    )
    marks = junk_marks(stricter_bob, "inbound", [BOB, CAROL], MARK)
    assert [m.rcpt for m in marks] == [BOB]
    assert outcome_of(stricter_bob, "[S]", marks).junk == marks


@pytest.mark.parametrize("action", ["accept", "tag", "quarantine"])
def test_a_recipient_whose_own_verdict_rejects_is_dropped_and_nobody_else(action: str) -> None:
    """Bob's own block entry: his copy is refused (removed from the envelope, not marked),
    carol's is delivered as the shared verdict says."""
    bob_blocks = answer(
        action, recipients=(personal(BOB, "reject", "spam"), personal(CAROL, action, "ham"))
    )
    rcpts = ["Bob@Example.test", CAROL]
    dropped = owner_refusals(bob_blocks, "inbound", rcpts)
    assert dropped == ("Bob@Example.test",)  # as the client spelled it
    kept = [r for r in rcpts if r not in dropped]
    assert junk_marks(bob_blocks, "inbound", kept, MARK) == ()
    assert junk_marks(bob_blocks, "inbound", rcpts, MARK) == ()  # never marked instead
    outcome = outcome_of(bob_blocks, "[S]", (), dropped, rcpts)
    assert outcome.kind == ("quarantine" if action == "quarantine" else "accept")
    assert outcome.dropped == dropped and outcome.reply is None
    edits = edits_for([], outcome)
    assert [e for e in edits if isinstance(e, RemoveRecipient)] == [
        RemoveRecipient("<Bob@Example.test>")
    ]
    assert not [e for e in edits if isinstance(e, AddRecipient)]


def test_a_message_every_recipient_refuses_is_rejected() -> None:
    both = answer("accept", recipients=(personal(BOB, "reject", "spam"),) * 1)
    dropped = owner_refusals(both, "inbound", [BOB, BOB.upper()])
    outcome = outcome_of(both, "", (), dropped, [BOB, BOB.upper()])
    assert outcome.kind == "reject" and outcome.reply == Reply(
        550, "5.7.1", "message refused by its recipients"
    )


@pytest.mark.parametrize(("direction", "action"), [("outbound", "accept"), ("inbound", "defer")])
def test_no_recipient_is_dropped_outbound_or_when_nobody_gets_the_message(
    direction: str, action: str
) -> None:
    bob_blocks = answer(action, recipients=(personal(BOB, "reject", "spam"),))
    assert owner_refusals(bob_blocks, direction, [BOB, CAROL]) == ()  # type: ignore[arg-type]


@pytest.mark.parametrize("action", ["reject", "defer"])
def test_a_message_delivered_to_nobody_marks_nobody(action: str) -> None:
    refused = answer(action, "spam", recipients=(personal(BOB, "reject", "spam"),))
    assert junk_marks(refused, "inbound", [BOB], MARK) == ()
    assert outcome_of(refused, "", [JunkRecipient(BOB, "bob+junk@example.test")]).junk == ()


def test_nothing_is_marked_outbound_when_off_or_without_per_recipient_verdicts() -> None:
    assert junk_marks(bob_junks(), "outbound", [BOB, CAROL], MARK) == ()
    assert junk_marks(bob_junks(), "inbound", [BOB, CAROL], None) == ()
    assert junk_marks(answer("accept"), "inbound", [BOB, CAROL], MARK) == ()  # older service
    assert junk_marks(bob_junks(), "inbound", [CAROL], MARK) == ()  # bob not in this envelope


def test_a_looser_personal_verdict_changes_nothing_at_the_gateway() -> None:
    carol_trusts = answer("tag", "spam", recipients=(personal(CAROL, "accept", "ham"),))
    assert junk_marks(carol_trusts, "inbound", [BOB, CAROL], MARK) == ()
    outcome = outcome_of(carol_trusts, "[SPAM?]", ())
    assert outcome.subject_prefix == "[SPAM?]" and not outcome.junk


def test_the_mark_comes_from_the_settings_and_can_be_turned_off() -> None:
    assert JunkMark.from_settings(GatewaySettings()) == JunkMark("junk", "+")
    custom = GatewaySettings(junk_detail="Junk", recipient_delimiter="+-")
    assert JunkMark.from_settings(custom) == JunkMark("Junk", "+-")
    assert JunkMark.from_settings(GatewaySettings(junk_marking=False)) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("junk_detail", ""),
        ("junk_detail", "junk@x"),
        ("junk_detail", "ju nk"),
        ("junk_detail", "a+b"),  # holds the delimiter
        ("recipient_delimiter", ""),
        ("recipient_delimiter", "@"),
        ("recipient_delimiter", "<"),
    ],
)
def test_settings_refuse_a_mark_that_would_change_the_address(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        GatewaySettings.model_validate({field: value})


@pytest.mark.parametrize(
    ("client", "port", "local"),
    [
        (ipaddress.ip_address("127.0.0.1"), 0, True),  # Postfix's pickup (sendmail)
        ("::1", 0, True),
        (ipaddress.ip_address("127.0.0.1"), 41000, False),  # an SMTP client at loopback
        (ipaddress.ip_address("10.0.0.5"), 0, False),  # port 0 from elsewhere: not ours
        (None, 0, False),  # no address: direction_of already calls it outbound
        (Path("/run/sock"), 0, False),
        ("localhost", 0, False),
    ],
)
def test_a_local_submission_is_loopback_with_port_0(client: object, port: int, local: bool) -> None:
    assert is_local_submission(client, port) is local  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client", "identity"),
    [
        (ipaddress.ip_address("10.0.0.5"), "client:10.0.0.5"),
        ("2001:DB8::0:5", "client:2001:db8::5"),  # one spelling of one address
        (None, "client:local"),
        (Path("/run/sock"), "client:local"),
        ("localhost", "client:local"),
    ],
)
def test_an_unauthenticated_client_is_known_by_its_address(client: object, identity: str) -> None:
    assert client_identity(client) == identity  # type: ignore[arg-type]


def test_a_configuration_error_tempfails_and_a_refused_envelope_is_rejected() -> None:
    assert misconfigured_outcome().reply == Reply(
        451, "4.3.0", "filter temporarily unavailable, try again later"
    )
    assert refused_outcome().kind == "reject" and refused_outcome().reply is not None
