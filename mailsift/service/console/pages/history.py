"""History: search the audit trail, open a verdict to see why, label or forget it."""

from __future__ import annotations

from typing import Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.models.fingerprint import is_fingerprint
from mailsift.service.analysis import analyse, leak_scan
from mailsift.service.console import search
from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleChange, ConsoleSession
from mailsift.service.deps import State
from mailsift.service.errors import ApiError, NotFound
from mailsift.service.explanation import hider
from mailsift.service.labelling import Label, forget_example, kept_message, learn_as_admin
from mailsift.service.settings import Action
from mailsift.service.state import ServiceState
from mailsift.service.verdict import VerdictName

router = APIRouter()

VERDICTS: tuple[str, ...] = get_args(VerdictName)
ACTIONS: tuple[str, ...] = get_args(Action)


@router.get("/history")
async def history(request: Request, session: ConsoleSession, state: State) -> Response:
    query = search.HistoryQuery.of(dict(request.query_params))
    found = await run_in_threadpool(search.search, state.state_engine, query)
    rows = found.rows
    earlier = None
    if rows and len(rows) >= search.PAGE_ROWS:
        earlier = query.params(until=f"{rows[-1]['timestamp']:.3f}")
    elif not found.complete:
        earlier = query.params(until=f"{found.searched_from:.3f}")
    return page(
        request,
        "history.html",
        session,
        active="history",
        query=query,
        rows=rows,
        found=found,
        earlier=urlencode(earlier) if earlier else None,
        windows=list(search.WINDOWS),
        verdicts=VERDICTS,
        actions=ACTIONS,
        limit=search.PAGE_ROWS,
    )


async def _inside(state: ServiceState, fingerprint: str | None) -> dict[str, Any]:
    """What the kept message shows now: the model's telling tokens both ways and the
    leak findings (redacted); empty once the message is no longer kept."""
    if not fingerprint or not is_fingerprint(fingerprint):
        return {"kept": False}
    raw = await run_in_threadpool(state.history.find, fingerprint)
    if raw is None:
        return {"kept": False}
    try:
        analysed = await analyse(raw, state)
    except ApiError:
        return {"kept": False}
    dlp = await leak_scan(analysed.message, state)
    scored = state.learner.model.score(
        analysed.features, state.settings.explain_tokens, hider(dlp.words)
    )
    return {
        "kept": True,
        "spam_tokens": scored.spam_tokens,
        "ham_tokens": scored.ham_tokens,
        "findings": dlp.as_dict()["findings"],
    }


async def _event_page(
    request: Request,
    session: Any,
    state: ServiceState,
    event_id: int,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    event = await run_in_threadpool(search.event_by_id, state.state_engine, event_id)
    if event is None:
        return page(
            request, "error.html", session, status=404, error=f"No verdict {event_id} on the trail."
        )
    fingerprint = event["fingerprint"]
    holder = await run_in_threadpool(state.trainlog.holder_of, fingerprint) if fingerprint else None
    return page(
        request,
        "event.html",
        session,
        active="history",
        event=event,
        holder=holder,
        notice=notice,
        error=error,
        status=status,
        **await _inside(state, fingerprint),
    )


@router.get("/history/{event_id}")
async def event(request: Request, session: ConsoleSession, state: State, event_id: int) -> Response:
    return await _event_page(request, session, state, event_id)


@router.post("/history/{event_id}/label")
async def label(request: Request, session: ConsoleChange, state: State, event_id: int) -> Response:
    """Label the kept message as the administrator signed in (the shared model)."""
    form = await request.form()
    wanted = form.get("label")
    chosen: Label = "spam" if wanted == "spam" else "ham"
    found = await run_in_threadpool(search.event_by_id, state.state_engine, event_id)
    try:
        if wanted not in ("spam", "ham"):
            raise ApiError("label must be spam or ham")
        if found is None or not found["fingerprint"]:
            raise NotFound(f"no verdict {event_id} with a fingerprint on the trail")
        raw = await kept_message(state, found["fingerprint"])
        result, _ = await learn_as_admin(raw, chosen, session.principal.name, state)
    except ApiError as exc:
        return await _event_page(
            request, session, state, event_id, error=exc.detail, status=exc.status
        )
    return await _event_page(
        request,
        session,
        state,
        event_id,
        notice=f"Learned as {wanted}: {result.result} (log position {result.position}).",
    )


@router.post("/history/{event_id}/forget")
async def forget(request: Request, session: ConsoleChange, state: State, event_id: int) -> Response:
    """Take the message's example and every report of it back."""
    found = await run_in_threadpool(search.event_by_id, state.state_engine, event_id)
    if found is None or not found["fingerprint"]:
        return await _event_page(request, session, state, event_id, error="Nothing to forget.")
    result = await forget_example(state, found["fingerprint"], session.principal.name)
    return await _event_page(
        request,
        session,
        state,
        event_id,
        notice=f"Forgotten: {result.result} (log position {result.position}).",
    )
