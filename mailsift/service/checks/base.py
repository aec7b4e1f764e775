"""What every check sees and what it says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mailsift.models.ensemble import Score
from mailsift.models.parse import ParsedMessage
from mailsift.service.settings import Action, Settings

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
    message: ParsedMessage
    envelope: Envelope
    score: Score
    model_ready: bool
    settings: Settings
    extra: dict[str, object] = field(default_factory=dict)
