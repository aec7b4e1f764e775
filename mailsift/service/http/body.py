"""Reading a message body: content type first, size while streaming, never all-then-check."""

from __future__ import annotations

from fastapi import Request

from mailsift.service.errors import MessageTooLarge, UnsupportedMediaType, UnusableMessage

MESSAGE_TYPES = frozenset({"message/rfc822", "application/octet-stream"})


async def read_message(
    request: Request, limit: int, types: frozenset[str] = MESSAGE_TYPES
) -> bytes:
    """The raw body, refused with 415 / 413 / 422 before any parsing work is done."""
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype not in types:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {', '.join(sorted(types))}, not {ctype or 'missing'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MessageTooLarge(f"message of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise MessageTooLarge(f"message exceeds the limit of {limit} bytes")
    if not body.strip():
        raise UnusableMessage("the body is empty; send the raw message (RFC 5322 bytes)")
    return bytes(body)
