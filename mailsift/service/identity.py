"""One way to turn what a client calls a user, a sender or a recipient into a key.

Every endpoint that takes an identity (``user``, ``mail_from``, ``rcpt``, a path's
``{user}``, a list's owner, an event's login) keys it the same way, and checks it
*after* normalising: lower-casing may lengthen a value ("İ", U+0130, becomes two code
points), so a bound checked before it lets a 640-character key through to a store
that refuses it (a 500, and a gateway failing open) or keeps it.
"""

from __future__ import annotations

import unicodedata

from mailsift.service.errors import BadRequest

__all__ = ["MAX_IDENTITY", "InvalidIdentity", "identity_key", "optional_identity"]

MAX_IDENTITY = 320
"""Characters of a key, after normalising (the longest legal address)."""
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format, surrogates, breaks


class InvalidIdentity(BadRequest, ValueError):
    """An identity that cannot be a key (400 ``bad_request``). A ValueError too, so a
    pydantic validator that raises it gives the same 400."""


def identity_key(value: str, what: str = "user") -> str:
    """``value`` stripped (of spaces and ``<>``) and lower-cased, then checked: 1 to
    :data:`MAX_IDENTITY` characters, no control or format characters."""
    key = value.strip().strip("<>").strip().lower()
    if not key:
        raise InvalidIdentity(f"{what} must not be empty")
    if len(key) > MAX_IDENTITY:
        raise InvalidIdentity(
            f"{what} must be at most {MAX_IDENTITY} characters once lower-cased "
            f"(this one has {len(key)})"
        )
    if any(unicodedata.category(c) in _REFUSED for c in key):
        raise InvalidIdentity(f"{what} must not hold control or format characters")
    return key


def optional_identity(value: str | None, what: str) -> str | None:
    """:func:`identity_key` for a value that may be absent; an empty one (the null
    sender ``<>``) is absent."""
    if value is None or not value.strip().strip("<>").strip():
        return None
    return identity_key(value, what)
