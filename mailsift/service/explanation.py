"""Which of a score's telling tokens an answer may show.

The explanation must never become a side channel for what the leak check redacts: a
token that carries four or more digits (card and account number groups, phone numbers)
or a word inside a leak finding's matched text (``de89`` of an IBAN) is left out. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mailsift.models.ensemble import TokenWeight

__all__ = ["MAX_DIGITS", "shown_tokens"]

MAX_DIGITS = 3
"""A token whose words carry more digits than this is never shown."""


def _hidden(token: str, hidden_words: frozenset[str]) -> bool:
    value = token.rsplit(":", 1)[-1]
    if sum(c.isdigit() for c in value) > MAX_DIGITS:
        return True
    return bool(hidden_words) and any(w in hidden_words for w in value.split(" "))


def shown_tokens(
    tokens: Iterable[TokenWeight], hidden_words: frozenset[str], limit: int
) -> Sequence[TokenWeight]:
    """The first ``limit`` of ``tokens`` that show nothing a leak check would redact.

    >>> from mailsift.models.ensemble import TokenWeight as T
    >>> found = [T("body:de89", 1.0), T("body:0044", 0.9), T("body:invoice", 0.5)]
    >>> [t.token for t in shown_tokens(found, frozenset({"de89"}), 5)]
    ['body:invoice']
    """
    out = [t for t in tokens if not _hidden(t.token, hidden_words)]
    return out[:limit]
