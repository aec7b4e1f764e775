"""Bytes in some charset -> text: message bodies and header values.

A declared charset is honoured only when mail really uses it
(:mod:`mailsift.models.charsets`); undeclared 8-bit text is read as UTF-8 when it is,
else by a statistical guess (charset-normalizer), which costs about 17 ms per 64 KB, so
callers say how many bytes a guess may still read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from email.header import decode_header

from charset_normalizer import from_bytes

from mailsift.models.charsets import decode_declared

__all__ = ["Decode", "decode_bytes", "decode_header_value", "repair_surrogates"]

_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
_MIN_GUESS_BYTES = 64
_GUESS_BYTES = 65536
"""Bytes one guess reads at most."""


def decode_bytes(
    body: bytes, charset: str | None, guess_room: int = _GUESS_BYTES
) -> tuple[str, int]:
    """Bytes -> text: the declared charset when mail uses it, else UTF-8, else a guess
    from at most ``guess_room`` bytes; with the bytes guessed from (-1: no room left).

    Callers cut ``body`` to what they read first; every codec used here is linear."""
    if not body:
        return "", 0
    if body.isascii():
        return body.decode("ascii"), 0
    # Only charsets mail really uses: others (punycode, idna, zlib …) are read as undeclared.
    declared = decode_declared(body, charset, len(body))
    if declared is not None:
        return declared, 0
    try:
        return body.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    if len(body) < _MIN_GUESS_BYTES:
        # Too little text for a statistical guess to beat the commonest undeclared
        # 8-bit charset in mail.
        return body.decode("cp1252", "replace"), 0
    sample = body[: min(_GUESS_BYTES, guess_room)]
    if len(sample) < _MIN_GUESS_BYTES:
        return body.decode("cp1252", "replace"), -1
    try:
        guesses = [match.encoding for match in from_bytes(sample)]
    except Exception:
        guesses = []
    for encoding in guesses:
        if encoding and _keeps_ascii(encoding):
            return body.decode(encoding, "replace"), len(sample)
    return body.decode("latin-1"), len(sample)


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


Decode = Callable[[bytes, str | None], str]


def _decode_alone(body: bytes, charset: str | None) -> str:
    return decode_bytes(body, charset)[0]


def decode_header_value(value: object, max_chars: int = 8192, decode: Decode | None = None) -> str:
    """Decode RFC 2047 words and raw 8-bit junk in a header value; never raises.

    ``decode`` turns bytes in a charset into text; a parse passes one that spends the
    message's guessing allowance (``ParseLimits.max_guess_bytes``)."""
    decode = decode or _decode_alone
    raw = repair_surrogates(str(value)[: max_chars * 4], decode)
    if "=?" not in raw:  # no encoded word (most fields): what decode_header would return
        return " ".join(raw.split())[:max_chars]
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
            pieces.append(decode(chunk, charset))
        else:
            pieces.append(repair_surrogates(chunk, decode))
    text = "".join(pieces) if len(chunks) == 1 else " ".join(p.strip() for p in pieces)
    return " ".join(text.split())[:max_chars]


def repair_surrogates(text: str, decode: Decode = _decode_alone) -> str:
    """The stdlib keeps undecodable header bytes as lone surrogates; decode them for real."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return decode(text.encode("utf-8", "surrogateescape"), None)
