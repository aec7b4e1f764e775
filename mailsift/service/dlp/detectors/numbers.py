"""Payment cards, IBANs and US social security numbers: checksums and structure, then context."""

from __future__ import annotations

import re
from collections.abc import Iterator

from mailsift.service.dlp.detectors.base import (
    OTHER_NUMBER,
    Hit,
    Segment,
    clamp,
    in_url,
    near,
    words,
)
from mailsift.service.dlp.redact import (
    redact_card,
    redact_iban,
    redact_ssn,
)
from mailsift.service.dlp.validate import (
    IBAN_LENGTHS,
    card_brand,
    iban_valid,
    ssn_valid,
)

__all__ = ["find_cards", "find_ibans", "find_ssns"]


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
_CARD_WORDS = words(
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
_CARD_NAMES = words(
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
            if near(seg, m.start(), end, _CARD_WORDS):
                conf += 0.35
            if near(seg, m.start(), end, OTHER_NUMBER) and not near(
                seg, m.start(), end, _CARD_NAMES
            ):
                conf -= 0.4
            if in_url(text, m.start()):
                conf -= 0.5
            yield Hit(digits, redact_card(digits), clamp(conf), m.start(), end)
            break


# --- IBAN ---------------------------------------------------------------------------------

_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,31}")
_IBAN_WORDS = words(
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
        conf = 0.75 + (0.2 if near(seg, m.start(), end, _IBAN_WORDS) else 0.0)
        yield Hit(iban, redact_iban(iban), clamp(conf), m.start(), end)


# --- US social security numbers ------------------------------------------------------------

_SSN = re.compile(
    r"(?P<area>\d(?<![\w\-/.]\d)\d\d)(?P<sep>[- ]?)(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})"
    r"(?![\w/]|[.\-]\d)"
)
_SSN_WORDS = words(
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
        if near(seg, m.start(), m.end(), _SSN_WORDS):
            conf += 0.4
        if near(seg, m.start(), m.end(), OTHER_NUMBER):
            conf -= 0.4
        yield Hit(area + group + serial, redact_ssn(serial), clamp(conf), m.start(), m.end())
