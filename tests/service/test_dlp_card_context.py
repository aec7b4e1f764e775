"""Card numbers beside words of other numbers (#15), over HTTP.

A number that passes Luhn with an issuer's prefix and length, with a word naming a card
beside it, is a card even when "invoice", "booking", "order", "reference" or "ticket"
is near too: every brand x context word x format x word order below must be reported.
Numbers failing either check stay unreported beside the same words, card word or not,
and a valid one beside an invoice word with no card word stays unreported as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.service.server import Service

BRANDS = {  # brand word -> a Luhn-valid number in that issuer's range and length
    "Visa": "4012888888881881",
    "Mastercard": "5105105105105100",
    "Amex": "371449635398431",
    "Discover": "6011111111111117",
    "JCB": "3530111333300000",
    "Diners": "36227206271667",
}
CONTEXTS = ("invoice", "booking", "order", "reference", "ticket")
FORMATS = ("spaces", "dashes", "none")
# A number that is no card: Luhn fails (last digit changed), or no issuer has its prefix.
NOT_CARDS = ("4012888888881882", "5105105105105101", "1234567812345670", "9900000000000009")


def printed(number: str, style: str) -> str:
    """The number as people write it: 4-4-4-4, or 4-6-5 / 4-6-4 for Amex and Diners."""
    if style == "none":
        return number
    cuts = (4, 10) if len(number) in (14, 15) else (4, 8, 12)
    groups = [number[a:b] for a, b in zip((0, *cuts), (*cuts, None), strict=True)]
    return (" " if style == "spaces" else "-").join(groups)


def texts(context: str, card_word: str, shown: str) -> list[str]:
    """The card word before and after the number, the other-number word on each side."""
    return [
        f"{context.capitalize()} 2024-118: please charge my {card_word} card {shown} today.",
        f"Thanks for your {context}. Card used: {shown} ({card_word}), {context} confirmed.",
    ]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with Service(tmp_path_factory.mktemp("cards") / "data") as svc, svc.client() as c:
        yield c


def scan(client: httpx.Client, text: str) -> list[str]:
    r = client.post("/v1/dlp/scan", content=text.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    return [f["type"] for f in r.json()["findings"]]


@pytest.mark.parametrize("brand", BRANDS)
@pytest.mark.parametrize("context", CONTEXTS)
def test_a_valid_card_beside_a_card_word_is_found_near_other_number_words(
    client: httpx.Client, brand: str, context: str
) -> None:
    missed = [
        text
        for style in FORMATS
        for text in texts(context, brand, printed(BRANDS[brand], style))
        if "card" not in scan(client, text)
    ]
    assert not missed


@pytest.mark.parametrize("context", CONTEXTS)
def test_numbers_failing_luhn_or_the_issuer_check_are_no_cards(
    client: httpx.Client, context: str
) -> None:
    found = [
        text
        for number in NOT_CARDS
        for style in FORMATS
        for text in texts(context, "Visa", printed(number, style))
        if "card" in scan(client, text)
    ]
    assert not found


@pytest.mark.parametrize("context", CONTEXTS)
def test_a_valid_number_beside_other_number_words_alone_is_no_card(
    client: httpx.Client, context: str
) -> None:
    found = [
        text
        for number in BRANDS.values()
        for text in (
            f"Your {context} number is {number}, keep it for your records.",
            f"{context.capitalize()}: {number}",
        )
        if "card" in scan(client, text)
    ]
    assert not found


def test_printed_groups() -> None:
    assert printed("371449635398431", "spaces") == "3714 496353 98431"
    assert printed("4012888888881881", "dashes") == "4012-8888-8888-1881"
