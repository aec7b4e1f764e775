"""Document labels and an administrator's own keyword lists and patterns."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from mailsift.service.dlp.detectors.base import (
    Detector,
    Hit,
    Segment,
    Severity,
)
from mailsift.service.dlp.redact import (
    redact_tail,
)

__all__ = ["dictionary_detector", "label_detector", "pattern_detector"]


# --- document labels and administrators' rules ---------------------------------------------


def _alternation(words: Sequence[str]) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


def _word_start(text: str, i: int) -> bool:
    """Whether position ``i`` starts a word (a lookbehind here would slow the search)."""
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


def label_detector(labels: Sequence[str]) -> Detector | None:
    """Document labels: whole words, as written (upper case) in the text, any case in a Subject."""
    if not labels:
        return None
    upper = tuple(label.upper() for label in labels)
    lowered = tuple(label.lower() for label in labels)
    exact = re.compile(rf"(?:{_alternation(upper)})(?!\w)")
    anycase = re.compile(rf"(?i)(?:{_alternation(upper)})(?!\w)")
    canonical = {label.lower(): label.upper() for label in labels}

    def find_labels(seg: Segment) -> Iterator[Hit]:
        if seg.where == "subject":
            if not any(label in seg.lower for label in lowered):
                return
            pattern, conf = anycase, 0.9
        else:
            if not any(label in seg.text for label in upper):
                return
            pattern, conf = exact, 0.8
        for m in pattern.finditer(seg.text):
            if not _word_start(seg.text, m.start()):
                continue
            label = canonical[m.group().lower()]
            yield Hit(label, label, conf, m.start(), m.end())

    return Detector("label", "low", "document label", find_labels)


def dictionary_detector(
    name: str, words: Sequence[str], severity: Severity, case_sensitive: bool = False
) -> Detector:
    """An administrator's keyword list: any of ``words`` as a whole word or phrase."""
    flags = 0 if case_sensitive else re.IGNORECASE
    pattern = re.compile(rf"(?:{_alternation(words)})(?!\w)", flags)
    canonical = {(w if case_sensitive else w.lower()): w for w in words}

    def find_words(seg: Segment) -> Iterator[Hit]:
        for m in pattern.finditer(seg.text):
            if not _word_start(seg.text, m.start()):
                continue
            key = m.group() if case_sensitive else m.group().lower()
            word = canonical.get(key, m.group())
            yield Hit(key, word, 0.9, m.start(), m.end())

    return Detector(name, severity, f"'{name}' keyword", find_words)


def pattern_detector(
    name: str, regex: re.Pattern[str], severity: Severity, keep_last: int = 0
) -> Detector:
    """An administrator's pattern; its matches are redacted like secrets."""

    def find_matches(seg: Segment) -> Iterator[Hit]:
        for m in regex.finditer(seg.text):
            if m.end() > m.start():
                value = m.group()
                yield Hit(value, redact_tail(value, keep_last), 0.9, m.start(), m.end())

    return Detector(name, severity, f"'{name}' match", find_matches)
