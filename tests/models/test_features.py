from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from mailsift.models.features import FeatureConfig, extract, hash_tokens, tokenize
from mailsift.models.parse import parse_message

RAW = (
    b"Received: from relay.example by mx.example\r\n"
    b"Received: from mx.example by inbox.example\r\n"
    b'From: "Pill Shop" <deals@mail.spam.example.com>\r\n'
    b"Reply-To: orders@elsewhere.example\r\n"
    b"To: you@example.org\r\n"
    b"Subject: Cheap PILLS =?utf-8?q?tr=C3=A8s?= bon\r\n"
    b"X-Mailer: BulkMailer 9\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Buy now at http://www.shop.spam.example.net/x \xe2\x82\xac10 off!\r\n"
    b"--b\r\n"
    b'Content-Type: application/pdf; name="a.pdf"\r\n'
    b"\r\n"
    b"%PDF\r\n"
    b"--b--\r\n"
)
PREFIXES = {
    "subject",
    "from",
    "from-name",
    "from-domain",
    "reply-to-domain",
    "body",
    "url",
    "hdr",
    "type",
    "mailer",
    "attach",
    "shape",
}


def test_tokens_carry_their_prefixes() -> None:
    tokens = tokenize(parse_message(RAW), FeatureConfig())
    assert {t.split(":", 1)[0] for t in tokens} <= PREFIXES
    expected = [
        "subject:cheap",
        "subject:pills",
        "subject:très",
        "subject:cheap pills",
        "from:deals@mail.spam.example.com",
        "from-name:pill shop",
        "from-domain:mail.spam.example.com",
        "from-domain:spam.example.com",
        "from-domain:example.com",
        "reply-to-domain:elsewhere.example",
        "body:buy",
        "body:€",
        "body:buy now",
        "url:shop.spam.example.net",  # at most four labels: long subdomain chains
        "url:spam.example.net",
        "url:example.net",
        "hdr:received",
        "hdr:received:relay.example",
        "hdr:x-mailer",
        "hdr:x-mailer:bulkmailer",
        "hdr:date",
        "type:multipart/mixed",
        "mailer:bulkmailer 9",
        "attach:application/pdf",
        "shape:hops=2",
    ]
    for token in expected:
        assert token in tokens
    # The same word in different places is a different feature.
    assert "body:cheap" not in tokens
    assert "url:www.shop.spam.example.net" not in tokens
    # Values of headers outside the word list (dates, ids) are not features.
    assert not any(t.startswith("hdr:date:") for t in tokens)


def test_word_pairs_and_header_words_follow_the_config() -> None:
    msg = parse_message(RAW)
    tokens = tokenize(msg, FeatureConfig(word_pairs=False, header_words=1))
    assert not any(" " in t for t in tokens if t.startswith(("subject:", "body:")))
    received = [t for t in tokens if t.startswith("hdr:received:")]
    assert received == ["hdr:received:from", "hdr:received:from"]


def test_html_only_and_defects_are_shape_tokens() -> None:
    raw = b"Content-Type: text/html\r\n\r\n<p>hi</p>"
    assert "shape:html-only" in tokenize(parse_message(raw), FeatureConfig())
    deep = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(40)
    )
    assert "shape:too_deep" in tokenize(parse_message(deep), FeatureConfig())


SCRIPT = """
import json, sys
from mailsift.models.features import FeatureConfig, extract
from mailsift.models.parse import parse_message
f = extract(parse_message(sys.stdin.buffer.read()), FeatureConfig())
print(json.dumps([list(f.tokens), f.word_idx.tolist(), f.char_idx.tolist()]))
"""


def _features_in_subprocess(seed: str) -> list[list[object]]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], input=RAW, env=env, capture_output=True, check=True
    )
    result: list[list[object]] = json.loads(done.stdout)
    return result


def test_tokens_and_indices_do_not_depend_on_the_process() -> None:
    first, second = _features_in_subprocess("1"), _features_in_subprocess("4242")
    assert first == second
    f = extract(parse_message(RAW), FeatureConfig())
    assert first == [list(f.tokens), f.word_idx.tolist(), f.char_idx.tolist()]


def test_hash_values_are_pinned() -> None:
    # Changing the hash silently invalidates every snapshot ever written.
    tokens = ["body:viagra", "subject:hello", "from-domain:example.com", "body:café"]
    assert hash_tokens(tokens, 20).tolist() == [310475, 548766, 106568, 744305]
    assert hash_tokens(["body:viagra"], 16).tolist() == [19404]
    assert hash_tokens(["body:viagra"], 26).tolist() == [19870438]


def test_a_lone_surrogate_hashes_as_its_utf8_surrogate_bytes() -> None:
    # The parser keeps undecodable header bytes as lone surrogates; hashing must not fail
    # on them, and the token next to one must hash as it does alone.
    token = "body:caf\udce9"
    expected = zlib.crc32(token.encode("utf-8", "surrogatepass"))
    mixed = (expected * 0x9E3779B97F4A7C15) % 2**64 >> (64 - 20)
    assert hash_tokens(["body:viagra", token], 20).tolist() == [310475, mixed]


def test_a_token_repeated_within_a_field_is_listed_once() -> None:
    raw = b"Subject: buy buy now\r\nFrom: a@b.test\r\n\r\nbuy now buy now buy now"
    tokens = tokenize(parse_message(raw), FeatureConfig())
    assert tokens.count("body:buy") == 1
    assert tokens.count("body:buy now") == 1
    assert tokens.count("body:now buy") == 1
    assert tokens.count("subject:buy") == 1
    assert tokens.count("subject:buy buy") == 1


@pytest.mark.parametrize(("n_bits", "source"), [(16, "text"), (20, "raw"), (26, "text")])
def test_indices_lie_in_the_hash_space(n_bits: int, source: str) -> None:
    f = extract(parse_message(RAW), FeatureConfig(n_bits=n_bits, char_source=source))
    for idx in (f.word_idx, f.char_idx):
        assert idx.dtype == np.int64
        assert idx.size > 0
        assert idx.min() >= 0
        assert idx.max() < 2**n_bits
        assert np.unique(idx).size == idx.size
    assert len(f.tokens) == f.word_idx.size
    # Tokens are parallel to their indices.
    assert np.array_equal(hash_tokens(f.tokens, n_bits), f.word_idx)


def test_values_are_l2_normalised() -> None:
    f = extract(parse_message(RAW), FeatureConfig())
    for val, idx in ((f.word_val, f.word_idx), (f.char_val, f.char_idx)):
        assert val.dtype == np.float32
        assert val.shape == idx.shape
        assert np.linalg.norm(val) == pytest.approx(1.0, abs=1e-6)
        assert np.all(val > 0)


def test_char_view_can_be_turned_off_or_read_raw_bytes() -> None:
    msg = parse_message(RAW)
    off = extract(msg, FeatureConfig(char_ngram=0))
    assert off.char_idx.size == 0
    assert off.char_val.size == 0
    # The raw view reads header bytes, which the decoded text does not contain.
    raw_view = extract(msg, FeatureConfig(char_source="raw")).char_idx
    text_view = extract(msg, FeatureConfig(char_source="text")).char_idx
    assert not np.array_equal(raw_view, text_view)
    small = extract(msg, FeatureConfig(char_source="raw", char_bytes=4)).char_idx
    assert small.size == 1  # one 4-gram of four bytes


def test_a_message_with_nothing_in_it_still_has_features() -> None:
    f = extract(parse_message(b""), FeatureConfig())
    assert set(f.tokens) == {"from:", "from-name:", "type:text/plain", "shape:hops=0"}
    assert np.linalg.norm(f.word_val) == pytest.approx(1.0, abs=1e-6)
    raw = extract(parse_message(b""), FeatureConfig(char_source="raw"))
    assert raw.char_idx.size == 0
    assert raw.char_val.size == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_bits": 15}, "n_bits"),
        ({"n_bits": 27}, "n_bits"),
        ({"char_ngram": 1}, "char_ngram"),
        ({"char_ngram": 9}, "char_ngram"),
        ({"char_source": "Raw"}, "char_source"),
        ({"body_chars": -1}, "negative"),
        ({"char_bytes": -5}, "negative"),
        ({"header_words": -1}, "negative"),
    ],
)
def test_config_refuses_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{"n_bits": 16}, {"n_bits": 26}, {"char_ngram": 0}, {"char_ngram": 8}, {"char_source": "raw"}],
)
def test_config_accepts_the_edges(changes: dict[str, object]) -> None:
    config = FeatureConfig(**changes)  # type: ignore[arg-type]
    assert FeatureConfig(**config.as_dict()) == config


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FeatureConfig().n_bits = 18  # type: ignore[misc]


def test_headers_the_receiving_side_adds_are_not_word_features() -> None:
    body = b"From: a@sender.example\r\nSubject: lunch\r\n\r\nnoon at the canteen?\r\n"
    stamped = (
        b"Received-SPF: pass (mx.example: domain of sender.example designates 192.0.2.1)\r\n"
        b"Authentication-Results: mx.example; dkim=pass header.d=sender.example\r\n"
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=mx.example; s=arc; b=abc\r\n"
        b"X-MS-Exchange-Organization-SCL: 1\r\n"
        b"X-Mailsift-Score: 0.0123\r\nX-Mailsift-Verdict: ham\r\n"
    )
    config = FeatureConfig()
    plain = tokenize(parse_message(body), config)
    assert tokenize(parse_message(stamped + body), config) == plain
    # Nor does the raw view see them: it reads the message as the sender sent it.
    raw_view = extract(parse_message(body), config).raw_idx
    assert raw_view.size
    assert extract(parse_message(stamped + body), config).raw_idx.tolist() == raw_view.tolist()
    # A header the sender writes is still a feature.
    signed = tokenize(parse_message(b"DKIM-Signature: v=1; d=sender.example\r\n" + body), config)
    assert "hdr:dkim-signature" in signed


def test_the_numbers_of_a_received_header_are_not_features() -> None:
    def received(when: str, ip: str) -> bytes:
        return (
            f"Received: from relay.example (relay.example [{ip}]) by mx.example "
            f"(Postfix) with ESMTPS; {when}\r\nSubject: hi\r\n\r\nbody\r\n"
        ).encode()

    config = FeatureConfig()
    first = tokenize(parse_message(received("Mon, 6 Dec 2026 10:00:00 +0000", "192.0.2.1")), config)
    again = tokenize(
        parse_message(received("Mon, 6 Dec 2026 17:42:13 +0100", "198.51.100.7")), config
    )
    assert first == again
    assert {"hdr:received:relay.example", "hdr:received:postfix"} <= set(first)
