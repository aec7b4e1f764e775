"""A message someone trusted already labelled: an administrator, or users in consensus.

The model learns every example a little (one example must not move everyone's verdicts
far); the exact message itself, once labelled by an administrator or by enough users
who received it, takes that label outright, like a checksum list of known spam. Reads
``ctx.labelled``: the label the learner holds for the message's fingerprint.
Outbound mail's ham labels are not here: they only teach the model.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import LABELLED_HAM, LABELLED_SPAM
from mailsift.service.checks.base import CheckContext, Reason

__all__ = ["REASONS", "labelled_reasons"]

SPAM = LABELLED_SPAM
HAM = LABELLED_HAM

# Log-odds per reason (name -> weight, description).
REASONS: dict[str, tuple[float, str]] = {
    SPAM: (
        6.0,
        "this very message was labelled spam by an administrator or by users who received "
        "it (MAILSIFT_FEEDBACK_CONSENSUS): spam",
    ),
    HAM: (-6.0, "this very message was labelled not spam by an administrator or by users"),
}


def labelled_reasons(ctx: CheckContext) -> Iterator[Reason]:
    label = ctx.labelled
    if label == "spam":
        weight, detail = REASONS[SPAM]
        yield Reason(SPAM, weight, detail, verdict="spam")
    elif label == "ham":
        weight, detail = REASONS[HAM]
        yield Reason(HAM, weight, detail)
