"""Hostile charsets, transfer encodings and encoded tokens on every path that decodes (#3).

A declared charset picks a codec from Python's registry, which also holds codecs that
decode in quadratic time (punycode, idna: 600 KB took 24 s and blocked the worker),
byte transforms (zlib, base64_codec, uu), str-to-str ones (rot13), and real charsets
given bytes they cannot decode (UTF-16 of odd length). Every path (scoring in both
directions, the DLP scan of a message and of a text, feedback, training) must answer
200 or a 4xx within :data:`BOUND` seconds for each, over real HTTP; and a real charset
must still be honoured.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.server import Service, score

BOUND = 5.0
"""Seconds one request may take on a loaded test machine (24 s before the fix)."""

SIZE = 600 * 1024

HOSTILE = ("punycode", "idna", "utf-7", "rot13", "zlib", "base64_codec", "uu", "utf-16", "x-no")


def hostile_text(charset: str) -> bytes:
    """Bytes that make the codec named ``charset`` work hard, or fail late."""
    if charset in ("punycode", "idna"):
        return b"-" + b"9" * SIZE  # the quadratic corner of the punycode decoder
    if charset == "utf-16":
        return b"a\x00" * (SIZE // 2) + b"b"  # odd length
    if charset == "zlib":
        return b"x\x9c" + b"\x00" * SIZE
    return b"+AGEAYgBj-" * (SIZE // 10)  # UTF-7 escapes, ASCII to the others


def hostile_message(charset: str, n: int) -> bytes:
    """A message whose body and subject (an RFC 2047 word) declare ``charset``."""
    word = base64.b64encode(b"-" + b"9" * 3000).decode()
    return (
        f"From: Mallory <m{n}@evil.example>\r\nTo: alice@example.org\r\n"
        f"Subject: =?{charset}?b?{word}?=\r\nMessage-ID: <h{n}.{charset}@evil.example>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + hostile_text(charset)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("charsets") / "data"
    env = {"MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "1000"}
    with Service(data, env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def timed(call: Callable[[], httpx.Response]) -> httpx.Response:
    started = time.monotonic()
    r = call()
    elapsed = time.monotonic() - started
    assert r.status_code < 500, r.text
    assert elapsed < BOUND, f"took {elapsed:.1f} s"
    return r


def post(client: httpx.Client, path: str, raw: bytes, ctype: str, **params: str) -> httpx.Response:
    return client.post(path, params=params, content=raw, headers={"content-type": ctype})


@pytest.mark.parametrize("charset", HOSTILE)
def test_every_path_answers_in_time(client: httpx.Client, charset: str) -> None:
    rfc822 = "message/rfc822"
    raw = hostile_message(charset, 1)
    for direction in ("inbound", "outbound"):
        params = {"direction": direction, "rcpt": "alice@example.org"}
        if direction == "outbound":
            params["mail_from"] = "alice@example.org"
        r = timed(functools.partial(post, client, "/v1/score", raw, rfc822, **params))
        assert r.status_code == 200
    timed(lambda: post(client, "/v1/dlp/scan", raw, rfc822))
    text = f"text/plain; charset={charset}"
    assert timed(lambda: post(client, "/v1/dlp/scan", hostile_text(charset), text)).is_success
    feedback = {"label": "spam", "user": "alice@example.org"}
    assert timed(lambda: post(client, "/v1/feedback", raw, rfc822, **feedback)).is_success
    trained = hostile_message(charset, 2)
    assert timed(lambda: post(client, "/v1/train", trained, rfc822, label="spam")).is_success


def test_mail_charsets_are_still_honoured(client: httpx.Client) -> None:
    """The list of charsets is not a list of one: a real non-UTF-8 text is still read."""
    card = "4111 1111 1111 1111"
    for charset in ("utf-16", "iso-8859-1", "shift_jis", "koi8-r"):
        body = f"Kreditkarte: {card}".encode(charset)
        r = post(client, "/v1/dlp/scan", body, f"text/plain; charset={charset}")
        assert r.status_code == 200, r.text
        assert [f["type"] for f in r.json()["findings"]] == ["card"], charset
    # A Cyrillic subject in KOI8-R, as an encoded word, is read as Cyrillic.
    word = base64.b64encode("Счёт".encode("koi8-r")).decode()
    raw = (
        f"From: a@example.org\r\nSubject: =?koi8-r?b?{word}?=\r\n"
        "Content-Type: text/plain; charset=koi8-r\r\n\r\n"
    ).encode() + "Привет".encode("koi8-r")
    result = score(client, raw)
    assert result["fingerprint"]


def test_transfer_encoded_text_is_read_only_as_far_as_needed(
    client: httpx.Client, tmp_path: Path
) -> None:
    """Base64 and quoted-printable inline text of 3 MB: answered in time, and read."""
    card = b"card 4111 1111 1111 1111\r\n"
    for cte, body in (
        ("base64", base64.encodebytes(card + b"A" * 2_200_000)),
        ("quoted-printable", card + b"=41" * 1_000_000),
    ):
        raw = (
            b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain\r\n"
            b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + body
        )
        r = timed(functools.partial(post, client, "/v1/dlp/scan", raw, "message/rfc822"))
        assert [f["type"] for f in r.json()["findings"]] == ["card"], cte


def test_a_token_nested_past_the_json_parser_is_no_error(client: httpx.Client) -> None:
    """A JWT-shaped token whose header decodes to ``{"a":[[[[…``: the JSON decoder's
    recursion, unbounded before, was a 500."""
    for depth in (100_000, 20_000):
        header = base64.urlsafe_b64encode(b'{"a":' + b"[" * depth).decode().rstrip("=")
        token = f"{header}.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
        text = f"token {token}".encode()
        r = timed(functools.partial(post, client, "/v1/dlp/scan", text, "text/plain"))
        assert r.status_code == 200, r.text
