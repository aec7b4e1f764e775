"""Temporary addresses on the state database: who owns each, until when, who leaked it.

A row is never deleted: deleting an address marks it, so the address is refused from
then on (``550 5.1.1`` at RCPT) and, being the primary key, can never be handed out
again. Addresses are ``<prefix><10 base32 characters>``: 50 random bits from
:mod:`secrets`, drawn again in the unlikely case they are taken.

Scoring looks an address up only when its local part starts with the prefix, so
ordinary mail costs no database read; a message to temporary addresses costs one.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    update,
)

from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.identity import identity_key
from mailsift.service.settings import Settings

__all__ = [
    "LIVE",
    "RANDOM_BITS",
    "Alias",
    "AliasError",
    "AliasLimit",
    "AliasState",
    "AliasStore",
    "ForeignSender",
    "alias_domain_for",
]

AliasState = Literal["live", "expired", "deleted"]
LIVE: AliasState = "live"
RANDOM_BITS = 50
"""Randomness of an address: 10 base32 characters of 5 bits each."""
_RANDOM_BYTES = 7  # 56 bits drawn, the first 50 used
_DRAWS = 8
_LOCK_KEY = lock_key_for("mailsift.aliases")
DAY = 86_400.0

_metadata = MetaData()
_aliases = Table(
    "aliases",
    _metadata,
    Column("address", String(320), primary_key=True),
    Column("owner", String(320), nullable=False),
    Column("label", String(255), nullable=True),  # the sender domain it is for
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("deleted_at", Double, nullable=True),
    Column("created_by", String(320), nullable=False),
    Index("aliases_owner", "owner"),
)
_senders = Table(
    "alias_foreign_senders",
    _metadata,
    Column("address", String(320), primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("first_seen", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("messages", BigInteger, nullable=False),
)


class AliasError(ValueError):
    """A request the store refuses (no domain to put the address on, a bad lifetime)."""


class AliasLimit(AliasError):
    """The owner already holds as many live addresses as allowed."""


@dataclass(frozen=True, slots=True)
class ForeignSender:
    """A sender domain unrelated to the address's label that wrote to it: who leaked it."""

    domain: str
    first_seen: float
    last_seen: float
    messages: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "messages": self.messages,
        }


@dataclass(frozen=True, slots=True)
class Alias:
    address: str
    owner: str
    label: str | None
    created_at: float
    expires_at: float
    deleted_at: float | None
    created_by: str
    foreign_senders: tuple[ForeignSender, ...] = field(default=())

    def state(self, now: float | None = None) -> AliasState:
        if self.deleted_at is not None:
            return "deleted"
        return LIVE if (time.time() if now is None else now) < self.expires_at else "expired"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "address": self.address,
            "user": self.owner,
            "label": self.label,
            "state": self.state(now),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "deleted_at": _iso(self.deleted_at) if self.deleted_at is not None else None,
            "created_by": self.created_by,
            "foreign_senders": [s.as_dict() for s in self.foreign_senders],
        }


def alias_domain_for(owner: str, settings: Settings) -> str:
    """Where a new address of ``owner`` lives: ``MAILSIFT_ALIAS_DOMAIN``, else the
    owner's own domain when it is a local one, else the first local domain."""
    if settings.alias_domain:
        return settings.alias_domain.strip().lower().rstrip(".")
    local = settings.local_domain_set
    domain = owner.rpartition("@")[2]
    if domain in local:
        return domain
    if local:
        return sorted(local)[0]
    raise AliasError("no domain for temporary addresses: set MAILSIFT_ALIAS_DOMAIN")


class AliasStore:
    """Temporary addresses, shared by every worker and replica through the state database."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self.prefix = settings.alias_prefix
        with write_transaction(engine, lock_key=_LOCK_KEY) as conn:
            _metadata.create_all(conn)

    def may_be_alias(self, address: str) -> bool:
        """Cheap test (no I/O): could ``address`` be one of ours at all?"""
        return address.strip().strip("<>").lower().startswith(self.prefix)

    def create(
        self,
        owner: str,
        *,
        days: int | None = None,
        label: str | None = None,
        created_by: str = "admin",
        now: float | None = None,
    ) -> Alias:
        """A fresh address for ``owner``, live for ``days``; :class:`AliasLimit` when the
        owner holds the most allowed, :class:`AliasError` for a bad lifetime."""
        settings = self._settings
        owner = identity_key(owner, "user")
        days = settings.alias_default_days if days is None else days
        if not 1 <= days <= settings.alias_max_days:
            raise AliasError(
                f"days must be 1 to {settings.alias_max_days} (MAILSIFT_ALIAS_MAX_DAYS)"
            )
        domain = alias_domain_for(owner, settings)
        label = label.strip().lower().rstrip(".") if label else None
        now = time.time() if now is None else now
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            live = conn.execute(
                select(func.count())
                .select_from(_aliases)
                .where(_live(now), _aliases.c.owner == owner)
            ).scalar_one()
            if live >= settings.alias_max_per_user:
                raise AliasLimit(
                    f"{owner} already has {live} live temporary addresses "
                    f"(MAILSIFT_ALIAS_MAX_PER_USER)"
                )
            for _ in range(_DRAWS):
                address = f"{self.prefix}{_random_part()}@{domain}"
                taken = conn.execute(
                    select(_aliases.c.address).where(_aliases.c.address == address)
                ).first()
                if taken is None:
                    break
            else:  # pragma: no cover - 2**-50 per draw
                raise AliasError("no unused address found; try again")
            alias = Alias(address, owner, label, now, now + days * DAY, None, created_by[:320])
            conn.execute(
                insert(_aliases).values(
                    address=alias.address,
                    owner=alias.owner,
                    label=alias.label,
                    created_at=alias.created_at,
                    expires_at=alias.expires_at,
                    deleted_at=None,
                    created_by=alias.created_by,
                )
            )
        return alias

    def get(self, address: str) -> Alias | None:
        """One address with who leaked it, or None."""
        key = address.strip().strip("<>").lower()
        with self._engine.connect() as conn:
            row = conn.execute(select(_aliases).where(_aliases.c.address == key)).first()
            if row is None:
                return None
            return self._with_senders(conn, [_alias(row._mapping)])[0]

    def list_aliases(
        self, owner: str | None = None, *, limit: int = 1000, offset: int = 0
    ) -> list[Alias]:
        """An owner's addresses (everyone's with None), newest first."""
        query = select(_aliases)
        if owner:
            query = query.where(_aliases.c.owner == identity_key(owner, "user"))
        query = query.order_by(_aliases.c.created_at.desc(), _aliases.c.address)
        query = query.limit(max(1, min(limit, 10_000))).offset(max(0, offset))
        with self._engine.connect() as conn:
            found = [_alias(row._mapping) for row in conn.execute(query)]
            return self._with_senders(conn, found)

    def delete(self, address: str, now: float | None = None) -> Alias | None:
        """Mark an address deleted (refused from now on, never handed out again)."""
        key = address.strip().strip("<>").lower()
        now = time.time() if now is None else now
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            conn.execute(
                update(_aliases)
                .where(_aliases.c.address == key, _aliases.c.deleted_at.is_(None))
                .values(deleted_at=now)
            )
            row = conn.execute(select(_aliases).where(_aliases.c.address == key)).first()
        return _alias(row._mapping) if row is not None else None

    def extend(self, address: str, days: int, now: float | None = None) -> Alias | None:
        """Make a live or expired address live for ``days`` from now (not a deleted one)."""
        if not 1 <= days <= self._settings.alias_max_days:
            raise AliasError(
                f"days must be 1 to {self._settings.alias_max_days} (MAILSIFT_ALIAS_MAX_DAYS)"
            )
        key = address.strip().strip("<>").lower()
        now = time.time() if now is None else now
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            conn.execute(
                update(_aliases)
                .where(_aliases.c.address == key, _aliases.c.deleted_at.is_(None))
                .values(expires_at=now + days * DAY)
            )
            row = conn.execute(select(_aliases).where(_aliases.c.address == key)).first()
        return _alias(row._mapping) if row is not None else None

    def lookup(self, addresses: Iterable[str]) -> dict[str, Alias]:
        """The stored addresses among ``addresses`` (keys lower-cased); one read, none
        when no address carries the prefix."""
        keys = {a.strip().strip("<>").lower() for a in addresses if self.may_be_alias(a)}
        if not keys:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(select(_aliases).where(_aliases.c.address.in_(sorted(keys))))
            return {row.address: _alias(row._mapping) for row in rows}

    def learn_label(self, address: str, domain: str) -> None:
        """The first mail to an address made without a label names the sender it is for."""
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            conn.execute(
                update(_aliases)
                .where(_aliases.c.address == address, _aliases.c.label.is_(None))
                .values(label=domain[:255])
            )

    def note_foreign(self, address: str, domain: str, now: float | None = None) -> None:
        """Count a message from an unrelated sender domain: who leaked the address."""
        now = time.time() if now is None else now
        domain = domain[:255]
        where = and_(_senders.c.address == address, _senders.c.domain == domain)
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            done = conn.execute(
                update(_senders)
                .where(where)
                .values(last_seen=now, messages=_senders.c.messages + 1)
            )
            if not done.rowcount:
                conn.execute(
                    insert(_senders).values(
                        address=address, domain=domain, first_seen=now, last_seen=now, messages=1
                    )
                )

    def _with_senders(self, conn: Any, found: list[Alias]) -> list[Alias]:
        if not found:
            return found
        rows = conn.execute(
            select(_senders)
            .where(_senders.c.address.in_([a.address for a in found]))
            .order_by(_senders.c.first_seen, _senders.c.domain)
        )
        by_address: dict[str, list[ForeignSender]] = {}
        for row in rows:
            by_address.setdefault(row.address, []).append(
                ForeignSender(
                    row.domain, float(row.first_seen), float(row.last_seen), int(row.messages)
                )
            )
        return [
            Alias(
                a.address,
                a.owner,
                a.label,
                a.created_at,
                a.expires_at,
                a.deleted_at,
                a.created_by,
                tuple(by_address.get(a.address, ())),
            )
            for a in found
        ]


def _random_part() -> str:
    """10 lower-case base32 characters: :data:`RANDOM_BITS` bits from the OS's CSPRNG."""
    text = base64.b32encode(secrets.token_bytes(_RANDOM_BYTES)).decode("ascii").lower()
    return text[: RANDOM_BITS // 5]


def _live(now: float) -> Any:
    return and_(_aliases.c.deleted_at.is_(None), _aliases.c.expires_at > now)


def _alias(row: Any) -> Alias:
    deleted = row["deleted_at"]
    return Alias(
        row["address"],
        row["owner"],
        row["label"],
        float(row["created_at"]),
        float(row["expires_at"]),
        float(deleted) if deleted is not None else None,
        row["created_by"],
    )


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat()
