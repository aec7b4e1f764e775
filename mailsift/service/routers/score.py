"""Scoring: the call every gateway makes for every message, in both directions."""

from __future__ import annotations

import ipaddress
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from mailsift.service.accounts import AccountState
from mailsift.service.accounts.flow import before_outbound, record_outbound, settle
from mailsift.service.analysis import Analysed, analyse
from mailsift.service.audit import audit_record
from mailsift.service.authres import auth_results
from mailsift.service.body import read_message
from mailsift.service.checks import CheckContext, Envelope, Reason, run_checks
from mailsift.service.deps import State
from mailsift.service.dlp.scan import DlpReport, scan_message
from mailsift.service.errors import BadRequest
from mailsift.service.metrics import observe_verdict
from mailsift.service.monitor import note_gateway
from mailsift.service.outbound_learning import eligible
from mailsift.service.schemas import ERRORS, ScoreOut
from mailsift.service.state import ServiceState
from mailsift.service.trainlog import TrainingLogError
from mailsift.service.verdict import Verdict, decide

router = APIRouter(prefix="/v1", tags=["score"])

Address = Annotated[str | None, Query(max_length=320)]
Short = Annotated[str | None, Query(max_length=255)]
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/score", response_model=ScoreOut, responses=ERRORS, openapi_extra=_BODY)
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
    note_gateway(state, gateway)  # a gateway sending bad mail is still calling
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
    envelope = Envelope(direction, mail_from, tuple(rcpt), client_ip, helo, user, queue_id, gateway)
    settings = state.settings
    msg = analysed.message
    model_score = state.learner.model.score(analysed.features, explain=settings.explain_tokens)
    sender = (user or mail_from or "").strip().lower() or None
    outbound = direction == "outbound"

    extra: dict[str, object] = {"auth": auth_results(msg, settings)}
    extra["lists"] = state.lists.match(msg.from_addr, [sender] if outbound else rcpt)
    dlp: DlpReport | None = None
    if outbound or settings.dlp_inbound:
        dlp = scan_message(msg, state.dlp)
        extra["dlp"] = dlp
    account: AccountState | None = None
    if outbound and sender:
        extra["sending"], account = await before_outbound(state, sender, list(rcpt))
        extra["account"] = account

    ctx = CheckContext(msg, envelope, model_score, state.model_ready, settings, extra)
    reasons = run_checks(ctx)
    verdict = decide(reasons, direction, settings)
    observe_verdict(direction, verdict.verdict, verdict.action, reasons, dlp)
    status = state.learner.status()
    state.audit.record(
        audit_record(
            envelope,
            msg,
            score=verdict.score,
            verdict=verdict.verdict,
            action=verdict.action,
            reasons=reasons,
            model_version=status.version,
            fingerprint=analysed.fingerprint,
            dlp=dlp.findings if dlp else (),
        )
    )
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
    }
    if dlp is not None:
        body["dlp"] = dlp.as_dict()
    body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    after = None
    if outbound and sender and account is not None:
        # After the answer is on its way: count the outcome, maybe learn the message.
        after = BackgroundTask(
            _after_outbound, state, sender, account, raw, analysed, verdict, reasons, dlp
        )
    return JSONResponse(body, background=after)


async def _after_outbound(
    state: ServiceState,
    sender: str,
    account: AccountState,
    raw: bytes,
    analysed: Analysed,
    verdict: Verdict,
    reasons: list[Reason],
    dlp: DlpReport | None,
) -> None:
    """Queue the outcome for the sender's judgement; learn the message as ham if the
    learning budget has room and every guard passes, the sender judged with it counted."""
    record_outbound(state, sender, verdict.verdict)
    quota = state.outbound_quota
    if not quota.open():  # learning off, or this minute's examples are all taken
        return
    refusal = eligible(
        score=verdict.score,
        verdict=verdict.verdict,
        reasons=reasons,
        dlp_severities=dlp.severities if dlp else (),
        over_limit=any(r.name.startswith("limit_") for r in reasons),
        account_state=account.state,
        model_ready=state.model_ready,
        settings=state.settings,
    )
    if refusal is not None:
        return
    try:
        if not await quota.claim(sender):
            return
        # The state scoring used may be a second old: judge the sender with this message.
        if (await settle(state, sender)).state != "ok":
            return
        # Outbound mail only ever adds: it must never relabel what a person reported.
        if await run_in_threadpool(state.trainlog.label_of, analysed.fingerprint) is not None:
            return
        await run_in_threadpool(
            state.trainlog.append,
            analysed.fingerprint,
            "ham",
            raw,
            source="outbound",
            actor=sender,
        )
    except TrainingLogError:
        pass  # best effort: the next clean message from this sender will do as well
