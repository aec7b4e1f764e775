"""Overview: traffic by direction and verdict, scoring latency, the model, learning,
alerts and gateways — everything read when the page is opened, nothing kept for it."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mailsift.service.console import learning, traffic
from mailsift.service.console.charts import Series, quantile, stacked_bars
from mailsift.service.console.render import page
from mailsift.service.console.session import ConsoleSession
from mailsift.service.deps import State
from mailsift.service.metrics import latency_buckets
from mailsift.service.state import ServiceState

router = APIRouter()

COLOURS = {"ham": "#2b8a3e", "suspect": "#e8a10b", "spam": "#c92a2a"}
SCORE_ROUTE = "/v1/score"
GATEWAY_RECENT = 86_400.0


def _charts(found: traffic.Traffic, span: str) -> list[dict[str, str]]:
    charts = []
    for direction in traffic.DIRECTIONS:
        series = [
            Series(verdict, COLOURS[verdict], found.per_minute[(direction, verdict)])
            for verdict in traffic.VERDICTS
        ]
        title = f"{direction.capitalize()} messages per minute, last {span}"
        svg = stacked_bars(title, series, found.labels)
        charts.append({"direction": direction, "title": title, "svg": svg})
    return charts


def _facts(state: ServiceState, span: str, now: float) -> dict[str, Any]:
    """Every blocking read of the page, in one thread."""
    found = traffic.traffic(state.state_engine, span, now)
    buckets = latency_buckets(SCORE_ROUTE)
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    seen = state.gateway_seen.last_seen()
    return {
        "charts": _charts(found, span),
        "total": found.total,
        "latency": {
            "p50": None if p50 is None else p50 * 1000,
            "p99": None if p99 is None else p99 * 1000,
            "count": int(buckets[-1][1]) if buckets else 0,
        },
        "sources": learning.source_counts(state.trainlog.engine, now - learning.WEEK),
        "rebuild": state.learner.published.newest(),
        "alerts": state.alerts.open_incidents(now),
        "gateways": sorted(
            ((name, at) for name, at in seen.items() if at >= now - GATEWAY_RECENT),
            key=lambda item: -item[1],
        ),
    }


@router.get("/")
async def overview(
    request: Request,
    session: ConsoleSession,
    state: State,
    span: Annotated[str, Query(alias="range")] = "hour",
) -> Response:
    if span not in traffic.RANGES:
        span = "hour"
    now = time.time()
    facts = await run_in_threadpool(_facts, state, span, now)
    return page(
        request,
        "overview.html",
        session,
        active="overview",
        span=span,
        spans=list(traffic.RANGES),
        model=state.learner.status(),
        ready=state.model_ready,
        **facts,
    )
