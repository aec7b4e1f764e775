"""Per-user sending limits: a sender over a limit is deferred, whatever the message says.

The edge decides and counts (``AccountStore.check_and_record``, atomic across workers)
and puts the :class:`SendingDecision` in ``ctx.sending``; this check only says
so. Defer, not reject: the gateway keeps the mail and retries once the hour has moved on.
When the limits cannot be checked at all (the database is away), the message is deferred
too (``limit_unavailable``): scoring still answers, and no mail leaves uncounted.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import LIMITS_UNAVAILABLE, limit_reason
from mailsift.service.checks.base import CheckContext, Reason

_WINDOW = {
    "messages_per_hour": "messages in the last hour",
    "messages_per_day": "messages in the last 24 hours",
    "recipients_per_hour": "recipients in the last hour",
}


def limit_reasons(ctx: CheckContext) -> Iterator[Reason]:
    decision = ctx.sending
    if ctx.envelope.direction != "outbound":
        return
    if ctx.limits_unavailable:
        yield Reason(
            LIMITS_UNAVAILABLE,
            0.0,
            "the sending limits cannot be checked now (the state database is unreachable)",
            action="defer",
        )
    if decision is None:
        return
    for name in decision.exceeded:
        extra = (
            f" (this message has {decision.recipients})" if name == "recipients_per_hour" else ""
        )
        yield Reason(
            limit_reason(name),
            0.0,
            f"{decision.user} has sent {decision.count(name)} {_WINDOW[name]}{extra}; "
            f"the limit is {decision.limits.of(name)}",
            action="defer",
        )
