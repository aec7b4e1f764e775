"""Each user's personal layer: their own reports, acting for them alone and at once.

A user's report changes only that user's verdicts: the reported message, and (by
default) further mail from the same sender address, stop being ``ham`` *for them*. It
is replayed from the training log's personal entries like every other model, so every
worker and replica holds the same layers; nothing here reads or writes storage.

Per user it keeps the label of each reported message and, per From address, which of
that sender's messages were reported how: the newest report decides, so a user who
reports a sender's mail as spam and later one of its messages as "not spam" trusts the
sender again, and taking a report back restores what the earlier ones said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["PersonalLayers", "PersonalView"]

Label = Literal["ham", "spam"]


@dataclass(frozen=True, slots=True)
class PersonalView:
    """What one user's layer says about one message."""

    label: Label | None
    """The user's own report of this very message."""
    sender_label: Label | None
    """Their newest report of other mail from this message's sender."""


@dataclass(slots=True)
class _User:
    reports: dict[str, tuple[int, Label, str | None]] = field(default_factory=dict)
    """fingerprint -> (log position, label, sender)"""
    senders: dict[str, dict[str, tuple[int, Label]]] = field(default_factory=dict)
    """sender -> fingerprint -> (log position, label)"""


class PersonalLayers:
    """Every user's layer, built by :meth:`apply` of the log's personal entries in order.

    >>> layers = PersonalLayers()
    >>> layers.apply("bob@example.com", 1, "f1", "spam", None, "x@spam.test")
    >>> layers.view("bob@example.com", "f2", "x@spam.test")
    PersonalView(label=None, sender_label='spam')
    >>> layers.view("carol@example.com", "f2", "x@spam.test") is None
    True
    """

    def __init__(self) -> None:
        self._users: dict[str, _User] = {}
        self.reports = 0
        """Live reports over all users."""

    @property
    def users(self) -> int:
        return len(self._users)

    def apply(
        self,
        user: str,
        position: int,
        fingerprint: str,
        label: Label | None,
        undo_label: Label | None,
        sender: str | None,
    ) -> None:
        """One personal entry: ``undo_label`` takes the user's earlier report back,
        ``label`` records the new one (both may be set: a relabel)."""
        layer = self._users.get(user)
        if undo_label is not None and layer is not None:
            self._drop(user, layer, fingerprint)
            layer = self._users.get(user)  # gone when that was the user's only report
        if label is None:
            return
        if layer is None:
            layer = self._users[user] = _User()
        if fingerprint in layer.reports:  # a relabel whose undo came with it
            self._drop(user, layer, fingerprint)
        layer.reports[fingerprint] = (position, label, sender)
        self.reports += 1
        if sender:
            layer.senders.setdefault(sender, {})[fingerprint] = (position, label)

    def view(self, user: str, fingerprint: str, sender: str | None) -> PersonalView | None:
        """What ``user``'s layer says of a message, or None when it says nothing."""
        layer = self._users.get(user)
        if layer is None:
            return None
        own = layer.reports.get(fingerprint)
        by_sender = layer.senders.get(sender) if sender else None
        newest: Label | None = None
        if by_sender:
            others = [v for fp, v in by_sender.items() if fp != fingerprint]
            if others:
                newest = max(others)[1]
        if own is None and newest is None:
            return None
        return PersonalView(own[1] if own else None, newest)

    def _drop(self, user: str, layer: _User, fingerprint: str) -> None:
        gone = layer.reports.pop(fingerprint, None)
        if gone is None:
            return
        self.reports -= 1
        sender = gone[2]
        if sender and sender in layer.senders:
            layer.senders[sender].pop(fingerprint, None)
            if not layer.senders[sender]:
                del layer.senders[sender]
        if not layer.reports:
            del self._users[user]
