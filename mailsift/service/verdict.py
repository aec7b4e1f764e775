"""Score + reasons -> verdict and action. Pure: the policy is settings, not code paths."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mailsift.reasons import MODEL_LEARNING
from mailsift.service.checks.base import Direction, Reason
from mailsift.service.settings import Action, Settings

__all__ = ["Verdict", "decide", "decide_for_recipient"]

VerdictName = Literal["ham", "suspect", "spam"]

_RANK: dict[VerdictName, int] = {"ham": 0, "suspect": 1, "spam": 2}

# Strictest first: the action a forced reason demands wins over a milder one.
_SEVERITY: dict[Action, int] = {"accept": 0, "tag": 1, "quarantine": 2, "defer": 3, "reject": 4}


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    verdict: VerdictName
    action: Action


def decide(reasons: Sequence[Reason], direction: Direction, settings: Settings) -> Verdict:
    """Add the reasons' log-odds, place the result against the direction's thresholds.

    A reason that forces an action (a leak to reject, a sender to defer) or a verdict
    (a blocklisted sender is spam) overrides a milder one the score alone would give.
    """
    logit = sum(r.weight for r in reasons)
    score = 1.0 / (1.0 + math.exp(-max(-35.0, min(35.0, logit))))
    if direction == "inbound":
        suspect, spam = settings.inbound_suspect_threshold, settings.inbound_spam_threshold
    else:
        suspect, spam = settings.outbound_suspect_threshold, settings.outbound_spam_threshold
    learning = any(r.name == MODEL_LEARNING for r in reasons)
    if learning:
        # An untrained model has no opinion, and the thresholds are calibrated against
        # its scores: a fresh install passes mail (forced actions still apply below).
        verdict: VerdictName = "ham"
    elif score >= spam:
        verdict = "spam"
    elif score >= suspect:
        verdict = "suspect"
    else:
        verdict = "ham"
    for reason in reasons:
        if reason.verdict and _RANK[reason.verdict] > _RANK[verdict]:
            verdict = reason.verdict
    action: Action = {
        "ham": "accept",
        "suspect": settings.suspect_action,
        "spam": settings.spam_action,
    }[verdict]
    # Rejecting on the score alone takes a confident, trained model.
    confident = not learning and score >= settings.inbound_reject_threshold
    if direction == "inbound" and verdict == "spam" and confident:
        action = "reject"
    for reason in reasons:
        if reason.action and _SEVERITY[reason.action] > _SEVERITY[action]:
            action = reason.action
    return Verdict(round(score, 6), verdict, action)


def decide_for_recipient(
    shared: Verdict,
    reasons: Sequence[Reason],
    personal: Sequence[Reason],
    direction: Direction,
    settings: Settings,
) -> Verdict:
    """One recipient's verdict: the shared reasons plus that recipient's own.

    It acts on that recipient's copy only: the gateway removes a recipient whose own
    action is ``reject`` and files a stricter copy into Junk, the others keep theirs.
    So a reject comes only from what the recipient demanded themselves (their own
    block entry); a score their reports pushed up, or a defer (a copy cannot wait on
    its own), is capped at the spam action.
    """
    if not personal:
        return shared
    mine = decide([*reasons, *personal], direction, settings)
    if mine.action == "reject" and any(r.action == "reject" for r in personal):
        return mine
    if mine.action in ("reject", "defer") and _SEVERITY[mine.action] > _SEVERITY[shared.action]:
        capped = max(shared.action, settings.spam_action, key=_SEVERITY.__getitem__)
        if capped in ("reject", "defer"):
            capped = "quarantine"
        return Verdict(mine.score, mine.verdict, capped)
    return mine
