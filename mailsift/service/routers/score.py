"""Scoring: the call every gateway makes for every message, in both directions."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from mailsift.learning.outbound import eligible
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLogError
from mailsift.reasons import GATEWAY_TRUNCATED, LIMIT_PREFIX
from mailsift.service.accounts import AccountState, SendingDecision
from mailsift.service.accounts.flow import before_outbound, record_outbound, settle
from mailsift.service.aliases.traffic import AliasHit, observe, sender_domain
from mailsift.service.analysis import Analysed, analyse, leak_scan, learning_example
from mailsift.service.audit import audit_record
from mailsift.service.authres import AuthResults, auth_results
from mailsift.service.checks import CheckContext, Envelope, Reason, run_checks
from mailsift.service.checks.aliases import expired_reasons
from mailsift.service.checks.lists import owner_reasons
from mailsift.service.checks.personal import personal_key, personal_reasons
from mailsift.service.dlp.scan import DlpReport
from mailsift.service.errors import BadRequest, StateUnavailable
from mailsift.service.explanation import hider
from mailsift.service.http.body import read_message
from mailsift.service.identity import identity_key, optional_identity
from mailsift.service.metrics import observe_verdict
from mailsift.service.monitor import note_gateway
from mailsift.service.pg.pool import Unreachable
from mailsift.service.schemas import ERRORS, IDENTITY_PATTERN, TEXT_PATTERN, ScoreOut
from mailsift.service.state import ServiceState
from mailsift.service.verdict import Verdict, decide, decide_for_recipient

router = APIRouter(prefix="/v1", tags=["score"])


def _usable(value: str | None) -> str | None:
    """An identity as sent, once its key is known to be usable (checked after
    lower-casing, which may lengthen it); the null sender ``<>`` is none."""
    return value if optional_identity(value, "address") is not None else None


def _usable_rcpt(value: str) -> str:
    identity_key(value, "rcpt")
    return value


# The bound before normalising only stops absurd input early; the real one is _usable's.
Address = Annotated[
    str | None, Field(max_length=4 * 320, pattern=IDENTITY_PATTERN), AfterValidator(_usable)
]
Rcpt = Annotated[
    str, Field(max_length=4 * 320, pattern=IDENTITY_PATTERN), AfterValidator(_usable_rcpt)
]
Short = Annotated[str | None, Field(max_length=255, pattern=TEXT_PATTERN)]
ClientIp = Annotated[
    str | None,
    Field(
        max_length=255,
        description="The SMTP client's IPv4 or IPv6 address.",
        json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
]
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class ScoreQuery(BaseModel):
    """The envelope, as the gateway saw it in the SMTP dialogue (query parameters)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    direction: Literal["inbound", "outbound"]
    mail_from: Address = None
    rcpt: Annotated[list[Rcpt], Field(max_length=1000)] = []
    client_ip: ClientIp = None
    helo: Short = None
    user: Address = None
    queue_id: Short = None
    gateway: Short = None
    truncated: bool = Field(
        False,
        description="The body is only the first bytes of a larger message (the gateway's "
        "size limit): it is scored on them and never learned from.",
    )


_REPEATED = frozenset({"rcpt"})


def _envelope_query(request: Request) -> ScoreQuery:
    """The query validated in one pass of :class:`ScoreQuery`.

    FastAPI's own parameter handling re-inspects every declared parameter's type on
    every request: with this endpoint's nine, resolving them took 7 % of a worker's
    time under ``mailsift bench``; this takes under 1 %. The OpenAPI parameters are
    generated from the same model, so the documentation and the checks cannot drift.
    """
    params = request.query_params
    data = {k: params.getlist(k) if k in _REPEATED else params[k] for k in params}
    try:
        return ScoreQuery.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters from a model's JSON schema."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


@router.post(
    "/score",
    response_model=ScoreOut,
    responses=ERRORS,
    openapi_extra={**_BODY, "parameters": _query_parameters(ScoreQuery)},
)
async def score(request: Request) -> Response:
    """Score one raw message and return the verdict, the action and its reasons."""
    # No FastAPI dependencies here: each costs a pass of its machinery, per message.
    state: ServiceState = request.app.state.mailsift
    query = _envelope_query(request)
    direction, mail_from, rcpt = query.direction, query.mail_from, query.rcpt
    client_ip, user, gateway = query.client_ip, query.user, query.gateway
    note_gateway(state, gateway)  # a gateway sending bad mail is still calling
    started = time.perf_counter()
    if client_ip is not None:
        try:
            ipaddress.ip_address(client_ip)
        except ValueError:
            raise BadRequest(f"client_ip {client_ip!r} is not an IP address") from None
    raw = await read_message(request, state.settings.max_message_bytes)
    analysed = await analyse(raw, state, request)
    envelope = Envelope(
        direction,
        mail_from,
        tuple(rcpt),
        client_ip,
        query.helo,
        user,
        query.queue_id,
        gateway,
        query.truncated,
    )
    settings = state.settings
    msg = analysed.message
    sender = (user or mail_from or "").strip().lower() or None
    outbound = direction == "outbound"

    auth = auth_results(msg, settings)
    labelled = state.learner.labels.get(analysed.fingerprint)
    # The message's verdict takes the global lists (outbound: the sender's own too); a
    # recipient's own entries decide only that recipient's copy (_per_recipient).
    lists = state.lists.match(msg.from_addr, [sender] if outbound else ())
    dlp: DlpReport | None = None
    if outbound or settings.dlp_inbound:
        dlp = await leak_scan(msg, state, request)
    # The explanation leaves out any token that shows what a leak check redacts.
    hide = hider(dlp.words if dlp is not None else frozenset())
    model_score = state.learner.model.score(analysed.features, settings.explain_tokens, hide)
    account: AccountState | None = None
    sending: SendingDecision | None = None
    limits_unavailable = False
    if outbound and sender:
        try:
            sending, account = await before_outbound(state, sender, list(rcpt))
        except (Unreachable, SQLAlchemyError):
            # The documented rule: defer (limit_unavailable), judged with the state
            # this process last knew of the sender.
            limits_unavailable = True
            account = state.accounts.last_known_state(sender)
    aliases: tuple[AliasHit, ...] = ()
    if not outbound and any(state.aliases.may_be_alias(r) for r in rcpt):
        aliases = await _alias_traffic(state, rcpt, sender_domain(msg.from_addr, mail_from))

    ctx = CheckContext(
        msg,
        envelope,
        model_score,
        state.model_ready,
        settings,
        auth=auth,
        labelled=labelled,
        lists=lists,
        dlp=dlp,
        sending=sending,
        limits_unavailable=limits_unavailable,
        account=account,
        aliases=aliases,
    )
    reasons = run_checks(ctx)
    verdict = decide(reasons, direction, settings)
    observe_verdict(direction, verdict.verdict, verdict.action, reasons, dlp)
    recipients = _per_recipient(
        state, envelope, analysed.fingerprint, msg.from_addr, auth, reasons, verdict, aliases
    )
    status = state.learner.status()
    # The audit row names whom the message reached: a live temporary address's owner
    # beside it (their reports of it are theirs to make).
    owners = [h.owner for h in aliases if h.live and h.owner not in rcpt]
    audited = replace(envelope, rcpt=(*envelope.rcpt, *dict.fromkeys(owners)))
    state.audit.record(
        audit_record(
            audited,
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
    state.history.keep(analysed.fingerprint, raw)
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
            "logit": model_score.logit,
        },
        "fingerprint": analysed.fingerprint,
        "direction": direction,
    }
    if recipients is not None:
        body["recipients"] = recipients
    if dlp is not None:
        body["dlp"] = dlp.as_dict()
    body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    after = None
    if outbound and sender and account is not None and sending is not None:
        # After the answer is on its way: count the outcome, maybe learn the message.
        after = BackgroundTask(
            _after_outbound, state, sender, account, raw, analysed, verdict, reasons, dlp
        )
    # orjson: the standard library's encoder took 17 us of the ~2 ms a message costs.
    return Response(orjson.dumps(body), media_type="application/json", background=after)


def _per_recipient(
    state: ServiceState,
    envelope: Envelope,
    fingerprint: str,
    sender: str,
    auth: AuthResults,
    reasons: list[Reason],
    shared: Verdict,
    aliases: tuple[AliasHit, ...] = (),
) -> list[dict[str, Any]] | None:
    """Each recipient's verdict: the shared one, made stricter (or milder) only by that
    recipient's own reports and, inbound, their own list entries. None without
    recipients. A live temporary address answers for its owner (their reports, their
    lists) and names them in ``alias`` for the gateway to deliver to; an expired or
    deleted one is refused to that recipient."""
    if not envelope.rcpt:
        return None
    layers = state.learner.personal
    sender_key = personal_key(sender) if sender else None
    settings = state.settings
    inbound = envelope.direction == "inbound"
    hits = {hit.address: hit for hit in aliases}
    out: list[dict[str, Any]] = []
    for rcpt in envelope.rcpt:
        key = personal_key(rcpt)
        hit = hits.get(key) if key else None
        live = hit is not None and hit.live
        who = hit.owner if hit is not None and live else key
        view = layers.view(who, fingerprint, sender_key) if who and layers.users else None
        mine = personal_reasons(view, sender_rule=settings.personal_sender)
        if inbound:
            user = who if live else rcpt
            mine += owner_reasons(state.lists.match(sender, [user]), auth, settings)
            mine += expired_reasons(hit)
        own = decide_for_recipient(shared, reasons, mine, envelope.direction, settings)
        item: dict[str, Any] = {
            "rcpt": key or rcpt,
            "score": own.score,
            "verdict": own.verdict,
            "action": own.action,
            "reasons": [{"name": r.name, "weight": r.weight, "detail": r.detail} for r in mine],
        }
        if hit is not None and live:
            item["alias"] = {"owner": hit.owner}
        out.append(item)
    return out


async def _alias_traffic(
    state: ServiceState, rcpt: list[str], sender: str | None
) -> tuple[AliasHit, ...]:
    """The temporary addresses among the recipients (one read; a write only for a first
    mail or a foreign sender)."""
    try:
        return await run_in_threadpool(observe, state.aliases, rcpt, sender)
    except SQLAlchemyError as exc:
        raise StateUnavailable(
            f"the alias store cannot be reached ({type(exc).__name__})"
        ) from None


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
        over_limit=any(r.name.startswith(LIMIT_PREFIX) for r in reasons),
        account_state=account.state,
        model_ready=state.model_ready,
        truncated=any(r.name == GATEWAY_TRUNCATED for r in reasons),
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
        # Outbound mail only ever adds: the log keeps any label someone set before.
        example = await learning_example(raw, analysed, state)
        await run_in_threadpool(
            state.trainlog.append,
            analysed.fingerprint,
            "ham",
            example,
            source=Source.OUTBOUND,
            actor=sender,
        )
    except TrainingLogError:
        pass  # best effort: the next clean message from this sender will do as well
