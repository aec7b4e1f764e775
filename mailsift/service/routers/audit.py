"""Message tracking and the outbound report, from the audit trail.

Times (``since``, ``until``) are ISO 8601 (``2025-01-31T08:00:00Z``; no zone = UTC) or unix
seconds. Rows reach the trail within about half a second of their verdict.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailsift.service.deps import State
from mailsift.service.errors import BadRequest, StateUnavailable
from mailsift.service.identity import optional_identity
from mailsift.service.schemas import ErrorBody

router = APIRouter(prefix="/v1", tags=["audit"])

T = TypeVar("T")
DAY = 86_400.0
MAX_UNIX = 253_402_300_800.0  # 10000-01-01: beyond it a timestamp cannot be shown as a date
TimeQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601 (no zone = UTC) or unix seconds.",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "date-time", "maxLength": 64},
                {"type": "string", "pattern": r"^[0-9]{1,11}(\.[0-9]+)?$"},
            ],
            "examples": ["2025-01-31T08:00:00Z", "1738310400"],
        },
    ),
]
AddressQuery = Annotated[str | None, Query(max_length=320)]

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "bad parameters (e.g. a time that cannot be read)"},
    503: {"model": ErrorBody, "description": "state database unavailable"},
}
# A "+hh:mm" offset typed unencoded into a query string arrives as " hh:mm".
_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


class ReasonBrief(BaseModel):
    name: str
    weight: float


class DlpBrief(BaseModel):
    type: str
    count: int
    severity: str


class AuditRow(BaseModel):
    id: int
    time: str
    timestamp: float
    direction: str
    gateway: str | None
    queue_id: str | None
    message_id: str | None
    mail_from: str | None
    from_: str | None = Field(alias="from")
    recipients: list[str]
    user: str | None
    score: float
    verdict: str
    action: str
    reasons: list[ReasonBrief]
    dlp: list[DlpBrief]
    model_version: str | None
    fingerprint: str | None
    account_state: str | None


class AuditOut(BaseModel):
    count: int
    events: list[AuditRow]


class OutboundUser(BaseModel):
    user: str
    messages: int
    recipients: int
    spam: int
    suspect: int
    spam_share: float
    dlp_messages: int
    dlp_findings: int
    dlp_by_type: dict[str, int]
    dlp_max_severity: str | None
    limit_hits: int
    limits: dict[str, int]
    account_states: dict[str, int]


class OutboundReport(BaseModel):
    since: str
    until: str | None
    users: list[OutboundUser]


def parse_time(value: str, name: str) -> float:
    """ISO 8601 or unix seconds to unix seconds; BadRequest names the parameter."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds < MAX_UNIX:
            raise BadRequest(f"{name}: unix seconds must be between 0 and {MAX_UNIX:.0f}")
        return seconds
    try:
        moment = datetime.fromisoformat(_SPACED_OFFSET.sub(r"+\1", text))
    except ValueError:
        raise BadRequest(
            f"{name}: expected ISO 8601 (e.g. 2025-01-31T08:00:00Z) or unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def _call(op: Callable[[], T]) -> T:
    try:
        return await run_in_threadpool(op)
    except SQLAlchemyError as exc:
        raise StateUnavailable(f"the audit trail cannot be read ({type(exc).__name__})") from None


@router.get("/audit", response_model=AuditOut, responses=ERRORS)
async def search_audit(
    state: State,
    message_id: Annotated[str | None, Query(max_length=998)] = None,
    sender: AddressQuery = None,
    user: AddressQuery = None,
    since: TimeQuery = None,
    until: TimeQuery = None,
    verdict: Literal["ham", "suspect", "spam"] | None = None,
    direction: Literal["inbound", "outbound"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Verdicts recorded for a message, sender or user, newest first."""
    # Checked as every identity is (a value no key can be is a 400), matched as given.
    optional_identity(sender, "sender")
    optional_identity(user, "user")
    start = parse_time(since, "since") if since else None
    end = parse_time(until, "until") if until else None
    events = await _call(
        lambda: state.audit.search(
            message_id=message_id,
            sender=sender,
            user=user,
            since=start,
            until=end,
            verdict=verdict,
            direction=direction,
            limit=limit,
        )
    )
    return {"count": len(events), "events": events}


@router.get("/reports/outbound", response_model=OutboundReport, responses=ERRORS)
async def outbound_report(
    state: State, since: TimeQuery = None, until: TimeQuery = None
) -> dict[str, Any]:
    """Per-user outbound volume, spam share, DLP findings and limit hits (default: last day)."""
    start = parse_time(since, "since") if since else time.time() - DAY
    end = parse_time(until, "until") if until else None
    users = await _call(lambda: state.audit.outbound_report(start, end))
    return {
        "since": datetime.fromtimestamp(start, UTC).isoformat(),
        "until": datetime.fromtimestamp(end, UTC).isoformat() if end is not None else None,
        "users": users,
    }
