"""Content fingerprints: one id for one message, however it travelled.

The same message seen by the gateway and later reported by a user differs in its
transport headers (Received, Delivered-To, added X- fields), so the id covers what the
sender wrote: sender address, subject, decoded text and attachment names and sizes.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light to import: the report command checks fingerprints too
    from mailsift.models.parse import ParsedMessage

__all__ = ["fingerprint", "is_fingerprint"]

_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


def is_fingerprint(value: str) -> bool:
    """Whether ``value`` is spelled as :func:`fingerprint` spells ids (32 lower-case hex)."""
    return _FINGERPRINT.fullmatch(value) is not None


def fingerprint(msg: ParsedMessage) -> str:
    """128-bit hex id of a message's content.

    >>> from mailsift.models.parse import parse_message
    >>> a = parse_message(b"Received: by a\\r\\nSubject: hi\\r\\n\\r\\nsame  text\\r\\n")
    >>> b = parse_message(b"Received: by b\\r\\nSubject: hi\\r\\n\\r\\nsame text\\n")
    >>> fingerprint(a) == fingerprint(b)
    True
    """
    digest = hashlib.sha256()
    for piece in (
        msg.from_addr,
        msg.subject,
        " ".join(msg.text.split()),
        " ".join(msg.html_text.split()),
        *(f"{a.filename}:{a.content_type}:{a.size}" for a in msg.attachments),
    ):
        digest.update(piece.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]
