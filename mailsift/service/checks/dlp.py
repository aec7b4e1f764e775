"""Leaks in a message, as reasons: one per finding type, with the configured action.

The edge scans the message (:func:`mailsift.service.dlp.scan_message`) and leaves the
:class:`~mailsift.service.dlp.DlpReport` in ``ctx.dlp``; no report, nothing to
say. A leak is not spam, so weights are small: what happens to the message is the
per-severity action setting's job (``flag`` = the reason only).
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import dlp_reason
from mailsift.service.checks.base import CheckContext, Reason
from mailsift.service.dlp import Finding, Severity
from mailsift.service.settings import Action, Settings

__all__ = ["WEIGHTS", "dlp_reasons"]

WEIGHTS: dict[Severity, float] = {"low": 0.1, "medium": 0.5, "high": 1.0}


def _action(severity: Severity, settings: Settings) -> Action | None:
    configured = {
        "low": settings.dlp_action_low,
        "medium": settings.dlp_action_medium,
        "high": settings.dlp_action_high,
    }[severity]
    return None if configured == "flag" else configured


def _detail(finding: Finding) -> str:
    noun = finding.description
    if finding.count != 1:
        noun += "es" if noun.endswith(("s", "x", "ch", "sh")) else "s"
    return (
        f"{finding.count} {noun} ({finding.severity}, confidence {finding.confidence:.2f}) "
        f"in {', '.join(finding.where)}: {', '.join(finding.samples)}"
    )


def dlp_reasons(ctx: CheckContext) -> Iterator[Reason]:
    report = ctx.dlp
    if report is None:
        return
    for finding in report.findings:
        yield Reason(
            dlp_reason(finding.type),
            WEIGHTS[finding.severity],
            _detail(finding),
            _action(finding.severity, ctx.settings),
        )
