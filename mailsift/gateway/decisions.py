"""Pure decisions of the gateway: which direction, and what the MTA is told.

No I/O here, so every mapping from a service answer to an SMTP outcome is unit-tested
without a socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailsift.gateway.client import Direction, ScoreAnswer
from mailsift.gateway.settings import FailMode, Network

__all__ = [
    "HEADER_PREFIX",
    "Outcome",
    "Reply",
    "direction_of",
    "outcome_of",
    "unavailable_outcome",
]

HEADER_PREFIX = "X-Mailsift-"
_MAX_REASONS_HEADER = 200  # characters; the full list is in the audit trail


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code and a short text (no message content)."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the milter does with one message.

    ``accept`` delivers (with ``headers`` added and the subject prefixed when
    ``subject_prefix`` is set), ``quarantine`` delivers into the MTA's hold queue,
    ``reject`` and ``defer`` answer the client with ``reply``.
    """

    kind: Literal["accept", "quarantine", "reject", "defer"]
    headers: tuple[tuple[str, str], ...] = ()
    subject_prefix: str | None = None
    reply: Reply | None = None
    reason: str = ""


def direction_of(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | Path | str | None,
    authenticated_user: str | None,
    networks: Iterable[Network],
) -> Direction:
    """Outbound when the client authenticated or connects from an internal network.

    A client without an IP address (a local submission through the MTA's own
    ``sendmail`` command or a unix socket) is one of ours: outbound.
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


def _short_reason(answer: ScoreAnswer) -> str:
    """A few words for the SMTP reply; the names of the reasons, never their details."""
    names = answer.reasons
    if any(n.startswith("dlp_") for n in names):
        return "message appears to contain sensitive data"
    if any(n.startswith("limit_") for n in names):
        return "sending limit reached"
    if any(n.startswith("account_") for n in names):
        return "sending account on hold"
    if answer.verdict == "spam":
        return "message looks like spam"
    return "message refused by policy"


def outcome_of(answer: ScoreAnswer, subject_prefix: str) -> Outcome:
    """Map the service's action to what the MTA does (see :class:`Outcome`)."""
    reasons = ", ".join(answer.reasons)
    if len(reasons) > _MAX_REASONS_HEADER:
        reasons = reasons[: _MAX_REASONS_HEADER - 3].rsplit(",", 1)[0] + ", ..."
    headers = (
        (f"{HEADER_PREFIX}Score", f"{answer.score:.4f}"),
        (f"{HEADER_PREFIX}Verdict", answer.verdict),
        (f"{HEADER_PREFIX}Reasons", reasons or "none"),
    )
    short = _short_reason(answer)
    match answer.action:
        case "accept":
            return Outcome("accept", headers)
        case "tag":
            return Outcome("accept", headers, subject_prefix=subject_prefix or None)
        case "quarantine":
            return Outcome("quarantine", headers, reason=f"mailsift: {short}")
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
