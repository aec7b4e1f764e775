"""Learning what ham looks like from outbound mail — without letting a thief teach it.

Outbound mail is the best ham there is, as long as the sender is who they claim to be.
A stolen account sending spam must never turn its spam into "ham" examples, so an
outbound message is learned only when every guard passes (see :func:`eligible`), and
each user may contribute only a few examples per hour (:class:`OutboundQuota`), so one
account cannot dominate the model whatever it sends. All users together contribute at
most ``outbound_learn_per_minute`` examples, so that what learning costs (every worker
applies every example) stays bounded however much mail flows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
)
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
_rate = Table(
    "outbound_learning_rate",
    _metadata,
    Column("minute", Integer, primary_key=True),
    Column("learned", Integer, nullable=False),
)
_LOCK_KEY = lock_key_for("outbound-quota")
_USED_BY_USER = select(_quota.c.learned).where(
    _quota.c.user == bindparam("user"), _quota.c.hour == bindparam("hour")
)
_USED_BY_ALL = select(_rate.c.learned).where(_rate.c.minute == bindparam("minute"))


class OutboundQuota:
    """How many outbound ham examples each user contributed per clock hour, and everyone
    per clock minute, shared by all workers and replicas through the state database."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._spent_minute = -1  # a minute whose shared budget this process saw used up
        with write_transaction(engine, lock_key=lock_key_for("outbound-quota:schema")) as conn:
            _metadata.create_all(conn)

    def open(self, now: float | None = None) -> bool:
        """Whether an example might still be taken now; no I/O, so every message can ask.

        False when outbound learning is off or has no budget, or when this process
        already found this minute's shared budget used up.
        """
        s = self.settings
        if not s.outbound_learning or s.outbound_learn_per_minute <= 0:
            return False
        if s.outbound_learn_per_user_per_hour <= 0:
            return False
        minute = int((now if now is not None else time.time()) // 60)
        return minute != self._spent_minute

    def take(self, user: str, now: float | None = None) -> bool:
        """Use one of this minute's shared examples and one of ``user``'s for this hour;
        False (and nothing used) when either is gone."""
        per_user = self.settings.outbound_learn_per_user_per_hour
        per_minute = self.settings.outbound_learn_per_minute
        if per_user <= 0 or per_minute <= 0:
            return False
        now = now if now is not None else time.time()
        minute, hour = int(now // 60), int(now // 3600)
        if minute == self._spent_minute:
            return False
        with write_transaction(self.engine, lock_key=_LOCK_KEY) as conn:
            used_by_all = conn.execute(_USED_BY_ALL, {"minute": minute}).scalar() or 0
            if used_by_all >= per_minute:
                self._spent_minute = minute
                return False
            used = conn.execute(_USED_BY_USER, {"user": user, "hour": hour}).scalar() or 0
            if used >= per_user:
                return False
            self._count(conn, _rate, {"minute": minute}, used_by_all)
            self._count(conn, _quota, {"user": user, "hour": hour}, used)
            if used_by_all == 0:  # once a minute: forget what no window reads any more
                conn.execute(_rate.delete().where(_rate.c.minute < minute - 1))
                conn.execute(_quota.delete().where(_quota.c.hour < hour - 1))
            return True

    @staticmethod
    def _count(conn: Connection, table: Table, key: dict[str, int | str], used: int) -> None:
        if used == 0:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            conn.execute(insert(table).values(**key, learned=1).on_conflict_do_nothing())
            return
        where = [table.c[name] == value for name, value in key.items()]
        conn.execute(table.update().where(*where).values(learned=table.c.learned + 1))
