"""Allow and block lists: entries that cannot be abused (guard), shared by every worker (store)."""

from mailsift.service.lists.guard import (
    InvalidListEntry,
    ListGuardRefused,
    check_allow_entry,
    normalize_entry,
)
from mailsift.service.lists.store import NO_MATCH, ListEntry, ListMatch, ListStore

__all__ = [
    "NO_MATCH",
    "InvalidListEntry",
    "ListEntry",
    "ListGuardRefused",
    "ListMatch",
    "ListStore",
    "check_allow_entry",
    "normalize_entry",
]
