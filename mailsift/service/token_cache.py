"""Stored tokens checked on the event loop on PostgreSQL: cached, revocations pushed.

A gateway presents the same token with every message. Reading its row each time is a
round trip per message; instead each worker keeps the rows it has read, and a revocation
(:meth:`~mailsift.service.auth.TokenStore.revoke`) notifies every replica when it
commits, which drops the row from every cache (:mod:`mailsift.service.pg.notify`).

A cached row is trusted only while that notification channel is up: a notification
sent while it was down is lost, so a reconnection empties the cache, and while it is
down every request reads the row as before. If the database cannot be reached either,
the row last read answers (a token cannot be revoked while the database is away, and
scoring inbound mail must go on with the last known state).
"""

from __future__ import annotations

from collections import OrderedDict

from mailsift.service.auth import ACTIVE_TOKEN_SQL, Principal, principal_of, split_token
from mailsift.service.pg.notify import CHANNEL_TOKENS, Listener
from mailsift.service.pg.pool import AsyncPool, Unreachable

__all__ = ["MAX_CACHED_TOKENS", "TokenCache"]

MAX_CACHED_TOKENS = 10_000

_Row = tuple[str, str, str, str]  # name, role, addresses (JSON), digest


class TokenCache:
    """One worker's verified token rows; implements
    :class:`~mailsift.service.auth.OnLoopVerifier`."""

    def __init__(
        self, pool: AsyncPool, listener: Listener, *, max_entries: int = MAX_CACHED_TOKENS
    ) -> None:
        self.pool = pool
        self.listener = listener
        self.max_entries = max_entries
        self._rows: OrderedDict[str, _Row] = OrderedDict()
        # Bumped by every revocation and reconnection: a row read before a bump may
        # predate the revocation, so it is not kept.
        self._generation = 0
        self.hits = 0
        self.reads = 0
        listener.subscribe(CHANNEL_TOKENS, self.revoked)
        listener.on_connect(self.clear)

    def revoked(self, token_id: str) -> None:
        """A revocation committed somewhere: forget the token."""
        self._generation += 1
        self._rows.pop(token_id, None)

    def clear(self) -> None:
        """Forget every token (notifications may have been missed)."""
        self._generation += 1
        self._rows.clear()

    async def verify(self, token: str) -> Principal | None:
        """The token's principal; None when it is malformed, unknown, revoked or wrong.
        Raises :class:`~mailsift.service.pg.pool.Unreachable` when the row is neither
        cached nor readable."""
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        cached = self._rows.get(token_id)
        if cached is not None and self.listener.connected:
            self.hits += 1
            return principal_of(cached, secret)
        generation = self._generation
        try:
            row = await self.pool.fetchone(ACTIVE_TOKEN_SQL, (token_id,))
        except Unreachable:
            if cached is None:
                raise
            return principal_of(cached, secret)  # the last known state
        self.reads += 1
        if row is None:
            self._rows.pop(token_id, None)
            return None
        entry: _Row = (str(row[0]), str(row[1]), str(row[2]), str(row[3]))
        principal = principal_of(entry, secret)
        # Only a row for the right secret is kept: a wrong guess must not evict others.
        if principal is not None and generation == self._generation:
            self._rows[token_id] = entry
            self._rows.move_to_end(token_id)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)
        return principal
