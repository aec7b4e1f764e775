"""Which declared charsets are honoured, and bounded decoding of bytes into text.

A charset label comes from the sender, and Python's codec registry holds more than text
encodings: ``punycode`` and ``idna`` decode in quadratic time (600 KB took 24 s),
``zlib``/``base64_codec``/``uu`` are byte transforms, ``rot13`` maps str to str. So a
label counts only when it names a charset mail really uses (:data:`MAIL_CHARSETS`, all
decoded by linear C codecs); any other label is read as if none had been given. Every
caller passes the most bytes it will look at, and the decoder cuts before decoding.
"""

from __future__ import annotations

import codecs
import functools

__all__ = ["MAIL_CHARSETS", "decode_declared", "mail_codec"]

_LABELS = (
    "us-ascii utf-8 utf-16 utf-16le utf-16be utf-32 utf-32le utf-32be "
    "iso-8859-1 iso-8859-2 iso-8859-3 iso-8859-4 iso-8859-5 iso-8859-6 iso-8859-7 "
    "iso-8859-8 iso-8859-9 iso-8859-10 iso-8859-11 iso-8859-13 iso-8859-14 iso-8859-15 "
    "iso-8859-16 windows-1250 windows-1251 windows-1252 windows-1253 windows-1254 "
    "windows-1255 windows-1256 windows-1257 windows-1258 cp874 koi8-r koi8-u "
    "ibm437 ibm850 ibm852 ibm866 mac-roman mac-cyrillic tis-620 "
    "gb2312 gbk gb18030 hz big5 big5hkscs cp950 "
    "shift_jis cp932 euc-jp iso-2022-jp iso-2022-jp-2 euc-kr cp949 iso-2022-kr johab"
)
MAIL_CHARSETS: frozenset[str] = frozenset(codecs.lookup(label).name for label in _LABELS.split())
"""Canonical codec names of the charsets honoured when declared."""

_MAX_LABEL = 40


@functools.lru_cache(maxsize=512)
def _lookup(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return None
    return name if name in MAIL_CHARSETS else None


def mail_codec(label: str | None) -> str | None:
    """The codec for a declared charset ``label``, or None when it is no mail charset."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if not label or len(label) > _MAX_LABEL:
        return None
    return _lookup(label)


def decode_declared(body: bytes, label: str | None, max_bytes: int) -> str | None:
    """The first ``max_bytes`` of ``body`` decoded in charset ``label`` (errors replaced);
    None when ``label`` is no mail charset, so the caller applies its own fallback."""
    codec = mail_codec(label)
    if codec is None:
        return None
    return body[:max_bytes].decode(codec, "replace")
