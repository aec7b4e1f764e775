"""What every detector shares: the scanned text, a hit, a detector, context words.

A detector finds candidates with a regex and validates them in code; a hit's confidence
is raised by context words within :data:`CONTEXT_RADIUS` characters and lowered by words
that mark other numbers (:data:`OTHER_NUMBER`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONTEXT_RADIUS",
    "OTHER_NUMBER",
    "Detector",
    "Hit",
    "Segment",
    "Severity",
    "clamp",
    "in_url",
    "near",
    "words",
]

Severity = Literal["low", "medium", "high"]
CONTEXT_RADIUS = 60
_DIGITS = "0123456789"


class Segment:
    """One piece of scanned text (subject, body, HTML, an attachment) and cheap facts on it.

    The lower-cased copy and the digit count are computed once, on first use, and shared
    by every detector.
    """

    __slots__ = ("_digits", "_lower", "text", "where")

    def __init__(self, where: str, text: str) -> None:
        self.where = where
        self.text = text
        self._lower: str | None = None
        self._digits = -1

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower

    @property
    def digits(self) -> int:
        if self._digits < 0:
            text = self.text
            self._digits = sum(text.count(d) for d in _DIGITS)
        return self._digits


@dataclass(frozen=True, slots=True)
class Hit:
    value: str
    """The normalised value, to count distinct ones; never leaves the scan."""
    sample: str
    """Its redacted form, the only one reported."""
    confidence: float
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Detector:
    type: str
    """Finding type; the reason is ``dlp_<type>``."""
    severity: Severity
    """Severity of a single value (the scan raises it for many values)."""
    description: str
    """What one value is, for reason details (``payment card number``)."""
    find: Callable[[Segment], Iterator[Hit]]


def words(*words: str) -> re.Pattern[str]:
    """Any of ``words`` in lower-cased text, not inside a longer word (``_`` and digits
    separate words, so ``card_number`` and ``cvv2`` count)."""
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"(?<![a-z])(?:{alternatives})(?![a-z])")


def near(seg: Segment, start: int, end: int, words: re.Pattern[str]) -> bool:
    """Whether ``words`` occur within the context radius before or after ``[start, end)``."""
    low = seg.lower
    return (
        words.search(low, max(0, start - CONTEXT_RADIUS), start) is not None
        or words.search(low, end, end + CONTEXT_RADIUS) is not None
    )


def in_url(text: str, start: int) -> bool:
    """Whether the token holding ``start`` is part of a URL (an id in a link, not a leak)."""
    left = max(0, start - 200)
    token_start = max(text.rfind(" ", left, start), text.rfind("\n", left, start)) + 1
    piece = text[max(token_start, left) : start]
    return "://" in piece or "www." in piece


def clamp(x: float) -> float:
    return round(max(0.0, min(0.99, x)), 2)


# Words that mark a number as something other than a card or an SSN.
OTHER_NUMBER = words(
    "order", "tracking", "track", "invoice", "inv", "ref", "reference", "isbn", "issn", "tel",
    "phone", "fax", "mobile", "serial", "imei", "sku", "ean", "upc", "barcode", "parcel",
    "shipment", "awb", "booking", "confirmation", "ticket", "part", "zip", "version",
)  # fmt: skip
