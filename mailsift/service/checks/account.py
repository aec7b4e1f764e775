"""The sender's account risk state: a suspended account's outbound mail is held.

The edge reads the state (``AccountStore.get_state``) into ``ctx.account``;
how the state is decided is in :mod:`mailsift.service.accounts.risk`.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import ACCOUNT_SUSPENDED, ACCOUNT_WATCH
from mailsift.service.checks.base import CheckContext, Reason

# Mail from an account that looks compromised is likelier spam; the weight is modest
# because watch is a suspicion, and a suspension acts through its forced action.
WATCH_WEIGHT = 0.5
SUSPENDED_WEIGHT = 1.0


def account_reasons(ctx: CheckContext) -> Iterator[Reason]:
    account = ctx.account
    if ctx.envelope.direction != "outbound" or account is None:
        return
    why = f": {account.reason}" if account.reason else ""
    if account.state == "suspended":
        yield Reason(
            ACCOUNT_SUSPENDED,
            SUSPENDED_WEIGHT,
            f"{account.user} is suspended until an administrator clears it{why}",
            action=ctx.settings.account_suspend_action,
        )
    elif account.state == "watch":
        yield Reason(ACCOUNT_WATCH, WATCH_WEIGHT, f"{account.user} is on watch{why}")
