"""What every check sees and what it says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mailsift.models.ensemble import Score
from mailsift.models.parse import ParsedMessage
from mailsift.service.settings import Action, Settings

if TYPE_CHECKING:
    from mailsift.learning.trainlog import Label
    from mailsift.service.accounts import AccountState, SendingDecision
    from mailsift.service.aliases.traffic import AliasHit
    from mailsift.service.authres import AuthResults
    from mailsift.service.dlp import DlpReport
    from mailsift.service.lists.store import ListMatch

Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope as the gateway reports it."""

    direction: Direction
    mail_from: str | None = None
    rcpt: tuple[str, ...] = ()
    client_ip: str | None = None
    helo: str | None = None
    user: str | None = None
    queue_id: str | None = None
    gateway: str | None = None
    truncated: bool = False
    """The gateway sent only the message's first bytes (it was larger than the gateway's limit)."""


@dataclass(frozen=True, slots=True)
class Reason:
    name: str
    weight: float
    """Log-odds added to the verdict; > 0 towards spam."""
    detail: str
    action: Action | None = None
    """An action this reason demands regardless of the score (the strictest wins)."""
    verdict: Literal["suspect", "spam"] | None = None
    """A verdict this reason settles regardless of the score (a blocklisted sender)."""


@dataclass(frozen=True, slots=True)
class CheckContext:
    """One message as the checks see it; what needs I/O is gathered before they run (None:
    not gathered, or nothing there), so that the checks are pure."""

    message: ParsedMessage
    envelope: Envelope
    score: Score
    model_ready: bool
    settings: Settings
    auth: AuthResults | None = None
    """The trusted Authentication-Results of the message."""
    labelled: Label | None = None
    """The label the learner holds for this very message (its fingerprint)."""
    lists: ListMatch | None = None
    """The allow/block list entry matching the From address, if any."""
    dlp: DlpReport | None = None
    """The leak scan, when the message was scanned."""
    sending: SendingDecision | None = None
    """The outbound sender's counts against the sending limits."""
    limits_unavailable: bool = False
    """Outbound: the limits could not be checked (the state database is away)."""
    account: AccountState | None = None
    """The outbound sender's account state."""
    aliases: tuple[AliasHit, ...] = ()
    """The recipients that are temporary addresses (inbound)."""
