"""Redacted forms: enough to recognise a value (its kind, its last digits), never to use it.

Every sample, reason and log line carries only these forms; the full value is kept in
memory for counting distinct values and dropped with the scan.
"""

from __future__ import annotations

import re

__all__ = [
    "MASK",
    "redact_card",
    "redact_iban",
    "redact_password",
    "redact_prefix",
    "redact_ssn",
    "redact_tail",
    "safe_name",
]

DOT = "•"
MASK = DOT * 8
"""What a fully hidden value looks like; its length says nothing about the value."""


def _groups(text: str, size: int = 4) -> str:
    return " ".join(text[i : i + size] for i in range(0, len(text), size))


def redact_card(digits: str) -> str:
    """``•••• •••• •••• 1111``: the last four digits, as on a receipt."""
    return f"{_groups(DOT * (len(digits) - 4))} {digits[-4:]}"


def redact_iban(iban: str) -> str:
    """``DE•• •••• •••• •••• ••30 00``: the country and the last four characters."""
    return _groups(iban[:2] + DOT * (len(iban) - 6) + iban[-4:])


def redact_ssn(serial: str) -> str:
    """``•••-••-6789``: the serial, as on US forms that print it."""
    return f"{DOT * 3}-{DOT * 2}-{serial}"


def redact_prefix(prefix: str) -> str:
    """A credential's public prefix (its kind), nothing of its secret part."""
    return f"{prefix}{DOT * 3}"


def redact_password() -> str:
    """A password shows nothing at all, not even its length."""
    return MASK


def redact_tail(value: str, keep: int) -> str:
    """The last ``keep`` characters of a value from an administrator's pattern.

    Never more than a third of the value, so a short match is not given away whole.
    """
    keep = min(keep, len(value) // 3)
    return MASK + value[-keep:] if keep > 0 else MASK


_LONG_NUMBER = re.compile(r"\d{6,}")


def safe_name(name: str, limit: int = 80) -> str:
    """An attachment name fit for a report: long numbers in it masked, length capped."""
    name = " ".join(name.split())[:limit] or "(unnamed)"
    return _LONG_NUMBER.sub(lambda m: DOT * len(m.group()), name)
