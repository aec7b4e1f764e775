"""CPU-heavy request work (parsing, leak scanning a large message) run off the event loop,
one call at a time per process.

A thread keeps the loop free only while the loop can get the interpreter lock back: with
six threads parsing and scanning 2 MB messages, the loop waited for it up to 0.3 s per
turn, so ``/healthz`` took as long as a message. The work holds the lock nearly all the
time anyway, so running it one call at a time costs no throughput, and the loop only
ever competes with one thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

__all__ = ["run_heavy"]

P = ParamSpec("P")
T = TypeVar("T")

_limiter: anyio.CapacityLimiter | None = None


def _heavy_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # made on first use, inside the worker's event loop
        _limiter = anyio.CapacityLimiter(1)
    return _limiter


async def run_heavy(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` in a worker thread, after the heavy calls queued before it."""

    def call() -> T:
        return func(*args, **kwargs)

    return await anyio.to_thread.run_sync(call, limiter=_heavy_limiter())
