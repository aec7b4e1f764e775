"""What a scored message means for the temporary addresses among its recipients.

Gathered before the checks run (they are pure): which recipients are temporary
addresses and in what state, and whether the sender is the one an address was made
for. The first mail to an address made without a label names that sender; mail from
any sender unrelated to the label is counted against the address (who leaked it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailsift.service.aliases.store import LIVE, AliasState, AliasStore
from mailsift.service.authres import aligned

__all__ = ["AliasHit", "observe", "related", "sender_domain"]


@dataclass(frozen=True, slots=True)
class AliasHit:
    """One recipient that is a temporary address."""

    address: str
    owner: str
    state: AliasState
    label: str | None
    sender: str | None
    """The sender domain the message came from (From, else MAIL FROM)."""
    foreign: bool
    """The sender is unrelated to the label: the address was leaked or sold."""

    @property
    def live(self) -> bool:
        return self.state == LIVE


def sender_domain(from_addr: str | None, mail_from: str | None) -> str | None:
    """The domain a reader would name as the sender: From's, else the envelope's."""
    for address in (from_addr, mail_from):
        domain = (address or "").strip().strip("<>").rpartition("@")[2].lower().rstrip(".")
        if domain:
            return domain
    return None


def related(label: str, domain: str) -> bool:
    """The sender domain is the label's, under it, or of the same organisation
    (``mail.shop.example`` and ``news.shop.example`` are both ``shop.example``)."""
    return domain == label or domain.endswith("." + label) or aligned(label, domain)


def observe(
    store: AliasStore, rcpts: Sequence[str], sender: str | None, now: float | None = None
) -> tuple[AliasHit, ...]:
    """The temporary addresses among ``rcpts`` (blocking: call in a thread), with the
    label learned and a foreign sender counted."""
    found = store.lookup(rcpts)
    if not found:
        return ()
    now = time.time() if now is None else now
    hits: list[AliasHit] = []
    for address, alias in found.items():
        state = alias.state(now)
        label, foreign = alias.label, False
        if state == LIVE and sender:
            if label is None:
                store.learn_label(address, sender)
                label = sender
            elif not related(label, sender):
                foreign = True
                store.note_foreign(address, sender, now)
        hits.append(AliasHit(address, alias.owner, state, label, sender, foreign))
    return tuple(hits)
