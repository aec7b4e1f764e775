"""Which of a score's telling tokens an answer may show.

The explanation must never become a side channel for what the leak check redacts: a
token that carries four or more digits (card and account number groups, phone numbers)
or a word inside a leak finding's matched text (``de89`` of an IBAN) is left out. Pure;
the model asks :func:`hider`'s predicate while it picks its telling tokens, so hidden ones
are skipped without building more explanation than is shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["MAX_DIGITS", "hider"]

MAX_DIGITS = 3
"""A token whose words carry more digits than this is never shown."""
_TOO_MANY_DIGITS = re.compile(rf"(?:\D*\d){{{MAX_DIGITS + 1}}}")
_DIGIT = re.compile(r"\d")


def hider(hidden_words: frozenset[str]) -> Callable[[str], bool]:
    """Whether a token (``prefix:word`` or ``prefix:word word``) must not be shown.

    >>> hide = hider(frozenset({"de89"}))
    >>> [t for t in ("body:de89", "body:0044", "body:invoice", "hdr:x:q3") if not hide(t)]
    ['body:invoice', 'hdr:x:q3']
    """

    def hide(token: str) -> bool:
        if not hidden_words and _DIGIT.search(token) is None:  # most tokens: one C call
            return False
        value = token.rpartition(":")[2]
        if _TOO_MANY_DIGITS.match(value):
            return True
        return bool(hidden_words) and any(w in hidden_words for w in value.split(" "))

    return hide
