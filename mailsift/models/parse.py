"""Raw RFC 5322 bytes -> :class:`ParsedMessage`, with bounded work on hostile input.

Mail arrives from anyone, so the parser's first duty is to never raise and never
run away: the bytes handed to the MIME parser, the parts visited, the nesting depth
and the bytes decoded per part are all capped by :class:`ParseLimits`, and each cap
that bites is recorded in ``ParsedMessage.defects`` rather than hidden.

The stdlib parser has super-linear corners of its own, so the caps reach inside it:
header fields per part, and the length and parameter count of ``Content-Type`` and
``Content-Disposition``, are cut as the parser stores them (its parameter splitter is
quadratic); entities nested deeper than the cap are read as opaque text, so it never
tests each line against more than ``max_depth`` boundaries; the bytes are fed in
chunks under a wall-clock budget; and HTML is flattened past a nesting depth before
lexbor sees it (its tree builder is quadratic in depth).
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.utils
import functools
import re
import time
from dataclasses import dataclass, field
from email.policy import Compat32

from mailsift.models.decoding import decode_bytes, decode_header_value, repair_surrogates
from mailsift.models.html import html_to_text

__all__ = ["DEFECTS", "Attachment", "ParseLimits", "ParsedMessage", "parse_message"]


# Names of the caps that bit and the damage worked around (``ParsedMessage.defects``);
# the structure check reports each as the reason ``mime_<name>``.
TRUNCATED_MESSAGE = "truncated_message"
UNPARSEABLE = "unparseable"
TOO_DEEP = "too_deep"
TOO_MANY_PARTS = "too_many_parts"
TOO_MANY_HEADERS = "too_many_headers"
MIME_DEFECTS = "mime_defects"
TIME_BUDGET = "time_budget"
GUESS_BUDGET = "charset_guesses"
DEFECTS = (
    TRUNCATED_MESSAGE, UNPARSEABLE, TOO_DEEP, TOO_MANY_PARTS, TOO_MANY_HEADERS, MIME_DEFECTS,
    TIME_BUDGET, GUESS_BUDGET,
)  # fmt: skip


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
    max_guess_bytes: int = 256 * 1024
    """Bytes of undeclared, non-UTF-8 text handed to the charset guesser per message (it
    costs about 17 ms per 64 KB); past them such text is read as Windows-1252. A count,
    not a clock, so the learning parse, which has no time budget, stays bounded and the
    same on every replica."""
    time_budget_ms: int = 1000
    """Wall-clock milliseconds for one message; past it, the rest is skipped (``time_budget``).

    The other caps already bound the work; this is the backstop for a slow machine or a
    corner they miss. The first 16 top header fields and the first leaf part the parser
    got to are always read.
    """


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
    guessed_bytes: int = 0
    """Bytes whose charset was guessed (at most ``ParseLimits.max_guess_bytes``)."""


_URL_RE = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{2,2000}""")
_DOMAIN_RE = re.compile(r"(?i)^(?:[a-z][a-z0-9+.-]*://)?(?:[^@/?#\s]*@)?([^:/?#\s]+)")
_MSGID_DOMAIN_RE = re.compile(r"@([^>\s@]+)>?")
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

# Parameter-carrying fields: the stdlib splits parameters in quadratic time (it copies
# the rest of the value per ";" and recounts quotes from the start), so cut them to
# what any real one needs; a long RFC 2231 file name fits.
_PARAM_FIELDS = frozenset({"content-type", "content-disposition"})
_MAX_PARAM_FIELD_CHARS = 4096
_MAX_PARAMS = 64
_FEED_CHUNK = 64 * 1024


class _BoundedMessage(email.message.Message):
    """A MIME entity that applies :class:`ParseLimits` while the stdlib parser builds it.

    * header fields past ``max_headers`` are dropped and values are cut
      (``headers_dropped`` says so);
    * an entity at ``max_depth`` or deeper claims to be text, so the parser reads it as
      an opaque body instead of descending (``beyond_depth``): nested entities would
      each add a boundary every later line is tested against, and a level of recursion.
    """

    def __init__(self, policy: Compat32, limits: ParseLimits) -> None:
        super().__init__(policy)
        self.limits = limits
        self.depth = 0
        self.headers_dropped = False

    def set_raw(self, name: str, value: str) -> None:
        if len(self) >= self.limits.max_headers:
            self.headers_dropped = True
            return
        if name.strip().lower() in _PARAM_FIELDS:
            value = value[:_MAX_PARAM_FIELD_CHARS]
            pieces = value.split(";", _MAX_PARAMS)
            if len(pieces) > _MAX_PARAMS:
                value = ";".join(pieces[:_MAX_PARAMS])
        else:
            value = value[: self.limits.max_header_chars * 4]
        super().set_raw(name, value)

    def attach(self, payload: email.message.Message) -> None:  # type: ignore[override]
        if isinstance(payload, _BoundedMessage):
            payload.depth = self.depth + 1
        super().attach(payload)

    @property
    def beyond_depth(self) -> bool:
        return self.depth >= self.limits.max_depth and super().get_content_maintype() in (
            "multipart",
            "message",
        )

    def get_content_maintype(self) -> str:
        return "text" if self.beyond_depth else super().get_content_maintype()


class _Stop(Exception):
    """Raised inside the stdlib parser to end it early; the tree built so far is kept."""

    def __init__(self, defect: str) -> None:
        super().__init__(defect)
        self.defect = defect


class _Builder:
    """The parser's message factory: counts the entities it makes and keeps the first.

    The parser creates entities depth first, the order :func:`_walk` visits them in, so
    once it asks for one past ``max_parts`` (or past the deadline) nothing more that
    would be examined can follow: :class:`_Stop` ends the parse there instead of letting
    it split 100 000 parts no one reads.
    """

    def __init__(self, limits: ParseLimits, deadline: float | None) -> None:
        self.limits = limits
        self.deadline = deadline
        self.made = 0
        self.root: _BoundedMessage | None = None

    def forget(self) -> None:
        """Drop what was made so far (a parser may make a probe instance on creation)."""
        self.made, self.root = 0, None

    def __call__(self, policy: Compat32 = _POLICY) -> _BoundedMessage:
        self.made += 1
        if self.made > self.limits.max_parts:
            raise _Stop(TOO_MANY_PARTS)
        if self.made > 1 and self.deadline is not None and time.monotonic() > self.deadline:
            raise _Stop(TIME_BUDGET)
        msg = _BoundedMessage(policy, self.limits)
        if self.root is None:
            self.root = msg
        return msg


def parse_message(raw: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """Parse ``raw`` into a :class:`ParsedMessage`; never raises on any input.

    >>> m = parse_message(b"Subject: hi\\r\\nFrom: Ann <ann@example.org>\\r\\n\\r\\nsee http://x.test/a")
    >>> (m.subject, m.from_addr, m.url_domains)
    ('hi', 'ann@example.org', ['x.test'])
    """
    deadline = time.monotonic() + limits.time_budget_ms / 1000
    out = ParsedMessage(size=len(raw), prefix=raw[: limits.prefix_bytes])
    data = raw
    if len(data) > limits.max_bytes:
        data = data[: limits.max_bytes]
        out.defects.append(TRUNCATED_MESSAGE)
    try:
        msg = _parse_mime(data, limits, deadline, out)
    except RecursionError:
        # The stdlib parser recurses once per multipart level, so nesting deeper than the
        # interpreter stack fails inside it, before max_depth can apply: keep the top
        # headers and read the undivided body as text.
        out.defects.append(TOO_DEEP)
        if _read_headers_only(out, data, limits):
            return out
        out.defects.append(UNPARSEABLE)
        out.text = data[: limits.max_part_bytes].decode("latin-1")
        _collect_urls(out, out.text, limits)
        return out
    except Exception:  # the stdlib parser is lenient, but guard anyway
        out.defects.append(UNPARSEABLE)
        out.text = data[: limits.max_part_bytes].decode("latin-1")
        _collect_urls(out, out.text, limits)
        return out
    _read_top_headers(out, msg, limits, deadline)
    state = _WalkState(deadline)
    try:
        _walk(msg, out, limits, state, depth=0)
    except RecursionError:
        out.defects.append(TOO_DEEP)
    out.text = "\n\n".join(state.texts)
    out.html_text = "\n\n".join(state.html_texts)
    for body in (out.text, out.html_text):
        _collect_urls(out, body, limits)
    return out


def _parse_mime(
    data: bytes, limits: ParseLimits, deadline: float, out: ParsedMessage
) -> email.message.Message:
    """The stdlib parser fed in chunks until the data, the parts or the time budget run out.

    When it is stopped early, what it has built so far stands: the message's start,
    as if it ended there.
    """
    builder = _Builder(limits, deadline)
    parser = email.parser.BytesFeedParser(builder, policy=_POLICY)
    builder.forget()
    try:
        for start in range(0, len(data), _FEED_CHUNK):
            if start and time.monotonic() > deadline:
                _note(out, TIME_BUDGET)
                break  # and close: the part being read keeps the lines read so far
            parser.feed(data[start : start + _FEED_CHUNK])
        return parser.close()
    except _Stop as stop:  # from the factory, between entities: nothing half-read is lost
        _note(out, stop.defect)
        if builder.root is None:  # stopped before the first entity: nothing was read
            return _BoundedMessage(_POLICY, limits)
        return builder.root


def _note(out: ParsedMessage, defect: str) -> None:
    if defect not in out.defects:
        out.defects.append(defect)


def _read_headers_only(out: ParsedMessage, data: bytes, limits: ParseLimits) -> bool:
    """Top headers, and the whole body as text, without splitting MIME parts."""
    try:
        bounded = functools.partial(_BoundedMessage, limits=limits)
        msg = email.parser.BytesHeaderParser(bounded, policy=_POLICY).parsebytes(data)
    except Exception:
        return False
    _read_top_headers(out, msg, limits, None)
    out.text = _decode_text(
        _decoded_payload(msg, limits.max_part_bytes)[: limits.max_part_bytes], msg, out, limits
    )
    _collect_urls(out, out.text, limits)
    return True


@dataclass(slots=True)
class _WalkState:
    deadline: float
    parts: int = 0
    leaves: int = 0
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
        _note(out, TOO_MANY_PARTS)
        return
    if state.leaves and time.monotonic() > state.deadline:
        _note(out, TIME_BUDGET)
        return
    if part.defects:
        _note(out, MIME_DEFECTS)
    if isinstance(part, _BoundedMessage) and part.headers_dropped:
        _note(out, TOO_MANY_HEADERS)
    ctype = _safe_content_type(part)
    if part.is_multipart() or (isinstance(part, _BoundedMessage) and part.beyond_depth):
        if depth >= limits.max_depth:
            _note(out, TOO_DEEP)
            return
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, email.message.Message):
                    _walk(sub, out, limits, state, depth + 1)
        return
    state.leaves += 1
    filename = _safe_filename(part, limits)
    disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
    is_attachment = bool(filename) or disposition == "attachment"
    inline_text = not is_attachment and (
        ctype.startswith("text/") or ctype == "message/rfc822" or not ctype
    )
    # Only the start of inline text is read; an attachment's whole size is a feature.
    body = _decoded_payload(part, limits.max_part_bytes if inline_text else None)
    if is_attachment:
        out.attachments.append(Attachment(filename, ctype, len(body)))
        if _is_text_like(filename, ctype):
            text = _decode_text(body[: limits.max_part_bytes], part, out, limits)
            out.text_attachments.append((filename, text))
        return
    if ctype == "text/html":
        html = _decode_text(body[: limits.max_part_bytes], part, out, limits)
        visible, hrefs = html_to_text(html)
        state.html_texts.append(visible)
        for href in hrefs:
            _add_url(out, href, limits)
    elif ctype.startswith("text/") or ctype == "message/rfc822" or not ctype:
        state.texts.append(_decode_text(body[: limits.max_part_bytes], part, out, limits))
    else:
        out.attachments.append(Attachment("", ctype, len(body)))


# Decoding RFC 2047 words costs ~20 us each, and 512 fields of 32 KB hold half a million:
# past this many raw characters in the top header block, a value keeps only its start.
_HEADER_BLOCK_CHARS = 256 * 1024
_HEADER_TAIL_CHARS = 256


def _read_top_headers(
    out: ParsedMessage, msg: email.message.Message, limits: ParseLimits, deadline: float | None
) -> None:
    items = msg.items()
    if len(items) > limits.max_headers:
        items = items[: limits.max_headers]
        _note(out, TOO_MANY_HEADERS)
    received = 0
    to_count = cc_count = 0
    block = _HEADER_BLOCK_CHARS
    guesses = _Guesses(out, limits.max_guess_bytes)
    for i, (name, value) in enumerate(items):
        if deadline is not None and i >= 16 and i % 16 == 0 and time.monotonic() > deadline:
            _note(out, TIME_BUDGET)
            break
        key = name.strip().lower()
        if len(value) > block:
            value = value[: max(block, _HEADER_TAIL_CHARS)]
        block -= len(value)
        text = decode_header_value(value, limits.max_header_chars, guesses.decode)
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
        return repair_surrogates(part.get_content_type().lower())
    except Exception:
        return "application/octet-stream"


def _safe_filename(part: email.message.Message, limits: ParseLimits) -> str:
    try:
        name = part.get_filename()
    except Exception:
        return "broken-filename"
    return decode_header_value(name, 256) if name else ""


# Encoded characters per decoded byte, at most: quoted-printable's "=XX" plus soft breaks.
_ENCODED_PER_BYTE = 4
_ENCODED_SLACK = 1024


def _decoded_payload(part: email.message.Message, limit: int | None = None) -> bytes:
    """The part's body with its transfer encoding undone; with ``limit``, only as much of
    the encoded text is decoded as can yield ``limit`` bytes (cut after decoding too)."""
    source = part
    try:
        encoded = part.get_payload()
    except Exception:
        encoded = None
    if limit is not None and isinstance(encoded, str):
        room = limit * _ENCODED_PER_BYTE + _ENCODED_SLACK
        if len(encoded) > room:
            source = email.message.Message(_POLICY)
            source["Content-Transfer-Encoding"] = str(part.get("Content-Transfer-Encoding", ""))
            # At a line end: base64 lines are whole quanta, and no "=XX" is split.
            end = encoded.rfind("\n", 0, room)
            source.set_payload(encoded[: end + 1 if end > 0 else room - room % 4])
    try:
        payload = source.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload if limit is None else payload[:limit]
    try:
        raw = source.get_payload()
    except Exception:
        return b""
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _decode_text(
    body: bytes, part: email.message.Message, out: ParsedMessage, limits: ParseLimits
) -> str:
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _Guesses(out, limits.max_guess_bytes).decode(body, charset)


@dataclass(frozen=True, slots=True)
class _Guesses:
    """Decoding against the message's allowance of charset guessing
    (``ParseLimits.max_guess_bytes``), which bodies and header values share."""

    out: ParsedMessage
    limit: int

    def decode(self, body: bytes, charset: str | None) -> str:
        text, used = decode_bytes(body, charset, self.limit - self.out.guessed_bytes)
        if used < 0:
            _note(self.out, GUESS_BUDGET)
        else:
            self.out.guessed_bytes += used
        return text


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
