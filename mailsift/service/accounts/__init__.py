"""Outbound accounts: per-user sending limits and compromised-account detection.

The value types live here so that checks and the pure risk rules can use them without
importing the store: :mod:`.store` keeps the counters and states in the state database
(its parts are listed there), :mod:`.risk` decides a user's state from their numbers,
:mod:`.flow` is what the score handler and the routers call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LIMIT_NAMES",
    "RISK_STATES",
    "AccountState",
    "AccountStats",
    "LimitName",
    "Limits",
    "RiskState",
    "SendingDecision",
    "StateChange",
    "UsualRate",
]

RiskState = Literal["ok", "watch", "suspended"]
RISK_STATES: tuple[RiskState, ...] = ("ok", "watch", "suspended")

LimitName = Literal["messages_per_hour", "messages_per_day", "recipients_per_hour"]
LIMIT_NAMES: tuple[LimitName, ...] = (
    "messages_per_hour",
    "messages_per_day",
    "recipients_per_hour",
)


@dataclass(frozen=True, slots=True)
class Limits:
    """One user's effective limits; 0 means unlimited."""

    messages_per_hour: int
    messages_per_day: int
    recipients_per_hour: int

    def of(self, name: LimitName) -> int:
        value: int = getattr(self, name)
        return value


@dataclass(frozen=True, slots=True)
class SendingDecision:
    """Whether one outbound message fits under its sender's limits.

    The counts are what the rolling windows hold after the decision: they include this
    message when it was recorded, and not when it was refused (or ``dry_run``).
    """

    user: str
    allowed: bool
    exceeded: tuple[LimitName, ...]
    """Every limit the message would have broken, in :data:`LIMIT_NAMES` order."""
    limits: Limits
    messages_hour: int
    messages_day: int
    recipients_hour: int
    recipients: int
    """Distinct recipients of this message."""
    recorded: bool

    @property
    def over_limit(self) -> bool:
        return not self.allowed

    def count(self, name: LimitName) -> int:
        """The current count measured against the limit ``name``."""
        return {
            "messages_per_hour": self.messages_hour,
            "messages_per_day": self.messages_day,
            "recipients_per_hour": self.recipients_hour,
        }[name]


@dataclass(frozen=True, slots=True)
class AccountState:
    user: str
    state: RiskState
    since: float | None
    """When the user entered this state (epoch seconds); None for a user never judged."""
    reason: str


@dataclass(frozen=True, slots=True)
class StateChange:
    at: float
    old_state: RiskState
    new_state: RiskState
    reason: str
    by: str


@dataclass(frozen=True, slots=True)
class UsualRate:
    """What one user usually sends in an hour in which they send at all."""

    messages: float
    recipients: float


@dataclass(frozen=True, slots=True)
class AccountStats:
    """One user's numbers as the risk rules see them.

    The ``*_hour`` figures cover the risk window: the last hour, but never before the
    administrator's last clear (a cleared account is judged afresh). ``messages_day``
    is the plain rolling day the daily limit counts.
    """

    user: str
    at: float
    window_start: float
    messages_hour: int
    recipients_hour: int
    messages_day: int
    scored_hour: int
    spam_hour: int
    new_domains_hour: int
    auth_failures_hour: int
    auth_failure_ips_hour: int
    usual: UsualRate
    domains_known_since: float | None
    """First time any recipient domain of this user was recorded (their mailing history)."""

    @property
    def spam_share(self) -> float:
        return self.spam_hour / self.scored_hour if self.scored_hour else 0.0
