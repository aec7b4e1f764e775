"""The DLP configuration: built-in detectors, document labels, administrators' own rules.

Administrators add keyword dictionaries and regex patterns in a TOML file
(``MAILSIFT_DLP_CONFIG_FILE``)::

    min_confidence = 0.5          # optional: hits below are not reported

    [[dictionary]]
    name = "project_codenames"    # finding type and reason name (dlp_project_codenames)
    words = ["Bluebird", "Project Falcon"]
    severity = "high"             # low | medium | high (default medium)
    case_sensitive = false        # optional

    [[pattern]]
    name = "employee_id"
    regex = 'EMP-\\d{6}'
    severity = "medium"
    keep_last = 2                 # optional: characters shown in samples (default none)

The file is read once, at start-up; anything wrong in it (syntax, an unknown key, a bad
regex, a duplicate name) raises :class:`DlpConfigError` naming the file and the entry,
so a typo stops the service instead of silently disabling a rule.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from mailsift.service.dlp.detectors import (
    BUILTIN_DETECTORS,
    BUILTIN_TYPES,
    Detector,
    Severity,
    dictionary_detector,
    label_detector,
    pattern_detector,
)
from mailsift.service.settings import Settings

__all__ = ["DlpAction", "DlpConfig", "DlpConfigError", "load_dlp_config"]

DlpAction = Literal["flag", "quarantine", "reject"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
DEFAULT_MIN_CONFIDENCE = 0.5
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_TOP_KEYS = frozenset({"min_confidence", "dictionary", "pattern"})
_DICTIONARY_KEYS = frozenset({"name", "words", "severity", "case_sensitive"})
_PATTERN_KEYS = frozenset({"name", "regex", "severity", "keep_last"})


class DlpConfigError(ValueError):
    """The DLP configuration file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class DlpConfig:
    """Everything a scan needs; built once at start-up, shared read-only by all requests."""

    detectors: tuple[Detector, ...]
    """In priority order: built-in kinds, document labels, then administrators' rules."""
    min_confidence: float
    max_scan_chars: int
    actions: Mapping[Severity, DlpAction]
    """What each severity asks for (``flag`` = a reason, no forced action)."""

    def action_for(self, severity: Severity) -> DlpAction:
        return self.actions[severity]


def load_dlp_config(settings: Settings) -> DlpConfig:
    """Build the configuration from settings and, if set, the administrators' TOML file."""
    detectors = list(BUILTIN_DETECTORS)
    labels = label_detector(settings.dlp_label_list)
    if labels is not None:
        detectors.append(labels)
    min_confidence = DEFAULT_MIN_CONFIDENCE
    if settings.dlp_config_file is not None:
        rules, min_confidence = _read_rules(settings.dlp_config_file)
        detectors += rules
    return DlpConfig(
        detectors=tuple(detectors),
        min_confidence=min_confidence,
        max_scan_chars=settings.dlp_max_scan_chars,
        actions={
            "low": settings.dlp_action_low,
            "medium": settings.dlp_action_medium,
            "high": settings.dlp_action_high,
        },
    )


def _read_rules(path: Path) -> tuple[list[Detector], float]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DlpConfigError(f"DLP config {path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DlpConfigError(f"DLP config {path}: not valid TOML: {exc}") from exc
    try:
        return _rules(data)
    except DlpConfigError as exc:
        raise DlpConfigError(f"DLP config {path}: {exc}") from None


def _rules(data: Mapping[str, object]) -> tuple[list[Detector], float]:
    _no_unknown_keys(data, _TOP_KEYS, "top level")
    min_confidence = data.get("min_confidence", DEFAULT_MIN_CONFIDENCE)
    if (
        not isinstance(min_confidence, int | float)
        or isinstance(min_confidence, bool)
        or not 0 <= min_confidence <= 1
    ):
        raise DlpConfigError("min_confidence must be a number from 0 to 1")
    detectors: list[Detector] = []
    names: set[str] = set()
    for kind in ("dictionary", "pattern"):
        entries = data.get(kind, [])
        if not isinstance(entries, list):
            raise DlpConfigError(f"'{kind}' must be an array of tables ([[{kind}]])")
        for i, entry in enumerate(entries, start=1):
            where = f"[[{kind}]] #{i}"
            if not isinstance(entry, dict):
                raise DlpConfigError(f"{where} must be a table")
            name = _name(entry, where, names)
            where = f"[[{kind}]] '{name}'"
            if kind == "dictionary":
                detectors.append(_dictionary(entry, name, where))
            else:
                detectors.append(_pattern(entry, name, where))
    return detectors, float(min_confidence)


def _no_unknown_keys(entry: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise DlpConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _name(entry: Mapping[str, object], where: str, seen: set[str]) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DlpConfigError(
            f"{where}: 'name' must be lower-case letters, digits and _ (at most 40), "
            f"starting with a letter; got {name!r}"
        )
    if name in BUILTIN_TYPES:
        raise DlpConfigError(f"{where}: name {name!r} is a built-in finding type")
    if name in seen:
        raise DlpConfigError(f"{where}: name {name!r} is used twice")
    seen.add(name)
    return name


def _severity(entry: Mapping[str, object], where: str) -> Severity:
    value = entry.get("severity", "medium")
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise DlpConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}; got {value!r}")


def _flag(entry: Mapping[str, object], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise DlpConfigError(f"{where}: {key} must be true or false")
    return value


def _dictionary(entry: Mapping[str, object], name: str, where: str) -> Detector:
    _no_unknown_keys(entry, _DICTIONARY_KEYS, where)
    words = entry.get("words")
    if (
        not isinstance(words, list)
        or not words
        or not all(isinstance(w, str) and w.strip() for w in words)
    ):
        raise DlpConfigError(f"{where}: 'words' must be a non-empty list of non-empty strings")
    clean = [" ".join(str(w).split()) for w in words]
    return dictionary_detector(
        name, clean, _severity(entry, where), _flag(entry, "case_sensitive", where)
    )


def _pattern(entry: Mapping[str, object], name: str, where: str) -> Detector:
    _no_unknown_keys(entry, _PATTERN_KEYS, where)
    source = entry.get("regex")
    if not isinstance(source, str) or not source:
        raise DlpConfigError(f"{where}: 'regex' must be a non-empty string")
    try:
        regex = re.compile(source)
    except re.error as exc:
        raise DlpConfigError(f"{where}: bad regex: {exc}") from None
    if regex.fullmatch("") is not None:
        raise DlpConfigError(f"{where}: regex matches the empty string")
    keep_last = entry.get("keep_last", 0)
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or not 0 <= keep_last <= 8:
        raise DlpConfigError(f"{where}: keep_last must be an integer from 0 to 8")
    return pattern_detector(name, regex, _severity(entry, where), keep_last)
