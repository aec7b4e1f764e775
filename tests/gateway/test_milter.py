"""The milter: its negotiation and edits (pure), and the real ``mailsift milter`` over a
real socket, spoken to from the MTA's side of the milter protocol by a small client
built on kilter.protocol's message codec (no Postfix needed; the Postfix end-to-end test
covers the same through a real MTA)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from kilter.protocol.buffer import SimpleBuffer
from kilter.protocol.exceptions import NeedsMore
from kilter.protocol.messages import (
    Accept,
    ActionFlags,
    AddHeader,
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
    ReplyCode,
)

from mailsift.gateway.decisions import Outcome, Reply
from mailsift.gateway.milter import edits_for, negotiate
from tests.gateway.processes import GatewayProcess, gateway_token
from tests.service.server import Service, feedback, free_port, message, wait_for

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
        ActionFlags.ADD_HEADERS | ActionFlags.CHANGE_HEADERS | ActionFlags.QUARANTINE
    )
    old = negotiate(Negotiate(2, ActionFlags.ALL, ProtocolFlags.NONE))
    assert old.protocol_flags == ProtocolFlags.NONE  # it must answer every event then
    with pytest.raises(ValueError, match="does not allow"):
        negotiate(Negotiate(6, ActionFlags.ADD_HEADERS, EVERYTHING))


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


def test_reject_and_defer_are_one_reply_code_and_no_edits() -> None:
    edits = edits_for(HEADERS, Outcome("reject", reply=Reply(550, "5.7.1", "looks like spam")))
    assert shape(edits) == shape([ReplyCode(b"550 5.7.1 looks like spam\0")])


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


def transaction(mta: Mta, raw: bytes, *, user: str | None = None) -> list[Message]:
    """One message as Postfix sends it (no replies asked before end of message)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    macros = {"i": "4F2A1C"} | ({"{auth_authen}": user} if user else {})
    mta.send(
        Macro(ord("M"), macros),
        EnvelopeFrom(b"<sender@remote.test>"),
        EnvelopeRecipient(b"<alice@example.test>"),
        Data(),
    )
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        mta.send(Header(name.decode(), value.strip()))
    mta.send(EndOfHeaders(), Body(body), EndOfMessage(b""))
    return mta.until_final()


def connect(mta: Mta) -> None:
    mta.send(Negotiate(6, ActionFlags.ALL, EVERYTHING))
    reply = mta.receive()
    assert isinstance(reply, Negotiate)
    assert ProtocolFlags.NR_HEADER in reply.protocol_flags
    mta.send(Connect("mx.remote.test", IPv4Address("192.0.2.7"), 25), Helo("mx.remote.test"))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    env = {"MAILSIFT_OUTBOUND_LEARNING": "false", "MAILSIFT_INBOUND_REJECT_THRESHOLD": "0.9"}
    with Service(tmp_path / "data", env=env) as svc:
        with svc.client() as admin:
            for i in range(12):
                feedback(admin, message(1000 + i, spammy=False), "ham")
                feedback(admin, message(1000 + i, spammy=True), "spam")
            assert wait_for(lambda: admin.get("/v1/model").json()["spam"] >= 12, 30)
        yield svc


def test_the_milter_marks_ham_and_rejects_spam_on_one_connection(
    tmp_path: Path, service: Service
) -> None:
    token = tmp_path / "token"
    token.write_text(gateway_token(service.data_dir, service.env))
    args = ("--service-url", service.url, "--token-file", str(token))
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
        finally:
            mta.close()
        with service.client() as admin:  # the envelope reached the service

            def audit() -> str:
                return admin.get("/v1/audit", params={"message_id": "<1.0@example>"}).text

            assert wait_for(lambda: "4F2A1C" in audit(), 10), audit()
            assert '"direction":"inbound"' in audit()

            def directions() -> list[str]:
                sent = admin.get("/v1/audit", params={"user": "carol@corp.test"}).json()
                return [e["direction"] for e in sent["events"]]

            assert wait_for(lambda: directions() == ["outbound"], 10), directions()


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
