"""Response shapes, for the OpenAPI document (handlers return plain dicts for speed)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0, DEL, C1 and the Unicode line and paragraph separators: never part of an identity,
and escaped in every log line (:mod:`mailsift.service.logsafe`)."""
IDENTITY_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
"""A user, an actor, a list entry: :data:`CONTROL_CHARACTERS` refused (400), since they
would forge lines in logs and records; the OpenAPI document states it."""
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
"""Free text the envelope carries (a HELO name, a queue id, a gateway's name): may be
empty, but never holds the characters :data:`IDENTITY_PATTERN` refuses."""
FINGERPRINT_PATTERN = r"^[0-9a-f]{32}$"


class ErrorBody(BaseModel):
    error: str
    detail: str


class ReasonOut(BaseModel):
    name: str
    weight: float
    detail: str


class TokenOut(BaseModel):
    token: str
    weight: float


class TokensOut(BaseModel):
    spam: list[TokenOut]
    ham: list[TokenOut]


class ModelBrief(BaseModel):
    version: str
    ham: int
    spam: int
    learning: bool
    logit: float
    """The model's own log-odds for this message, unrounded: replicas at the same log
    position give exactly the same value."""


class AliasTarget(BaseModel):
    owner: str
    """Whom a live temporary address delivers to (the gateway rewrites the recipient)."""


class RecipientOut(BaseModel):
    rcpt: str
    score: float
    verdict: Literal["ham", "suspect", "spam"]
    action: Literal["accept", "tag", "quarantine", "reject", "defer"]
    reasons: list[ReasonOut]
    """Only this recipient's own (personal) reasons; the shared ones are the message's."""
    alias: AliasTarget | None = None
    """Set when the recipient is a live temporary address."""


class ScoreOut(BaseModel):
    score: float
    verdict: Literal["ham", "suspect", "spam"]
    action: Literal["accept", "tag", "quarantine", "reject", "defer"]
    reasons: list[ReasonOut]
    tokens: TokensOut
    model: ModelBrief
    fingerprint: str
    direction: Literal["inbound", "outbound"]
    recipients: list[RecipientOut] | None = None
    """Each recipient's verdict, when the request named recipients."""
    elapsed_ms: float


class LearnOut(BaseModel):
    result: Literal["learned", "unchanged", "relabelled", "forgotten", "kept"]
    """``kept``: a higher source holds another label, which stays (see ``held_by``)."""
    log_position: int
    fingerprint: str
    scope: Literal["shared", "personal"]
    held_by: Literal["admin", "user", "outbound"] | None = None


class SharedOut(BaseModel):
    result: Literal["pending", "learned", "relabelled", "withdrawn", "unchanged", "kept"]
    reports: int
    """Distinct users whose counted reports give the message this label now."""
    needed: int
    counted: bool
    """Whether this report counts towards consensus (the user's daily allowance)."""


class ReportOut(BaseModel):
    result: Literal["learned", "unchanged", "relabelled", "forgotten"]
    """What the report did to the reporter's own layer."""
    log_position: int
    fingerprint: str
    scope: Literal["personal"]
    shared: SharedOut
    """What it did to the shared model every recipient's verdict starts from."""


class ModelOut(BaseModel):
    version: str
    ham: int
    spam: int
    learning: bool
    log_position: int
    log_head: int
    snapshot_position: int
    snapshot_created_at: float | None
    updated_at: float
    published_id: int = 0
    """The published (rebuilt) model this one derives from; 0: none yet."""
    worker: int
    """Process id of the worker that answered (several workers each replay the log)."""
    lag: int = 0
    """Entries committed to the log that this worker has not applied yet."""
    behind: bool = False
    """True when this worker has not been at the log's head for
    MAILSIFT_REPLICA_BEHIND_SECONDS (entries unapplied, or the log unreadable)."""
    at_head_seconds_ago: float = 0.0
    """Seconds since this worker last knew its model was at the log's head."""
    notifications: bool | None = None
    """PostgreSQL: whether this worker hears of appends and revocations as they commit
    (LISTEN/NOTIFY); while false it polls. None on SQLite (workers poll a local file)."""


class RebuildSummary(BaseModel):
    published_id: int
    model_version: str
    log_position: int
    examples: int
    skipped: int
    seconds: float


class RebuildOut(ModelOut):
    rebuild: RebuildSummary


ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad or missing parameters",
        403: "the token may not do this (or the message was not scored for the user)",
        404: "no such item",
        410: "no longer kept (a message past the history's retention)",
        413: "message over the size limit",
        415: "wrong Content-Type",
        422: "unusable message",
        503: "training log unavailable",
    }.items()
}
