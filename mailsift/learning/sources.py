"""Who taught an example, and whose word counts more.

Every training-log entry records its source. The shared model's label for a message is
held by one source at a time, and a lower source never replaces a higher one's label:
an administrator's label beats users who agree (consensus), which beats clean outbound
mail. A single user's report never reaches the shared model at all: it lives in that
user's personal layer (see :mod:`mailsift.learning.personal`) until others agree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

__all__ = ["SHARED", "VIAS", "Source", "Via", "outranks", "rank"]


class Source(StrEnum):
    ADMIN = "admin"
    """``/v1/train``, ``mailsift train``, an administrator's confirmation or forget."""
    USER = "user"
    """A user's report (personal layer); on the shared layer, users in consensus."""
    OUTBOUND = "outbound"
    """Clean outbound mail, learned as ham."""


Via = Literal["api", "imap"]
"""How a user's report came in: the API (a mail client, ``mailsift report``) or a move
into or out of the Junk folder (``mailsift report --via imap``)."""
VIAS: tuple[Via, ...] = get_args(Via)

SHARED = ""
"""The layer of shared-model entries; a personal entry's layer is its user's address."""

_RANK: dict[Source, int] = {Source.OUTBOUND: 0, Source.USER: 1, Source.ADMIN: 2}


def rank(source: Source) -> int:
    """Higher is trusted more: outbound < users in consensus < admin."""
    return _RANK[source]


def outranks(incoming: Source, holder: Source) -> bool:
    """Whether ``incoming`` may replace a label that ``holder`` set (equal ranks may)."""
    return rank(incoming) >= rank(holder)
