"""Teaching the model: users' reports, administrators' examples, taking a report back.

Each call returns only once the example is durably on the training log, and after this
worker has applied it, so a score right after a report already reflects it here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from mailsift.service.analysis import analyse
from mailsift.service.auth import AdminCaller, UserCaller
from mailsift.service.body import read_message
from mailsift.service.deps import State
from mailsift.service.errors import BadRequest, Forbidden, ModelNotReady, RateLimited
from mailsift.service.schemas import ERRORS, LearnOut
from mailsift.service.state import ServiceState
from mailsift.learning.trainlog import AppendResult, TrainingLogError

router = APIRouter(prefix="/v1", tags=["learning"])

LabelQuery = Annotated[Literal["spam", "ham"], Query(description="What the message really is.")]
_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def _learn(
    request: Request, state: ServiceState, label: Literal["spam", "ham"], source: str, actor: str
) -> dict[str, object]:
    raw = await read_message(request, state.settings.max_message_bytes)
    analysed = await analyse(raw, state)
    result = await _write(
        lambda: state.trainlog.append(analysed.fingerprint, label, raw, source=source, actor=actor)
    )
    await state.learner.catch_up(until=result.position)
    return {
        "result": result.result,
        "log_position": result.position,
        "fingerprint": analysed.fingerprint,
    }


async def _write(op: Callable[[], AppendResult]) -> AppendResult:
    try:
        return await run_in_threadpool(op)
    except TrainingLogError as exc:
        raise ModelNotReady(f"the training log cannot be written: {exc}") from exc


@router.post("/feedback", response_model=LearnOut, responses=ERRORS, openapi_extra=_BODY)
async def feedback(
    request: Request,
    caller: UserCaller,
    state: State,
    label: LabelQuery,
    user: Annotated[str, Query(min_length=1, max_length=320, description="Who reports it.")],
) -> dict[str, object]:
    """A user's report that a message is spam or not spam."""
    if not caller.may_speak_for(user):
        raise Forbidden(f"this token does not speak for {user}")
    # Users' reports are capped; administrators teach in bulk through /v1/train anyway.
    if caller.role != "admin" and not state.feedback_limiter.allow(caller.name):
        raise RateLimited(
            f"more than {state.settings.feedback_per_token_per_minute} reports a minute "
            "from this token; try again shortly"
        )
    return await _learn(request, state, label, "feedback", user)


@router.post("/train", response_model=LearnOut, responses=ERRORS, openapi_extra=_BODY)
async def train(
    request: Request, caller: AdminCaller, state: State, label: LabelQuery
) -> dict[str, object]:
    """A trusted administrator's labelled example."""
    return await _learn(request, state, label, "train", caller.name)


@router.delete("/examples/{fingerprint}", response_model=LearnOut, responses=ERRORS)
async def forget(
    caller: AdminCaller,
    state: State,
    fingerprint: Annotated[str, Path(description="The fingerprint a score or feedback returned.")],
) -> dict[str, object]:
    """Take a wrong report back entirely: the model unlearns that example."""
    if not _FINGERPRINT.match(fingerprint):
        raise BadRequest("fingerprint must be the 32 hex characters a score or feedback returned")
    result = await _write(
        lambda: state.trainlog.forget(fingerprint, source="feedback", actor=caller.name)
    )
    if result.result == "forgotten":
        await state.learner.catch_up(until=result.position)
    return {"result": result.result, "log_position": result.position, "fingerprint": fingerprint}
