"""The milter: its negotiation and edits (pure), and the real ``mailsift milter`` over a
real socket, spoken to from the MTA's side of the milter protocol by a small client
built on kilter.protocol's message codec (no Postfix needed; the Postfix end-to-end test
covers the same through a real MTA)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from kilter.protocol.buffer import SimpleBuffer
from kilter.protocol.exceptions import NeedsMore
from kilter.protocol.messages import (
    Accept,
    ActionFlags,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Macro,
    Message,
    Negotiate,
    ProtocolFlags,
    Quarantine,
    RemoveRecipient,
    ReplyCode,
)

from mailsift.gateway.client import ScoreAnswer
from mailsift.gateway.decisions import JunkRecipient, Outcome, Reply
from mailsift.gateway.milter import (
    RECIPIENT_ACTIONS,
    checked_marking,
    decided_by,
    edits_for,
    negotiate,
    postfix_recipient_delimiter,
)
from mailsift.gateway.settings import GatewaySettings
from mailsift.reasons import (
    ACCOUNT_SUSPENDED,
    BLOCKLISTED,
    LABELLED_SPAM,
    MODEL,
    PERSONAL_SENDER,
    dlp_reason,
    limit_reason,
)
from tests.gateway.processes import CannedService, GatewayProcess, gateway_options
from tests.service.server import Service, free_port, message, train, wait_for

EVERYTHING = ProtocolFlags(sum(f.value for f in ProtocolFlags))


def shape(messages: list[Message]) -> list[tuple[object, ...]]:
    """Comparable form of protocol messages (kilter's no-data messages have no ``==``)."""
    return [
        (
            type(m).__name__,
            *(bytes(v) if isinstance(v, memoryview) else v for v in vars(m).values()),
        )
        for m in messages
    ]


def test_negotiation_asks_no_reply_wherever_the_mta_allows() -> None:
    ours = negotiate(Negotiate(6, ActionFlags.ALL, EVERYTHING))
    assert ProtocolFlags.NR_HEADER in ours.protocol_flags
    assert ProtocolFlags.NR_BODY in ours.protocol_flags
    assert ProtocolFlags.NO_HEADERS not in ours.protocol_flags
    assert ProtocolFlags.NO_BODY not in ours.protocol_flags
    assert ours.action_flags == (
        ActionFlags.ADD_HEADERS
        | ActionFlags.CHANGE_HEADERS
        | ActionFlags.QUARANTINE
        | ActionFlags.ADD_RECIPIENT
        | ActionFlags.DELETE_RECIPIENT
        | ActionFlags.ADD_RECIPIENT_PAR  # a temporary address's owner, without bounces
    )
    old = negotiate(Negotiate(2, ActionFlags.ALL, ProtocolFlags.NONE))
    assert old.protocol_flags == ProtocolFlags.NONE  # it must answer every event then
    with pytest.raises(ValueError, match="does not allow"):
        negotiate(Negotiate(6, ActionFlags.ADD_HEADERS, EVERYTHING))


def test_recipient_changes_are_asked_only_when_marking_is_on_and_the_mta_allows_both() -> None:
    """Adding a recipient only for the Junk mark; deleting one whenever the MTA allows it
    (a recipient whose own block list refuses the message is removed)."""
    off = negotiate(Negotiate(6, ActionFlags.ALL, EVERYTHING), recipients=False)
    assert off.action_flags & RECIPIENT_ACTIONS == ActionFlags.DELETE_RECIPIENT
    header_only = ActionFlags.ALL & ~ActionFlags.DELETE_RECIPIENT
    refused = negotiate(Negotiate(6, header_only, EVERYTHING))  # still a working filter
    assert not refused.action_flags & RECIPIENT_ACTIONS
    assert ActionFlags.ADD_HEADERS in refused.action_flags


HEADERS = [
    ("From", b"a@example.org"),
    ("X-Mailsift-Verdict", b"ham"),  # forged by the sender
    ("Subject", b"hello"),
    ("x-mailsift-score", b"0.0"),  # forged, another spelling
]
MARKS = (("X-Mailsift-Score", "0.4000"), ("X-Mailsift-Verdict", "suspect"))


def test_edits_delete_forged_headers_add_ours_and_prefix_the_subject() -> None:
    edits = edits_for(HEADERS, Outcome("accept", MARKS, subject_prefix="[SPAM?]"))
    assert shape(edits) == shape(
        [
            ChangeHeader(1, "X-Mailsift-Verdict", b""),
            ChangeHeader(1, "x-mailsift-score", b""),
            AddHeader("X-Mailsift-Score", b"0.4000"),
            AddHeader("X-Mailsift-Verdict", b"suspect"),
            ChangeHeader(1, "Subject", b"[SPAM?] hello"),
            Accept(),
        ]
    )


def test_a_message_without_subject_gets_one_and_quarantine_holds() -> None:
    edits = edits_for([("From", b"x")], Outcome("quarantine", MARKS, "[S]", reason="why"))
    assert AddHeader("Subject", b"[S]") in edits
    assert shape(edits[-2:]) == shape([Quarantine("why"), Accept()])


BOB_MARKED = (JunkRecipient("Bob@example.test", "Bob+junk@example.test"),)


def test_a_recipient_marked_for_junk_is_deleted_and_added_back_marked() -> None:
    edits = edits_for(HEADERS[:1], Outcome("accept", MARKS, junk=BOB_MARKED))
    assert shape(edits) == shape(
        [
            AddHeader("X-Mailsift-Score", b"0.4000"),
            AddHeader("X-Mailsift-Verdict", b"suspect"),
            RemoveRecipient("<Bob@example.test>"),  # as the client spelled it
            AddRecipient("<Bob+junk@example.test>"),
            Accept(),
        ]
    )
    held = edits_for(HEADERS[:1], Outcome("quarantine", junk=BOB_MARKED, reason="why"))
    assert shape(held) == shape(
        [
            RemoveRecipient("<Bob@example.test>"),
            AddRecipient("<Bob+junk@example.test>"),
            Quarantine("why"),
            Accept(),
        ]
    )


def test_reject_and_defer_are_one_reply_code_and_no_edits() -> None:
    edits = edits_for(HEADERS, Outcome("reject", reply=Reply(550, "5.7.1", "looks like spam")))
    assert shape(edits) == shape([ReplyCode(b"550 5.7.1 looks like spam\0")])


@pytest.mark.parametrize(
    ("verdict", "action", "reasons", "why"),
    [
        ("ham", "accept", (MODEL,), []),
        # Issue #13: "outbound ham score=0.0035 action=quarantine" said nothing of the leak.
        ("ham", "quarantine", (MODEL, dlp_reason("card")), [dlp_reason("card")]),
        (
            "ham", "reject", (MODEL, dlp_reason("jwt"), dlp_reason("card")),
            [dlp_reason("jwt"), dlp_reason("card")],
        ),
        ("spam", "quarantine", (MODEL, "authres_fail"), ["score"]),
        ("spam", "reject", (MODEL,), ["score"]),
        ("suspect", "tag", (MODEL,), ["score"]),
        ("spam", "quarantine", (MODEL, BLOCKLISTED), [BLOCKLISTED]),
        ("spam", "quarantine", (MODEL, LABELLED_SPAM), [LABELLED_SPAM]),
        (
            "ham", "defer", (MODEL, limit_reason("messages_per_hour")),
            [limit_reason("messages_per_hour")],
        ),
        ("ham", "defer", (MODEL, ACCOUNT_SUSPENDED), [ACCOUNT_SUSPENDED]),
        # A flagged leak beside a spam score: both named, the answer cannot tell them apart.
        ("spam", "quarantine", (MODEL, dlp_reason("iban")), [dlp_reason("iban"), "score"]),
        ("ham", "quarantine", (MODEL, "something_new"), ["something_new"]),
        ("ham", "quarantine", (MODEL, "dlp_x\nforged line"), ["dlp_x?forged?line"]),
    ],
)  # fmt: skip
def test_the_log_names_what_decided_the_action(
    verdict: str, action: str, reasons: tuple[str, ...], why: list[str]
) -> None:
    answer = ScoreAnswer(score=0.5, verdict=verdict, action=action, reasons=reasons)  # type: ignore[arg-type]
    assert decided_by(answer) == why


# -- the real process ----------------------------------------------------------------


class Mta:
    """The MTA's side of a milter connection, over a real socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buffer = SimpleBuffer(1024 * 1024)

    def send(self, *messages: Message) -> None:
        out = SimpleBuffer(1024 * 1024)
        for m in messages:
            m.pack(out)
        self.sock.sendall(out[:].tobytes())

    def receive(self) -> Message:
        while True:
            try:
                reply, size = Message.unpack(self.buffer)
            except NeedsMore:
                data = self.sock.recv(65536)
                assert data, "the milter closed the connection"
                self.buffer[:] = data
                continue
            copy = _copy(reply)
            reply.release()
            del self.buffer[:size]
            return copy

    def until_final(self) -> list[Message]:
        replies = [self.receive()]
        while not isinstance(replies[-1], Accept | ReplyCode):
            replies.append(self.receive())
        return replies

    def close(self) -> None:
        self.sock.close()


def _copy(reply: Message) -> Message:
    """Replies may point into the receive buffer: keep plain bytes."""
    match reply:
        case AddHeader():
            return AddHeader(reply.name, bytes(reply.value))
        case ChangeHeader():
            return ChangeHeader(reply.index, reply.name, bytes(reply.value))
        case ReplyCode():
            return ReplyCode(bytes(reply.content))
    return reply


def transaction(
    mta: Mta,
    raw: bytes,
    *,
    user: str | None = None,
    rcpts: tuple[str, ...] = ("alice@example.test",),
) -> list[Message]:
    """One message as Postfix sends it (no replies asked before end of message)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    macros = {"i": "4F2A1C"} | ({"{auth_authen}": user} if user else {})
    mta.send(
        Macro(ord("M"), macros),
        EnvelopeFrom(b"<sender@remote.test>"),
        *(EnvelopeRecipient(f"<{rcpt}>".encode()) for rcpt in rcpts),
        Data(),
    )
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        mta.send(Header(name.decode(), value.strip()))
    mta.send(EndOfHeaders(), Body(body), EndOfMessage(b""))
    return mta.until_final()


def connect(mta: Mta, actions: ActionFlags = ActionFlags.ALL) -> Negotiate:
    mta.send(Negotiate(6, actions, EVERYTHING))
    reply = mta.receive()
    assert isinstance(reply, Negotiate)
    assert ProtocolFlags.NR_HEADER in reply.protocol_flags
    mta.send(Connect("mx.remote.test", IPv4Address("192.0.2.7"), 25), Helo("mx.remote.test"))
    return reply


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    env = {"MAILSIFT_OUTBOUND_LEARNING": "false", "MAILSIFT_INBOUND_REJECT_THRESHOLD": "0.9"}
    with Service(tmp_path / "data", env=env) as svc:
        with svc.client() as admin:
            for i in range(12):
                train(admin, message(1000 + i, spammy=False), "ham")
                train(admin, message(1000 + i, spammy=True), "spam")
            assert wait_for(lambda: admin.get("/v1/model").json()["spam"] >= 12, 30)
        yield svc


def test_the_milter_marks_ham_and_rejects_spam_on_one_connection(
    tmp_path: Path, service: Service
) -> None:
    args = gateway_options(service.data_dir, service.env, service.url)
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            ham = transaction(mta, message(1, spammy=False))
            added = {r.name: bytes(r.value) for r in ham if isinstance(r, AddHeader)}
            assert added["X-Mailsift-Verdict"] == b"ham"
            assert set(added) == {"X-Mailsift-Score", "X-Mailsift-Verdict", "X-Mailsift-Reasons"}
            assert isinstance(ham[-1], Accept)
            spam = transaction(mta, message(2, spammy=True))
            assert shape(spam) == shape([ReplyCode(b"550 5.7.1 message looks like spam\0")])
            sent = transaction(mta, message(5, spammy=False), user="carol@corp.test")
            assert isinstance(sent[-1], Accept)  # the SASL user makes it outbound, below
            card = b"From: carol@corp.test\r\nSubject: payment\r\n\r\ncard 4111 1111 1111 1111\r\n"
            held = transaction(mta, card, user="carol@corp.test")
            assert any(isinstance(r, Quarantine) for r in held)
        finally:
            mta.close()
        # One line a message, naming what decided the action.
        lines = [line for line in milter.log().splitlines() if "4F2A1C: " in line]
        assert "4F2A1C: inbound ham score=" in lines[0] and lines[0].endswith("action=accept")
        assert lines[1].endswith("action=reject (score)") and "inbound spam" in lines[1]
        assert "4F2A1C: outbound " in lines[2]
        assert lines[2].endswith(" user=carol@corp.test via=sasl")
        assert re.search(
            r"4F2A1C: outbound \w+ score=[0-9.]+ action=quarantine \(dlp_card(, score)?\) "
            r"user=carol@corp\.test via=sasl$",
            lines[3],
        ), lines[3]
        with service.client() as admin:  # the envelope reached the service

            def audit() -> str:
                return admin.get("/v1/audit", params={"message_id": "<1.0@example>"}).text

            assert wait_for(lambda: "4F2A1C" in audit(), 10), audit()
            assert '"direction":"inbound"' in audit()

            def directions() -> list[str]:
                sent = admin.get("/v1/audit", params={"user": "carol@corp.test"}).json()
                return [e["direction"] for e in sent["events"]]

            assert wait_for(lambda: directions() == ["outbound"] * 2, 10), directions()


UNAVAILABLE = ReplyCode(b"451 4.3.0 filter temporarily unavailable, try again later\0")


@pytest.mark.parametrize(("mode", "expected"), [("open", Accept()), ("closed", UNAVAILABLE)])
def test_a_dead_service_fails_open_or_closed(tmp_path: Path, mode: str, expected: Message) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with GatewayProcess("milter", tmp_path, "--service-url", dead, "--fail-mode", mode) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            replies = transaction(mta, message(3, spammy=False))
        finally:
            mta.close()
    assert shape(replies) == shape([expected])  # fail open: unscanned and unmarked
    assert f"failing {mode}" in milter.log()


# -- per-recipient verdicts, from a stand-in service whose answer each test sets: the
# per-recipient part of /v1/score exercised apart from how the service reaches it ------


@pytest.fixture
def canned() -> Iterator[CannedService]:
    with CannedService() as service:
        yield service


BOB, CAROL = "Bob@Example.test", "carol@example.test"
BOB_JUNKS = {
    "score": 0.02,
    "verdict": "ham",
    "action": "accept",
    "reasons": [{"name": MODEL, "weight": 1.0, "detail": "..."}],
    "recipients": [
        {
            "rcpt": "bob@example.test",
            "verdict": "spam",
            "action": "tag",
            "score": 0.93,
            "reasons": [{"name": PERSONAL_SENDER, "weight": 3.0, "detail": "..."}],
        },
        {"rcpt": CAROL, "verdict": "ham", "action": "accept", "score": 0.02, "reasons": []},
    ],
}


def _recipient_edits(replies: list[Message]) -> list[tuple[object, ...]]:
    return shape([r for r in replies if isinstance(r, AddRecipient | RemoveRecipient)])


def test_the_milter_marks_only_the_copy_of_the_recipient_whose_verdict_is_stricter(
    tmp_path: Path, canned: CannedService
) -> None:
    canned.answer.update(BOB_JUNKS)
    metrics = free_port()
    args = ("--service-url", canned.url, "--metrics-port", str(metrics))
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            assert connect(mta).action_flags & RECIPIENT_ACTIONS == RECIPIENT_ACTIONS
            replies = transaction(mta, message(7, spammy=False), rcpts=(BOB, CAROL))
            outbound = transaction(mta, message(8, spammy=False), user="bob@example.test")
        finally:
            mta.close()
        exposed = httpx.get(f"http://127.0.0.1:{metrics}/metrics").text
    assert _recipient_edits(replies) == shape(
        [RemoveRecipient(f"<{BOB}>"), AddRecipient("<Bob+junk@Example.test>")]
    )
    assert isinstance(replies[-1], Accept)
    added = {r.name: bytes(r.value) for r in replies if isinstance(r, AddHeader)}
    assert added["X-Mailsift-Verdict"] == b"ham"  # the shared verdict, in every copy
    assert "Subject" not in added  # bob's "tag" is his alone
    assert canned.calls[0]["rcpt"] == [BOB, CAROL]
    assert _recipient_edits(outbound) == []  # outbound mail is never marked
    assert "mailsift_gateway_junk_marks_total 1.0" in exposed
    assert "1 recipient(s) marked for Junk" in milter.log()


def test_with_marking_off_or_refused_by_the_mta_every_copy_is_left_alone(
    tmp_path: Path, canned: CannedService
) -> None:
    url = canned.url
    canned.answer.update(BOB_JUNKS)
    with GatewayProcess("milter", tmp_path, "--service-url", url, "--no-junk-marking") as milter:
        mta = Mta(milter.port)
        try:
            flags = connect(mta).action_flags
            # Asked for all the same: temporary addresses are delivered to their owners.
            assert flags & RECIPIENT_ACTIONS == RECIPIENT_ACTIONS
            replies = transaction(mta, message(9, spammy=False), rcpts=(BOB, CAROL))
        finally:
            mta.close()
    assert _recipient_edits(replies) == [] and isinstance(replies[-1], Accept)
    with GatewayProcess("milter", tmp_path, "--service-url", url) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta, ActionFlags.ALL & ~ActionFlags.ADD_RECIPIENT)
            replies = transaction(mta, message(10, spammy=False), rcpts=(BOB, CAROL))
        finally:
            mta.close()
        assert "does not allow changing recipients" in milter.log()
    assert _recipient_edits(replies) == [] and isinstance(replies[-1], Accept)


LEAK_HOLD = {
    "score": 0.0035,
    "verdict": "ham",
    "action": "quarantine",
    "reasons": [
        {"name": MODEL, "weight": -5.65, "detail": "..."},
        {"name": dlp_reason("card"), "weight": 0.5, "detail": "..."},
    ],
}
HELD = "4F2A1C: outbound ham score=0.0035 action=quarantine (dlp_card) user="


def test_the_log_says_why_a_message_is_held_and_why_it_is_outbound(
    tmp_path: Path, canned: CannedService
) -> None:
    canned.answer.update(LEAK_HOLD)
    args = ("--service-url", canned.url, "--internal-networks", "192.0.2.0/24")
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)  # from 192.0.2.7, an internal network
            transaction(mta, message(12, spammy=False))
            transaction(mta, message(13, spammy=False), user="carol@corp.test")
        finally:
            mta.close()
        local = Mta(milter.port)  # a connection without an address (Sendmail's stdin)
        try:
            local.send(Negotiate(6, ActionFlags.ALL, EVERYTHING))
            assert isinstance(local.receive(), Negotiate)
            local.send(Connect("localhost"), Helo("localhost"))
            transaction(local, message(14, spammy=False))
        finally:
            local.close()
        pickup = Mta(milter.port)  # Postfix's sendmail command: 127.0.0.1, port 0
        try:
            pickup.send(Negotiate(6, ActionFlags.ALL, EVERYTHING))
            assert isinstance(pickup.receive(), Negotiate)
            pickup.send(Connect("localhost", IPv4Address("127.0.0.1"), 0), Helo("localhost"))
            transaction(pickup, message(15, spammy=False))
        finally:
            pickup.close()
        log = milter.log()
    # Whose limits count (the SASL login's, else the client's, never MAIL FROM) and why
    # outbound; a local submission is outbound though 127.0.0.1 is not internal here.
    assert f"{HELD}client:192.0.2.7 via=network client=192.0.2.7\n" in log
    assert f"{HELD}carol@corp.test via=sasl\n" in log
    assert f"{HELD}client:local via=local\n" in log
    assert log.count(f"{HELD}client:local via=local\n") == 2  # one host, one limit
    assert [call["direction"] for call in canned.calls] == [["outbound"]] * 4
    assert [call["user"] for call in canned.calls] == [
        ["client:192.0.2.7"],
        ["carol@corp.test"],
        ["client:local"],
        ["client:local"],
    ]
    assert all(call["mail_from"] == ["sender@remote.test"] for call in canned.calls)


def test_an_smtp_client_at_loopback_follows_internal_networks(
    tmp_path: Path, canned: CannedService
) -> None:
    """Only the local pickup path (port 0) is outbound whatever the setting: an SMTP
    client at 127.0.0.1 (a content filter re-injecting outside mail) is inbound unless
    loopback is in ``--internal-networks``."""
    canned.answer.update(LEAK_HOLD)
    cases = (("192.0.2.0/24", "inbound"), (None, "inbound"), ("127.0.0.0/8", "outbound"))
    for networks, direction in cases:
        args = ("--service-url", canned.url) + (
            ("--internal-networks", networks) if networks else ()
        )
        canned.calls.clear()
        with GatewayProcess("milter", tmp_path, *args) as milter:
            mta = Mta(milter.port)
            try:
                mta.send(Negotiate(6, ActionFlags.ALL, EVERYTHING))
                assert isinstance(mta.receive(), Negotiate)
                mta.send(Connect("localhost", IPv4Address("127.0.0.1"), 41000), Helo("x"))
                transaction(mta, message(16, spammy=False))
            finally:
                mta.close()
        assert [call["direction"] for call in canned.calls] == [[direction]], networks


@pytest.mark.parametrize(
    ("headers", "user"),
    [
        ([b"X-Authenticated-User: dave@corp.test"], "dave@corp.test"),
        ([], "client:192.0.2.7"),  # no header: the client's address
        (  # two copies: one was written by someone else than the submission server
            [b"X-Authenticated-User: dave@corp.test", b"X-Authenticated-User: eve@corp.test"],
            "client:192.0.2.7",
        ),
    ],
)
def test_with_identity_source_header_the_submission_servers_header_names_the_sender(
    tmp_path: Path, canned: CannedService, headers: list[bytes], user: str
) -> None:
    canned.answer.update(LEAK_HOLD)
    args = ("--service-url", canned.url, "--internal-networks", "192.0.2.0/24")
    env = {"MAILSIFT_GATEWAY_IDENTITY_SOURCE": "header"}
    raw = b"\r\n".join([*headers, message(17, spammy=False)])
    with GatewayProcess("milter", tmp_path, *args, env=env) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            transaction(mta, raw)
            transaction(mta, raw, user="sasl-login@corp.test")  # a login beats the header
        finally:
            mta.close()
    assert [call["user"] for call in canned.calls] == [[user], ["sasl-login@corp.test"]]


@pytest.mark.parametrize(
    "recipients",
    ["not a list", [{"rcpt": "bob@example.test", "action": "explode"}], [None]],
)
def test_a_malformed_recipients_field_never_fails_the_message(
    tmp_path: Path, canned: CannedService, recipients: object
) -> None:
    canned.answer.update(BOB_JUNKS, recipients=recipients)
    args = ("--service-url", canned.url, "--fail-mode", "closed")
    with GatewayProcess("milter", tmp_path, *args) as m:
        mta = Mta(m.port)
        try:
            connect(mta)
            replies = transaction(mta, message(11, spammy=False), rcpts=(BOB, CAROL))
        finally:
            mta.close()
    assert _recipient_edits(replies) == [] and isinstance(replies[-1], Accept)
    assert any(isinstance(r, AddHeader) and r.name == "X-Mailsift-Verdict" for r in replies)


@pytest.mark.parametrize(
    ("postfix", "marking"),
    [(None, True), ("+", True), ("-+", True), ("", False), ("-", False)],
)
def test_marking_turns_off_where_postfix_would_bounce_the_marked_copy(
    postfix: str | None, marking: bool
) -> None:
    """No Postfix here to ask: as configured; a Postfix without the delimiter: off."""
    settings = GatewaySettings(token="t" * 20)
    assert checked_marking(settings, postfix).junk_marking is marking
    off = settings.model_copy(update={"junk_marking": False})
    assert checked_marking(off, "+").junk_marking is False


@pytest.mark.skipif(
    postfix_recipient_delimiter() is None,
    reason="no Postfix configuration here to ask (postconf missing or no main.cf)",
)
def test_this_hosts_postfix_delimiter_is_read() -> None:
    assert isinstance(postfix_recipient_delimiter(), str)


BOB_BLOCKS = {
    **BOB_JUNKS,
    "recipients": [
        {"rcpt": "bob@example.test", "verdict": "spam", "action": "reject", "score": 1.0},
        {"rcpt": CAROL, "verdict": "ham", "action": "accept", "score": 0.02},
    ],
}


def test_a_recipient_whose_own_block_list_refuses_is_removed_and_only_them(
    tmp_path: Path, canned: CannedService
) -> None:
    """Bob's own verdict is reject (his block list): the milter deletes bob as the client
    spelled him and adds nobody back; carol keeps the message. An MTA that forbids
    deleting recipients gets the message for both, and the milter says so once."""
    canned.answer.update(BOB_BLOCKS)
    with GatewayProcess("milter", tmp_path, "--service-url", canned.url) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            replies = transaction(mta, message(18, spammy=False), rcpts=(BOB, CAROL))
        finally:
            mta.close()
        mta = Mta(milter.port)
        try:
            connect(mta, ActionFlags.ALL & ~ActionFlags.DELETE_RECIPIENT)
            kept = transaction(mta, message(19, spammy=False), rcpts=(BOB, CAROL))
        finally:
            mta.close()
        log = milter.log()
    assert _recipient_edits(replies) == shape([RemoveRecipient(f"<{BOB}>")])
    assert isinstance(replies[-1], Accept)
    assert f"refused for {BOB} (their own block list), delivered to the others" in log
    assert _recipient_edits(kept) == [] and isinstance(kept[-1], Accept)
    assert log.count("does not allow deleting recipients") == 1


# -- messages over the size the gateway scans ----------------------------------------

PADDING = b"\r\n" + b"lorem ipsum dolor sit amet " * 4000  # ~108 KB after the message
TOO_LARGE = ReplyCode(b"552 5.3.4 message too large for the filter to scan\0")


def test_a_message_over_the_size_limit_is_scored_on_its_start(
    tmp_path: Path, service: Service
) -> None:
    """Padding a message past ``--max-message-bytes`` is no way round the filter:
    inbound spam is still refused (it passed unscanned before), inbound ham is marked."""
    args = gateway_options(service.data_dir, service.env, service.url)
    args += ("--max-message-bytes", "4096")
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            spam = transaction(mta, message(2, spammy=True) + PADDING)
            ham = transaction(mta, message(1, spammy=False) + PADDING)
        finally:
            mta.close()
        log = milter.log()
    assert shape(spam) == shape([ReplyCode(b"550 5.7.1 message looks like spam\0")])
    added = {r.name: bytes(r.value) for r in ham if isinstance(r, AddHeader)}
    assert added["X-Mailsift-Verdict"] == b"ham" and isinstance(ham[-1], Accept)
    assert log.count("4F2A1C: larger than 4096 bytes: scored on its first 4096") == 2, log


@pytest.mark.parametrize(
    ("rule", "expected"), [(None, "reject"), ("reject", "reject"), ("scan-start", "accept")]
)
def test_outbound_mail_over_the_size_limit_is_refused_unless_told(
    tmp_path: Path, canned: CannedService, rule: str | None, expected: str
) -> None:
    """Outbound, the end of an oversize message was never scanned for leaks: refused by
    default (552) without asking the service (not counted against the sender's limits,
    not learned from), or decided by its start with ``--oversize-outbound scan-start``.
    The service is sent at most the limit; a message within it is not affected."""
    canned.answer.update({"score": 0.01, "verdict": "ham", "action": "accept", "reasons": []})
    args = ("--service-url", canned.url, "--max-message-bytes", "4096")
    args += ("--oversize-outbound", rule) if rule else ()
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            big = transaction(mta, message(5, spammy=False) + PADDING, user="carol@corp.test")
            small = transaction(mta, message(6, spammy=False), user="carol@corp.test")
        finally:
            mta.close()
        mta = Mta(milter.port)  # SASL is per connection: a new one for inbound
        try:
            connect(mta)
            inbound = transaction(mta, message(7, spammy=False) + PADDING)
        finally:
            mta.close()
    if expected == "reject":
        assert shape(big) == shape([TOO_LARGE])
    else:
        assert isinstance(big[-1], Accept) and any(isinstance(r, AddHeader) for r in big)
    assert isinstance(small[-1], Accept) and isinstance(inbound[-1], Accept)
    oversize = [4096] if expected == "accept" else []  # scored only with scan-start
    assert [len(body) for body in canned.bodies] == [*oversize, len(message(6, False)), 4096]
    # Whatever was cut says so (the service then never learns it); whole mail does not.
    cut = [["true"]] if expected == "accept" else []
    assert [call.get("truncated") for call in canned.calls] == [*cut, None, ["true"]]


def test_a_service_that_takes_less_than_the_gateway_sends_is_a_misconfiguration(
    tmp_path: Path,
) -> None:
    """413 from the service means its MAILSIFT_MAX_MESSAGE_BYTES is below the gateway's
    limit: a configuration error, so the message is deferred even failing open (before,
    it passed unscanned) and the log says which two settings to make equal."""
    with Service(tmp_path / "data", env={"MAILSIFT_MAX_MESSAGE_BYTES": "2048"}) as small:
        args = (*gateway_options(small.data_dir, small.env, small.url), "--fail-mode", "open")
        with GatewayProcess("milter", tmp_path, *args) as milter:
            mta = Mta(milter.port)
            try:
                connect(mta)
                replies = transaction(mta, message(8, spammy=False) + PADDING)
            finally:
                mta.close()
            log = milter.log()
    assert shape(replies) == shape([UNAVAILABLE])
    assert "ERROR" in log and "MAILSIFT_MAX_MESSAGE_BYTES is below" in log, log
