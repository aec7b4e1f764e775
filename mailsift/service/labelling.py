"""An administrator's labels: teaching the shared model a message, or taking one back.

Shared by the API (``/v1/train``, ``/v1/history/{fp}/label``, ``DELETE /v1/examples``)
and the operator console, so both append the same entries with the same checks. Each
call returns once the entry is on the training log and this worker has applied it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeVar

from starlette.concurrency import run_in_threadpool

from mailsift.learning.records import AppendResult
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLogError
from mailsift.service.analysis import analyse, learning_example
from mailsift.service.errors import Gone, ModelNotReady, NotFound
from mailsift.service.state import ServiceState

__all__ = ["Label", "forget_example", "kept_message", "learn_as_admin", "write_log"]

log = logging.getLogger("mailsift.feedback")

T = TypeVar("T")
Label = Literal["spam", "ham"]


async def write_log(op: Callable[[], T]) -> T:
    """Run a training-log write in a thread; a log that cannot be written is a 503."""
    try:
        return await run_in_threadpool(op)
    except TrainingLogError as exc:
        raise ModelNotReady(f"the training log cannot be written: {exc}") from exc


async def learn_as_admin(
    raw: bytes, label: Label, actor: str, state: ServiceState
) -> tuple[AppendResult, str]:
    """Append ``raw`` as an administrator's example; (result, fingerprint)."""
    analysed = await analyse(raw, state)
    example = await learning_example(raw, analysed, state)
    result = await write_log(
        lambda: state.trainlog.append(
            analysed.fingerprint, label, example, source=Source.ADMIN, actor=actor
        )
    )
    log.info(
        "label by=%s fingerprint=%s label=%s source=admin result=%s",
        actor,
        analysed.fingerprint,
        label,
        result.result,
    )
    await state.learner.catch_up(until=result.position)
    return result, analysed.fingerprint


async def kept_message(state: ServiceState, fingerprint: str) -> bytes:
    """The scored message with ``fingerprint`` from the history; NotFound when it was
    never scored here, Gone once it is no longer kept."""
    history = state.history
    raw = await run_in_threadpool(history.find, fingerprint)
    if raw is not None:
        return raw
    if not await run_in_threadpool(state.audit.scored, fingerprint):
        raise NotFound(f"no message {fingerprint} was scored here (or the audit trail dropped it)")
    if not history.enabled:
        raise Gone(
            f"message {fingerprint} was scored, but scored messages are not kept "
            "(MAILSIFT_HISTORY_RETENTION_HOURS=0): label it with POST /v1/train"
        )
    hours = state.settings.history_retention_hours
    raise Gone(
        f"message {fingerprint} is no longer kept (scored messages are kept {hours} hours, "
        "MAILSIFT_HISTORY_RETENTION_HOURS): label it with POST /v1/train"
    )


async def forget_example(state: ServiceState, fingerprint: str, actor: str) -> AppendResult:
    """Take a message back entirely: its shared example and every user's report of it."""
    result = await write_log(lambda: state.trainlog.forget(fingerprint, actor=actor))
    # Also when nothing was left to forget: another worker's forget, which this answer
    # confirms, may not be applied here yet.
    await state.learner.catch_up(until=result.position)
    return result
