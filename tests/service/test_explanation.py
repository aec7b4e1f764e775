"""A score's explanation never shows what the leak check redacts."""

from __future__ import annotations

from pathlib import Path

from mailsift.models.ensemble import TokenWeight
from mailsift.service.explanation import shown_tokens
from tests.service.server import Service, score, train

IBAN = "DE89 3704 0044 0532 0130 00"


def test_tokens_with_four_digits_or_inside_a_finding_are_left_out() -> None:
    tokens = [
        TokenWeight("body:de89", 2.0),
        TokenWeight("body:de89 3704", 1.9),
        TokenWeight("body:0532", 1.8),
        TokenWeight("subject:2024", 1.7),
        TokenWeight("body:q3", 1.6),
        TokenWeight("body:transfer", 1.5),
        TokenWeight("hdr:content-type:text", 1.4),
    ]
    shown = [t.token for t in shown_tokens(tokens, frozenset({"de89", "3704"}), 3)]
    assert shown == ["body:q3", "body:transfer", "hdr:content-type:text"]
    # Without a finding, only the digit rule applies ("de89 3704" carries six).
    assert [t.token for t in shown_tokens(tokens, frozenset(), 2)] == ["body:de89", "body:q3"]


def _transfer(n: int, spammy: bool) -> bytes:
    if spammy:
        body = f"Urgent wire transfer {n}: send the fee to IBAN {IBAN} today, reference q3."
    else:
        body = f"Minutes of meeting {n}: the budget review moved to Thursday."
    return (
        f"From: a{n}@{'pay' if spammy else 'corp'}.example\r\nTo: b@corp.example\r\n"
        f"Subject: note {n}\r\nMessage-ID: <t{n}.{int(spammy)}@x>\r\n\r\n{body}\r\n"
    ).encode()


def test_an_answer_never_shows_a_leaked_numbers_pieces(tmp_path: Path) -> None:
    with Service(tmp_path / "data") as svc, svc.client() as admin:
        for n in range(6):
            train(admin, _transfer(n, spammy=True), "spam")
            train(admin, _transfer(n, spammy=False), "ham")
        body = score(admin, _transfer(99, spammy=True), "outbound")
        assert body["dlp"]["findings"], body["dlp"]
        shown = [t["token"] for side in ("spam", "ham") for t in body["tokens"][side]]
        assert shown, body["tokens"]  # the explanation is there, minus the number's pieces
        pieces = {w.lower() for w in IBAN.split()}
        for token in shown:
            words = token.rsplit(":", 1)[-1].split(" ")
            assert not pieces & set(words), token
            assert sum(c.isdigit() for c in token) <= 3, token
