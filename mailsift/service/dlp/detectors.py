"""One detector per kind of sensitive value: a regex finds candidates, code validates them.

Every detector first asks a question that costs next to nothing (enough digits? the
literal prefix present?) so that the common message, which holds none of these values,
costs a few substring scans. Candidates that pass their validator get a confidence:
a base for how strong the validation is, raised by context words within
:data:`CONTEXT_RADIUS` characters (``card``, ``IBAN``, ``SSN`` …) and lowered by words that
mark other numbers (``order``, ``tracking``, ``phone`` …). The scan drops hits below the
configured minimum confidence.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from mailsift.service.dlp.redact import (
    redact_card,
    redact_iban,
    redact_password,
    redact_prefix,
    redact_ssn,
    redact_tail,
)
from mailsift.service.dlp.validate import (
    IBAN_LENGTHS,
    card_brand,
    iban_valid,
    jwt_header_alg,
    looks_random,
    ssn_valid,
)

__all__ = [
    "BUILTIN_DETECTORS",
    "BUILTIN_TYPES",
    "CONTEXT_RADIUS",
    "Detector",
    "Hit",
    "Segment",
    "Severity",
    "dictionary_detector",
    "label_detector",
    "pattern_detector",
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


def _words(*words: str) -> re.Pattern[str]:
    """Any of ``words`` in lower-cased text, not inside a longer word (``_`` and digits
    separate words, so ``card_number`` and ``cvv2`` count)."""
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"(?<![a-z])(?:{alternatives})(?![a-z])")


def _near(seg: Segment, start: int, end: int, words: re.Pattern[str]) -> bool:
    """Whether ``words`` occur within the context radius before or after ``[start, end)``."""
    low = seg.lower
    return (
        words.search(low, max(0, start - CONTEXT_RADIUS), start) is not None
        or words.search(low, end, end + CONTEXT_RADIUS) is not None
    )


def _in_url(text: str, start: int) -> bool:
    """Whether the token holding ``start`` is part of a URL (an id in a link, not a leak)."""
    left = max(0, start - 200)
    token_start = max(text.rfind(" ", left, start), text.rfind("\n", left, start)) + 1
    piece = text[max(token_start, left) : start]
    return "://" in piece or "www." in piece


def _clamp(x: float) -> float:
    return round(max(0.0, min(0.99, x)), 2)


# Words that mark a number as something other than a card or an SSN.
_OTHER_NUMBER = _words(
    "order", "tracking", "track", "invoice", "inv", "ref", "reference", "isbn", "issn", "tel",
    "phone", "fax", "mobile", "serial", "imei", "sku", "ean", "upc", "barcode", "parcel",
    "shipment", "awb", "booking", "confirmation", "ticket", "part", "zip", "version",
)  # fmt: skip


# --- payment cards ------------------------------------------------------------------------

# A run of 13+ digits with single spaces or dashes (or &nbsp;) between them, not inside
# a longer word or number. Possessive: a run is taken whole; :func:`_card_candidates`
# decides which part of it, if any, can be a card number.
# The hot patterns start with a character class and check the character before it with
# a lookbehind placed after it: the regex engine then skips non-candidates in C, about
# three times faster than with the lookbehind first.
_CARD_RUN = re.compile(r"\d(?<![\w+/.\-]\d)(?:[ \-\u00a0]?\d){12,}+")
_CARD_RUN_GLUED = re.compile(r"[\w/]|\.\d")
_SEPARATORS = re.compile(r"[ \-]")
_CARD_WORDS = _words(
    "card", "cards", "card_no", "card_number", "cardnumber", "ccnum", "credit", "debit", "visa",
    "mastercard", "master card", "amex", "american express", "discover", "jcb", "diners",
    "unionpay", "union pay", "maestro", "expiry", "expires", "expiration", "exp", "valid thru",
    "cvv", "cvc", "csc", "cc", "ccn", "pan", "kreditkarte", "karte", "carte", "tarjeta",
    "cartão", "carta", "payment",
)  # fmt: skip
# The card words that name a card itself (not "payment" or "exp", which an invoice or a
# booking also has): beside a number that passes Luhn with an issuer's prefix and length,
# they outweigh words such as "invoice" or "booking" nearby. A booking paid by card
# quotes the card; an invoice number rarely passes both checks and never says "Visa".
_CARD_NAMES = _words(
    "card", "cards", "card_no", "card_number", "cardnumber", "ccnum", "credit", "debit", "visa",
    "mastercard", "master card", "amex", "american express", "discover", "jcb", "diners",
    "unionpay", "union pay", "maestro", "cvv", "cvc", "kreditkarte", "karte", "carte",
    "tarjeta", "cartão", "carta",
)  # fmt: skip


def _card_grouping_ok(run: str) -> bool:
    """Printed card numbers are grouped 4-4-4-4(-3), 4-6-5 or 4-6-4, one separator kind."""
    if " " in run and "-" in run:
        return False
    groups = [len(g) for g in run.replace("-", " ").split(" ")]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4 and len(groups) >= 4


def _card_candidates(text: str, m: re.Match[str]) -> Iterator[tuple[str, int, bool]]:
    """(digits, end, grouped) for the parts of a digit run that may be a card number.

    The whole run, unless it is glued to a word, a path or a decimal; and for a grouped
    run, its leading groups, so that ``4111 1111 1111 1111 12/27`` still yields the card.
    """
    run = m.group().replace("\u00a0", " ")  # HTML &nbsp; between groups
    if len(run) <= 37 and not _CARD_RUN_GLUED.match(text, m.end()):
        digits = run.replace(" ", "").replace("-", "")
        grouped = len(digits) != len(run)
        if len(digits) <= 19 and (not grouped or _card_grouping_ok(run)):
            yield digits, m.end(), grouped
    # 19 digits in at most 19 groups fit in 37 characters: later cuts give no card.
    cuts = [sep.start() for sep in _SEPARATORS.finditer(run, 0, 38)]
    for cut in reversed(cuts):
        head = run[:cut]
        digits = head.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and _card_grouping_ok(head):
            yield digits, m.start() + cut, True


def find_cards(seg: Segment) -> Iterator[Hit]:
    """Payment card numbers: issuer prefix and length, Luhn, and sane grouping.

    Words of other numbers nearby count against one only when no word naming a card is
    there."""
    if seg.digits < 13:
        return
    text = seg.text
    for m in _CARD_RUN.finditer(text):
        for digits, end, grouped in _card_candidates(text, m):
            if card_brand(digits) is None:
                continue
            conf = 0.5 + (0.15 if grouped else 0.0)
            if _near(seg, m.start(), end, _CARD_WORDS):
                conf += 0.35
            if _near(seg, m.start(), end, _OTHER_NUMBER) and not _near(
                seg, m.start(), end, _CARD_NAMES
            ):
                conf -= 0.4
            if _in_url(text, m.start()):
                conf -= 0.5
            yield Hit(digits, redact_card(digits), _clamp(conf), m.start(), end)
            break


# --- IBAN ---------------------------------------------------------------------------------

_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,31}")
_IBAN_WORDS = _words(
    "iban", "bic", "swift", "bank", "account", "acct", "konto", "kontonummer", "bankverbindung",
    "compte", "cuenta", "conto", "rekening", "rib", "transfer", "wire", "überweisung", "virement",
    "sepa", "payee", "beneficiary",
)  # fmt: skip


def find_ibans(seg: Segment) -> Iterator[Hit]:
    """IBANs: known country, that country's length, ISO 13616 mod-97 check digits."""
    if seg.digits < 8:
        return
    text = seg.text
    for m in _IBAN.finditer(text):
        want = IBAN_LENGTHS.get(m.group()[:2])
        if want is None:
            continue
        # The match may run on into following capitals; take exactly the country's length.
        chars: list[str] = []
        end = m.start()
        for i in range(m.start(), m.end()):
            if text[i] != " ":
                chars.append(text[i])
                if len(chars) == want:
                    end = i + 1
                    break
        if len(chars) != want or (end < len(text) and text[end].isalnum()):
            continue
        iban = "".join(chars)
        if not iban_valid(iban):
            continue
        conf = 0.75 + (0.2 if _near(seg, m.start(), end, _IBAN_WORDS) else 0.0)
        yield Hit(iban, redact_iban(iban), _clamp(conf), m.start(), end)


# --- US social security numbers ------------------------------------------------------------

_SSN = re.compile(
    r"(?P<area>\d(?<![\w\-/.]\d)\d\d)(?P<sep>[- ]?)(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})"
    r"(?![\w/]|[.\-]\d)"
)
_SSN_WORDS = _words(
    "ssn", "ssns", "social security", "soc sec", "ss#", "ss no", "ssa", "tax id", "taxpayer",
    "tin", "itin", "date of birth", "dob", "birth", "employee", "w-2", "w2",
)  # fmt: skip
_SSN_BASE = {"-": 0.45, " ": 0.3, "": 0.2}


def find_ssns(seg: Segment) -> Iterator[Hit]:
    """US SSNs: area not 000/666/9xx, group not 00, serial not 0000, not a sample number.

    Part, lot and account numbers share the shape, so a single one is reported only with
    SSN context nearby (``SSN``, ``social security``, ``date of birth`` …); a list of
    several dashed ones is reported without (see the repeat bonus in the scan).
    """
    if seg.digits < 9:
        return
    for m in _SSN.finditer(seg.text):
        area, sep, group, serial = m.group("area", "sep", "group", "serial")
        if not ssn_valid(area, group, serial):
            continue
        conf = _SSN_BASE[sep]
        if _near(seg, m.start(), m.end(), _SSN_WORDS):
            conf += 0.4
        if _near(seg, m.start(), m.end(), _OTHER_NUMBER):
            conf -= 0.4
        yield Hit(area + group + serial, redact_ssn(serial), _clamp(conf), m.start(), m.end())


# --- PEM private keys ----------------------------------------------------------------------

_PEM = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,2}PRIVATE KEY(?: BLOCK)?)-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}-----")
_PEM_MAX_BODY = 16000
_B64 = re.compile(r"[A-Za-z0-9+/=]+")


def find_private_keys(seg: Segment) -> Iterator[Hit]:
    """PEM/PGP private key blocks with a real base64 body (not a ``...`` placeholder).

    A body ends at the next ``-----`` (its END line, or the next block's BEGIN), so every
    character is examined once however many headers a hostile text repeats.
    """
    text = seg.text
    if "PRIVATE KEY" not in text:
        return
    for m in _PEM.finditer(text):
        stop = text.find("-----", m.end(), m.end() + _PEM_MAX_BODY)
        if stop < 0:
            stop = min(len(text), m.end() + _PEM_MAX_BODY)
        lines = [ln.strip() for ln in text[m.end() : stop].splitlines()]
        body = "".join(ln for ln in lines if ln and ":" not in ln)  # skip Proc-Type: etc.
        b64 = "".join(_B64.findall(body))
        if len(b64) < 64 or len(b64) < 0.95 * len(body.replace(" ", "")):
            continue
        end_m = _PEM_END.match(text, stop)
        end = end_m.end() if end_m else stop
        yield Hit(b64[:64], redact_prefix(f"-----BEGIN {m.group(1)}----- "), 0.97, m.start(), end)


# --- cloud and API credentials -------------------------------------------------------------

_AWS_KEY_ID = re.compile(r"(?<![A-Za-z0-9])(AKIA|ASIA)([A-Z0-9]{16})(?![A-Za-z0-9])")
_AWS_WORDS = _words(
    "aws", "amazon", "access key", "access_key", "access_key_id", "aws_access_key_id", "key id",
    "iam", "s3", "credentials", "secret", "secret_access_key", "aws_secret_access_key",
)  # fmt: skip


def find_aws_access_keys(seg: Segment) -> Iterator[Hit]:
    """AWS access key ids: ``AKIA`` (long-term) or ``ASIA`` (temporary) and 16 characters."""
    text = seg.text
    if "AKIA" not in text and "ASIA" not in text:
        return
    for m in _AWS_KEY_ID.finditer(text):
        if not looks_random(m.group(2)):
            continue
        conf = 0.85 + (0.1 if _near(seg, m.start(), m.end(), _AWS_WORDS) else 0.0)
        yield Hit(m.group(), redact_prefix(m.group(1)), _clamp(conf), m.start(), m.end())


_AWS_SECRET = re.compile(
    r"[A-Za-z0-9/+](?<![A-Za-z0-9/+][A-Za-z0-9/+])[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_WORDS = _words("aws", "secret", "secret_access_key", "secretaccesskey", "secret key")


_B64_CHARS = frozenset(string.ascii_letters + string.digits + "/+=")
_AWS_SECRET_REACH = CONTEXT_RADIUS + 50


def _aws_secret_candidates(seg: Segment) -> Iterator[re.Match[str]]:
    """40-character candidates, searched only around the words that must be near them."""
    text, low = seg.text, seg.lower
    if len(low) != len(text):
        yield from _AWS_SECRET.finditer(text)
        return
    windows: list[list[int]] = []
    for word in ("aws", "secret"):
        i = low.find(word)
        while i >= 0:
            windows.append([max(0, i - _AWS_SECRET_REACH), i + _AWS_SECRET_REACH])
            i = low.find(word, i + 1)
    windows.sort()
    merged: list[list[int]] = []
    for window in windows:
        if merged and window[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], window[1])
        else:
            merged.append(window)
    for lo, hi in merged:
        for m in _AWS_SECRET.finditer(text, lo, hi):
            # The window's end is not the token's: check the real next character.
            if m.end() == len(text) or text[m.end()] not in _B64_CHARS:
                yield m


def find_aws_secret_keys(seg: Segment) -> Iterator[Hit]:
    """AWS secret keys: 40 base64 characters, mixed, only next to an AWS/secret label.

    Forty such characters alone could be anything (a hash, a base64 line), so the label
    nearby is required, not just a bonus.
    """
    for m in _aws_secret_candidates(seg):
        value = m.group()
        if not (
            any(c.isupper() for c in value)
            and any(c.islower() for c in value)
            and any(c.isdigit() for c in value)
            and looks_random(value)
        ):
            continue
        if not _near(seg, m.start(), m.end(), _AWS_SECRET_WORDS):
            continue
        yield Hit(value, redact_password(), 0.9, m.start(), m.end())


_GITHUB = re.compile(
    r"(?<![A-Za-z0-9_])(?:(gh[pousr]_)([A-Za-z0-9]{36})|(github_pat_)([A-Za-z0-9]{22}_[A-Za-z0-9]{59}))"
    r"(?![A-Za-z0-9_])"
)


_GITHUB_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")


def find_github_tokens(seg: Segment) -> Iterator[Hit]:
    """GitHub tokens: ``ghp_ gho_ ghu_ ghs_ ghr_`` + 36, or fine-grained ``github_pat_``."""
    text = seg.text
    if not any(prefix in text for prefix in _GITHUB_PREFIXES):
        return
    for m in _GITHUB.finditer(text):
        prefix = m.group(1) or m.group(3)
        body = m.group(2) or m.group(4)
        if looks_random(body):
            yield Hit(m.group(), redact_prefix(prefix), 0.97, m.start(), m.end())


_SLACK = re.compile(r"(?<![A-Za-z0-9_-])(xox[baprs]-)((?:\d+-){1,4}[A-Za-z0-9]{16,64})(?![\w-])")


def find_slack_tokens(seg: Segment) -> Iterator[Hit]:
    """Slack tokens: ``xoxb- xoxp- xoxa- xoxr- xoxs-``, numeric ids, a random tail."""
    text = seg.text
    if "xox" not in text:
        return
    for m in _SLACK.finditer(text):
        if looks_random(m.group(2).rpartition("-")[2]):
            yield Hit(m.group(), redact_prefix(m.group(1)), 0.95, m.start(), m.end())


_STRIPE = re.compile(r"(?<![A-Za-z0-9_])((?:sk|rk)_live_)([0-9A-Za-z]{24,247})(?![A-Za-z0-9_])")


def find_stripe_keys(seg: Segment) -> Iterator[Hit]:
    """Stripe live secret and restricted keys (test keys move no money and are ignored)."""
    text = seg.text
    if "_live_" not in text:
        return
    for m in _STRIPE.finditer(text):
        if looks_random(m.group(2)):
            yield Hit(m.group(), redact_prefix(m.group(1)), 0.97, m.start(), m.end())


_GOOGLE = re.compile(r"(?<![A-Za-z0-9_-])AIza([0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])")
_GOOGLE_WORDS = _words("google", "api key", "api_key", "apikey", "key", "maps", "firebase", "gcp")


def find_google_api_keys(seg: Segment) -> Iterator[Hit]:
    """Google API keys: ``AIza`` and 35 URL-safe characters."""
    text = seg.text
    if "AIza" not in text:
        return
    for m in _GOOGLE.finditer(text):
        if looks_random(m.group(1)):
            conf = 0.85 + (0.1 if _near(seg, m.start(), m.end(), _GOOGLE_WORDS) else 0.0)
            yield Hit(m.group(), redact_prefix("AIza"), _clamp(conf), m.start(), m.end())


_JWT = re.compile(
    r"(?<![A-Za-z0-9_.-])(eyJ[A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{16,})"
    r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
)
# Signatures of the tokens printed in JWT documentation (jwt.io, RFC 7519 examples).
_JWT_EXAMPLE_SIGNATURES = frozenset(
    {
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "KMUFsIDTnFmyG3nMiGM6H9FNFUROf3wh7SmqJp-QV30",
    }
)
_ALG_SAFE = re.compile(r"[A-Za-z0-9]{1,10}")


def find_jwts(seg: Segment) -> Iterator[Hit]:
    """JSON web tokens: three base64url parts; header and payload decode to JSON, with ``alg``."""
    text = seg.text
    if "eyJ" not in text:
        return
    for m in _JWT.finditer(text):
        header, payload, signature = m.groups()
        if signature in _JWT_EXAMPLE_SIGNATURES:
            continue
        alg = jwt_header_alg(header, payload)
        if alg is None:
            continue
        shown = f" ({alg})" if _ALG_SAFE.fullmatch(alg) else ""
        yield Hit(m.group(), redact_prefix("eyJ") + shown, 0.9, m.start(), m.end())


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
        yield Hit(value, redact_password(), _clamp(conf), m.start(), m.end())


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


# Priority order: where two hits overlap, the earlier detector's wins (a key inside a
# PEM block is that block; an IBAN's digits are not also a card number).
BUILTIN_DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", "high", "private key", find_private_keys),
    Detector("jwt", "medium", "JSON web token", find_jwts),
    Detector("github_token", "high", "GitHub token", find_github_tokens),
    Detector("slack_token", "high", "Slack token", find_slack_tokens),
    Detector("stripe_key", "high", "Stripe live key", find_stripe_keys),
    Detector("google_api_key", "medium", "Google API key", find_google_api_keys),
    Detector("aws_access_key", "medium", "AWS access key id", find_aws_access_keys),
    Detector("aws_secret_key", "high", "AWS secret key", find_aws_secret_keys),
    Detector("iban", "low", "IBAN", find_ibans),
    Detector("card", "medium", "payment card number", find_cards),
    Detector("ssn", "medium", "US social security number", find_ssns),
    Detector("password", "medium", "clear-text password", find_passwords),
)
BUILTIN_TYPES = frozenset(d.type for d in BUILTIN_DETECTORS) | {"label"}
