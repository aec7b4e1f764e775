"""Learning: recent examples by source, reports waiting for consensus, each user's
reports; rebuild now."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.console.learning import SOURCES, learning_view
from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleChange, ConsoleSession, Session
from mailsift.service.deps import State
from mailsift.service.rebuilds import RebuildFailed, run_rebuild
from mailsift.service.state import ServiceState

router = APIRouter()


async def _learning_page(
    request: Request,
    session: Session,
    state: ServiceState,
    *,
    notice: str | None = None,
    error: str | None = None,
) -> Response:
    view = await run_in_threadpool(learning_view, state.trainlog.engine)
    newest = await run_in_threadpool(state.learner.published.newest)
    return page(
        request,
        "learning.html",
        session,
        active="learning",
        view=view,
        sources=SOURCES,
        model=state.learner.status(),
        rebuild=newest,
        notice=notice,
        error=error,
    )


@router.get("/learning")
async def learning(request: Request, session: ConsoleSession, state: State) -> Response:
    return await _learning_page(request, session, state)


@router.post("/learning/rebuild")
async def rebuild(request: Request, session: ConsoleChange, state: State) -> Response:
    """As ``POST /v1/model/rebuild``: answers once this worker serves the new model."""
    try:
        summary = await run_rebuild(state.settings, wait=True)
    except (OSError, RebuildFailed) as exc:
        return await _learning_page(request, session, state, error=f"The rebuild failed: {exc}")
    await state.learner.reload_if_published()
    await state.learner.catch_up()
    examples = (summary or {}).get("examples", "?")
    return await _learning_page(
        request, session, state, notice=f"Rebuilt from {examples} examples."
    )
