"""When users' reports reach the shared model: the consensus rule. Pure.

One user's report changes only that user's verdicts. The shared model learns a label
from users only when ``needed`` distinct users hold that label for the same message and
more of them hold it than the other, counting only each user's reports within their
daily allowance (``MAILSIFT_FEEDBACK_CONSENSUS_PER_USER_PER_DAY``), so one user with
many accounts' worth of reports still moves only their own verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Label", "Tally", "agreed_label"]

Label = Literal["ham", "spam"]


@dataclass(frozen=True, slots=True)
class Tally:
    """Distinct users whose counted report on one message holds each label."""

    spam: int = 0
    ham: int = 0

    def of(self, label: Label) -> int:
        return self.spam if label == "spam" else self.ham


def agreed_label(tally: Tally, needed: int) -> Label | None:
    """The label users agree on, or None while they do not (yet).

    >>> agreed_label(Tally(spam=3), 3), agreed_label(Tally(spam=2), 3)
    ('spam', None)
    >>> agreed_label(Tally(spam=3, ham=3), 3) is None  # a tie settles nothing
    True
    """
    if needed < 1:
        raise ValueError("needed must be at least 1")
    if tally.spam >= needed and tally.spam > tally.ham:
        return "spam"
    if tally.ham >= needed and tally.ham > tally.spam:
        return "ham"
    return None
