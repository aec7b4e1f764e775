"""Prometheus metrics, for the admin listener."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from mailsift.service.deps import State
from mailsift.service.metrics import exposition, observe_model, publish_tail

router = APIRouter(tags=["metrics"])

_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.get("/metrics", response_class=Response, responses=_TEXT)
async def metrics(state: State) -> Response:
    """Every metric of this service in the Prometheus text format."""

    def scrape() -> tuple[bytes, str]:
        facts = observe_model(state)  # this worker's model, measured now
        publish_tail(state.tail, facts)
        return exposition()

    body, content_type = await run_in_threadpool(scrape)
    return Response(body, media_type=content_type)
