"""Allow and block lists on the state database, matched from memory.

Scoring must not wait on the database for every message, so each process holds the whole
list in memory and matches against that. A version counter, bumped in the same
transaction as every change, tells a process cheaply (one single-row read) whether its
copy is stale: :meth:`ListStore.run` checks it every ``refresh_seconds`` in the background,
and without that task :meth:`ListStore.match` checks it itself once that long has passed.

Consistency: a change committed by any process or replica is seen by every other
process's matches within ``refresh_seconds`` (plus one refresh query); the process that
made it sees it at once. If the database is unreachable, matching goes on with the last
copy and the refresh is retried every ``refresh_seconds``.

Precedence: an address entry beats a domain entry, a deeper domain beats its parent, and
at equal specificity block beats allow. Global entries apply to every message; a user's
entries to mail for or from that user. Each user is decided on its own (global plus that
user's entries): the scoring asks once for the message (global entries; outbound, the
sender's too) and once per inbound recipient, whose own entry then changes only that
recipient's verdict (:func:`mailsift.service.checks.lists.owner_reasons`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Engine,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.lists.guard import (
    Scope,
    check_allow_entry,
    check_scope,
    entry_key,
    normalize_entry,
    normalize_user,
)
from mailsift.service.settings import Settings

__all__ = ["NO_MATCH", "Kind", "ListEntry", "ListMatch", "ListStore"]

Kind = Literal["allow", "block"]
KINDS: tuple[Kind, ...] = ("allow", "block")
MAX_LIST = 10_000
_LOCK_KEY = lock_key_for("mailsift.lists")
_VERSION = "version"

log = logging.getLogger("mailsift.lists")

_metadata = MetaData()
_entries = Table(
    "list_entries",
    _metadata,
    Column("kind", String(5), primary_key=True),
    Column("scope", String(6), primary_key=True),
    Column("owner", String(320), primary_key=True),  # the user; "" for global entries
    Column("entry", String(320), primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(320), nullable=False),
    CheckConstraint("kind IN ('allow', 'block')", name="list_entries_kind"),
    CheckConstraint("scope IN ('global', 'user')", name="list_entries_scope"),
)
_meta = Table(
    "list_meta",
    _metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class ListEntry:
    kind: Kind
    scope: Scope
    user: str | None
    entry: str
    created_at: float
    created_by: str

    @property
    def is_address(self) -> bool:
        return "@" in self.entry

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = "address" if self.is_address else "domain"
        out["created_at"] = datetime.fromtimestamp(self.created_at, UTC).isoformat()
        return out


@dataclass(frozen=True, slots=True)
class ListMatch:
    """The entry that decided a sender, or ``kind=None`` when nothing matched."""

    kind: Kind | None
    entry: str | None = None
    scope: Scope | None = None
    user: str | None = None


NO_MATCH = ListMatch(None)

# (user key, entry) -> entries for it ("" = global); at most one per kind.
_Index = dict[tuple[str, str], tuple[ListEntry, ...]]


class ListStore:
    """Allow/block entries, shared by every worker and replica through the state database."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._index: _Index = {}
        self._version = -1
        self._checked_at = float("-inf")
        self._refreshing = threading.Lock()
        self._background = False
        with write_transaction(engine, lock_key=_LOCK_KEY) as conn:
            # Under the write lock, so processes starting together create tables once.
            _metadata.create_all(conn)
            if conn.execute(select(_meta.c.value).where(_meta.c.key == _VERSION)).first() is None:
                conn.execute(insert(_meta).values(key=_VERSION, value=0))
        self.refresh()

    # --- matching (hot path: memory only, unless a refresh is due) ----------------------

    def match(self, from_addr: str | None, users: Iterable[str | None] = ()) -> ListMatch:
        """Decide a sender (the From address) for mail for or from ``users``."""
        if not self._background and self._clock() - self._checked_at >= self.refresh_seconds:
            self.try_refresh()
        address = entry_key(from_addr or "")
        if not address:
            return NO_MATCH
        domain = address.rpartition("@")[2]
        labels = domain.split(".")
        keys = [address, *(".".join(labels[i:]) for i in range(len(labels)))]
        index = self._index  # one consistent snapshot, even if a refresh swaps it meanwhile
        parties = [u for u in dict.fromkeys(_user_key(u) for u in users) if u] or [""]
        decided = [_decide(index, keys, ("", user) if user else ("",)) for user in parties]
        for kind in ("block", "allow"):
            for hit in decided:
                if hit is not None and hit.kind == kind:
                    return ListMatch(hit.kind, hit.entry, hit.scope, hit.user)
        return NO_MATCH

    def refresh(self) -> bool:
        """Reload the lists if any process changed them; True if the copy changed."""
        with self._engine.connect() as conn:
            version = _read_version(conn)
            changed = version != self._version
            if changed:
                rows = conn.execute(select(_entries)).all()
        if changed:
            index: _Index = {}
            for row in rows:
                entry = _entry(row._mapping)
                key = (entry.user or "", entry.entry)
                index[key] = (*index.get(key, ()), entry)
            self._index, self._version = index, version
        self._checked_at = self._clock()
        return changed

    def try_refresh(self) -> None:
        """Refresh unless another thread is; on a database error keep the current copy."""
        if not self._refreshing.acquire(blocking=False):
            return
        try:
            self.refresh()
        except SQLAlchemyError as exc:
            self._checked_at = self._clock()  # retry after the interval, not per message
            log.warning("list refresh failed, matching with the last copy: %s", type(exc).__name__)
        finally:
            self._refreshing.release()

    async def run(self) -> None:
        """Background refresher: keeps :meth:`match` free of database reads."""
        self._background = True
        try:
            while True:
                await asyncio.to_thread(self.try_refresh)
                await asyncio.sleep(self.refresh_seconds)
        finally:
            self._background = False

    # --- administration -----------------------------------------------------------------

    def put(
        self,
        kind: Kind,
        entry: str,
        scope: Scope = "global",
        user: str | None = None,
        created_by: str = "admin",
    ) -> tuple[ListEntry, bool]:
        """Add an entry (allow entries pass the guard first); (entry, whether it is new)."""
        _check_kind(kind)
        if kind == "allow":
            check_allow_entry(entry, scope, user, self._settings)
        owner = check_scope(scope, user) or ""
        value = normalize_entry(entry).value
        where = _where(kind, scope, owner, value)
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            existing = conn.execute(select(_entries).where(where)).first()
            if existing is not None:
                return _entry(existing._mapping), False
            row = ListEntry(kind, scope, owner or None, value, time.time(), created_by[:320])
            conn.execute(insert(_entries).values(_row(row)))
            version = _bump(conn)
        self._apply(version, add=row)
        return row, True

    def delete(
        self, kind: Kind, entry: str, scope: Scope = "global", user: str | None = None
    ) -> bool:
        """Remove an entry; False if there was none."""
        _check_kind(kind)
        owner = check_scope(scope, user) or ""
        value = normalize_entry(entry).value
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            gone = conn.execute(delete(_entries).where(_where(kind, scope, owner, value)))
            if not gone.rowcount:
                return False
            version = _bump(conn)
        self._apply(version, remove=(kind, owner, value))
        return True

    def get(
        self, kind: Kind, entry: str, scope: Scope = "global", user: str | None = None
    ) -> ListEntry | None:
        """One entry as stored (read from the database, not the cache)."""
        _check_kind(kind)
        owner = check_scope(scope, user) or ""
        value = normalize_entry(entry).value
        with self._engine.connect() as conn:
            row = conn.execute(select(_entries).where(_where(kind, scope, owner, value))).first()
        return _entry(row._mapping) if row is not None else None

    def list_entries(
        self,
        kind: Kind,
        scope: Scope | None = None,
        user: str | None = None,
        *,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[ListEntry]:
        """Entries of one kind, optionally of one scope and/or one user, oldest first."""
        _check_kind(kind)
        query = select(_entries).where(_entries.c.kind == kind)
        if scope is not None:
            if scope not in ("global", "user"):
                raise ValueError("scope must be 'global' or 'user'")
            query = query.where(_entries.c.scope == scope)
        if user:
            query = query.where(_entries.c.owner == normalize_user(user))
        query = query.order_by(_entries.c.created_at, _entries.c.entry)
        query = query.limit(max(1, min(limit, MAX_LIST))).offset(max(0, offset))
        with self._engine.connect() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def _apply(
        self,
        version: int,
        *,
        add: ListEntry | None = None,
        remove: tuple[Kind, str, str] | None = None,
    ) -> None:
        """Make our own change visible at once: patch the copy, or reload if others wrote too."""
        with self._refreshing:
            if version != self._version + 1:
                try:
                    self.refresh()
                except SQLAlchemyError:
                    self._checked_at = float("-inf")  # reload at the next match
                return
            index = dict(self._index)
            if add is not None:
                key = (add.user or "", add.entry)
                index[key] = (*index.get(key, ()), add)
            if remove is not None:
                kind, owner, value = remove
                kept = tuple(e for e in index.get((owner, value), ()) if e.kind != kind)
                if kept:
                    index[(owner, value)] = kept
                else:
                    index.pop((owner, value), None)
            self._index, self._version = index, version


def _decide(index: _Index, keys: Sequence[str], owners: tuple[str, ...]) -> ListEntry | None:
    """Most specific key first; at one specificity block beats allow."""
    for key in keys:
        hits = [e for owner in owners for e in index.get((owner, key), ())]
        if hits:
            return min(hits, key=lambda e: (e.kind != "block", e.scope != "global"))
    return None


def _user_key(user: str | None) -> str:
    """The cheap form of :func:`normalize_user`, for every recipient of every message."""
    if not user:
        return ""
    user = user.strip()
    return entry_key(user) if "@" in user else user.lower()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError("kind must be 'allow' or 'block'")


def _where(kind: str, scope: str, owner: str, value: str) -> Any:
    return and_(
        _entries.c.kind == kind,
        _entries.c.scope == scope,
        _entries.c.owner == owner,
        _entries.c.entry == value,
    )


def _bump(conn: Connection) -> int:
    conn.execute(update(_meta).where(_meta.c.key == _VERSION).values(value=_meta.c.value + 1))
    return _read_version(conn)


def _read_version(conn: Connection) -> int:
    value = conn.execute(select(_meta.c.value).where(_meta.c.key == _VERSION)).scalar()
    return int(value or 0)


def _row(entry: ListEntry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "scope": entry.scope,
        "owner": entry.user or "",
        "entry": entry.entry,
        "created_at": entry.created_at,
        "created_by": entry.created_by,
    }


def _entry(row: Any) -> ListEntry:
    return ListEntry(
        row["kind"],
        row["scope"],
        row["owner"] or None,
        row["entry"],
        float(row["created_at"]),
        row["created_by"],
    )
