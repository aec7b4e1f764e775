"""Parsing and featurising a request's message, off the event loop when it is large."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from mailsift.learning.examples import example_of
from mailsift.learning.trainlog import Example
from mailsift.models.features import Features
from mailsift.models.fingerprint import fingerprint
from mailsift.models.parse import ParsedMessage, parse_message
from mailsift.service.errors import UnusableMessage
from mailsift.service.state import ServiceState


@dataclass(frozen=True, slots=True)
class Analysed:
    message: ParsedMessage
    features: Features
    fingerprint: str


def _analyse(raw: bytes, state: ServiceState) -> Analysed:
    msg = parse_message(raw, state.settings.parse_limits)
    if not msg.headers and not msg.text.strip():
        raise UnusableMessage("no header fields and no text: this is not an RFC 5322 message")
    return Analysed(msg, state.learner.model.features(msg), fingerprint(msg))


async def analyse(raw: bytes, state: ServiceState) -> Analysed:
    """Small messages are parsed inline (cheaper than a thread hop); large ones in a thread."""
    if len(raw) > state.settings.offload_bytes:
        return await run_in_threadpool(_analyse, raw, state)
    return _analyse(raw, state)


async def learning_example(raw: bytes, analysed: Analysed, state: ServiceState) -> Example:
    """What the training log stores of a message: scoring's features when its parse was
    not cut short by the time budget, else a parse without one (in a thread)."""
    learner = state.learner
    args = (raw, learner.model.config, learner.features_version, state.settings.parse_limits)
    if "time_budget" not in analysed.message.defects:
        return example_of(*args, parsed=analysed.message, features=analysed.features)
    return await run_in_threadpool(example_of, *args)
