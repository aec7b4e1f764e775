"""Parsing, featurising and leak-scanning a request's message, off the event loop when
it is large."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from mailsift.learning.examples import example_of
from mailsift.learning.trainlog import Example
from mailsift.models.features import Features
from mailsift.models.fingerprint import fingerprint
from mailsift.models.parse import TIME_BUDGET, ParsedMessage, parse_message
from mailsift.service.dlp.scan import DlpReport, scan_message
from mailsift.service.errors import UnusableMessage
from mailsift.service.offload import run_heavy
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


async def analyse(raw: bytes, state: ServiceState, request: Request | None = None) -> Analysed:
    """Small messages are parsed inline (cheaper than a thread hop); large ones in a thread,
    unless ``request``'s client has left by then."""
    if len(raw) > state.settings.offload_bytes:
        return await run_heavy(request, _analyse, raw, state)
    return _analyse(raw, state)


async def learning_example(raw: bytes, analysed: Analysed, state: ServiceState) -> Example:
    """What the training log stores of a message: scoring's features when its parse was
    not cut short by the time budget, else a parse without one (in a thread)."""
    learner = state.learner
    args = (raw, learner.model.config, learner.features_version, state.settings.parse_limits)
    if TIME_BUDGET not in analysed.message.defects:
        return example_of(*args, parsed=analysed.message, features=analysed.features)
    return await run_heavy(None, example_of, *args)


INLINE_SCAN_CHARS = 64 * 1024
"""Text scanned for leaks on the event loop at most (about 5 ms); more goes to a thread."""


async def leak_scan(
    msg: ParsedMessage, state: ServiceState, request: Request | None = None
) -> DlpReport:
    """Leak detection of a parsed message; a long text is scanned in a thread, since the
    scan costs about 0.1 s per megabyte and would stall every other request meanwhile."""
    chars = len(msg.subject) + len(msg.text) + len(msg.html_text)
    chars += sum(len(text) for _, text in msg.text_attachments)
    if chars > INLINE_SCAN_CHARS:
        return await run_heavy(request, scan_message, msg, state.dlp)
    return scan_message(msg, state.dlp)
