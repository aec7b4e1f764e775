"""Raw RFC 5322 bytes -> :class:`ParsedMessage`, with bounded work on hostile input.

Mail arrives from anyone, so the parser's first duty is to never raise and never
run away: the bytes handed to the MIME parser, the parts visited, the nesting depth
and the bytes decoded per part are all capped by :class:`ParseLimits`, and each cap
that bites is recorded in ``ParsedMessage.defects`` rather than hidden.
"""

from __future__ import annotations

import codecs
import email
import email.message
import email.parser
import email.utils
import functools
import re
from dataclasses import dataclass, field
from email.header import decode_header
from email.policy import Compat32

from charset_normalizer import from_bytes
from selectolax.lexbor import LexborHTMLParser

__all__ = ["Attachment", "ParseLimits", "ParsedMessage", "parse_message"]


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps on the work one message may cost; every one is a setting."""

    max_bytes: int = 4 * 1024 * 1024
    """Bytes of the raw message handed to the MIME parser (the rest is ignored)."""
    max_part_bytes: int = 256 * 1024
    """Decoded bytes examined per text part."""
    max_parts: int = 256
    """MIME parts visited, depth first."""
    max_depth: int = 16
    """Multipart nesting depth followed."""
    max_headers: int = 512
    """Header fields read per part."""
    max_header_chars: int = 8192
    """Characters kept of one decoded header value."""
    max_urls: int = 256
    """URLs collected per message."""
    prefix_bytes: int = 8192
    """Raw bytes kept verbatim (``ParsedMessage.prefix``) for byte-level features."""


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(slots=True)
class ParsedMessage:
    """What the filter looks at in one message; every field is already decoded text."""

    subject: str = ""
    from_name: str = ""
    from_addr: str = ""
    reply_to: str = ""
    to_count: int = 0
    cc_count: int = 0
    message_id_domain: str = ""
    received_hops: int = 0
    mailer: str = ""
    content_type: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Top-level header fields in order, names lower-cased, values decoded and capped."""
    text: str = ""
    """All text/plain parts, decoded, joined by blank lines."""
    html_text: str = ""
    """Visible text of all text/html parts."""
    urls: list[str] = field(default_factory=list)
    url_domains: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    text_attachments: list[tuple[str, str]] = field(default_factory=list)
    """(filename, decoded text) of text-like attachments, for content checks such as DLP."""
    defects: list[str] = field(default_factory=list)
    """Names of caps that bit and damage that was worked around."""
    size: int = 0
    """Length of the raw message in bytes."""
    prefix: bytes = b""
    """The first ``ParseLimits.prefix_bytes`` of the raw message, headers included."""


_URL_RE = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{2,2000}""")
_DOMAIN_RE = re.compile(r"(?i)^(?:[a-z][a-z0-9+.-]*://)?(?:[^@/?#\s]*@)?([^:/?#\s]+)")
_MSGID_DOMAIN_RE = re.compile(r"@([^>\s@]+)>?")
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
_TEXT_ATTACHMENT_EXT = (".txt", ".csv", ".json", ".xml", ".html", ".htm", ".eml", ".log", ".md")
_TEXT_ATTACHMENT_TYPES = frozenset(
    {"application/json", "application/xml", "application/csv", "message/rfc822"}
)


class _RawHeaders(Compat32):
    """compat32, except that header values are always the raw ``str``.

    Plain compat32 hands back a value holding 8-bit bytes as an ``email.header.Header``
    whose ``str()`` has already replaced them with U+FFFD (so raw UTF-8 headers are lost),
    and which breaks code expecting a ``str``. Here the bytes stay lone surrogates, which
    :func:`decode_header_value` decodes (only for the headers actually read).
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawHeaders()


def parse_message(raw: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """Parse ``raw`` into a :class:`ParsedMessage`; never raises on any input.

    >>> m = parse_message(b"Subject: hi\\r\\nFrom: Ann <ann@example.org>\\r\\n\\r\\nsee http://x.test/a")
    >>> (m.subject, m.from_addr, m.url_domains)
    ('hi', 'ann@example.org', ['x.test'])
    """
    out = ParsedMessage(size=len(raw), prefix=raw[: limits.prefix_bytes])
    data = raw
    if len(data) > limits.max_bytes:
        data = data[: limits.max_bytes]
        out.defects.append("truncated_message")
    try:
        msg = email.message_from_bytes(data, policy=_POLICY)
    except RecursionError:
        # The stdlib parser recurses once per multipart level, so nesting deeper than the
        # interpreter stack fails inside it, before max_depth can apply: keep the top
        # headers and read the undivided body as text.
        out.defects.append("too_deep")
        if _read_headers_only(out, data, limits):
            return out
        out.defects.append("unparseable")
        out.text = data[: limits.max_part_bytes].decode("latin-1")
        _collect_urls(out, out.text, limits)
        return out
    except Exception:  # the stdlib parser is lenient, but guard anyway
        out.defects.append("unparseable")
        out.text = data[: limits.max_part_bytes].decode("latin-1")
        _collect_urls(out, out.text, limits)
        return out
    _read_top_headers(out, msg, limits)
    state = _WalkState()
    try:
        _walk(msg, out, limits, state, depth=0)
    except RecursionError:
        out.defects.append("too_deep")
    out.text = "\n\n".join(state.texts)
    out.html_text = "\n\n".join(state.html_texts)
    for body in (out.text, out.html_text):
        _collect_urls(out, body, limits)
    return out


def _read_headers_only(out: ParsedMessage, data: bytes, limits: ParseLimits) -> bool:
    """Top headers, and the whole body as text, without splitting MIME parts."""
    try:
        msg = email.parser.BytesHeaderParser(policy=_POLICY).parsebytes(data)
    except Exception:
        return False
    _read_top_headers(out, msg, limits)
    out.text = _decode_text(_decoded_payload(msg)[: limits.max_part_bytes], msg, out)
    _collect_urls(out, out.text, limits)
    return True


@dataclass(slots=True)
class _WalkState:
    parts: int = 0
    texts: list[str] = field(default_factory=list)
    html_texts: list[str] = field(default_factory=list)


def _walk(
    part: email.message.Message,
    out: ParsedMessage,
    limits: ParseLimits,
    state: _WalkState,
    depth: int,
) -> None:
    """Visit MIME parts depth first, within the part and depth caps."""
    state.parts += 1
    if state.parts > limits.max_parts:
        if "too_many_parts" not in out.defects:
            out.defects.append("too_many_parts")
        return
    if part.defects and "mime_defects" not in out.defects:
        out.defects.append("mime_defects")
    ctype = _safe_content_type(part)
    if part.is_multipart():
        if depth >= limits.max_depth:
            if "too_deep" not in out.defects:
                out.defects.append("too_deep")
            return
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, email.message.Message):
                    _walk(sub, out, limits, state, depth + 1)
        return
    filename = _safe_filename(part, limits)
    disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
    is_attachment = bool(filename) or disposition == "attachment"
    body = _decoded_payload(part)
    if is_attachment:
        out.attachments.append(Attachment(filename, ctype, len(body)))
        if _is_text_like(filename, ctype):
            text = _decode_text(body[: limits.max_part_bytes], part, out)
            out.text_attachments.append((filename, text))
        return
    if ctype == "text/html":
        html = _decode_text(body[: limits.max_part_bytes], part, out)
        visible, hrefs = html_to_text(html)
        state.html_texts.append(visible)
        for href in hrefs:
            _add_url(out, href, limits)
    elif ctype.startswith("text/") or ctype == "message/rfc822" or not ctype:
        state.texts.append(_decode_text(body[: limits.max_part_bytes], part, out))
    else:
        out.attachments.append(Attachment("", ctype, len(body)))


def html_to_text(html: str) -> tuple[str, list[str]]:
    """Visible text of an HTML document and the targets of its links.

    Script, style and head contents are dropped: spammers hide words there to poison
    filters, and a reader never sees them.
    """
    try:
        tree = LexborHTMLParser(html)
        hrefs = [
            href
            for node in tree.css("a[href], area[href]")
            if (href := node.attributes.get("href"))
        ]
        tree.strip_tags(["script", "style", "head", "noscript", "template"])
        body = tree.body
        text = (body if body is not None else tree.root).text(separator=" ") if tree.root else ""
    except Exception:
        return "", []
    return text, hrefs


def _read_top_headers(out: ParsedMessage, msg: email.message.Message, limits: ParseLimits) -> None:
    items = msg.items()
    if len(items) > limits.max_headers:
        items = items[: limits.max_headers]
        out.defects.append("too_many_headers")
    received = 0
    to_count = cc_count = 0
    for name, value in items:
        key = name.strip().lower()
        text = decode_header_value(value, limits.max_header_chars)
        out.headers.append((key, text))
        if key == "received":
            received += 1
        elif key == "subject" and not out.subject:
            out.subject = text
        elif key == "from" and not out.from_addr:
            out.from_name, out.from_addr = _parse_address(text)
        elif key == "reply-to" and not out.reply_to:
            out.reply_to = _parse_address(text)[1]
        elif key == "to":
            to_count += _count_addresses(text)
        elif key == "cc":
            cc_count += _count_addresses(text)
        elif key == "message-id" and not out.message_id_domain:
            found = _MSGID_DOMAIN_RE.search(text)
            out.message_id_domain = found.group(1).lower() if found else ""
        elif key in ("x-mailer", "user-agent") and not out.mailer:
            out.mailer = text
    out.received_hops = received
    out.to_count, out.cc_count = to_count, cc_count
    out.content_type = _safe_content_type(msg)


def decode_header_value(value: object, max_chars: int = 8192) -> str:
    """Decode RFC 2047 words and raw 8-bit junk in a header value; never raises."""
    raw = _repair_surrogates(str(value)[: max_chars * 4])
    try:
        chunks = decode_header(raw)
    except Exception:
        chunks = [(raw, None)]
    pieces: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes) and charset is None and not raw.isascii():
            # decode_header re-encodes the text between RFC 2047 words this way.
            try:
                piece = chunk.decode("raw-unicode-escape")
                piece.encode("utf-8")  # no lone surrogates from literal "\udcxx" text
                pieces.append(piece)
                continue
            except UnicodeError:
                pass
        if isinstance(chunk, bytes):
            pieces.append(_decode_bytes(chunk, charset))
        else:
            pieces.append(_repair_surrogates(chunk))
    text = "".join(pieces) if len(chunks) == 1 else " ".join(p.strip() for p in pieces)
    return " ".join(text.split())[:max_chars]


def _repair_surrogates(text: str) -> str:
    """The stdlib keeps undecodable header bytes as lone surrogates; decode them for real."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def _parse_address(text: str) -> tuple[str, str]:
    try:
        name, addr = email.utils.parseaddr(text)
    except Exception:
        return "", ""
    return name.strip(), addr.strip().lower()


def _count_addresses(text: str) -> int:
    """Recipients listed in a To/Cc value; a cheap count that tolerates broken syntax."""
    return sum(1 for piece in text.split(",") if "@" in piece)


def _safe_content_type(part: email.message.Message) -> str:
    try:
        return _repair_surrogates(part.get_content_type().lower())
    except Exception:
        return "application/octet-stream"


def _safe_filename(part: email.message.Message, limits: ParseLimits) -> str:
    try:
        name = part.get_filename()
    except Exception:
        return "broken-filename"
    return decode_header_value(name, 256) if name else ""


def _decoded_payload(part: email.message.Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _decode_text(body: bytes, part: email.message.Message, out: ParsedMessage) -> str:
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(body, charset)


def _decode_bytes(body: bytes, charset: str | None) -> str:
    """Bytes -> text: the declared charset when it is real, else UTF-8, else a guess."""
    if not body:
        return ""
    if body.isascii():
        return body.decode("ascii")
    if charset:
        try:
            codec = codecs.lookup(charset.strip().strip('"').lower()).name
        except (LookupError, ValueError):
            codec = ""
        if codec:
            try:
                return body.decode(codec)
            except (UnicodeDecodeError, ValueError):
                return body.decode(codec, "replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if len(body) < _MIN_GUESS_BYTES:
        # Too little text for a statistical guess to beat the commonest undeclared
        # 8-bit charset in mail.
        return body.decode("cp1252", "replace")
    try:
        guesses = [match.encoding for match in from_bytes(body[:65536])]
    except Exception:
        guesses = []
    for encoding in guesses:
        if encoding and _keeps_ascii(encoding):
            return body.decode(encoding, "replace")
    return body.decode("latin-1")


_MIN_GUESS_BYTES = 64


@functools.cache
def _keeps_ascii(encoding: str) -> bool:
    """Whether a guessed charset reads ASCII as ASCII, as every 8-bit mail charset does.

    On short input charset-normalizer may guess UTF-16 or EBCDIC, which turn the ASCII
    words of the text into other characters and hide them from the filter
    (b"buy\xc4 buy" -> "畢쑹戠祵"); real UTF-16 mail declares its charset.
    """
    try:
        return _PRINTABLE_ASCII.decode(encoding) == _PRINTABLE_ASCII.decode("ascii")
    except (LookupError, UnicodeDecodeError):
        return False


def _is_text_like(filename: str, ctype: str) -> bool:
    return (
        ctype.startswith("text/")
        or ctype in _TEXT_ATTACHMENT_TYPES
        or filename.lower().endswith(_TEXT_ATTACHMENT_EXT)
    )


def _collect_urls(out: ParsedMessage, text: str, limits: ParseLimits) -> None:
    if "http" not in text and "www." not in text and "HTTP" not in text and "WWW." not in text:
        return
    for found in _URL_RE.finditer(text):
        if len(out.urls) >= limits.max_urls:
            return
        _add_url(out, found.group(0).rstrip(".,;:!?"), limits)


def _add_url(out: ParsedMessage, url: str, limits: ParseLimits) -> None:
    url = url.strip()
    if not url or len(out.urls) >= limits.max_urls or url.startswith(("mailto:", "#")):
        return
    out.urls.append(url[:2048])
    found = _DOMAIN_RE.match(url)
    if found:
        domain = found.group(1).lower().rstrip(".")
        if domain and domain not in out.url_domains:
            out.url_domains.append(domain)
