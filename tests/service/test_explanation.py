"""A score's explanation never shows what the leak check redacts."""

from __future__ import annotations

from pathlib import Path

from mailsift.models.ensemble import SpamModel
from mailsift.models.parse import parse_message
from mailsift.service.explanation import hider
from tests.service.server import Service, score, train

IBAN = "DE89 3704 0044 0532 0130 00"


def test_tokens_with_four_digits_or_inside_a_finding_are_hidden() -> None:
    hide = hider(frozenset({"de89", "3704"}))
    shown = [
        t
        for t in (
            "body:de89", "body:de89 3704", "body:0532", "subject:2024", "body:q3",
            "body:transfer", "hdr:content-type:text", "body:a1b2c3",
        )
        if not hide(t)
    ]  # fmt: skip
    assert shown == ["body:q3", "body:transfer", "hdr:content-type:text", "body:a1b2c3"]
    # Without a finding, only the digit rule applies ("de89 3704" carries six).
    assert not hider(frozenset())("body:de89") and hider(frozenset())("body:de89 3704")


def test_the_model_skips_hidden_tokens_and_still_shows_as_many() -> None:
    model = SpamModel()
    spam = [model.features(parse_message(_transfer(n, spammy=True))) for n in range(8)]
    ham = [model.features(parse_message(_transfer(n, spammy=False))) for n in range(8)]
    for s, h in zip(spam, ham, strict=True):
        model.learn(s, "spam").learn(h, "ham")
    f = model.features(parse_message(_transfer(99, spammy=True)))
    pieces = set(IBAN.lower().split())
    plain = model.score(f, explain=30)
    assert any(set(t.token.rpartition(":")[2].split()) & pieces for t in plain.spam_tokens)
    hidden = model.score(f, explain=5, hide=hider(frozenset(pieces)))
    assert hidden.probability == plain.probability
    assert len(hidden.spam_tokens) == 5
    assert not any(set(t.token.rpartition(":")[2].split()) & pieces for t in hidden.spam_tokens)


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
