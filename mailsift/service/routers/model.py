"""The model this worker serves: what it knows, and picking up a newly published one."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from mailsift.learning.trainlog import TrainingLogError
from mailsift.service.deps import State
from mailsift.service.errors import ModelNotReady
from mailsift.service.rebuilds import RebuildFailed, run_rebuild
from mailsift.service.schemas import ERRORS, ModelOut, RebuildOut

router = APIRouter(prefix="/v1/model", tags=["model"])


async def describe(state: State) -> dict[str, Any]:
    status = state.learner.status()
    try:
        head = await run_in_threadpool(state.trainlog.head)
    except TrainingLogError as exc:
        raise ModelNotReady(str(exc)) from exc
    tail = state.tail
    tail.saw_head(head)
    tail.caught_up(status.log_position, at_end=False)  # the head read just now counts too
    return {
        "lag": tail.lag(status.log_position),
        "behind": tail.behind(),
        "at_head_seconds_ago": round(tail.unconfirmed_seconds(), 3),
        "notifications": None if state.pg is None else state.pg.listener.connected,
        "version": status.version,
        "ham": status.ham,
        "spam": status.spam,
        "learning": not state.model_ready,
        "log_position": status.log_position,
        "log_head": head,
        "snapshot_position": status.snapshot_position,
        "snapshot_created_at": status.snapshot_created_at,
        "updated_at": status.updated_at,
        "published_id": status.published_id,
        "worker": os.getpid(),
    }


@router.get("", response_model=ModelOut, responses=ERRORS)
async def get_model(state: State) -> dict[str, Any]:
    """Model version, ham and spam learned, snapshot and training-log positions."""
    return await describe(state)


@router.post("/reload", response_model=ModelOut, responses=ERRORS)
async def reload_model(state: State) -> dict[str, Any]:
    """Swap in the newest published model now (workers also notice one by themselves)."""
    await state.learner.reload_if_published()
    await state.learner.catch_up()
    return await describe(state)


@router.post("/rebuild", response_model=RebuildOut, responses=ERRORS)
async def rebuild_model(state: State) -> dict[str, Any]:
    """Rebuild the shared model from the log's live examples; answers once this worker
    serves it (other workers swap it in within MAILSIFT_SNAPSHOT_CHECK_SECONDS)."""
    try:
        summary = await run_rebuild(state.settings, wait=True)
    except (OSError, RebuildFailed) as exc:
        raise ModelNotReady(f"the rebuild failed: {exc}") from exc
    assert summary is not None  # a waiting rebuild always runs
    await state.learner.reload_if_published()
    await state.learner.catch_up()
    return {**await describe(state), "rebuild": summary}
