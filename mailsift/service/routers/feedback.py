"""Teaching the model: users' reports, administrators' examples, taking either back.

A user's report acts for that user at once (their personal layer) and reaches the
shared model only by consensus; an administrator's example teaches the shared model and
outranks every other source (see :mod:`mailsift.learning`). Each call returns only once
the entries are durably on the training log, and after this worker has applied them, so
a score right after a report already reflects it here.

Every answer's ``log_position`` follows one rule: the newest log entry about the message
on the layers the answer reports on (the shared one; for a report or withdrawal also the
user's own). That is the entry written, or, when nothing was written (``unchanged``,
``kept``), the earlier entry that made the confirmed state true (0 if none ever was), so
a repeated request answers what the first did. A worker whose model has applied the log
up to it reflects the answer; this one has before it answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailsift.learning.sources import Via
from mailsift.learning.trainlog import AppendResult, ReportResult
from mailsift.models.fingerprint import is_fingerprint
from mailsift.service.analysis import analyse, learning_example
from mailsift.service.auth import AdminCaller, Principal, ReporterCaller
from mailsift.service.checks.personal import personal_key
from mailsift.service.deps import State
from mailsift.service.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    NotScoredForUser,
    RateLimited,
    StateUnavailable,
)
from mailsift.service.http.body import read_message
from mailsift.service.labelling import forget_example, kept_message, learn_as_admin, write_log
from mailsift.service.schemas import (
    ERRORS,
    FINGERPRINT_PATTERN,
    IDENTITY_PATTERN,
    LearnOut,
    ReportOut,
)
from mailsift.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["learning"])
log = logging.getLogger("mailsift.feedback")

T = TypeVar("T")
Label = Literal["spam", "ham"]
LabelQuery = Annotated[Label, Query(description="What the message really is.")]
UserQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=320,
        description="Whose report it is (an address, no spaces or control characters).",
        json_schema_extra={"pattern": IDENTITY_PATTERN},  # refused by _reporter, with why
    ),
]
ViaQuery = Annotated[
    Via,
    Query(
        description="How the user reported it: `imap` when they moved it into or out of "
        "Junk (`mailsift report --via imap`). Logged with the report."
    ),
]
FingerprintPath = Annotated[
    str,
    Path(
        description="The fingerprint a score or feedback answer returned (32 lower-case hex).",
        json_schema_extra={"pattern": FINGERPRINT_PATTERN},  # refused by _fingerprint, with why
    ),
]
_NOT_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f]")
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _reporter(caller: Principal, user: str) -> str:
    key = personal_key(user)
    if key is None or "@" not in key or _NOT_IN_ADDRESS.search(key):
        raise BadRequest(
            "user must be the reporter's address: at most 320 characters, "
            "no spaces or control characters"
        )
    if not caller.may_speak_for(key):
        raise Forbidden(f"this token does not speak for {key}")
    return key


def _fingerprint(value: str) -> str:
    if not is_fingerprint(value):
        raise BadRequest("fingerprint must be the 32 hex characters a score or feedback returned")
    return value


async def _scored_for(state: ServiceState, fingerprint: str, user: str) -> bool:
    audit = state.audit
    try:
        if await run_in_threadpool(audit.scored_for, fingerprint, user):
            return True
        # Another worker may hold the scoring row in its buffer a moment longer.
        await asyncio.sleep(audit.flush_seconds + 0.25)
        return await run_in_threadpool(audit.scored_for, fingerprint, user)
    except SQLAlchemyError as exc:  # the database is away: nothing is acknowledged
        raise StateUnavailable(f"the audit trail cannot be read ({type(exc).__name__})") from None


def _report_body(result: ReportResult, fingerprint: str) -> dict[str, object]:
    shared = result.shared
    return {
        "result": result.personal.result,
        "log_position": max(result.personal.position, shared.position),
        "fingerprint": fingerprint,
        "scope": "personal",
        "shared": {
            "result": shared.result,
            "reports": shared.reports,
            "needed": shared.needed,
            "counted": shared.counted,
        },
    }


def _limit_key(caller: Principal, user: str) -> str:
    """Whose reports one rate window counts: a user token's own; a reporter token (one
    for a whole site) per user, so one user's burst does not silence the others."""
    return f"{caller.name}\n{user}" if caller.role == "reporter" else caller.name


def _log_report(user: str, fingerprint: str, label: str, via: Via, result: str) -> None:
    """One line per report: who, which message, what, how; never content."""
    log.info(
        "report user=%s fingerprint=%s label=%s source=%s result=%s",
        user,
        fingerprint,
        label,
        via,
        result,
    )


@router.post("/feedback", response_model=ReportOut, responses=ERRORS, openapi_extra=_BODY)
async def feedback(
    request: Request,
    caller: ReporterCaller,
    state: State,
    label: LabelQuery,
    user: UserQuery,
    via: ViaQuery = "api",
) -> dict[str, object]:
    """A user's report that a message is spam or not spam: theirs at once, shared by consensus."""
    reporter = _reporter(caller, user)
    settings = state.settings
    if caller.role != "admin" and not state.feedback_limiter.allow(_limit_key(caller, reporter)):
        raise RateLimited(
            f"more than {settings.feedback_per_token_per_minute} reports a minute "
            f"from this token for {reporter}; try again shortly"
        )
    raw = await read_message(request, settings.max_message_bytes)
    analysed = await analyse(raw, state)
    fingerprint = analysed.fingerprint
    if settings.feedback_require_scored and not await _scored_for(state, fingerprint, reporter):
        raise NotScoredForUser(
            f"no message with this content was scored for {reporter} (within the audit "
            f"trail's {settings.audit_retention_days} days): users report their own mail; "
            "MAILSIFT_FEEDBACK_REQUIRE_SCORED=false lets sites that import old mail report it"
        )
    example = await learning_example(raw, analysed, state)
    result = await write_log(
        lambda: state.trainlog.report(
            reporter,
            fingerprint,
            label,
            example,
            needed=settings.feedback_consensus,
            per_user_per_day=settings.feedback_consensus_per_user_per_day,
            via=via,
        )
    )
    body = _report_body(result, fingerprint)
    _log_report(reporter, fingerprint, label, via, result.personal.result)
    await state.learner.catch_up(until=int(str(body["log_position"])))
    return body


@router.delete("/feedback/{fingerprint}", response_model=ReportOut, responses=ERRORS)
async def withdraw(
    caller: ReporterCaller,
    state: State,
    fingerprint: FingerprintPath,
    user: UserQuery,
    via: ViaQuery = "api",
) -> dict[str, object]:
    """A user takes their own report back; consensus is counted again without it."""
    reporter = _reporter(caller, user)
    fp = _fingerprint(fingerprint)
    result = await write_log(
        lambda: state.trainlog.withdraw(reporter, fp, needed=state.settings.feedback_consensus)
    )
    body = _report_body(result, fp)
    _log_report(reporter, fp, "withdrawn", via, result.personal.result)
    await state.learner.catch_up(until=int(str(body["log_position"])))
    return body


def _learn_body(result: AppendResult, fingerprint: str) -> dict[str, object]:
    body: dict[str, object] = {
        "result": result.result,
        "log_position": result.position,
        "fingerprint": fingerprint,
        "scope": "shared",
    }
    if result.held_by is not None:
        body["held_by"] = result.held_by.value
    return body


@router.post("/train", response_model=LearnOut, responses=ERRORS, openapi_extra=_BODY)
async def train(
    request: Request, caller: AdminCaller, state: State, label: LabelQuery
) -> dict[str, object]:
    """A trusted administrator's labelled example: it outranks every other source."""
    raw = await read_message(request, state.settings.max_message_bytes)
    return await _learn_as_admin(raw, label, caller, state)


@router.post("/history/{fingerprint}/label", response_model=LearnOut, responses=ERRORS)
async def label_from_history(
    caller: AdminCaller, state: State, fingerprint: FingerprintPath, label: LabelQuery
) -> dict[str, object]:
    """An administrator labels a recently scored message by its fingerprint alone.

    As ``/v1/train`` with the message itself, which the service kept for
    MAILSIFT_HISTORY_RETENTION_HOURS after scoring it; 410 once it is no longer kept."""
    raw = await kept_message(state, _fingerprint(fingerprint))
    return await _learn_as_admin(raw, label, caller, state)


async def _learn_as_admin(
    raw: bytes, label: Label, caller: Principal, state: ServiceState
) -> dict[str, object]:
    result, fingerprint = await learn_as_admin(raw, label, caller.name, state)
    return _learn_body(result, fingerprint)


@router.post("/examples/{fingerprint}/confirm", response_model=LearnOut, responses=ERRORS)
async def confirm(
    caller: AdminCaller, state: State, fingerprint: FingerprintPath, label: LabelQuery
) -> dict[str, object]:
    """An administrator confirms users' reports: the shared model learns the label now."""
    fp = _fingerprint(fingerprint)
    result = await write_log(lambda: state.trainlog.confirm(fp, label, actor=caller.name))
    if result is None:
        raise NotFound(f"no user reported message {fp} as {label}")
    await state.learner.catch_up(until=result.position)
    return _learn_body(result, fp)


@router.delete("/examples/{fingerprint}", response_model=LearnOut, responses=ERRORS)
async def forget(
    caller: AdminCaller, state: State, fingerprint: FingerprintPath
) -> dict[str, object]:
    """Take a message back entirely: its shared example and every user's report of it."""
    fp = _fingerprint(fingerprint)
    return _learn_body(await forget_example(state, fp, caller.name), fp)
