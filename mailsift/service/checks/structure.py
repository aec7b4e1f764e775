"""Hostile or broken MIME structure: a sign of crafted mail, and work the parser refused."""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.service.checks.base import CheckContext, Reason

# Log-odds per parser defect: caps that bite are rare in legitimate mail.
_WEIGHTS = {
    "too_deep": 1.5,
    "too_many_parts": 1.0,
    "too_many_headers": 1.0,
    "unparseable": 1.5,
    "mime_defects": 0.3,
    "truncated_message": 0.0,
    "time_budget": 0.0,
}

_DETAILS = {
    "too_deep": "MIME nesting deeper than the limit; the rest was not examined",
    "too_many_parts": "more MIME parts than the limit; the rest were not examined",
    "too_many_headers": "more header fields than the limit",
    "unparseable": "the message could not be parsed as MIME",
    "mime_defects": "malformed MIME structure",
    "truncated_message": "message larger than the parse limit; only its start was examined",
    "time_budget": "parsing stopped at MAILSIFT_PARSE_TIME_BUDGET_MS; the rest was not "
    "examined (learning parses it whole)",
}


def structure_reasons(ctx: CheckContext) -> Iterator[Reason]:
    for defect in ctx.message.defects:
        if defect in _WEIGHTS:
            yield Reason(
                f"mime_{defect}" if not defect.startswith("mime") else defect,
                _WEIGHTS[defect],
                _DETAILS[defect],
            )
