"""The learned model's opinion, as one reason among the others."""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import MODEL, MODEL_LEARNING
from mailsift.service.checks.base import CheckContext, Reason


def model_reasons(ctx: CheckContext) -> Iterator[Reason]:
    score = ctx.score
    members = ", ".join(f"{name} {value:+.2f}" for name, value in score.members.items())
    if not ctx.model_ready:
        yield Reason(
            MODEL_LEARNING,
            0.0,
            f"the model is still learning (spam probability {score.probability:.3f}; {members}); "
            "its opinion does not count yet",
        )
        return
    yield Reason(
        MODEL, round(score.logit, 4), f"spam probability {score.probability:.4f} ({members})"
    )
