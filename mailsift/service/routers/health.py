"""Liveness and readiness, for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mailsift.learning.trainlog import TrainingLogError
from mailsift.service.deps import State
from mailsift.service.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(state: State) -> JSONResponse:
    """The model is loaded and the training log is readable and writable."""
    try:
        await run_in_threadpool(state.trainlog.ping)
    except TrainingLogError as exc:
        return error_response(503, "not_ready", str(exc))
    status = state.learner.status()
    return JSONResponse(
        {"status": "ready", "model_version": status.version, "log_position": status.log_position}
    )
