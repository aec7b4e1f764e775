"""Diagnostics: the report of ``GET /v1/diagnostics``, as a table (run on opening)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleSession
from mailsift.service.deps import State
from mailsift.service.diagnostics.report import run_diagnostics

router = APIRouter()


@router.get("/diagnostics")
async def diagnostics(request: Request, session: ConsoleSession, state: State) -> Response:
    report = await run_diagnostics(state)
    return page(request, "diagnostics.html", session, active="diagnostics", report=report.as_dict())
