"""The FastAPI app factory and the per-worker lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool

from mailsift import __version__
from mailsift.learning.learner import Learner
from mailsift.learning.outbound import OutboundQuota
from mailsift.learning.published import PublishedModels
from mailsift.learning.tail import LogTail
from mailsift.learning.trainlog import open_training_log
from mailsift.service import monitor
from mailsift.service.accounts.flow import flush_outbound, run_flusher
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.aliases.store import AliasStore
from mailsift.service.audit import AuditTrail
from mailsift.service.auth import FeedbackLimiter, Role, TokenStore, require
from mailsift.service.console import install_console
from mailsift.service.db import keep_checkpointed, open_state_engine
from mailsift.service.dlp.config import load_dlp_config
from mailsift.service.errors import install_error_handlers
from mailsift.service.history import MessageHistory
from mailsift.service.http.gate import RequestGate
from mailsift.service.http.listeners import ListenerGuard
from mailsift.service.http.operations import document_links, document_refusals, operations
from mailsift.service.lists.store import ListStore
from mailsift.service.memory import fix_mmap_threshold
from mailsift.service.metrics import MetricsMiddleware
from mailsift.service.monitor import GatewaySeen
from mailsift.service.pg.link import pg_link
from mailsift.service.pg.notify import CHANNEL_LOG
from mailsift.service.rebuilds import RebuildScheduler
from mailsift.service.routers import (
    accounts,
    aliases,
    audit,
    diagnostics,
    dlp,
    events,
    feedback,
    health,
    lists,
    model,
    score,
)
from mailsift.service.routers import metrics as metrics_router
from mailsift.service.settings import Settings, get_settings
from mailsift.service.state import ServiceState
from mailsift.service.token_cache import TokenCache

__all__ = ["ROUTERS", "create_app"]

log = logging.getLogger("mailsift.app")

DAY = 86_400.0
NOTIFIED_POLL_SECONDS = 2.0
"""How often a worker polls the training log while it hears of appends by notification."""
RAW_PRUNE_SECONDS = 3600.0
"""How often a worker drops the raw bytes past ``raw_retention_days`` (any worker may)."""


# mailsift exports its own Prometheus metrics. FastAPI's native OpenTelemetry layer (in
# the releases that have it) would otherwise ask for the tracer provider and wrap each
# phase of every request, a few percent of a worker's time under load.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)


ROUTERS: tuple[tuple[APIRouter, tuple[Role, ...]], ...] = (
    # Who may call what: gateways score, report events and scan; routers that mix roles
    # (feedback, lists) check per endpoint; everything else is for administrators.
    (score.router, ("gateway",)),
    (events.router, ("gateway",)),
    (dlp.router, ("gateway",)),
    (feedback.router, ()),
    (lists.router, ()),
    (aliases.router, ()),
    (aliases.gateway_router, ("gateway",)),
    (accounts.gateway_router, ("gateway",)),
    (accounts.router, ("admin",)),
    (audit.router, ("admin",)),
    (model.router, ("admin",)),
    (diagnostics.router, ("admin",)),
    (metrics_router.router, ("admin",)),
    (health.router, ()),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no settings they come from ``MAILSIFT_*`` variables."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fix_mmap_threshold()  # before the model is loaded: its arrays get their own mappings
        state = await _open_state(settings)
        await _link(state)
        learner = state.learner
        await run_in_threadpool(learner.load_initial)
        replayed = await learner.catch_up()
        state.tail.caught_up(learner.position, at_end=True)
        log.info("ready at log position %d (%d entries replayed)", learner.position, replayed)
        app.state.mailsift = state
        # What start-up loaded (the model above all) lives as long as the worker: out of
        # the collector's sight, a full collection takes ~4 ms instead of ~45 ms, which
        # would otherwise land on whichever requests are in flight.
        gc.collect()
        gc.freeze()
        tasks = [
            asyncio.create_task(_follow(state)),
            asyncio.create_task(state.lists.run()),
            asyncio.create_task(state.audit.run()),
            asyncio.create_task(monitor.watch(state)),
            asyncio.create_task(run_flusher(state)),
            asyncio.create_task(keep_checkpointed(state.state_engine)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if learner.pending_entries:
                await learner.write_snapshot()  # a shorter replay at the next start
            try:
                await flush_outbound(state)  # queued account numbers, and their judgement
            except Exception as exc:
                log.error("account flush at shutdown failed: %s", type(exc).__name__)
            try:
                await run_in_threadpool(state.audit.flush)
            except Exception as exc:  # the audit store may be what is failing
                log.error("audit flush at shutdown failed: %s", type(exc).__name__)
            await run_in_threadpool(state.history.close)
            await state.rebuilds.aclose()
            await state.gateway_seen.aclose()
            await state.alerts.aclose()
            if state.pg is not None:
                await state.pg.aclose()
            state.trainlog.close()
            state.accounts.close()
            state.outbound_quota.close()
            state.state_engine.dispose()

    app = FastAPI(
        title="mailsift",
        version=__version__,
        summary="Spam and data-leak filter for mail gateways, inbound and outbound.",
        lifespan=lifespan,
        **_NO_NATIVE_TELEMETRY,
    )
    install_error_handlers(app)
    for router, needs in ROUTERS:
        app.include_router(router, dependencies=[require(*needs)] if needs else [])
    install_console(app)  # its own sign-in: a session cookie, not a bearer token
    table = operations(ROUTERS)
    app.state.operations = table
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            document_refusals(schema, table)
            document_links(schema)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
    # Inside out: the token and the body's bound before any router reads a byte
    # (gate), admin paths hidden on the gateway listener (guard), everything timed.
    app.add_middleware(RequestGate, settings=settings)
    app.add_middleware(ListenerGuard, admin_port=settings.admin_port)
    app.add_middleware(MetricsMiddleware)  # outermost: counts the guard's 404s too
    return app


async def _open_state(settings: Settings) -> ServiceState:
    """Open every store (blocking I/O, so in a thread) and load the DLP rules."""

    def build() -> ServiceState:
        trainlog = open_training_log(settings.database_url, settings.data_dir)
        engine = open_state_engine(settings.database_url, settings.data_dir, trainlog.engine)
        learner = Learner(
            trainlog,
            PublishedModels(trainlog.engine),
            settings.snapshot_path,
            settings.parse_limits,
            snapshot_every_entries=settings.snapshot_every_entries,
            snapshot_every_seconds=settings.snapshot_every_seconds,
        )
        return ServiceState(
            settings=settings,
            trainlog=trainlog,
            learner=learner,
            state_engine=engine,
            accounts=AccountStore(engine, settings),
            alerts=Alerter(engine, settings),
            lists=ListStore(engine, settings),
            aliases=AliasStore(engine, settings),
            audit=AuditTrail(engine, settings),
            dlp=load_dlp_config(settings),
            outbound_quota=OutboundQuota(engine, settings),
            tokens=TokenStore(engine),
            feedback_limiter=FeedbackLimiter(settings.feedback_per_token_per_minute),
            gateway_seen=GatewaySeen(engine),
            rebuilds=RebuildScheduler(settings),
            history=MessageHistory(
                settings.history_dir,
                settings.history_retention_hours,
                settings.history_max_mb * 1024 * 1024,
            ),
            tail=LogTail(settings.replica_behind_seconds),
            pg=pg_link(settings),
        )

    return await run_in_threadpool(build)


async def _link(state: ServiceState) -> None:
    """PostgreSQL: open the worker's pool and listener, and hand them to what uses them
    per message (tokens, admission) and to the log follower (appends, reconnections)."""
    link = state.pg
    if link is None:
        return
    await link.open()
    state.tokens.on_loop_verifier = TokenCache(link.pool, link.listener)
    state.accounts.pool = link.pool
    state.alerts.pool = link.pool
    state.audit.pool = link.pool
    link.listener.subscribe(CHANNEL_LOG, state.tail.appended)
    link.listener.on_connect(state.tail.wake)


async def _follow(state: ServiceState) -> None:
    """Keep this worker's model current: new log entries, published rebuilds, our own
    snapshot cache; start a rebuild when one is due; drop raw bytes past retention."""
    learner, settings = state.learner, state.settings
    loop = asyncio.get_running_loop()
    next_check = next_prune = loop.time()
    tail = state.tail
    while True:
        try:
            await learner.catch_up()
            tail.caught_up(learner.position, at_end=True)
            if loop.time() >= next_check:
                next_check = loop.time() + settings.snapshot_check_seconds
                newest = await run_in_threadpool(learner.published.newest)
                await learner.reload_if_published(newest)
                state.rebuilds.start_if_due(learner.position, newest)
            if loop.time() >= next_prune:
                next_prune = loop.time() + RAW_PRUNE_SECONDS
                cutoff = time.time() - settings.raw_retention_days * DAY
                dropped = await run_in_threadpool(state.trainlog.prune_raw, cutoff)
                if dropped:
                    log.info("dropped the raw bytes of %d examples past retention", dropped)
            await learner.snapshot_if_due()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep following; the next round may succeed
            log.error("model follower: %s: %s", type(exc).__name__, exc)
        # Woken at once by a notification of an append (PostgreSQL); else the poll,
        # slower while notifications arrive (it only covers for one that went missing).
        notified = state.pg is not None and state.pg.listener.connected
        poll = settings.log_poll_seconds
        await tail.wait(max(poll, NOTIFIED_POLL_SECONDS) if notified else poll)
