"""Response shapes, for the OpenAPI document (handlers return plain dicts for speed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


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


class ScoreOut(BaseModel):
    score: float
    verdict: Literal["ham", "suspect", "spam"]
    action: Literal["accept", "tag", "quarantine", "reject", "defer"]
    reasons: list[ReasonOut]
    tokens: TokensOut
    model: ModelBrief
    fingerprint: str
    direction: Literal["inbound", "outbound"]
    elapsed_ms: float


class LearnOut(BaseModel):
    result: Literal["learned", "unchanged", "relabelled", "forgotten"]
    log_position: int
    fingerprint: str


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
    worker: int
    """Process id of the worker that answered (several workers each replay the log)."""


ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad or missing parameters",
        413: "message over the size limit",
        415: "wrong Content-Type",
        422: "unusable message",
        503: "training log unavailable",
    }.items()
}
