"""Is this account still its owner's? Pure rules from a user's numbers to a risk state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailsift.service.accounts import AccountState, AccountStats, RiskState
from mailsift.service.settings import Settings

__all__ = ["DOMAIN_LEARNING_SECONDS", "SUSPEND_FAMILIES", "WATCH_HOLD_SECONDS", "assess"]

WATCH_HOLD_SECONDS = 3600.0
"""A user on watch stays there at least this long, so a signal hovering at its
threshold does not flap the state (and the alerts) back and forth."""
DOMAIN_LEARNING_SECONDS = 86400.0
"""New recipient domains are judged only once a day of the user's mail is known:
on a fresh install (or for a new account) every domain is new."""
SUSPEND_FAMILIES = 3
"""Watch-level signals from this many different families at once suspend."""

Family = Literal["auth", "spam", "volume", "domains"]
Level = Literal["watch", "suspend"]


@dataclass(frozen=True, slots=True)
class _Signal:
    family: Family
    level: Level
    text: str


def assess(
    stats: AccountStats, current: AccountState, settings: Settings
) -> tuple[RiskState, list[str]]:
    """The user's new risk state and the signals behind it (human-readable, no content).

    Signals over the risk window (the last hour, nothing before an administrator's clear):

    ========================  ===========================================  ================
    family / signal           watch when                                   suspend when
    ========================  ===========================================  ================
    auth: failed logins       >= ``account_auth_failures_watch``           >= ``..._suspend``
    spam: share scored spam   >= ``account_spam_share_watch``              >= ``..._suspend``
                              (only once ``account_min_messages`` scored)
    volume: messages          > ``account_burst_factor`` x usual messages  --
    volume: recipients        > ``account_burst_factor`` x usual           --
                              recipients (fan-out)
    domains: new rcpt domains >= ``account_new_domains_watch`` (only after  --
                              a day of the user's mail is known)
    ========================  ===========================================  ================

    Transitions:

    - any suspend-level signal, or watch-level signals from ``SUSPEND_FAMILIES`` (3)
      families at once (a burst, to new domains, after failed logins) -> ``suspended``;
    - any watch-level signal -> ``watch`` (from ``ok``);
    - ``suspended`` is sticky: only an administrator's clear returns the user to ``ok``;
    - ``watch`` decays to ``ok`` when no signal is left and the user has been on watch
      for ``WATCH_HOLD_SECONDS``; until then it holds.

    "Usual" is the median of the user's active hours over the past week, with a floor
    (see :meth:`AccountStore.usual_hourly_rate`).
    """
    signals = _signals(stats, settings)
    reasons = [s.text for s in signals]
    if current.state == "suspended":
        return "suspended", reasons or [current.reason or "suspended until an administrator clears"]
    families = {s.family for s in signals}
    if any(s.level == "suspend" for s in signals) or len(families) >= SUSPEND_FAMILIES:
        return "suspended", reasons
    if signals:
        return "watch", reasons
    if current.state == "watch":
        held = current.since is not None and stats.at - current.since < WATCH_HOLD_SECONDS
        if held:
            return "watch", ["no signal now; watch holds for an hour after it began"]
    return "ok", []


def _signals(stats: AccountStats, s: Settings) -> list[_Signal]:
    found: list[_Signal] = []
    failures = stats.auth_failures_hour
    if failures >= s.account_auth_failures_watch:
        level: Level = "suspend" if failures >= s.account_auth_failures_suspend else "watch"
        found.append(
            _Signal(
                "auth",
                level,
                f"{failures} authentication failures in the last hour "
                f"from {stats.auth_failure_ips_hour} addresses",
            )
        )
    if stats.scored_hour >= s.account_min_messages:
        share = stats.spam_share
        if share >= s.account_spam_share_watch:
            level = "suspend" if share >= s.account_spam_share_suspend else "watch"
            found.append(
                _Signal(
                    "spam",
                    level,
                    f"{stats.spam_hour} of {stats.scored_hour} outbound messages in the last "
                    f"hour scored spam ({share:.0%})",
                )
            )
    factor = s.account_burst_factor
    if stats.messages_hour > factor * stats.usual.messages:
        found.append(
            _Signal(
                "volume",
                "watch",
                f"{stats.messages_hour} messages in the last hour, usually "
                f"{stats.usual.messages:g}",
            )
        )
    if stats.recipients_hour > factor * stats.usual.recipients:
        found.append(
            _Signal(
                "volume",
                "watch",
                f"{stats.recipients_hour} recipients in the last hour, usually "
                f"{stats.usual.recipients:g}",
            )
        )
    known = stats.domains_known_since
    if (
        stats.new_domains_hour >= s.account_new_domains_watch
        and known is not None
        and stats.at - known >= DOMAIN_LEARNING_SECONDS
    ):
        found.append(
            _Signal(
                "domains",
                "watch",
                f"{stats.new_domains_hour} recipient domains never mailed before in the last hour",
            )
        )
    return found
