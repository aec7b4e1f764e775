"""Checks: each looks at a message and its envelope and emits named, weighted reasons.

A check is a function ``(CheckContext) -> Iterable[Reason]``, one module per check,
registered in :data:`DEFAULT_CHECKS` the same way an extension would register its own.
Weights are log-odds added to the model's; a reason may also force an action (a leak
that must be rejected, a sender over its limit that must be deferred). Checks are pure:
what needs I/O (counters, lists, account state) is gathered at the edge into the
typed fields of :class:`CheckContext` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mailsift.service.checks.account import account_reasons
from mailsift.service.checks.aliases import alias_reasons
from mailsift.service.checks.authres import auth_reasons
from mailsift.service.checks.base import CheckContext, Envelope, Reason
from mailsift.service.checks.dlp import dlp_reasons
from mailsift.service.checks.labelled import labelled_reasons
from mailsift.service.checks.limits import limit_reasons
from mailsift.service.checks.lists import list_reasons
from mailsift.service.checks.model import model_reasons
from mailsift.service.checks.structure import structure_reasons

__all__ = ["DEFAULT_CHECKS", "Check", "CheckContext", "Envelope", "Reason", "run_checks"]

Check = Callable[[CheckContext], Iterable[Reason]]

DEFAULT_CHECKS: tuple[Check, ...] = (
    model_reasons,
    labelled_reasons,
    structure_reasons,
    auth_reasons,
    list_reasons,
    dlp_reasons,
    limit_reasons,
    account_reasons,
    alias_reasons,
)


def run_checks(ctx: CheckContext, checks: Iterable[Check] = DEFAULT_CHECKS) -> list[Reason]:
    return [reason for check in checks for reason in check(ctx)]
