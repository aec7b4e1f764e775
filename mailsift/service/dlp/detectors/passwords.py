"""Clear-text passwords: a password keyword, a separator, and a value that is not a placeholder."""

from __future__ import annotations

import re
from collections.abc import Iterator

from mailsift.service.dlp.detectors.base import (
    Hit,
    Segment,
    clamp,
)
from mailsift.service.dlp.redact import (
    redact_password,
)

__all__ = ["find_passwords"]


# --- clear-text passwords ------------------------------------------------------------------

# Cheap substrings; every keyword below starts with one of them.
_PASSWORD_STEMS = (
    "pass", "pw", "kennwort", "mot de passe", "contrase", "senha", "wachtwoord", "hasł",
    "hasl", "lösenord", "losenord", "salasana", "пароль", "密码", "パスワード",
)  # fmt: skip
_PASSWORD_KEYWORDS = (
    "password", "passwort", "passwd", "passphrase", "passcode", "pass", "pwd", "pw", "kennwort",
    "mot de passe", "contraseña", "contrasena", "senha", "wachtwoord", "hasło", "haslo",
    "lösenord", "losenord", "salasana", "пароль", "密码", "パスワード",
)  # fmt: skip
_KW = "|".join(sorted((re.escape(k) for k in _PASSWORD_KEYWORDS), key=len, reverse=True))
# The value on the same line: quoted (spaces allowed) or up to the next space.
_VALUE = r"""(?:"(?P<dq>[^"\n]{4,64})"|'(?P<sq>[^'\n]{4,64})'|(?P<bare>[^\s"'<>]{4,64}))"""
# ``password: x``, ``pwd=x``, ``"password": "x"``.
_PASSWORD = re.compile(rf"(?i)(?<![\w])({_KW})[\"']?[ \t]*(?::=|=>|->|[:=\uff1a])[ \t]*{_VALUE}")
# ``my password is x``: no delimiter, so the value must look like a password.
_PASSWORD_IS = re.compile(
    rf"(?i)(?<![\w])({_KW})[ \t]+(?:is|ist|est|es|är|on)[ \t]*:?[ \t]+{_VALUE}"
)
_PLACEHOLDER_CHARS = frozenset("*•xX.-_#?")
_PLACEHOLDER_WORDS = frozenset(
    {
        "none", "null", "nil", "n/a", "required", "optional", "hidden", "redacted", "removed",
        "password", "passwort", "your_password", "yourpassword", "changeme", "change_me",
        "secret", "same", "unchanged", "blank", "empty", "example", "forgotten", "reset",
        "expired", "incorrect", "invalid", "wrong", "protected", "sent", "below", "above",
        "attached", "enclosed", "unknown", "test", "tbd", "pending", "yes", "no", "true",
        "false", "set", "not", "see", "here", "the", "your", "same as", "undefined",
    }
)  # fmt: skip
_WORD = re.compile(r"[^\W\d_]{2,}")


def _password_confidence(value: str, quoted: bool, rest_of_line: str) -> float:
    """How much ``value`` looks like a password rather than a placeholder or prose."""
    if set(value) <= _PLACEHOLDER_CHARS or value.lower() in _PLACEHOLDER_WORDS:
        return 0.0
    if value[0] in "<[{(%$" or "{{" in value or value.startswith("..."):
        return 0.0  # a template variable, not a value
    if len(_WORD.findall(rest_of_line)) >= 2:
        return 0.0  # "Password: reset link below" is a sentence
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(not c.isalnum() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    conf = 0.6 + 0.15 * has_digit + 0.1 * has_symbol + 0.1 * mixed + 0.15 * quoted
    if value.isalpha() and not mixed and not quoted:
        conf = 0.5  # one plain word: could be a password, could be a word
    return conf


def _keyword_matches(seg: Segment) -> Iterator[tuple[re.Match[str], bool]]:
    """Password-label matches, tried only where a keyword stem occurs.

    The common text holds no stem at all, and "pass" in "passed" or "compass" costs one
    anchored match attempt instead of a case-insensitive scan of the whole text.
    """
    text, low = seg.text, seg.lower
    if len(low) != len(text):  # lower-casing changed offsets (rare scripts): scan it all
        for pattern, strict in ((_PASSWORD, False), (_PASSWORD_IS, True)):
            for m in pattern.finditer(text):
                yield m, strict
        return
    starts = set()
    for stem in _PASSWORD_STEMS:
        i = low.find(stem)
        while i >= 0:
            starts.add(i)
            i = low.find(stem, i + 1)
    for start in sorted(starts):
        labelled = _PASSWORD.match(text, start)
        if labelled is not None:
            yield labelled, False
            continue
        spoken = _PASSWORD_IS.match(text, start)
        if spoken is not None:
            yield spoken, True


def find_passwords(seg: Segment) -> Iterator[Hit]:
    """Clear-text passwords after a label (``password: …``, ``pwd=…``, ``Passwort: …``)."""
    text = seg.text
    for m, strict in _keyword_matches(seg):
        quoted = m.group("dq") or m.group("sq")
        value = quoted or m.group("bare").rstrip(".,;:!)")
        if len(value) < 4:
            continue
        if strict and not (
            len(value) >= 6
            and any(c.isdigit() for c in value)
            and any(c.isalpha() for c in value)
            and " " not in value
        ):
            continue
        rest = text[m.end() : m.end() + 60].partition("\n")[0]
        conf = _password_confidence(value, bool(quoted), rest)
        yield Hit(value, redact_password(), clamp(conf), m.start(), m.end())
