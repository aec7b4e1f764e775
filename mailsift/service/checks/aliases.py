"""Temporary addresses: mail to one shows in the reasons (and so in the audit trail), and
mail to one from a sender unrelated to the one it was made for is suspicious: the
address was leaked or sold, and the sender is using it.

Reads ``ctx.aliases`` (:class:`~mailsift.service.aliases.traffic.AliasHit`, gathered
before the checks run). A reason's detail names the address and the sender domains,
never the owner. A recipient that is an expired or deleted address is refused to that
recipient only (:func:`expired_reasons`, run per recipient).
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import ALIAS_EXPIRED, ALIAS_FOREIGN_SENDER, ALIAS_RECIPIENT
from mailsift.service.aliases.traffic import AliasHit
from mailsift.service.checks.base import CheckContext, Reason

__all__ = ["REASONS", "alias_reasons", "expired_reasons"]

# Log-odds per reason (name -> weight, description).
REASONS: dict[str, tuple[float, str]] = {
    ALIAS_RECIPIENT: (0.0, "a recipient is a live temporary address (shown, not weighed)"),
    ALIAS_FOREIGN_SENDER: (
        2.0,
        "mail to a temporary address from a sender unrelated to the one it was made for: "
        "the address was leaked or sold",
    ),
    ALIAS_EXPIRED: (
        0.0,
        "the recipient is a temporary address that expired or was deleted: refused to it",
    ),
}


def alias_reasons(ctx: CheckContext) -> Iterator[Reason]:
    """One reason per live temporary address among the recipients, and one per foreign
    sender (inbound mail only)."""
    if ctx.envelope.direction != "inbound":
        return
    for hit in ctx.aliases:
        if not hit.live:
            continue
        yield Reason(ALIAS_RECIPIENT, REASONS[ALIAS_RECIPIENT][0], f"to {hit.address}")
        if hit.foreign:
            yield Reason(
                ALIAS_FOREIGN_SENDER,
                REASONS[ALIAS_FOREIGN_SENDER][0],
                f"{hit.address} was made for {hit.label}, this mail is from {hit.sender}",
            )


def expired_reasons(hit: AliasHit | None) -> list[Reason]:
    """A recipient's own reason when it is a dead temporary address: its copy is refused."""
    if hit is None or hit.live:
        return []
    weight = REASONS[ALIAS_EXPIRED][0]
    return [Reason(ALIAS_EXPIRED, weight, f"{hit.address} is {hit.state}", action="reject")]
