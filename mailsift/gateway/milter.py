"""``mailsift milter``: a milter for Postfix and Sendmail in front of ``/v1/score``.

The wire protocol (parsing, encoding, and checking that every reply is one the MTA may
receive at that point) is kilter.protocol's: pure Python and typed, so nothing needs a C
library to build. Its companion framework, kilter.service, runs each event through a
per-connection task broadcast; measured through Postfix that cost ~0.15 ms per header
event, several ms on ordinary mail, so this module drives the protocol state machine
directly from an asyncio stream: one task per MTA connection, events handled inline.

Per message it collects the envelope (client address, HELO, MAIL FROM, RCPT TO, the
SASL user and the queue id from the MTA's macros) and the message, asks the service
once at end of message over a shared keep-alive pool, and applies the answer (see
:mod:`.decisions`). Every earlier event is negotiated "no reply", so the MTA waits for
the milter only at end of message.

A recipient whose personal verdict is stricter than the message's has its copy marked
for its Junk folder by an address extension: the recipient is deleted and added back
as ``bob+junk@…`` (SMFIR_DELRCPT, SMFIR_ADDRCPT), which the delivery agent writes
into that copy only. A recipient whose own verdict is ``reject`` (their own block list)
is deleted and not added back: the others still get the message.

Only an outage of the service fails open; a service that refuses the gateway's token
fails closed (and stops the milter at start), and an envelope it refuses is rejected
(see :mod:`.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import cast

from kilter.protocol.buffer import SimpleBuffer
from kilter.protocol.core import FilterMessage, FilterProtocol, MTAMessage
from kilter.protocol.exceptions import InvalidMessage, UnexpectedMessage
from kilter.protocol.messages import (
    Abort,
    Accept,
    ActionFlags,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeHeader,
    Close,
    Connect,
    Continue,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Macro,
    Negotiate,
    ProtocolFlags,
    Quarantine,
    RemoveRecipient,
    ReplyCode,
)

from mailsift.gateway.client import (
    GatewayMisconfigured,
    RequestRefused,
    ScoreAnswer,
    ScoreRequest,
    ServiceClient,
    ServiceUnavailable,
    check_token,
)
from mailsift.gateway.decisions import (
    ALIAS_HEADER,
    HEADER_PREFIX,
    JunkMark,
    Outcome,
    alias_recipients,
    client_identity,
    direction_of,
    is_local_submission,
    junk_marks,
    misconfigured_outcome,
    outcome_of,
    oversize_outcome,
    owner_refusals,
    refused_outcome,
    unavailable_outcome,
)
from mailsift.gateway.metrics import DECISIONS, JUNK_MARKS, SERVICE_FAILURES
from mailsift.gateway.policy import log_value
from mailsift.gateway.settings import GatewaySettings
from mailsift.reasons import (
    ACCOUNT_SUSPENDED,
    BLOCKLISTED,
    DLP_PREFIX,
    LABELLED_SPAM,
    LIMIT_PREFIX,
    MODEL,
)

__all__ = [
    "RECIPIENT_ACTIONS",
    "MilterConnection",
    "Sender",
    "decided_by",
    "edits_for",
    "identity_of",
    "negotiate",
    "serve_milter",
    "strip_brackets",
]

log = logging.getLogger("mailsift.gateway.milter")

MiB = 1024 * 1024
# Events this filter reads but never answers: the MTA need not wait for them.
_NO_REPLY = (
    ProtocolFlags.NR_CONNECT
    | ProtocolFlags.NR_HELO
    | ProtocolFlags.NR_SENDER
    | ProtocolFlags.NR_RECIPIENT
    | ProtocolFlags.NR_DATA
    | ProtocolFlags.NR_HEADER
    | ProtocolFlags.NR_END_OF_HEADERS
    | ProtocolFlags.NR_BODY
    | ProtocolFlags.NR_UNKNOWN
)
_ACTIONS = ActionFlags.ADD_HEADERS | ActionFlags.CHANGE_HEADERS | ActionFlags.QUARANTINE
# Marking a recipient's copy for Junk: delete the recipient, add its marked address.
RECIPIENT_ACTIONS = ActionFlags.ADD_RECIPIENT | ActionFlags.DELETE_RECIPIENT
QUIET_OWNER = "NOTIFY=NEVER"
"""ESMTP parameter of a temporary address's owner as the milter adds them: a failed
delivery to the owner sends the sender no bounce, which would name the owner."""


def negotiate(offer: Negotiate, *, recipients: bool = True) -> Negotiate:
    """Our answer to the MTA's offer: every event but unknown commands, no replies
    wherever the MTA allows it, the three actions this filter needs, deleting recipients
    when the MTA allows it (a recipient whose own block list refuses the message), and,
    when ``recipients`` (the milter always asks: Junk marks and temporary addresses)
    and the MTA allows both, adding and deleting recipients."""
    missing = _ACTIONS & ~offer.action_flags
    if missing:
        raise ValueError(f"the MTA does not allow {missing!r}")
    actions = _ACTIONS | (ActionFlags.DELETE_RECIPIENT & offer.action_flags)
    if recipients and RECIPIENT_ACTIONS & offer.action_flags == RECIPIENT_ACTIONS:
        actions |= RECIPIENT_ACTIONS | (ActionFlags.ADD_RECIPIENT_PAR & offer.action_flags)
    options = (ProtocolFlags.NO_UNKNOWN | _NO_REPLY) & offer.protocol_flags
    return Negotiate(6, actions, options)


def strip_brackets(address: str) -> str:
    """``<a@b>`` -> ``a@b`` (the MTA passes the SMTP argument as the client wrote it)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


# What can demand an action whatever the score, by action (the service's checks: a leak
# acts by its severity, a sender over a limit is deferred, a suspended account gets the
# suspend action); and what makes a message spam whatever the score.
_DEMANDS: dict[str, tuple[str, ...]] = {
    "tag": (ACCOUNT_SUSPENDED,),
    "quarantine": (DLP_PREFIX, ACCOUNT_SUSPENDED),
    "reject": (DLP_PREFIX, ACCOUNT_SUSPENDED),
    "defer": (LIMIT_PREFIX, ACCOUNT_SUSPENDED),
}
_MAKES_SPAM = (BLOCKLISTED, LABELLED_SPAM)


def decided_by(answer: ScoreAnswer) -> list[str]:
    """The names of what decided the answer's action, for the log line: the reasons that
    can demand that action (a leak, a limit, a suspension), the reason that made the
    message spam (the block list, a labelled message), else ``score`` (the score against
    the thresholds). Nothing for ``accept``.

    The answer says which reasons came up, not which of them demanded an action, so a
    leak the settings only flag is named beside the score that really decided.
    """
    if answer.action == "accept":
        return []
    names = [_name(n) for n in answer.reasons]
    why = [n for n in names if n.startswith(_DEMANDS[answer.action])]
    if answer.verdict == "spam" and any(n in _MAKES_SPAM for n in names):
        why += [n for n in names if n in _MAKES_SPAM and n not in why]
    elif answer.verdict in ("suspect", "spam"):
        why.append("score")
    # A ham message acted on for a reason this gateway does not know: name them all.
    return why or [n for n in names if not n.startswith(MODEL)] or ["score"]


def _name(reason: str) -> str:
    """A reason name as the log shows it: what a name may hold, anything else as ``?``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-.:") else "?" for c in reason)


@dataclass(frozen=True, slots=True)
class Sender:
    """Whose limits an outbound message counts against, and why it is outbound: ``sasl``
    (the SASL login), ``header`` (the submission server's identity header), ``network``
    (an unauthenticated client of an internal network: its address) or ``local``
    (submitted on the MTA's host, or a connection without an address)."""

    user: str
    via: str

    def log(self, address: IPv4Address | IPv6Address | Path | None) -> str:
        """`` user=… via=…`` for the log line (``network`` with the client's address)."""
        via = self.via
        if via == "network" and isinstance(address, IPv4Address | IPv6Address):
            via = f"network client={address}"
        return f" user={log_value(self.user)} via={via}"


def identity_of(
    settings: GatewaySettings,
    sasl_user: str | None,
    headers: list[tuple[str, bytes]],
    address: IPv4Address | IPv6Address | Path | None,
    local: bool,
) -> Sender:
    """The identity of outbound mail, from the source the settings name (never MAIL
    FROM, which the client chooses freely): the SASL login; with
    ``identity_source=header`` else the identity header, when the message holds it
    exactly once (a second copy means someone other than the submission server wrote
    one); else the client's address, so one host has one limit."""
    if sasl_user:
        return Sender(sasl_user, "sasl")
    if settings.identity_source == "header":
        wanted = settings.identity_header.lower()
        values = [v for name, v in headers if name.lower() == wanted]
        if len(values) == 1:
            value = values[0].decode("utf-8", "replace").strip()
            if value:
                return Sender(value, "header")
    client = None if local else address
    return Sender(client_identity(client), "local" if local or client is None else "network")


@dataclass
class _Transaction:
    """One message: its envelope and content, of which the first ``limit`` bytes
    (headers first) are kept to be scored; the rest is only counted."""

    limit: int
    mail_from: str = ""
    rcpts: list[str] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def add_header(self, name: str, value: bytes) -> None:
        self.headers.append((name, value))  # all of them: edits count them by name
        self.size += len(name) + len(value) + 4

    def add_body(self, chunk: bytes) -> None:
        room = self.limit - self.size - 2  # the blank line between head and body
        if room > 0 and chunk:
            self.parts.append(chunk[:room])
        self.size += len(chunk)

    @property
    def truncated(self) -> bool:
        """More came than is scored."""
        return self.size + 2 > self.limit

    def raw(self) -> bytes:
        """The message as scored: at most ``limit`` bytes."""
        head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in self.headers)
        return (head + b"\r\n" + b"".join(self.parts))[: self.limit]


def edits_for(
    headers: list[tuple[str, bytes]], outcome: Outcome, *, with_params: bool = False
) -> list[FilterMessage]:
    """What to send at end of message: header edits, recipient edits, then the final reply.

    Headers a sender forged to look like ours are deleted before ours are added (a
    change to an empty value deletes; the index counts headers of that name from 1).
    A recipient marked for Junk is deleted as the MTA gave it (Postfix matches the
    original RCPT TO address) and added back marked; a live temporary address is deleted
    and its owner added, the copy naming the address in ``X-Mailsift-Alias`` (a sender's
    own such header was deleted above with the other forged ones). With ``with_params``
    (the MTA takes recipients with ESMTP parameters) the owner is added with
    :data:`QUIET_OWNER`, so no bounce names them to the sender.
    """
    if outcome.reply is not None:
        return [ReplyCode(f"{outcome.reply}\0".encode())]
    edits: list[FilterMessage] = []
    seen: dict[str, int] = {}
    subject: tuple[int, bytes] | None = None
    for name, value in headers:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        if key.startswith(HEADER_PREFIX.lower()):
            edits.append(ChangeHeader(seen[key], name, b""))
        elif key == "subject" and subject is None:
            subject = (seen[key], value)
    edits += [AddHeader(name, value.encode()) for name, value in outcome.headers]
    if outcome.subject_prefix:
        prefix = outcome.subject_prefix.encode()
        if subject is None:
            edits.append(AddHeader("Subject", prefix))
        else:
            edits.append(ChangeHeader(subject[0], "Subject", prefix + b" " + subject[1]))
    edits += [AddHeader(ALIAS_HEADER, alias.rcpt.encode()) for alias in outcome.aliases]
    aliased = {alias.rcpt for alias in outcome.aliases}

    def add(address: str, owner: bool) -> FilterMessage:
        if owner and with_params:
            return AddRecipientPar(f"<{address}>", QUIET_OWNER)
        return AddRecipient(f"<{address}>")

    for junk in outcome.junk:
        edits += [RemoveRecipient(f"<{junk.rcpt}>"), add(junk.marked, junk.rcpt in aliased)]
    marked = {junk.rcpt for junk in outcome.junk}
    for alias in outcome.aliases:
        if alias.rcpt not in marked:
            edits += [RemoveRecipient(f"<{alias.rcpt}>"), add(alias.owner, True)]
    edits += [RemoveRecipient(f"<{rcpt}>") for rcpt in outcome.dropped]
    if outcome.kind == "quarantine":
        # A valid end-of-message action (kilter's state machine allows it) that its
        # FilterMessage type leaves out.
        edits.append(cast(FilterMessage, Quarantine(outcome.reason)))
    return [*edits, Accept()]


class MilterConnection:
    """One MTA connection: the protocol state, the client, the current message."""

    _told_no_recipient_actions = False  # warn once a process, not once a connection
    _told_no_drop = False
    _told_no_rewrite = False

    def __init__(self, client: ServiceClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings
        self.proto = FilterProtocol(abort_on_unknown=True)
        self.address: IPv4Address | IPv6Address | Path | None = None
        self.port = -1
        self.helo = ""
        self.macros: dict[str, str] = {}
        self.txn = _Transaction(client.max_message_bytes)
        self.mark = JunkMark.from_settings(settings)  # None: off, or the MTA refused
        self.can_drop = False  # may remove a recipient (negotiated)
        self.can_rewrite = False  # may replace a recipient: temporary addresses (negotiated)
        self.with_params = False  # may add a recipient with ESMTP parameters (negotiated)

    def _negotiate(self, offer: Negotiate) -> Negotiate:
        # Recipient changes are asked for whenever the MTA allows them: temporary
        # addresses are delivered to their owners whether or not Junk marking is on.
        ours = negotiate(offer, recipients=True)
        self.can_drop = ActionFlags.DELETE_RECIPIENT in ours.action_flags
        self.can_rewrite = RECIPIENT_ACTIONS & ours.action_flags == RECIPIENT_ACTIONS
        self.with_params = ActionFlags.ADD_RECIPIENT_PAR in ours.action_flags
        if self.mark is not None and RECIPIENT_ACTIONS & ~ours.action_flags:
            if not MilterConnection._told_no_recipient_actions:
                MilterConnection._told_no_recipient_actions = True
                log.warning("the MTA does not allow changing recipients: no copy marked for Junk")
            self.mark = None
        return ours

    async def on_event(self, event: MTAMessage) -> list[FilterMessage] | None:
        """Handle one MTA event; the replies to send, or None to close the connection."""
        match event:
            case Negotiate():
                return [self._negotiate(event)]
            case Macro():
                self.macros.update(event.macros)
            case Connect():
                self.address, self.port = event.address, event.port
            case Helo():
                self.helo = event.hostname
            case EnvelopeFrom():
                self.txn = _Transaction(self.client.max_message_bytes)
                self.txn.mail_from = strip_brackets(bytes(event.sender).decode("utf-8", "replace"))
            case EnvelopeRecipient():
                rcpt = bytes(event.recipient).decode("utf-8", "replace")
                self.txn.rcpts.append(strip_brackets(rcpt))
            case Header():
                self.txn.add_header(event.name, bytes(event.value))
            case Body():
                self.txn.add_body(bytes(event.content))
            case EndOfMessage():
                self.txn.add_body(bytes(event.content))
                outcome = await self._decide()
                return edits_for(self.txn.headers, outcome, with_params=self.with_params)
            case Abort():
                self.txn = _Transaction(self.client.max_message_bytes)
            case Close():
                return None
        if not self.proto.needs_response(event):
            return []
        return [Continue()]  # an MTA that would not let us skip the reply

    async def _decide(self) -> Outcome:
        txn, queue_id = self.txn, self.macros.get("i") or None
        sasl = self.macros.get("{auth_authen}") or None
        local = is_local_submission(self.address, self.port)
        direction = direction_of(None if local else self.address, sasl, self.settings.networks)
        refuse_oversize = self.settings.oversize_outbound == "reject"
        if txn.truncated and direction == "outbound" and refuse_oversize:
            # Refused whatever its start holds: not scored, so neither counted against
            # the sender's limits nor learned from.
            log.info(
                "%s: outbound larger than %d bytes: rejected, too large to scan",
                queue_id,
                txn.limit,
            )
            DECISIONS.labels("milter", "reject").inc()
            return oversize_outcome()
        sender = (
            identity_of(self.settings, sasl, txn.headers, self.address, local)
            if direction == "outbound"
            else None
        )
        is_ip = isinstance(self.address, IPv4Address | IPv6Address)
        request = ScoreRequest(
            raw=txn.raw(),
            direction=direction,
            mail_from=txn.mail_from or None,
            rcpt=txn.rcpts,
            client_ip=str(self.address) if is_ip else None,
            helo=self.helo or None,
            user=sender.user if sender else None,
            queue_id=queue_id,
            truncated=txn.truncated,
        )
        started = time.perf_counter()
        try:
            answer = await self.client.score(request)
        except ServiceUnavailable as exc:
            mode = self.settings.fail_mode
            SERVICE_FAILURES.labels("milter", mode).inc()
            log.warning(
                "%s: service unavailable (%s) after %.0f ms: failing %s",
                queue_id,
                exc,
                (time.perf_counter() - started) * 1000,
                mode,
            )
            outcome = unavailable_outcome(mode)
        except GatewayMisconfigured as exc:
            SERVICE_FAILURES.labels("milter", "closed").inc()
            log.error("%s: %s: failing closed whatever the fail mode", queue_id, exc)
            outcome = misconfigured_outcome()
        except RequestRefused as exc:
            log.warning(
                "%s: %s refused by the service (%s): rejected%s",
                queue_id,
                direction,
                log_value(str(exc)),
                sender.log(self.address) if sender else "",
            )
            outcome = refused_outcome()
        else:
            why = decided_by(answer)
            log.info(
                "%s: %s %s score=%.4f action=%s%s%s",
                queue_id,
                direction,
                answer.verdict,
                answer.score,
                answer.action,
                f" ({', '.join(why)})" if why else "",
                sender.log(self.address) if sender else "",
            )
            dropped = owner_refusals(answer, direction, txn.rcpts)
            if dropped and not self.can_drop:
                if not MilterConnection._told_no_drop:
                    MilterConnection._told_no_drop = True
                    log.warning(
                        "the MTA does not allow deleting recipients: a recipient whose own "
                        "block list refuses a message still gets it"
                    )
                dropped = ()
            kept = [r for r in txn.rcpts if r not in dropped]
            aliases = alias_recipients(answer, direction, kept)
            if aliases and not self.can_rewrite:
                if not MilterConnection._told_no_rewrite:
                    MilterConnection._told_no_rewrite = True
                    log.warning(
                        "the MTA does not allow changing recipients: mail to temporary "
                        "addresses is not delivered to their owners"
                    )
                aliases = ()
            junk = junk_marks(answer, direction, kept, self.mark, aliases)
            outcome = outcome_of(
                answer, self.settings.subject_prefix, junk, dropped, txn.rcpts, aliases
            )
            if txn.truncated:  # outbound only with scan-start: else refused unscored above
                log.info(
                    "%s: larger than %d bytes: scored on its first %d",
                    queue_id,
                    txn.limit,
                    txn.limit,
                )
            if outcome.dropped:
                log.info(
                    "%s: refused for %s (their own block list), delivered to the others",
                    queue_id,
                    ", ".join(log_value(r) for r in outcome.dropped),
                )
            if outcome.aliases:
                # The temporary address only: its owner stays out of the log line.
                log.info(
                    "%s: delivered through temporary address %s",
                    queue_id,
                    ", ".join(log_value(a.rcpt) for a in outcome.aliases),
                )
            if outcome.junk:
                log.info("%s: %d recipient(s) marked for Junk", queue_id, len(outcome.junk))
                JUNK_MARKS.inc(len(outcome.junk))
        DECISIONS.labels("milter", outcome.kind).inc()
        return outcome

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read events until the MTA closes; replies go out in one write per event."""
        buffer = SimpleBuffer(2 * MiB)  # MTA packets are at most 1 MiB (SMFIP_MDS_1M)
        sock = writer.get_extra_info("socket")
        try:
            while data := await reader.read(buffer.available):
                _quickack(sock)
                buffer[:] = data
                for event in self.proto.read_from(buffer):
                    replies = await self.on_event(event)
                    if replies is None:
                        return
                    if replies:
                        out = SimpleBuffer(64 * 1024)
                        for reply in replies:
                            self.proto.write_to(out, reply)
                        writer.write(out[:].tobytes())
                        await writer.drain()
        except (InvalidMessage, UnexpectedMessage, ValueError, UnicodeDecodeError) as exc:
            log.warning("closing an MTA connection after a protocol error: %s", exc)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _quickack(sock: socket.socket | None) -> None:
    """Acknowledge what was just read at once.

    The MTA writes each milter event as its own small packet and, for the events this
    filter does not answer, does not wait in between; with Nagle's algorithm on the
    MTA's socket each packet then waits for the ACK of the one before, which a receiver
    with nothing to send delays by up to 40 ms (measured: +45 ms per message). Linux's
    ``TCP_QUICKACK`` is not sticky, so it is set after every read; elsewhere a no-op.
    """
    flag = getattr(socket, "TCP_QUICKACK", None)
    if sock is not None and flag is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, flag, 1)


def postfix_recipient_delimiter() -> str | None:
    """This host's Postfix ``recipient_delimiter``, or None when there is no Postfix here
    to ask (the milter may run beside Sendmail, or on another host)."""
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/sbin")
    if postconf is None:
        return None
    try:
        done = subprocess.run(
            [postconf, "-h", "recipient_delimiter"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def checked_marking(settings: GatewaySettings, postfix_delimiter: str | None) -> GatewaySettings:
    """Marking turned off, with a warning, when this host's Postfix would not deliver a
    ``bob+junk@`` copy to bob (no such delimiter: the copy would bounce)."""
    if not settings.junk_marking or postfix_delimiter is None:
        return settings
    if settings.recipient_delimiter[0] in postfix_delimiter:
        return settings
    log.warning(
        "Postfix's recipient_delimiter is %r, without %r: copies are not marked for Junk "
        "(set recipient_delimiter = %s in main.cf, or MAILSIFT_GATEWAY_RECIPIENT_DELIMITER)",
        postfix_delimiter,
        settings.recipient_delimiter[0],
        settings.recipient_delimiter[0],
    )
    return settings.model_copy(update={"junk_marking": False})


async def serve_milter(settings: GatewaySettings) -> None:
    """Listen for MTA connections until cancelled; one service client for all of them."""
    if settings.junk_marking:
        found = await asyncio.to_thread(postfix_recipient_delimiter)
        settings = checked_marking(settings, found)
    client = ServiceClient(settings)
    await check_token(client, "milter")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await MilterConnection(client, settings).serve(reader, writer)

    server = await asyncio.start_server(handle, settings.milter_host, settings.milter_port)
    log.info(
        "milter listening on %s:%d, service %s, fail %s",
        settings.milter_host,
        settings.milter_port,
        settings.service_url,
        settings.fail_mode,
    )
    try:
        async with server:
            await server.serve_forever()
    finally:
        await client.aclose()
