"""Checks a regular expression cannot make: check digits, issuer ranges, structural rules.

Each function takes the candidate already stripped of separators and answers whether it
can be a real value of its kind. They are pure and cheap; the detectors call them only on
candidates that passed a regex.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json

__all__ = [
    "IBAN_LENGTHS",
    "card_brand",
    "iban_valid",
    "jwt_header_alg",
    "looks_random",
    "luhn_valid",
    "ssn_valid",
]


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries in its last digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# (brand, lowest prefix, highest prefix, valid lengths); prefixes compared on as many
# leading digits as the bounds have. Order matters where ranges overlap: the first wins.
_BRANDS: tuple[tuple[str, int, int, frozenset[int]], ...] = (
    ("amex", 34, 34, frozenset({15})),
    ("amex", 37, 37, frozenset({15})),
    ("visa", 4, 4, frozenset({13, 16, 19})),
    ("mastercard", 51, 55, frozenset({16})),
    ("mastercard", 2221, 2720, frozenset({16})),
    ("mir", 2200, 2204, frozenset({16, 17, 18, 19})),
    ("discover", 6011, 6011, frozenset({16, 17, 18, 19})),
    ("discover", 622126, 622925, frozenset({16, 17, 18, 19})),
    ("discover", 644, 649, frozenset({16, 17, 18, 19})),
    ("discover", 65, 65, frozenset({16, 17, 18, 19})),
    ("jcb", 3528, 3589, frozenset({16, 17, 18, 19})),
    ("diners", 300, 305, frozenset({14, 15, 16, 17, 18, 19})),
    ("diners", 3095, 3095, frozenset({14, 15, 16, 17, 18, 19})),
    ("diners", 36, 36, frozenset({14, 15, 16, 17, 18, 19})),
    ("diners", 38, 39, frozenset({14, 15, 16, 17, 18, 19})),
    ("unionpay", 62, 62, frozenset({16, 17, 18, 19})),
    ("maestro", 5018, 5018, frozenset(range(13, 20))),
    ("maestro", 5020, 5020, frozenset(range(13, 20))),
    ("maestro", 5038, 5038, frozenset(range(13, 20))),
    ("maestro", 5893, 5893, frozenset(range(13, 20))),
    ("maestro", 6304, 6304, frozenset(range(13, 20))),
    ("maestro", 6759, 6759, frozenset(range(13, 20))),
    ("maestro", 6761, 6763, frozenset(range(13, 20))),
)


def card_brand(digits: str) -> str | None:
    """The issuer whose prefix range and length fit ``digits`` and whose Luhn check passes."""
    n = len(digits)
    if not 13 <= n <= 19 or not luhn_valid(digits):
        return None
    for brand, low, high, lengths in _BRANDS:
        if n in lengths and low <= int(digits[: len(str(low))]) <= high:
            return brand
    return None


# ISO 13616 registry: total IBAN length per country.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """ISO 13616: the country's length, then mod 97 of the rearranged number equals 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    remainder = 0
    for ch in rearranged:
        if "0" <= ch <= "9":
            remainder = (remainder * 10 + ord(ch) - 48) % 97
        elif "A" <= ch <= "Z":
            remainder = (remainder * 100 + ord(ch) - 55) % 97
        else:
            return False
    return remainder == 1


# Numbers printed on sample cards and in advertising, never issued to a person (or
# voided after they were misused), so they mark a template rather than a leak.
_SSN_EXAMPLES = frozenset({"078051120", "219099999", "123456789", "457555462"})


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """US SSN structure: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return area + group + serial not in _SSN_EXAMPLES


def looks_random(value: str) -> bool:
    """Whether a token's body looks generated rather than typed as a placeholder.

    Real keys are random strings; documentation writes ``EXAMPLE``, ``xxxx`` or
    ``1234567890``. Random base-62 text has many distinct characters and no long runs.
    """
    low = value.lower()
    if "example" in low or "xxxx" in low or "1234567" in low or "abcdef" in low:
        return False
    if len(set(value)) < min(12, len(value) // 3):
        return False
    run = 1
    for prev, ch in itertools.pairwise(value):
        run = run + 1 if ch == prev else 1
        if run >= 5:
            return False
    return True


# A token part decoded at most (real headers are tens of bytes, payloads rarely 4 KB).
_MAX_JWT_PART = 64 * 1024


def _b64url_json(part: str) -> object:
    """The JSON a token part holds, or None: not base64url, not JSON, too long, or nested
    past the JSON parser's recursion limit (``[[[[…`` would otherwise be a 500)."""
    if len(part) > _MAX_JWT_PART:
        return None
    padded = part + "=" * (-len(part) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None


def jwt_header_alg(header: str, payload: str) -> str | None:
    """The ``alg`` of a JSON web token whose header and payload decode to JSON objects."""
    head = _b64url_json(header)
    if not isinstance(head, dict) or not isinstance(head.get("alg"), str):
        return None
    if not isinstance(_b64url_json(payload), dict):
        return None
    return str(head["alg"])
