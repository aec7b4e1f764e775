"""Learning what ham looks like from outbound mail — without letting a thief teach it.

Outbound mail is the best ham there is, as long as the sender is who they claim to be.
A stolen account sending spam must never turn its spam into "ham" examples, so an
outbound message is learned only when every guard passes (see :func:`eligible`), and
each user may contribute only a few examples per hour (:class:`OutboundQuota`), so one
account cannot dominate the model whatever it sends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailsift.service.checks.base import Reason
from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.settings import Settings

__all__ = ["OutboundQuota", "Refusal", "eligible"]

_SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str


def eligible(
    *,
    score: float,
    verdict: str,
    reasons: Sequence[Reason],
    dlp_severities: Sequence[str],
    over_limit: bool,
    account_state: str,
    model_ready: bool,
    settings: Settings,
) -> Refusal | None:
    """``None`` when the message may be learned as ham, else why not. Pure.

    Guards: learning enabled; the model is past its learning phase (an empty model's
    "ham" means nothing); verdict ham with margin (score at most
    ``outbound_learn_max_score``); no forced action from any check; no DLP finding
    above low; sender under its limits and in state ``ok``.
    """
    if not settings.outbound_learning:
        return Refusal("outbound learning is off")
    if not model_ready:
        return Refusal("the model is still learning")
    if verdict != "ham" or score > settings.outbound_learn_max_score:
        return Refusal("not ham with margin")
    if any(r.action is not None for r in reasons):
        return Refusal("a check demanded an action")
    if any(_SEVERITY_RANK.get(s, 3) > 1 for s in dlp_severities):
        return Refusal("a leak finding above low")
    if over_limit:
        return Refusal("sender over a sending limit")
    if account_state != "ok":
        return Refusal(f"sender account is {account_state}")
    return None


_metadata = MetaData()
_quota = Table(
    "outbound_learning_quota",
    _metadata,
    Column("user", String(320), primary_key=True),
    Column("hour", Integer, primary_key=True),
    Column("learned", Integer, nullable=False),
)


class OutboundQuota:
    """How many outbound ham examples each user contributed per clock hour, shared by all
    workers and replicas through the state database."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        with write_transaction(engine) as conn:
            _metadata.create_all(conn)

    def take(self, user: str, now: float | None = None) -> bool:
        """Use one of ``user``'s examples for this hour; False when none are left."""
        limit = self.settings.outbound_learn_per_user_per_hour
        if limit <= 0:
            return False
        hour = int((now if now is not None else time.time()) // 3600)
        with write_transaction(
            self.engine, lock_key=lock_key_for("outbound-quota:" + user)
        ) as conn:
            used = conn.execute(
                select(_quota.c.learned).where(_quota.c.user == user, _quota.c.hour == hour)
            ).scalar()
            if used is None:
                insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                conn.execute(
                    insert(_quota).values(user=user, hour=hour, learned=1).on_conflict_do_nothing()
                )
                conn.execute(_quota.delete().where(_quota.c.user == user, _quota.c.hour < hour - 1))
                return True
            if used >= limit:
                return False
            conn.execute(
                update(_quota)
                .where(_quota.c.user == user, _quota.c.hour == hour)
                .values(learned=_quota.c.learned + 1)
            )
            return True
