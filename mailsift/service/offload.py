"""CPU-heavy request work (parsing, leak scanning a large message) run off the event loop,
one call at a time per process, and not at all for a client that has gone.

A thread keeps the loop free only while the loop can get the interpreter lock back: with
six threads parsing and scanning 2 MB messages, the loop waited for it up to 0.3 s per
turn, so ``/healthz`` took as long as a message. The work holds the lock nearly all the
time anyway, so running it one call at a time costs no throughput, and the loop only
ever competes with one thread.

Work waits its turn; when the turn comes and the client has closed the connection
meanwhile (a gateway that timed out), the work is skipped: no one would read the answer,
and a queue of abandoned 2 MB messages would delay everyone behind it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from mailsift.service.errors import ApiError

__all__ = ["ClientGone", "run_heavy"]

P = ParamSpec("P")
T = TypeVar("T")

_limiter: anyio.CapacityLimiter | None = None


class ClientGone(ApiError):
    """The client closed the connection before its heavy work began (the answer, nginx's
    499, reaches no one; it shows in the access log)."""

    status = 499
    code = "client_closed_request"


SWITCH_INTERVAL = 0.001
"""Seconds a thread holding the interpreter lock runs before it must offer it to another.

Python's default, 5 ms, is what the loop waited per turn behind the heavy thread, many
turns per request: with it, ``/healthz`` p99 was 54 ms under six 2 MB messages; with
1 ms, 27-32 ms, at the same throughput (``benchmarks/loop_latency.py``)."""


def _heavy_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # made on first use, inside the worker's event loop
        _limiter = anyio.CapacityLimiter(1)
        sys.setswitchinterval(SWITCH_INTERVAL)
    return _limiter


async def run_heavy(
    request: Request | None, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``func(*args, **kwargs)`` in a worker thread, after the heavy calls queued before it;
    :class:`ClientGone` instead if ``request``'s client left while it waited."""

    def call() -> T:
        return func(*args, **kwargs)

    if request is not None:
        # Asking also resumes reading the connection (uvicorn pauses it while a large body
        # is buffered), so that a close the client sent is seen by the time our turn comes.
        await request.is_disconnected()
    async with _heavy_limiter():
        if request is not None and await request.is_disconnected():
            raise ClientGone("the client closed the connection; the work was skipped")
        return await anyio.to_thread.run_sync(call)
