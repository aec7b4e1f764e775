"""Pure decisions of the gateway: which direction, and what the MTA is told.

No I/O here, so every mapping from a service answer to an SMTP outcome is unit-tested
without a socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple

from mailsift.gateway.client import Action, Direction, RecipientVerdict, ScoreAnswer
from mailsift.gateway.settings import FailMode, GatewaySettings, Network
from mailsift.models.trace import OWN_HEADER_PREFIX
from mailsift.reasons import ACCOUNT_PREFIX, DLP_PREFIX, LIMIT_PREFIX

__all__ = [
    "ACTION_RANK",
    "ALIAS_HEADER",
    "HEADER_PREFIX",
    "VERDICT_RANK",
    "AliasRecipient",
    "JunkMark",
    "JunkRecipient",
    "Outcome",
    "Reply",
    "alias_recipients",
    "client_identity",
    "direction_of",
    "is_local_submission",
    "junk_marks",
    "misconfigured_outcome",
    "outcome_of",
    "owner_refusals",
    "refused_outcome",
    "stricter",
    "unavailable_outcome",
]

HEADER_PREFIX = OWN_HEADER_PREFIX
ALIAS_HEADER = f"{HEADER_PREFIX}Alias"
"""Names the temporary address a copy came through, in the owner's copy (for sorting)."""
_MAX_REASONS_HEADER = 200  # characters; the full list is in the audit trail

# How strict a verdict or an action is: a recipient's own is "stricter" than the
# message's when either ranks higher.
VERDICT_RANK: Final[dict[str, int]] = {"ham": 0, "suspect": 1, "spam": 2}
ACTION_RANK: Final[dict[Action, int]] = {
    "accept": 0,
    "tag": 1,
    "quarantine": 2,
    "defer": 3,
    "reject": 4,
}
_DELIVERED: Final[frozenset[Action]] = frozenset({"accept", "tag", "quarantine"})


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code and a short text (no message content)."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


class JunkRecipient(NamedTuple):
    """An envelope recipient whose copy is marked for its Junk folder: ``rcpt`` is
    replaced by ``marked`` (the same mailbox, with the mark as address extension)."""

    rcpt: str
    marked: str


class AliasRecipient(NamedTuple):
    """An envelope recipient that is a live temporary address: ``rcpt`` is replaced by
    ``owner``, and the copy names ``rcpt`` in :data:`ALIAS_HEADER`."""

    rcpt: str
    owner: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the milter does with one message.

    ``accept`` delivers (with ``headers`` added and the subject prefixed when
    ``subject_prefix`` is set), ``quarantine`` delivers into the MTA's hold queue,
    ``reject`` and ``defer`` answer the client with ``reply``. A delivered message
    has each recipient in ``junk`` replaced by its marked address, each in
    ``dropped`` (whose own verdict refuses it) removed, and each in ``aliases`` (a live
    temporary address) replaced by its owner (or, when also in ``junk``, the owner's
    marked address).
    """

    kind: Literal["accept", "quarantine", "reject", "defer"]
    headers: tuple[tuple[str, str], ...] = ()
    subject_prefix: str | None = None
    reply: Reply | None = None
    reason: str = ""
    junk: tuple[JunkRecipient, ...] = ()
    dropped: tuple[str, ...] = ()
    aliases: tuple[AliasRecipient, ...] = ()


@dataclass(frozen=True, slots=True)
class JunkMark:
    """How one recipient's copy is marked for its Junk folder: an address extension.

    ``bob@example.org`` becomes ``bob+junk@example.org``: with the MTA's
    ``recipient_delimiter`` it is still bob's mailbox, the delivery agent writes the
    marked address into that copy only (``Delivered-To``), and Dovecot or a sieve rule
    files it into Junk by its extension. A header added to the message would be in
    every recipient's copy, and tell the others what bob reported.
    """

    detail: str = "junk"
    delimiter: str = "+"

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> JunkMark | None:
        """The mark the settings ask for, or None when marking is off."""
        if not settings.junk_marking:
            return None
        return cls(settings.junk_detail, settings.recipient_delimiter)

    def address(self, rcpt: str) -> str | None:
        """``rcpt`` with its extension (if any) replaced by the mark.

        None when it cannot carry one (an empty or quoted local part, or one that starts
        with a delimiter, which the MTA does not split) or already carries exactly it.
        """
        local, at, domain = rcpt.rpartition("@")
        if not at:
            local, domain = rcpt, ""
        if not local or local.startswith('"'):
            return None
        cut = min((i for i in map(local.find, self.delimiter) if i >= 0), default=len(local))
        if cut == 0:
            return None
        marked = f"{local[:cut]}{self.delimiter[0]}{self.detail}"
        if marked == local:
            return None
        return f"{marked}{at}{domain}"


def stricter(personal: RecipientVerdict, answer: ScoreAnswer) -> bool:
    """Is a recipient's own verdict stricter than the message's: its verdict ranks higher
    (ham < suspect < spam) or its action goes further (accept < tag < quarantine < defer
    < reject)? A verdict this gateway does not know never counts as stricter."""
    mine = VERDICT_RANK.get(personal.verdict, -1)
    shared = VERDICT_RANK.get(answer.verdict, len(VERDICT_RANK))
    return mine > shared or ACTION_RANK[personal.action] > ACTION_RANK[answer.action]


def junk_marks(
    answer: ScoreAnswer,
    direction: Direction,
    rcpts: Sequence[str],
    mark: JunkMark | None,
    aliases: Sequence[AliasRecipient] = (),
) -> tuple[JunkRecipient, ...]:
    """The envelope recipients (``rcpts``, as the MTA gave them) whose copies are marked.

    A recipient is marked when its personal verdict is stricter than the message's, and
    only its copy: the message's own action applies to everyone, never the strictest
    personal one. Only inbound mail that is delivered at all (accept, tag, quarantine;
    a rejected or deferred message reaches nobody). A looser personal verdict (a
    recipient's own "not spam") changes nothing at the gateway. A temporary address in
    ``aliases`` is marked as its owner's address (its copy goes to the owner).
    """
    if mark is None or direction != "inbound" or answer.action not in _DELIVERED:
        return ()
    strict = {r.rcpt for r in answer.recipients if stricter(r, answer) and r.action != "reject"}
    if not strict:
        return ()
    owners = {a.rcpt: a.owner for a in aliases}
    found: dict[str, JunkRecipient] = {}
    for rcpt in rcpts:
        if rcpt.lower() in strict and rcpt not in found:
            marked = mark.address(owners.get(rcpt, rcpt))
            if marked is not None:
                found[rcpt] = JunkRecipient(rcpt, marked)
    return tuple(found.values())


def alias_recipients(
    answer: ScoreAnswer, direction: Direction, rcpts: Sequence[str]
) -> tuple[AliasRecipient, ...]:
    """The envelope recipients (as the MTA gave them) that are live temporary addresses,
    each with the owner it delivers to. Inbound mail that is delivered at all; a
    recipient whose own verdict refuses the message is dropped instead."""
    if direction != "inbound" or answer.action not in _DELIVERED:
        return ()
    owners = {r.rcpt: r.owner for r in answer.recipients if r.owner and r.action != "reject"}
    if not owners:
        return ()
    return tuple(
        AliasRecipient(rcpt, owners[rcpt.lower()])
        for rcpt in dict.fromkeys(rcpts)
        if rcpt.lower() in owners
    )


def is_local_submission(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | Path | str | None, port: int
) -> bool:
    """Mail submitted on the MTA's host itself, not over SMTP: Postfix hands mail of its
    ``sendmail`` command (pickup, ``non_smtpd_milters``) to milters as a client at
    127.0.0.1 with port 0, which no TCP connection has. Outbound whatever
    ``--internal-networks`` says."""
    if port != 0 or client is None or isinstance(client, Path):
        return False
    try:
        address = ipaddress.ip_address(client) if isinstance(client, str) else client
    except ValueError:
        return False
    return address.is_loopback


def owner_refusals(
    answer: ScoreAnswer, direction: Direction, rcpts: Sequence[str]
) -> tuple[str, ...]:
    """The envelope recipients (as the MTA gave them) whose own verdict refuses the
    message (``reject``: their own block entry) while it is delivered to the others.

    Only their copy is refused: the milter removes them from the envelope. Inbound mail
    only, as for Junk marks (outbound, the sender's own lists decide the message).
    """
    if direction != "inbound" or answer.action not in _DELIVERED:
        return ()
    refusing = {r.rcpt for r in answer.recipients if r.action == "reject"}
    if not refusing:
        return ()
    return tuple(dict.fromkeys(r for r in rcpts if r.lower() in refusing))


def direction_of(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | Path | str | None,
    authenticated_user: str | None,
    networks: Iterable[Network],
) -> Direction:
    """Outbound when the client authenticated or connects from an internal network.

    A client without an IP address (a unix socket, Sendmail's own stdin) is one of
    ours: outbound. The milter passes a local submission (:func:`is_local_submission`)
    as such a client; an SMTP client at a loopback address is outbound only when the
    loopback network is in ``--internal-networks`` (a webmail on the host: put it in; a
    content filter re-injecting outside mail over loopback: leave it out).
    """
    if authenticated_user:
        return "outbound"
    if client is None or isinstance(client, Path):
        return "outbound"
    try:
        address = ipaddress.ip_address(client) if isinstance(client, str) else client
    except ValueError:
        return "outbound"  # Postfix names local pickup "localhost" without an address
    return "outbound" if any(address in net for net in networks) else "inbound"


CLIENT_IDENTITY = "client:"
"""Prefix of the identity of an outbound client that did not authenticate."""


def client_identity(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | Path | str | None,
) -> str:
    """Whose limits an unauthenticated outbound client counts against: its address
    (``client:10.0.0.5``), never the envelope sender it chose (a host rotating MAIL
    FROM addresses would get a fresh limit with each); ``client:local`` without one."""
    if client is None or isinstance(client, Path):
        return f"{CLIENT_IDENTITY}local"
    try:
        address = ipaddress.ip_address(client) if isinstance(client, str) else client
    except ValueError:
        return f"{CLIENT_IDENTITY}local"
    return f"{CLIENT_IDENTITY}{address.compressed}"


def _short_reason(answer: ScoreAnswer) -> str:
    """A few words for the SMTP reply; the names of the reasons, never their details."""
    names = answer.reasons
    if any(n.startswith(DLP_PREFIX) for n in names):
        return "message appears to contain sensitive data"
    if any(n.startswith(LIMIT_PREFIX) for n in names):
        return "sending limit reached"
    if any(n.startswith(ACCOUNT_PREFIX) for n in names):
        return "sending account on hold"
    if answer.verdict == "spam":
        return "message looks like spam"
    return "message refused by policy"


def outcome_of(
    answer: ScoreAnswer,
    subject_prefix: str,
    junk: Sequence[JunkRecipient] = (),
    dropped: Sequence[str] = (),
    rcpts: Sequence[str] = (),
    aliases: Sequence[AliasRecipient] = (),
) -> Outcome:
    """Map the service's action to what the MTA does (see :class:`Outcome`); ``junk``
    (from :func:`junk_marks`), ``dropped`` (from :func:`owner_refusals`) and ``aliases``
    (from :func:`alias_recipients`) are kept when the message is delivered. When
    ``dropped`` is every one of ``rcpts``, nobody wants the message: it is refused."""
    if dropped and {r.lower() for r in rcpts} <= {r.lower() for r in dropped}:
        refusal = Reply(550, "5.7.1", "message refused by its recipients")
        return Outcome("reject", reply=refusal, reason="refused by its recipients")
    reasons = ", ".join(answer.reasons)
    if len(reasons) > _MAX_REASONS_HEADER:
        reasons = reasons[: _MAX_REASONS_HEADER - 3].rsplit(",", 1)[0] + ", ..."
    headers = (
        (f"{HEADER_PREFIX}Score", f"{answer.score:.4f}"),
        (f"{HEADER_PREFIX}Verdict", answer.verdict),
        (f"{HEADER_PREFIX}Reasons", reasons or "none"),
    )
    short, marks, gone = _short_reason(answer), tuple(junk), tuple(dropped)
    via = tuple(aliases)
    match answer.action:
        case "accept":
            return Outcome("accept", headers, junk=marks, dropped=gone, aliases=via)
        case "tag":
            prefix = subject_prefix or None
            return Outcome(
                "accept",
                headers,
                subject_prefix=prefix,
                junk=marks,
                dropped=gone,
                aliases=via,
            )
        case "quarantine":
            return Outcome(
                "quarantine",
                headers,
                reason=f"mailsift: {short}",
                junk=marks,
                dropped=gone,
                aliases=via,
            )
        case "reject":
            return Outcome("reject", reply=Reply(550, "5.7.1", short), reason=short)
        case "defer":
            return Outcome(
                "defer", reply=Reply(451, "4.7.1", f"{short}, try again later"), reason=short
            )


def unavailable_outcome(mode: FailMode) -> Outcome:
    """The service gave no answer: pass the message unscanned, or ask the client to retry."""
    if mode == "open":
        return Outcome("accept", reason="service unavailable")
    return Outcome(
        "defer",
        reply=Reply(451, "4.3.0", "filter temporarily unavailable, try again later"),
        reason="service unavailable",
    )


def misconfigured_outcome() -> Outcome:
    """The service refused this gateway (a bad token, a wrong URL): a configuration
    error, not an outage, so the client retries later whatever the fail mode; passing
    mail unscanned until someone reads the log is what failing open must never mean."""
    return Outcome(
        "defer",
        reply=Reply(451, "4.3.0", "filter temporarily unavailable, try again later"),
        reason="gateway misconfigured",
    )


def refused_outcome() -> Outcome:
    """The service refused what the client sent (an identity or address it cannot use):
    the same envelope would be refused again, and passing it unscanned is a way round
    the filter, so it is refused."""
    return Outcome(
        "reject", reply=Reply(550, "5.7.1", "envelope refused by the filter"), reason="refused"
    )


def oversize_outcome() -> Outcome:
    """Outbound mail past the size the filter scans: its end was never looked at for
    leaks, and padding a message past the limit must not be a way round the filter."""
    return Outcome(
        "reject",
        reply=Reply(552, "5.3.4", "message too large for the filter to scan"),
        reason="too large to scan",
    )
