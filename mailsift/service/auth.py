"""API tokens and roles: service accounts of mailsift's own, never operating-system accounts.

A token is ``msk_<id>_<secret>``. Only a SHA-256 of the secret is stored; the id finds
the row and the digest is compared in constant time. Roles:

* ``gateway`` — an MTA or MX host: score messages, report events, scan for leaks;
* ``user``    — a mailbox owner: feedback and their own lists, only for the addresses
  the token was created for;
* ``reporter`` — a site's mail store (Dovecot's Junk folder, ``mailsift report``): the
  reports of any of its users, for the addresses or ``@domains`` it was created for,
  and nothing else (not their lists);
* ``admin``   — everything.

On SQLite the token's row is read on every request (no cache), so a revoked token fails
at once in every worker. On PostgreSQL a verified token is cached per worker and a
revocation is pushed to every replica by notification (:mod:`.token_cache`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, Request
from sqlalchemy import (
    Column,
    Double,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    insert,
    select,
    update,
)

from mailsift.service.db import (
    Busy,
    core_runner,
    hot_statement,
    nowait_engine,
    nowait_first,
    nowait_raw_read,
    raw_runner,
    write_transaction,
)
from mailsift.service.errors import Forbidden, StateUnavailable, Unauthorized
from mailsift.service.identity import optional_identity
from mailsift.service.pg.notify import CHANNEL_TOKENS, notify
from mailsift.service.pg.pool import Unreachable
from mailsift.service.settings import Settings

__all__ = [
    "PRINCIPAL_KEY",
    "Principal",
    "ReporterCaller",
    "Role",
    "RoleCheck",
    "TokenInfo",
    "TokenStore",
    "authenticate",
    "caller_of",
    "require",
    "stored_principal",
]

Role = Literal["gateway", "user", "reporter", "admin"]
ROLES: tuple[Role, ...] = ("gateway", "user", "reporter", "admin")
SCOPED_ROLES: frozenset[Role] = frozenset({"user", "reporter"})
"""Roles that speak only for the addresses (or ``@domains``) their token lists."""
_ROLE_OF: dict[str, Role] = {role: role for role in ROLES}
_TOKEN = re.compile(r"^msk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
PRINCIPAL_KEY = "mailsift.principal"
"""Where :class:`~mailsift.service.http.gate.RequestGate` leaves the caller in the scope's state."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, its role and the addresses it may speak for."""

    name: str
    role: Role
    addresses: frozenset[str] = frozenset()

    def may_speak_for(self, address: str) -> bool:
        """Admins speak for anyone; user and reporter tokens for their addresses or domains."""
        if self.role == "admin":
            return True
        address = address.strip().lower()
        domain = address.rpartition("@")[2]
        return address in self.addresses or f"@{domain}" in self.addresses

    def on_gateway_listener(self) -> Principal:
        """The caller as the gateway listener serves it: gateway operations only.

        An admin token there acts as a gateway token (a hostile test added global block
        entries and reported for other users through it); administration answers on the
        admin listener alone."""
        return replace(self, role="gateway") if self.role == "admin" else self


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    addresses: tuple[str, ...]
    created_at: float
    revoked_at: float | None


_metadata = MetaData()
_tokens = Table(
    "api_tokens",
    _metadata,
    Column("id", String(12), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(8), nullable=False),
    Column("addresses", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double),
)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_ACTIVE_TOKEN = hot_statement(
    lambda _: select(_tokens.c.name, _tokens.c.role, _tokens.c.addresses, _tokens.c.digest).where(
        _tokens.c.id == bindparam("id", type_=String), _tokens.c.revoked_at.is_(None)
    )
)


class TokenStore:
    """Tokens in the state database, shared by every worker and replica."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._nowait = nowait_engine(engine)
        self.on_loop_verifier: OnLoopVerifier | None = None
        """Set by the app on PostgreSQL: verifies on the event loop (cached, revocations
        pushed); None: :meth:`verify` reads the row for every request."""
        with write_transaction(engine) as conn:
            _metadata.create_all(conn)

    def create(self, role: Role, name: str, addresses: Iterable[str] = ()) -> tuple[TokenInfo, str]:
        """A new token; the returned secret is shown once and never stored."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        keys = [(a, optional_identity(a, "--address")) for a in addresses]  # 320 once keyed
        cleaned = tuple(sorted({key for _, key in keys if key}))
        if role in SCOPED_ROLES and not cleaned:
            raise ValueError(f"a {role} token needs at least one --address (or @domain)")
        for given, key in keys:
            if key is not None and "@" not in key:
                raise ValueError(f"{given!r} is not an address or @domain")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(_tokens).values(
                    id=token_id,
                    name=name[:100],
                    role=role,
                    addresses=json.dumps(cleaned),
                    digest=_digest(secret),
                    created_at=now,
                )
            )
        info = TokenInfo(token_id, name[:100], role, cleaned, now, None)
        return info, f"msk_{token_id}_{secret}"

    def list(self) -> list[TokenInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_tokens).order_by(_tokens.c.created_at)).all()
        return [
            TokenInfo(
                r.id, r.name, r.role, tuple(json.loads(r.addresses)), r.created_at, r.revoked_at
            )
            for r in rows
        ]

    def revoke(self, token_id: str) -> bool:
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(_tokens)
                .where(_tokens.c.id == token_id, _tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            # Every replica's cache drops it when this commits (PostgreSQL; SQLite
            # workers read the row for every request).
            notify(conn, CHANNEL_TOKENS, token_id)
        return bool(done.rowcount)

    @property
    def on_loop(self) -> bool:
        """Whether :meth:`verify` can run on the event loop (``nowait=True``): SQLite."""
        return self._nowait is not None

    def verify(self, token: str, *, nowait: bool = False) -> Principal | None:
        """The token's principal; None when it is malformed, unknown, revoked or wrong.

        The database is read every time, so a revoked token fails at once in every worker
        and replica. ``nowait`` reads through the driver's own connection on the event
        loop (SQLite; :class:`~mailsift.service.db.Busy` where it cannot).
        """
        found = _TOKEN.match(token)
        if not found:
            return None
        token_id, secret = found.groups()
        if nowait:
            if self._nowait is None:
                raise Busy
            with nowait_raw_read(self._nowait) as db:
                row = raw_runner(db)(_ACTIVE_TOKEN, {"id": token_id})
        else:
            with self.engine.connect() as conn:
                row = core_runner(conn)(_ACTIVE_TOKEN, {"id": token_id})
        return principal_of(row, secret)


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token; None otherwise."""
    found = _TOKEN.match(token)
    return None if found is None else (found.group(1), found.group(2))


ACTIVE_TOKEN_SQL = (
    "SELECT name, role, addresses, digest FROM api_tokens WHERE id = %s AND revoked_at IS NULL"
)
""":data:`_ACTIVE_TOKEN` for a psycopg connection (PostgreSQL, on the event loop)."""


def principal_of(row: Sequence[Any] | None, secret: str) -> Principal | None:
    """The principal of an active token's row (name, role, addresses, digest) if
    ``secret`` is its secret; None otherwise."""
    if row is None or not hmac.compare_digest(str(row[3]), _digest(secret)):
        return None
    role = _ROLE_OF.get(str(row[1]))
    if role is None:  # not a role this version knows: grant nothing
        return None
    return Principal(str(row[0]), role, frozenset(json.loads(str(row[2]))))


class OnLoopVerifier(Protocol):
    """Checks tokens on the event loop without a thread (PostgreSQL: see
    :mod:`mailsift.service.token_cache`)."""

    async def verify(self, token: str) -> Principal | None: ...


@dataclass(slots=True)
class FeedbackLimiter:
    """Per-token sliding minute window, per worker: one account cannot flood the learner."""

    per_minute: int
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, who: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        window = self._seen.setdefault(who, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        return True


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send `Authorization: Bearer <token>` (see `mailsift token create`)")
    return token.strip()


def seeded_admin(request: Request, settings: Settings) -> Principal | None:
    """The seeded admin token needs no database: checked on the event loop, in constant time."""
    seeded = settings.admin_token
    if seeded is None:
        return None
    if hmac.compare_digest(_bearer(request).encode(), seeded.get_secret_value().encode()):
        return Principal("admin-token", "admin")
    return None


def authenticate(request: Request, settings: Settings, store: TokenStore) -> Principal:
    """The caller of ``request`` from its bearer token; 401 without a valid one."""
    principal = seeded_admin(request, settings) or store.verify(_bearer(request))
    if principal is None:
        raise Unauthorized("the token is unknown or revoked")
    return principal


async def stored_principal(request: Request, store: TokenStore) -> Principal:
    """The caller of ``request`` from a stored token, checked from the event loop; 401
    without a valid one.

    A gateway calls with a stored token for every message: on SQLite its row is read on
    the loop itself, a primary-key read of some microseconds. In a thread, the hop and
    the query took 0.4 ms of a worker's CPU per message, a quarter of all it spends on
    an inbound message under ``mailsift bench``. On PostgreSQL the app sets
    ``store.on_loop_verifier`` (a cache whose revocations are pushed to every replica);
    without one, a round trip in a thread.
    """
    token = _bearer(request)
    verifier = store.on_loop_verifier
    if verifier is not None:
        try:
            principal = await verifier.verify(token)
        except Unreachable:
            raise StateUnavailable("the token store cannot be reached") from None
        if principal is None:
            raise Unauthorized("the token is unknown or revoked")
        return principal
    on_loop = functools.partial(store.verify, token, nowait=True) if store.on_loop else None
    principal = await nowait_first(on_loop, functools.partial(store.verify, token))
    if principal is None:
        raise Unauthorized("the token is unknown or revoked")
    return principal


async def caller_of(request: Request) -> Principal:
    """The caller the request gate authenticated, seeded admin token or stored one."""
    state = request.app.state.mailsift
    principal = seeded_admin(request, state.settings)
    if principal is None:
        principal = await stored_principal(request, state.tokens)
    return principal


class RoleCheck:
    """A dependency admitting only some roles; :attr:`roles` says which (for the OpenAPI
    pass and the tests that walk every route).

    The token itself was checked by the request gate before the app read a byte of the
    body; here only the role is. (An app built without the gate, as some tests build one,
    has the token checked here.)
    """

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(self, request: Request) -> Principal:
        principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):
            principal = await caller_of(request)
        if principal.role not in self.roles:
            raise Forbidden(f"a {principal.role} token may not call {request.url.path}")
        return principal


def require(*roles: Role) -> Any:
    """A dependency admitting only ``roles`` (admin is always admitted)."""
    return Depends(RoleCheck(frozenset(roles) | {"admin"}))


GatewayCaller = Annotated[Principal, require("gateway")]
UserCaller = Annotated[Principal, require("user")]
ReporterCaller = Annotated[Principal, require("user", "reporter")]
AdminCaller = Annotated[Principal, require("admin")]
