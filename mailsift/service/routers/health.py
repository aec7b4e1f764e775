"""Liveness and readiness, for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mailsift.learning.trainlog import TrainingLogError
from mailsift.service.deps import State
from mailsift.service.errors import error_response
from mailsift.service.schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


NOT_READY = (
    "the training log cannot be read or written; an administrator sees why in "
    "GET /v1/model on the admin listener"
)


@router.get("/readyz", responses={503: {"model": ErrorBody, "description": "not ready"}})
async def readyz(state: State) -> JSONResponse:
    """The model is loaded and the training log is readable and writable.

    Anyone may ask, so the answer says only ready or not: the database's own error
    names its user, host and database, and it is for administrators (``/v1/model``)."""
    try:
        await run_in_threadpool(state.trainlog.ping)
    except TrainingLogError:
        return error_response(503, "not_ready", NOT_READY)
    status = state.learner.status()
    return JSONResponse(
        {"status": "ready", "model_version": status.version, "log_position": status.log_position}
    )
