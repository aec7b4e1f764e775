"""What the training log takes and gives: examples, entries and what an append did.

Plain values, no storage: :mod:`.trainlog` writes and reads them, the learner and the
HTTP layer pass them around.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from mailsift.learning.sources import SHARED, Source

__all__ = [
    "NOTHING",
    "AppendResult",
    "Example",
    "Label",
    "LiveExample",
    "LogEntry",
    "ReportResult",
    "Result",
    "SharedOutcome",
    "SharedResult",
    "Stored",
    "TrainingLogError",
    "cap_address",
]

Label = Literal["ham", "spam"]
Result = Literal["learned", "unchanged", "relabelled", "forgotten", "kept"]
SharedResult = Literal["pending", "learned", "relabelled", "withdrawn", "unchanged", "kept"]

MAX_ADDRESS = 320
MAX_VERSION = 32


class TrainingLogError(Exception):
    """The log cannot be opened, read or written; the message never holds a password."""


@dataclass(frozen=True, slots=True)
class Example:
    """What the log keeps of one labelled message: the raw bytes (for a while, see
    :meth:`TrainingLog.prune_raw`) and its features, computed once when it is appended
    (:mod:`mailsift.models.stored`), so every replay learns exactly the same vectors."""

    raw: bytes
    features: bytes
    features_version: str
    sender: str | None = None
    """The message's From address: a personal layer learns the sender too."""


@dataclass(frozen=True, slots=True)
class Stored:
    """An example as the columns hold it (raw bytes compressed)."""

    raw: bytes
    features: bytes | None
    features_version: str | None
    sender: str | None

    @classmethod
    def of(cls, example: Example) -> Stored:
        return cls(
            zlib.compress(example.raw),
            example.features,
            example.features_version[:MAX_VERSION],
            cap_address(example.sender),
        )


NOTHING = Stored(b"", None, None, None)


@dataclass(frozen=True, slots=True)
class LiveExample:
    """One example the shared layer holds now, at the position of the entry that set it."""

    position: int
    fingerprint: str
    label: Label
    features: bytes | None
    features_version: str | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append or forget did, and at which log position its outcome is true.

    ``position`` is the newest entry about the message on the layer concerned: the
    entry written, or for ``unchanged`` and ``kept`` the earlier entry that made the
    state true (the label's, or a forget's; 0 when nothing was ever logged). So a
    repeated request answers the position the first one did, and a worker that has
    applied the log up to it reflects the answer.
    ``kept``: a higher source holds another label (``held_by``), which stays.
    """

    result: Result
    position: int
    held_by: Source | None = None


@dataclass(frozen=True, slots=True)
class SharedOutcome:
    """What a user's report did to the shared model.

    ``pending``: not (yet) agreed by enough users; ``kept``: an administrator's label
    stands; ``withdrawn``: users no longer agree, the consensus example was taken back.
    """

    result: SharedResult
    reports: int
    """Distinct users whose counted reports hold the reported label now."""
    needed: int
    counted: bool
    """Whether this report counts towards consensus (the user's daily allowance)."""
    position: int = 0
    """The newest shared entry about the message: the one written, or the earlier one
    that made the state ``result`` reports true (0: no shared entry was ever logged)."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A user's report: its effect on the user's own layer, and on the shared one."""

    personal: AppendResult
    shared: SharedOutcome


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One example; replaying ``undo_label`` then ``label`` per entry rebuilds any model."""

    position: int
    fingerprint: str
    label: Label | None
    undo_label: Label | None
    raw: bytes
    undo_raw: bytes
    """The bytes that were learned with ``undo_label`` (the earlier entry's ``raw``):
    unlearning must see exactly the message that was learned, not today's copy of it,
    whose transport headers differ."""
    source: str
    actor: str
    created_at: float
    layer: str = SHARED
    """``""`` for the shared model, else the address of the user whose layer it is."""
    sender: str | None = None
    """The message's From address: a personal layer learns the sender too, so further
    mail from it is judged for that user alone."""
    features: bytes | None = None
    features_version: str | None = None
    undo_features: bytes | None = None
    """The features learned with ``undo_label`` (the earlier entry's)."""
    undo_features_version: str | None = None


def cap_address(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().lower()[:MAX_ADDRESS] or None
