"""The diagnostic report over HTTP, for administrators and monitoring.

Runs the same checks as ``mailsift diagnose``; it reads the stores and queries DNS, so it
takes a few seconds at worst (each DNS lookup is capped) and is meant to be polled
rarely. Failures inside the report are results, never a 5xx.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from mailsift.service.auth import AdminCaller
from mailsift.service.deps import State
from mailsift.service.diagnostics.report import run_diagnostics
from mailsift.service.schemas import ErrorBody

router = APIRouter(prefix="/v1/admin", tags=["admin"])

StatusOut = Literal["pass", "warn", "fail"]


class DiagResultOut(BaseModel):
    name: str = Field(description="What was checked, e.g. `spf:example.com`.")
    status: StatusOut
    detail: str
    remedy: str = Field(description="One line on what to do; empty for a pass.")


class DiagSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    pass_: int = Field(alias="pass")
    warn: int
    fail: int


class DiagnosticsOut(BaseModel):
    status: StatusOut = Field(description="The worst status of any result.")
    summary: DiagSummary
    generated_at: str
    results: list[DiagResultOut]


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no or bad token"},
    403: {"model": ErrorBody, "description": "not an admin token"},
}


@router.get("/diagnostics", response_model=DiagnosticsOut, responses=_ERRORS)
async def diagnostics(caller: AdminCaller, state: State) -> dict[str, Any]:
    """Pass/warn/fail checks of model, lists, limits, listeners, gateways, disk and DNS."""
    report = await run_diagnostics(state)
    return report.as_dict()
