"""Scanning a message: run every detector over every text, aggregate hits per type.

Severity scheme (one rule for every type): each detector has a base severity for a
single value (a card number or an SSN *medium*, an IBAN or a document label *low*, a
private key or a live API secret *high*; administrators choose it for their own rules).
It rises one level at :data:`BULK_VALUES` distinct values and two levels at
:data:`MASS_VALUES` (one card number is not a spreadsheet of 200), capped at *high*.

Confidence (0..1) is the strongest hit's: its validator's base, raised by context words
nearby, lowered by words that mark other kinds of numbers; every hit of a type gains
:data:`REPEAT_BONUS` when :data:`REPEAT_VALUES` or more distinct values of that type pass
validation, since chance rarely produces several. Hits below the configured minimum are
dropped.

``count`` is the number of *distinct* values: the same number in the text and the HTML
alternative of a message, or repeated in a thread, counts once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsift.models.features import words
from mailsift.models.parse import ParsedMessage
from mailsift.service.dlp.config import SEVERITIES, DlpAction, DlpConfig
from mailsift.service.dlp.detectors import Detector, Hit, Segment, Severity
from mailsift.service.dlp.redact import safe_name

__all__ = [
    "BULK_VALUES",
    "MASS_VALUES",
    "DlpReport",
    "Finding",
    "message_segments",
    "scan_message",
    "scan_segments",
    "scan_text",
    "severity_for",
]

BULK_VALUES = 5
MASS_VALUES = 50
REPEAT_VALUES = 3
REPEAT_BONUS = 0.15
MAX_SAMPLES = 3
_RANK: dict[Severity, int] = {"low": 0, "medium": 1, "high": 2}
_ACTION_RANK: dict[DlpAction, int] = {"flag": 0, "quarantine": 1, "reject": 2}


def severity_for(base: Severity, distinct: int) -> Severity:
    """The base severity, one level up at BULK_VALUES values, two at MASS_VALUES."""
    level = _RANK[base] + (distinct >= BULK_VALUES) + (distinct >= MASS_VALUES)
    return SEVERITIES[min(level, len(SEVERITIES) - 1)]


@dataclass(frozen=True, slots=True)
class Finding:
    """All hits of one type in one message; only redacted samples."""

    type: str
    description: str
    count: int
    severity: Severity
    confidence: float
    where: tuple[str, ...]
    samples: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "count": self.count,
            "severity": self.severity,
            "confidence": self.confidence,
            "where": list(self.where),
            "samples": list(self.samples),
        }


@dataclass(frozen=True, slots=True)
class DlpReport:
    """What a scan found: per-type findings, most severe first, and the action they ask."""

    findings: tuple[Finding, ...] = ()
    action: DlpAction | None = None
    """The strictest configured action among the findings; None when nothing was found."""
    scanned_chars: int = 0
    truncated: bool = False
    """Whether text beyond ``dlp_max_scan_chars`` was left unscanned."""
    words: frozenset[str] = frozenset()
    """The words inside the findings' matched text, spelled as tokens spell them: kept in
    memory only, never serialised, so a score's explanation can leave them out."""

    @property
    def severities(self) -> tuple[Severity, ...]:
        return tuple(f.severity for f in self.findings)

    @property
    def max_severity(self) -> Severity | None:
        return self.findings[0].severity if self.findings else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.as_dict() for f in self.findings],
            "action": self.action,
            "truncated": self.truncated,
        }


@dataclass(slots=True)
class _Acc:
    detector: Detector
    order: int
    values: dict[str, str] = field(default_factory=dict)
    """value -> redacted sample, in order of first sight."""
    where: dict[str, None] = field(default_factory=dict)
    confidence: float = 0.0


class _Spans:
    """Disjoint claimed ``[start, end)`` spans of one text, for overlap checks in O(log n).

    Claims arrive one detector at a time, each detector's in text order; inserting each
    into one sorted list would shift half the list per claim (quadratic for a spreadsheet
    of thousands of numbers). So a detector's claims collect in a pending run, appended at
    its end, and :meth:`commit` merges the two sorted runs (linear in timsort) before the
    next detector starts.
    """

    __slots__ = ("ends", "pending_ends", "pending_starts", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.pending_starts: list[int] = []
        self.pending_ends: list[int] = []

    def claim(self, start: int, end: int) -> bool:
        if _overlaps(self.starts, self.ends, start, end):
            return False
        starts, ends = self.pending_starts, self.pending_ends
        if not starts or start >= starts[-1]:  # the usual case: after every pending span
            if starts and ends[-1] > start:
                return False
            starts.append(start)
            ends.append(end)
            return True
        if _overlaps(starts, ends, start, end):
            return False
        i = bisect.bisect_right(starts, start)
        starts.insert(i, start)
        ends.insert(i, end)
        return True

    def commit(self) -> None:
        """Merge the pending run in (spans are disjoint, so starts and ends sort alike)."""
        if self.pending_starts:
            self.starts = sorted(self.starts + self.pending_starts)
            self.ends = sorted(self.ends + self.pending_ends)
            self.pending_starts, self.pending_ends = [], []


def _overlaps(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """Whether ``[start, end)`` overlaps a span of the sorted disjoint ``starts``/``ends``."""
    i = bisect.bisect_right(starts, start)
    return bool((i and ends[i - 1] > start) or (i < len(starts) and starts[i] < end))


def message_segments(msg: ParsedMessage) -> list[tuple[str, str]]:
    """(where, text) for the subject, the text parts, the HTML text and text attachments."""
    segments = [("subject", msg.subject), ("body", msg.text), ("html", msg.html_text)]
    segments += [(f"attachment:{safe_name(name)}", text) for name, text in msg.text_attachments]
    return [(where, text) for where, text in segments if text]


def scan_message(msg: ParsedMessage, config: DlpConfig) -> DlpReport:
    """Scan everything a reader of ``msg`` would see, within ``config.max_scan_chars``."""
    return scan_segments(message_segments(msg), config)


def scan_text(text: str, config: DlpConfig, where: str = "body") -> DlpReport:
    """Scan a text on its own (``POST /v1/dlp/scan`` with ``text/plain``)."""
    return scan_segments([(where, text)], config)


def scan_segments(segments: Iterable[tuple[str, str]], config: DlpConfig) -> DlpReport:
    """Scan ``(where, text)`` pieces in order until ``config.max_scan_chars`` are used up."""
    budget = config.max_scan_chars
    truncated = False
    scanned: list[Segment] = []
    for where, text in segments:
        if budget <= 0:
            truncated = True
            break
        if len(text) > budget:
            text, truncated = text[:budget], True
        budget -= len(text)
        scanned.append(Segment(where, text))
    raw = [
        (order, seg, hit)
        for seg in scanned
        for order, detector in enumerate(config.detectors)
        for hit in detector.find(seg)
    ]
    findings, matched = _aggregate(raw, config)
    action = max(
        (config.action_for(f.severity) for f in findings),
        key=_ACTION_RANK.__getitem__,
        default=None,
    )
    return DlpReport(findings, action, config.max_scan_chars - budget, truncated, matched)


def _aggregate(
    raw: Sequence[tuple[int, Segment, Hit]], config: DlpConfig
) -> tuple[tuple[Finding, ...], frozenset[str]]:
    # Several distinct validated values of one type are unlikely to be chance.
    candidates: dict[int, set[str]] = {}
    for order, _, hit in raw:
        if hit.confidence > 0:
            candidates.setdefault(order, set()).add(hit.value)
    accepted: list[tuple[int, Segment, Hit, float]] = []
    for order, seg, hit in raw:
        conf = hit.confidence
        if conf > 0 and len(candidates[order]) >= REPEAT_VALUES:
            conf = min(0.99, conf + REPEAT_BONUS)
        if conf >= config.min_confidence:
            accepted.append((order, seg, hit, round(conf, 2)))
    # Where hits overlap in one text, the detector earlier in priority order keeps it.
    accepted.sort(key=lambda item: item[0])
    claimed: dict[int, _Spans] = {}
    accs: dict[int, _Acc] = {}
    matched: set[str] = set()
    current = -1
    for order, seg, hit, conf in accepted:
        if order != current:
            current = order
            for spans in claimed.values():
                spans.commit()
        if not claimed.setdefault(id(seg), _Spans()).claim(hit.start, hit.end):
            continue
        acc = accs.get(order)
        if acc is None:
            acc = accs[order] = _Acc(config.detectors[order], order)
        acc.values.setdefault(hit.value, hit.sample)
        matched.update(words(seg.text[hit.start : hit.end]))
        acc.where[seg.where] = None
        acc.confidence = max(acc.confidence, conf)
    findings = []
    for acc in accs.values():
        samples = tuple(dict.fromkeys(acc.values.values()))[:MAX_SAMPLES]
        findings.append(
            Finding(
                type=acc.detector.type,
                description=acc.detector.description,
                count=len(acc.values),
                severity=severity_for(acc.detector.severity, len(acc.values)),
                confidence=acc.confidence,
                where=tuple(acc.where),
                samples=samples,
            )
        )
    # Most severe first; within a severity, detector priority order (the sort is stable).
    return tuple(sorted(findings, key=lambda f: -_RANK[f.severity])), frozenset(matched)
