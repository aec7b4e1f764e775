"""Scoring: the call every gateway makes for every message, in both directions."""

from __future__ import annotations

import ipaddress
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from mailsift.service.analysis import analyse
from mailsift.service.body import read_message
from mailsift.service.checks import CheckContext, Envelope, run_checks
from mailsift.service.deps import State
from mailsift.service.errors import BadRequest
from mailsift.service.schemas import ERRORS, ScoreOut
from mailsift.service.verdict import decide

router = APIRouter(prefix="/v1", tags=["score"])

Address = Annotated[str | None, Query(max_length=320)]
Short = Annotated[str | None, Query(max_length=255)]


@router.post(
    "/score",
    response_model=ScoreOut,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def score(
    request: Request,
    state: State,
    direction: Literal["inbound", "outbound"],
    mail_from: Address = None,
    rcpt: Annotated[list[str], Query(max_length=1000)] = [],  # noqa: B006 - FastAPI copies defaults
    client_ip: Short = None,
    helo: Short = None,
    user: Address = None,
    queue_id: Short = None,
    gateway: Short = None,
) -> JSONResponse:
    """Score one raw message and return the verdict, the action and its reasons."""
    started = time.perf_counter()
    if client_ip is not None:
        try:
            ipaddress.ip_address(client_ip)
        except ValueError:
            raise BadRequest(f"client_ip {client_ip!r} is not an IP address") from None
    if any(len(r) > 320 for r in rcpt):
        raise BadRequest("rcpt: each address must be at most 320 characters")
    raw = await read_message(request, state.settings.max_message_bytes)
    analysed = await analyse(raw, state)
    model = state.learner.model
    model_score = model.score(analysed.features, explain=state.settings.explain_tokens)
    envelope = Envelope(direction, mail_from, tuple(rcpt), client_ip, helo, user, queue_id, gateway)
    ctx = CheckContext(analysed.message, envelope, model_score, state.model_ready, state.settings)
    reasons = run_checks(ctx)
    verdict = decide(reasons, direction, state.settings)
    status = state.learner.status()
    body: dict[str, Any] = {
        "score": verdict.score,
        "verdict": verdict.verdict,
        "action": verdict.action,
        "reasons": [{"name": r.name, "weight": r.weight, "detail": r.detail} for r in reasons],
        "tokens": {
            "spam": [{"token": t.token, "weight": t.weight} for t in model_score.spam_tokens],
            "ham": [{"token": t.token, "weight": t.weight} for t in model_score.ham_tokens],
        },
        "model": {
            "version": status.version,
            "ham": status.ham,
            "spam": status.spam,
            "learning": not state.model_ready,
        },
        "fingerprint": analysed.fingerprint,
        "direction": direction,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return JSONResponse(body)
