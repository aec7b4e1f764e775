"""The FastAPI app factory and the per-worker lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from mailsift import __version__
from mailsift.service.errors import install_error_handlers
from mailsift.service.learner import Learner
from mailsift.service.routers import feedback, health, model, score
from mailsift.service.settings import Settings, get_settings
from mailsift.service.state import ServiceState
from mailsift.service.trainlog import open_training_log

__all__ = ["create_app"]

log = logging.getLogger("mailsift.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no settings they come from ``MAILSIFT_*`` variables."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        trainlog = await run_in_threadpool(
            open_training_log, settings.database_url, settings.data_dir
        )
        learner = Learner(
            trainlog,
            settings.snapshot_path,
            settings.parse_limits,
            snapshot_every_entries=settings.snapshot_every_entries,
            snapshot_every_seconds=settings.snapshot_every_seconds,
        )
        await run_in_threadpool(learner.load_initial)
        replayed = await learner.catch_up()
        log.info("ready at log position %d (%d entries replayed)", learner.position, replayed)
        app.state.mailsift = ServiceState(settings, trainlog, learner)
        task = asyncio.create_task(_follow(learner, settings))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if learner.pending_entries:
                await learner.write_snapshot()  # a shorter replay at the next start
            trainlog.close()

    app = FastAPI(
        title="mailsift",
        version=__version__,
        summary="Spam and data-leak filter for mail gateways, inbound and outbound.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (score.router, feedback.router, model.router, health.router):
        app.include_router(router)
    return app


async def _follow(learner: Learner, settings: Settings) -> None:
    """Keep this worker's model current: new log entries, published snapshots, our own snapshots."""
    loop = asyncio.get_running_loop()
    next_check = loop.time()
    while True:
        try:
            await learner.catch_up()
            if loop.time() >= next_check:
                next_check = loop.time() + settings.snapshot_check_seconds
                await learner.reload_if_changed()
            await learner.snapshot_if_due()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep following; the next round may succeed
            log.error("model follower: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(settings.log_poll_seconds)
