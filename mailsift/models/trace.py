"""Header fields that the receiving side writes, and so say nothing about the sender.

The receiving site's servers stamp each message with results of their own: SPF and
authentication results, ARC seals, Exchange's organisation stamps, and mailsift's own
``X-Mailsift-*`` verdict headers on mail it delivered. Which of them a message carries
depends on where it was received, not on who sent it; learned as features, they teach
a model the collecting site's set-up (a 2007 corpus's ham carried ``Received-SPF`` and
its spam did not, so modern phishing looked like ham), and mailsift's own headers on a
reported message would teach the model its own verdict. The numbers in ``Received``
(times, dates, addresses, queue ids) are of the same kind: they tell when and by which
host, never what.
"""

from __future__ import annotations

import re

__all__ = ["OWN_HEADER_PREFIX", "added_by_receiver", "without_receiver_fields"]

OWN_HEADER_PREFIX = "X-Mailsift-"
"""mailsift's own verdict headers (the milter writes them and removes any it received)."""

_RECEIVER_ADDED = (
    "received-spf",
    "authentication-results",
    "arc-",
    "x-ms-exchange-organization-",
    OWN_HEADER_PREFIX.lower(),
)


_AT_LINE_START = tuple(b"\n" + p.encode() for p in _RECEIVER_ADDED)
_FIELD_RE = re.compile(
    rb"^(?:" + b"|".join(re.escape(p.encode()) for p in _RECEIVER_ADDED) + rb")[^:\r\n]*:",
    re.IGNORECASE | re.MULTILINE,
)


def without_receiver_fields(raw: bytes) -> bytes:
    """``raw`` (a message's first bytes) without the header fields the receiving side
    adds, continuation lines included, so the byte view sees the message as sent.

    Messages without any (nearly all) are returned as they are, after one search.

    >>> without_receiver_fields(b"ARC-Seal: i=1;\\r\\n b=x\\r\\nSubject: hi\\r\\n\\r\\nbody")
    b'Subject: hi\\r\\n\\r\\nbody'
    """
    # The header section, its last line's end included; the blank line starts the rest.
    end = raw.find(b"\n\n")
    if end != -1:
        end += 1
    crlf = raw.find(b"\r\n\r\n")
    if crlf != -1 and (end == -1 or crlf + 2 < end):
        end = crlf + 2
    head = raw if end == -1 else raw[:end]
    lowered = b"\n" + head.lower()  # substring tests in C: a few µs, where the regex took 13
    if not any(name in lowered for name in _AT_LINE_START):
        return raw
    kept: list[bytes] = []
    skipping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a continuation belongs to the field before
            if not skipping:
                kept.append(line)
            continue
        skipping = _FIELD_RE.match(line) is not None
        if not skipping:
            kept.append(line)
    return b"".join(kept) + (b"" if end == -1 else raw[end:])


def added_by_receiver(name: str) -> bool:
    """Whether a (lower-case) header field name is one the receiving side adds.

    >>> added_by_receiver("arc-seal"), added_by_receiver("dkim-signature")
    (True, False)
    """
    return name.startswith(_RECEIVER_ADDED)
