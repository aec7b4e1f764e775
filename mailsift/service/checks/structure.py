"""Hostile or broken MIME structure (a sign of crafted mail), and what was not examined:
work the parser refused, or the part of a message the gateway did not send."""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.models.parse import (
    GUESS_BUDGET,
    MIME_DEFECTS,
    TIME_BUDGET,
    TOO_DEEP,
    TOO_MANY_HEADERS,
    TOO_MANY_PARTS,
    TRUNCATED_MESSAGE,
    UNPARSEABLE,
)
from mailsift.reasons import GATEWAY_TRUNCATED, mime_reason
from mailsift.service.checks.base import CheckContext, Reason

# Log-odds per parser defect: caps that bite are rare in legitimate mail.
_WEIGHTS = {
    TOO_DEEP: 1.5,
    TOO_MANY_PARTS: 1.0,
    TOO_MANY_HEADERS: 1.0,
    UNPARSEABLE: 1.5,
    MIME_DEFECTS: 0.3,
    TRUNCATED_MESSAGE: 0.0,
    TIME_BUDGET: 0.0,
    GUESS_BUDGET: 0.5,
}

_DETAILS = {
    TOO_DEEP: "MIME nesting deeper than the limit; the rest was not examined",
    TOO_MANY_PARTS: "more MIME parts than the limit; the rest were not examined",
    TOO_MANY_HEADERS: "more header fields than the limit",
    UNPARSEABLE: "the message could not be parsed as MIME",
    MIME_DEFECTS: "malformed MIME structure",
    TRUNCATED_MESSAGE: "message larger than the parse limit; only its start was examined",
    TIME_BUDGET: "parsing stopped at MAILSIFT_PARSE_TIME_BUDGET_MS; the rest was not "
    "examined (learning parses it whole)",
    GUESS_BUDGET: "more text in an undeclared 8-bit charset than MAILSIFT_PARSE_MAX_GUESS_BYTES; "
    "the rest was read as Windows-1252",
}


def structure_reasons(ctx: CheckContext) -> Iterator[Reason]:
    for defect in ctx.message.defects:
        if defect in _WEIGHTS:
            yield Reason(
                mime_reason(defect),
                _WEIGHTS[defect],
                _DETAILS[defect],
            )
    if ctx.envelope.truncated:
        yield Reason(
            GATEWAY_TRUNCATED,
            0.0,
            "the gateway sent only the start of a message larger than its limit; "
            "the rest was not scanned",
        )
