"""A recipient's personal layer: what their own reports say about this message.

Unlike the other checks this one runs per recipient, never for the whole message: a
user's report changes that user's verdict only (see :mod:`mailsift.learning.personal`).
The message-level verdict every recipient shares is decided without these reasons; each
recipient's own verdict adds them (:func:`mailsift.service.verdict.decide_for_recipient`).
"""

from __future__ import annotations

from typing import Literal

from mailsift.learning.personal import PersonalView
from mailsift.reasons import (
    PERSONAL_NOT_SPAM,
    PERSONAL_REPORT,
    PERSONAL_SENDER,
    PERSONAL_SENDER_TRUSTED,
)
from mailsift.service.checks.base import Reason
from mailsift.service.identity import InvalidIdentity, identity_key

__all__ = ["REASONS", "personal_key", "personal_reasons"]

REPORTED = PERSONAL_REPORT
NOT_SPAM = PERSONAL_NOT_SPAM
SENDER = PERSONAL_SENDER
SENDER_TRUSTED = PERSONAL_SENDER_TRUSTED

# Log-odds per reason (name -> weight, description).
REASONS: dict[str, tuple[float, str]] = {
    REPORTED: (6.0, "the recipient reported this message as spam: spam for them"),
    NOT_SPAM: (-6.0, "the recipient reported this message as not spam"),
    SENDER: (
        3.0,
        "the recipient reported other mail from this sender as spam: at least suspect for "
        "them (MAILSIFT_PERSONAL_SENDER)",
    ),
    SENDER_TRUSTED: (-2.0, "the recipient's newest report of this sender's mail was not spam"),
}


def personal_key(address: str) -> str | None:
    """An address as personal layers are keyed (reports' users, recipients), the same
    key as every identity (:func:`~mailsift.service.identity.identity_key`); None when
    unusable."""
    try:
        return identity_key(address, "address")
    except InvalidIdentity:
        return None


def personal_reasons(view: PersonalView | None, *, sender_rule: bool) -> list[Reason]:
    """The reasons one recipient's layer adds; ``sender_rule`` applies their reports of
    a sender to the sender's other mail. Pure."""
    if view is None:
        return []
    if view.label == "spam":
        return [_reason(REPORTED, verdict="spam")]
    if view.label == "ham":
        return [_reason(NOT_SPAM)]
    if not sender_rule or view.sender_label is None:
        return []
    if view.sender_label == "spam":
        return [_reason(SENDER, verdict="suspect")]
    return [_reason(SENDER_TRUSTED)]


def _reason(name: str, *, verdict: Literal["suspect", "spam"] | None = None) -> Reason:
    weight, detail = REASONS[name]
    return Reason(name, weight, detail, verdict=verdict)
