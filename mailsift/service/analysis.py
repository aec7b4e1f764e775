"""Parsing and featurising a request's message, off the event loop when it is large."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

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
