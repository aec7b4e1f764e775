"""The parent of several workers: uvicorn's, except that it gives up on workers that die
as soon as they start.

uvicorn replaces a worker that dies, which is right for one that crashed after hours of
work and wrong for one that cannot start: a worker that fails on import (a broken
dependency) exits with status 1 and was started again, and again, for ever, while the
service looked up to anything that only checks the parent. Here :data:`MAX_QUICK_DEATHS`
deaths within :data:`QUICK_WINDOW_SECONDS` stop the service, as does one worker that
reports a failed start-up (uvicorn's status 3), and :attr:`Supervisor.failure` says why.
"""

from __future__ import annotations

import collections
import logging
import time
from socket import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import Multiprocess

__all__ = ["MAX_QUICK_DEATHS", "QUICK_WINDOW_SECONDS", "Supervisor", "WorkersFailed"]

log = logging.getLogger("mailsift.supervisor")

MAX_QUICK_DEATHS = 5
QUICK_WINDOW_SECONDS = 30.0


class WorkersFailed(Exception):
    """The workers could not be kept running; the message says how they ended."""


class Supervisor(Multiprocess):
    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.deaths: collections.deque[float] = collections.deque()
        self.failure: str | None = None

    def keep_subprocess_alive(self) -> None:
        """uvicorn's round (replace the dead), then count the deaths it found."""
        before = list(self.processes)
        super().keep_subprocess_alive()
        now = time.monotonic()
        last: int | None = None
        for process in before:
            code = process.exitcode
            if code is None:
                continue
            self.deaths.append(now)
            last = code
            if code == STARTUP_FAILURE:
                self._give_up(f"worker {process.pid} failed to start (exit status {code})")
                return
        while self.deaths and now - self.deaths[0] > QUICK_WINDOW_SECONDS:
            self.deaths.popleft()
        if len(self.deaths) >= MAX_QUICK_DEATHS:
            self._give_up(
                f"{len(self.deaths)} workers died within {QUICK_WINDOW_SECONDS:.0f} s, the last "
                f"with exit status {last}; "
                "see the worker's error above"
            )

    def _give_up(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
            log.error("stopping: %s", why)
        self.should_exit.set()
