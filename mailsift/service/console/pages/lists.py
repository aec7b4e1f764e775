"""Lists: global and per-user allow and block entries; add and remove, the guard's
refusals shown in its own words."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleChange, ConsoleSession, Session
from mailsift.service.deps import State
from mailsift.service.errors import ApiError
from mailsift.service.state import ServiceState

router = APIRouter()

KINDS = ("allow", "block")
SCOPES = ("global", "user")
SHOWN = 500


def _entries(state: ServiceState) -> dict[str, list[Any]]:
    return {kind: state.lists.list_entries(kind, limit=SHOWN) for kind in KINDS}  # type: ignore[arg-type]


async def _lists_page(
    request: Request,
    session: Session,
    state: ServiceState,
    *,
    status: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> Response:
    entries = await run_in_threadpool(_entries, state)
    return page(
        request,
        "lists.html",
        session,
        active="lists",
        entries=entries,
        kinds=KINDS,
        scopes=SCOPES,
        notice=notice,
        error=error,
        status=status,
    )


@router.get("/lists")
async def lists(request: Request, session: ConsoleSession, state: State) -> Response:
    return await _lists_page(request, session, state)


def _fields(form: Any) -> tuple[str, str, str, str | None]:
    kind, scope = str(form.get("kind", "")), str(form.get("scope", "global"))
    entry, user = str(form.get("entry", "")).strip(), str(form.get("user", "")).strip()
    if kind not in KINDS or scope not in SCOPES:
        raise ApiError("kind must be allow or block, scope global or user")
    return kind, scope, entry, user or None


@router.post("/lists/add")
async def add(request: Request, session: ConsoleChange, state: State) -> Response:
    form = await request.form()
    try:
        kind, scope, entry, user = _fields(form)
        by = session.principal.name
        stored, created = await run_in_threadpool(
            state.lists.put,
            kind,  # type: ignore[arg-type]
            entry,
            scope,  # type: ignore[arg-type]
            user,
            by,
        )
    except (ApiError, ValueError) as exc:
        why = exc.detail if isinstance(exc, ApiError) else str(exc)
        return await _lists_page(request, session, state, status=400, error=f"Refused: {why}")
    done = "added" if created else "was already listed"
    return await _lists_page(request, session, state, notice=f"{stored.entry} {done}.")


@router.post("/lists/remove")
async def remove(request: Request, session: ConsoleChange, state: State) -> Response:
    form = await request.form()
    try:
        kind, scope, entry, user = _fields(form)
        gone = await run_in_threadpool(
            state.lists.delete,
            kind,  # type: ignore[arg-type]
            entry,
            scope,  # type: ignore[arg-type]
            user,
        )
    except (ApiError, ValueError) as exc:
        why = exc.detail if isinstance(exc, ApiError) else str(exc)
        return await _lists_page(request, session, state, status=400, error=f"Refused: {why}")
    if not gone:
        missing = f"{entry} was not listed."
        return await _lists_page(request, session, state, status=404, error=missing)
    return await _lists_page(request, session, state, notice=f"{entry} removed.")
