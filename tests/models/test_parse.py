from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsift.models.parse import (
    DEFAULT_LIMITS,
    GUESS_BUDGET,
    MIME_DEFECTS,
    TIME_BUDGET,
    TOO_DEEP,
    TOO_MANY_HEADERS,
    TOO_MANY_PARTS,
    TRUNCATED_MESSAGE,
    UNPARSEABLE,
    Attachment,
    ParsedMessage,
    parse_message,
)

KNOWN_DEFECTS = {
    TRUNCATED_MESSAGE,
    UNPARSEABLE,
    TOO_DEEP,
    TOO_MANY_PARTS,
    TOO_MANY_HEADERS,
    MIME_DEFECTS,
    TIME_BUDGET,
    GUESS_BUDGET,
}


def message(*headers: bytes | str, body: bytes | str = b"") -> bytes:
    """Raw CRLF message from header lines and a body."""
    lines = [h.encode() if isinstance(h, str) else h for h in headers]
    data = body.encode() if isinstance(body, str) else body
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def multipart(boundary: str, parts: list[bytes], subtype: str = "mixed") -> bytes:
    """Body of a multipart entity: each part is its own headers + blank line + body."""
    b = boundary.encode()
    return b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"


def nested(depth: int) -> bytes:
    """A text part wrapped in ``depth`` multipart levels."""
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\ninner\r\n" + tail


def assert_well_formed(m: ParsedMessage, raw: bytes) -> None:
    """Every field has its declared type, and all text is real text (no lone surrogates)."""
    assert isinstance(m, ParsedMessage)
    texts = [
        m.subject,
        m.from_name,
        m.from_addr,
        m.reply_to,
        m.message_id_domain,
        m.mailer,
        m.content_type,
        m.text,
        m.html_text,
    ]
    for count in (m.to_count, m.cc_count, m.received_hops):
        assert isinstance(count, int)
        assert count >= 0
    assert m.size == len(raw)
    assert isinstance(m.prefix, bytes)
    assert raw.startswith(m.prefix)
    for name, value in m.headers:
        texts += [name, value]
        assert name == name.lower()
    texts += m.urls
    texts += m.url_domains
    for attachment in m.attachments:
        assert isinstance(attachment, Attachment)
        assert isinstance(attachment.size, int)
        texts += [attachment.filename, attachment.content_type]
    for filename, content in m.text_attachments:
        texts += [filename, content]
    for text in texts:
        assert isinstance(text, str)
        text.encode("utf-8")  # raises on a lone surrogate
    assert set(m.defects) <= KNOWN_DEFECTS
    assert len(m.defects) == len(set(m.defects))


# -- hostile input -------------------------------------------------------------------

FROM = "From: a@example.org"
HOSTILE: dict[str, tuple[bytes, set[str]]] = {
    "missing boundary": (
        message(FROM, "Content-Type: multipart/mixed", body="--x\r\n\r\nhello\r\n--x--\r\n"),
        {MIME_DEFECTS},
    ),
    "unterminated boundary": (
        message(
            FROM,
            'Content-Type: multipart/mixed; boundary="zz"',
            body="--zz\r\nContent-Type: text/plain\r\n\r\nhello\r\n--zz\r\nContent-Type: tex",
        ),
        {MIME_DEFECTS},
    ),
    "unknown charset": (
        message(FROM, 'Content-Type: text/plain; charset="x-unknown"', body="h\xe9llo".encode()),
        set(),
    ),
    "charset with NUL": (
        message(FROM, b'Content-Type: text/plain; charset="utf-8\x00"', body=b"h\xc3\xa9llo"),
        set(),
    ),
    "charset 8-bit": (
        message(FROM, b'Content-Type: text/plain; charset="\xff\xfe"', body=b"h\xe9llo"),
        set(),
    ),
    "8-bit junk in headers": (
        message(
            b"Subject: \xff\xfe\xe9t\xe9 \x80\x81 junk",
            b"From: \xc3\x28 <a\xff@b.example>",
            b"To: \xfe@x, y@\xff",
            b"X-Junk: \x00\x01\x7f",
            body="x",
        ),
        set(),
    ),
    "lone surrogate bytes in headers": (
        # UTF-8 encodings of U+D800 and U+DC80, which no decoder accepts.
        message(b"Subject: \xed\xa0\x80 and \xed\xb2\x80", b"From: x\xed\xa0\x80@y.example"),
        set(),
    ),
    "8-bit content-disposition": (
        message(FROM, b'Content-Disposition: attachment\xff; filename="\xe9.txt"', body="hi"),
        set(),
    ),
    "8-bit content-type": (message(b"Content-Type: \xff/\xfe; boundary=\xff", body="x"), set()),
    "bad rfc 2047 words": (
        message("Subject: =?bogus?Q?x?= =?utf-8?B?!!!?= =?utf-8?Q?=ZZ?= =?utf-8??x?= =?", FROM),
        set(),
    ),
    "bad rfc 2231 filename": (
        message(FROM, "Content-Disposition: attachment; filename*=bogus''%ff%fe.txt", body="x"),
        set(),
    ),
    "bad base64 body": (
        message(FROM, "Content-Transfer-Encoding: base64", body="!!!!not base64@@@=\r\nA"),
        set(),
    ),
    "bad quoted-printable body": (
        message(FROM, "Content-Transfer-Encoding: quoted-printable", body=b"=ZZ=\xff=4\r\n=\r\n="),
        set(),
    ),
    "5000 multipart levels": (nested(5000), {TOO_DEEP}),
    "10000 parts": (
        message(
            "Subject: many",
            'Content-Type: multipart/mixed; boundary="q"',
            body=multipart(
                "q", [b"Content-Type: text/plain\r\n\r\npart %d" % i for i in range(10000)]
            ),
        ),
        {TOO_MANY_PARTS},
    ),
    "5 MB single line": (
        message(FROM, body=b"http://" + b"a" * (5 * 1024 * 1024)),
        {TRUNCATED_MESSAGE},
    ),
    "only headers": (b"Subject: headers only\r\nFrom: a@example.org\r\n", set()),
    "empty": (b"", set()),
    "NUL-filled": (b"\x00" * 100_000, set()),
    "only CRLFs": (b"\r\n" * 10_000, set()),
}


@pytest.mark.parametrize(("raw", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_message_parses_and_names_the_caps_that_bit(raw: bytes, expected: set[str]) -> None:
    m = parse_message(raw)
    assert_well_formed(m, raw)
    assert expected <= set(m.defects)
    caps = {TOO_DEEP, TOO_MANY_PARTS, TRUNCATED_MESSAGE}
    assert caps & set(m.defects) == caps & expected


def test_deep_nesting_keeps_the_headers() -> None:
    # Deeper than the interpreter stack: the stdlib parser itself fails here.
    m = parse_message(nested(5000))
    assert m.subject == "deep"
    assert UNPARSEABLE not in m.defects


@pytest.mark.parametrize("depth", [3, 15])
def test_nesting_within_the_cap_is_followed(depth: int) -> None:
    m = parse_message(nested(depth))
    assert m.defects == []
    assert m.text.strip() == "inner"


def test_nesting_just_past_the_cap_is_cut() -> None:
    m = parse_message(nested(40))
    assert m.defects == [TOO_DEEP]
    assert "inner" not in m.text


def test_parts_are_visited_up_to_the_cap() -> None:
    raw, _ = HOSTILE["10000 parts"]
    m = parse_message(raw)
    assert "part 0" in m.text
    assert "part 254" in m.text
    assert "part 9999" not in m.text


def test_truncated_message_keeps_size_and_prefix() -> None:
    raw, _ = HOSTILE["5 MB single line"]
    m = parse_message(raw)
    assert m.size == len(raw)
    assert len(m.prefix) == 8192
    assert m.url_domains == ["a" * 2000]  # URL regex stops at 2000 characters


def test_headers_only_and_empty() -> None:
    m = parse_message(b"Subject: headers only\r\nFrom: a@example.org\r\n")
    assert (m.subject, m.from_addr, m.text, m.html_text) == (
        "headers only",
        "a@example.org",
        "",
        "",
    )
    empty = parse_message(b"")
    assert (empty.subject, empty.text, empty.headers, empty.size) == ("", "", [], 0)


def test_undeclared_charset_falls_back_to_utf8() -> None:
    m = parse_message(HOSTILE["charset with NUL"][0])
    assert m.text == "héllo"
    m = parse_message(
        message(FROM, 'Content-Type: text/plain; charset="x-unknown"', body="Grüße".encode())
    )
    assert m.text == "Grüße"


def test_charset_guessing_is_bounded_per_message_not_per_part() -> None:
    """Each undeclared 8-bit part used to get its own guess (about 17 ms per 64 KB), so
    256 of them cost seconds in the learning parse, which has no time budget. The
    guesses share ``max_guess_bytes``: past them, text is read as Windows-1252, the
    same on every machine, and the parse says so."""
    cyrillic = ("Привет, это письмо о встрече в четверг. " * 1700).encode("koi8-r")[:65536]  # noqa: RUF001
    part = b"Content-Type: text/plain\r\n\r\n" + cyrillic
    mixed = 'Content-Type: multipart/mixed; boundary="b"'
    raw = message(FROM, mixed, body=multipart("b", [part] * 40))
    limits = dataclasses.replace(DEFAULT_LIMITS, time_budget_ms=10**9)
    m = parse_message(raw, limits)
    assert m.guessed_bytes == DEFAULT_LIMITS.max_guess_bytes  # 4 guesses, not 40
    assert GUESS_BUDGET in m.defects
    assert "встрече" in m.text  # the guessed parts read right
    few = parse_message(message(FROM, mixed, body=multipart("b", [part] * 2)), limits)
    assert few.guessed_bytes == 2 * 65536 and GUESS_BUDGET not in few.defects
    spent = parse_message(raw, dataclasses.replace(limits, max_guess_bytes=0))
    assert spent.guessed_bytes == 0 and GUESS_BUDGET in spent.defects


def test_8bit_junk_keeps_the_ascii_words() -> None:
    # A charset guess must never turn ASCII into other characters (UTF-16 or EBCDIC
    # guesses would hide every word of the message from the filter).
    for junk in (
        b"buy\xc4 buy",
        b"buy b\xceuy",
        b"bu\xb3y pills",
        b"Caf\xe9",
        b"\xed\xb2\x80 lone",
    ):
        m = parse_message(message(b"Subject: " + junk, body=junk))
        for word in junk.split():
            if word.isascii():
                assert word.decode() in m.subject
                assert word.decode() in m.text


# -- what the parser reads -----------------------------------------------------------

HEADERS = message(
    "Received: from a.example by b.example",
    "Received: from b.example by c.example",
    "Received: from c.example\r\n by d.example",
    'From: "Ann Example" <Ann@Example.ORG>',
    "Reply-To: Bob <bob@other.example>",
    "To: one@example.org, Two <two@example.org>",
    "To: three@example.org",
    "Cc: four@example.org, five@example.org",
    "Subject: Quarterly\r\n report",
    "Message-ID: <12345.abc@Mail.Example.COM>",
    "X-Mailer: Foo Mail 2.0",
    body="hello",
)


def test_headers_are_read() -> None:
    m = parse_message(HEADERS)
    assert m.subject == "Quarterly report"
    assert (m.from_name, m.from_addr) == ("Ann Example", "ann@example.org")
    assert m.reply_to == "bob@other.example"
    assert (m.to_count, m.cc_count) == (3, 2)
    assert m.message_id_domain == "mail.example.com"
    assert m.received_hops == 3
    assert m.mailer == "Foo Mail 2.0"
    assert m.content_type == "text/plain"
    assert [name for name, _ in m.headers][:4] == ["received", "received", "received", "from"]
    assert ("subject", "Quarterly report") in m.headers
    assert m.text == "hello"


def test_user_agent_is_the_mailer_when_x_mailer_is_absent() -> None:
    m = parse_message(message("User-Agent: Thunderbird 115", body="x"))
    assert m.mailer == "Thunderbird 115"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("=?iso-8859-1?q?Caf=E9_cr=E8me?=", "Café crème"),
        ("=?ISO-8859-1?Q?Gr=FC=DFe?= aus =?iso-8859-1?q?M=FCnchen?=", "Grüße aus München"),
        (
            "=?utf-8?b?" + base64.b64encode("Grüße aus München".encode()).decode() + "?=",
            "Grüße aus München",
        ),
        ("=?UTF-8?Q?=E2=82=AC100_off?=", "€100 off"),
        ("Re: =?utf-8?q?caf=C3=A9?=", "Re: café"),
    ],
)
def test_rfc2047_subject(header: str, expected: str) -> None:
    assert parse_message(message("Subject: " + header)).subject == expected


def test_raw_utf8_headers_are_decoded() -> None:
    m = parse_message(
        message(
            "Subject: Café crème".encode(),
            'From: "Jürgen" <j@example.de>'.encode(),
            body="x",
        )
    )
    assert m.subject == "Café crème"
    assert (m.from_name, m.from_addr) == ("Jürgen", "j@example.de")


def test_raw_utf8_next_to_an_encoded_word() -> None:
    m = parse_message(message("Subject: =?utf-8?q?Caf=C3=A9?= crème".encode()))
    assert m.subject == "Café crème"


HTML = """<html><head><title>hidden title</title><style>.x { color: stylecolour }</style></head>
<body><script>var scriptword = 1;</script><p>Visible words</p>
<a href="https://Click.Example.NET/buy?id=1">here</a> <a href="mailto:x@y.example">mail</a>
<noscript>noscriptword</noscript></body></html>"""


def test_html_visible_text_and_links() -> None:
    m = parse_message(message(FROM, "Content-Type: text/html; charset=utf-8", body=HTML))
    assert "Visible words" in m.html_text
    assert "here" in m.html_text
    for hidden in ("stylecolour", "scriptword", "hidden title", "noscriptword"):
        assert hidden not in m.html_text
    assert m.text == ""
    assert "click.example.net" in m.url_domains
    assert "https://Click.Example.NET/buy?id=1" in m.urls
    assert not any(u.startswith("mailto:") for u in m.urls)


def test_text_urls_give_domains() -> None:
    body = "Visit https://user@Shop.Example.com:8080/deal, or www.Other.example/x. Not: example.org"
    m = parse_message(message(FROM, body=body))
    assert m.url_domains == ["shop.example.com", "www.other.example"]
    assert m.urls[0] == "https://user@Shop.Example.com:8080/deal"


def test_alternative_parts_feed_text_and_html() -> None:
    body = multipart(
        "alt",
        [
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nplain version",
            b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>html version</p>",
        ],
    )
    m = parse_message(
        message(FROM, 'Content-Type: multipart/alternative; boundary="alt"', body=body)
    )
    assert m.content_type == "multipart/alternative"
    assert m.text.strip() == "plain version"
    assert m.html_text.strip() == "html version"
    assert m.defects == []


def test_attachments() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 fake" * 10).decode()
    csv = base64.b64encode(b"name,iban\nann,DE89 3704 0044 0532 0130 00\n").decode()
    body = multipart(
        "m",
        [
            b"Content-Type: text/plain\r\n\r\nsee attached",
            (
                'Content-Type: application/pdf; name="invoice.pdf"\r\n'
                'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n" + pdf
            ).encode(),
            (
                "Content-Type: application/octet-stream\r\n"
                'Content-Disposition: attachment; filename="=?utf-8?q?d=C3=A4ten.csv?="\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n" + csv
            ).encode(),
            b'Content-Type: application/json\r\nContent-Disposition: attachment\r\n\r\n{"k": "v"}',
            b"Content-Type: image/png\r\n\r\n\x89PNG",
        ],
    )
    m = parse_message(message(FROM, 'Content-Type: multipart/mixed; boundary="m"', body=body))
    assert m.text.strip() == "see attached"
    assert [(a.filename, a.content_type) for a in m.attachments] == [
        ("invoice.pdf", "application/pdf"),
        ("däten.csv", "application/octet-stream"),
        ("", "application/json"),
        ("", "image/png"),
    ]
    assert m.attachments[0].size == len(b"%PDF-1.4 fake" * 10)
    assert m.text_attachments == [
        ("däten.csv", "name,iban\nann,DE89 3704 0044 0532 0130 00\n"),
        ("", '{"k": "v"}'),
    ]


# -- properties ----------------------------------------------------------------------

HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@HYPOTHESIS
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert_well_formed(parse_message(raw), raw)


JUNK = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HEADER_NAMES = st.sampled_from(
    [
        b"Subject",
        b"From",
        b"To",
        b"Cc",
        b"Reply-To",
        b"Message-ID",
        b"Received",
        b"X-Mailer",
        b"Content-Type",
        b"Content-Disposition",
        b"Content-Transfer-Encoding",
        b"X-Anything",
    ]
)
HEADER_VALUES = st.one_of(
    JUNK,
    st.sampled_from(
        [
            b"=?utf-8?b?w6k=?=",
            b"=?bogus?q?x?=",
            b"=?utf-8?B?!!!?=",
            b"text/html; charset=x-unknown",
            b'text/plain; charset="utf-8\x00"',
            b"attachment; filename*=utf-8''%ff.txt",
            b"base64",
            b"quoted-printable",
            b"<a@b>",
        ]
    ),
)
BODIES = st.one_of(
    JUNK,
    st.sampled_from([b"http://x.example/a", b"<a href='//y'>z</a><script>s</script>", b"=ZZ"]),
)


@st.composite
def mime_entities(draw: st.DrawFn, depth: int = 0) -> bytes:
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if depth < 4 and draw(st.booleans()):
        boundary = draw(st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b))
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"x-junk"]))
        quoted = b'"' + boundary.replace(b'"', b"") + b'"' if draw(st.booleans()) else boundary
        parts = draw(st.lists(mime_entities(depth + 1), max_size=4))
        # Sometimes lie about the boundary, drop the close, or nest without separators.
        used = boundary if draw(st.booleans()) else draw(JUNK)
        body = b"".join(b"--" + used + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + used + b"--\r\n"
        head += b"Content-Type: multipart/" + subtype + b"; boundary=" + quoted + b"\r\n"
        return head + b"\r\n" + draw(JUNK) + b"\r\n" + body + draw(JUNK)
    return head + b"\r\n" + draw(BODIES)


@HYPOTHESIS
@given(mime_entities())
def test_random_mime_never_raises(raw: bytes) -> None:
    assert_well_formed(parse_message(raw), raw)
