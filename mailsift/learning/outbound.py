"""Learning what ham looks like from outbound mail — without letting a thief teach it.

Outbound mail is the best ham there is, as long as the sender is who they claim to be.
A stolen account sending spam must never turn its spam into "ham" examples, so an
outbound message is learned only when every guard passes (see :func:`eligible`), and
each user may contribute only a few examples per hour (:class:`OutboundQuota`), so one
account cannot dominate the model whatever it sends. All users together contribute at
most ``outbound_learn_per_minute`` examples (spread evenly, a second's worth at most at
once), so that what learning costs (every worker applies every example) stays bounded
however much mail flows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from mailsift.service.checks.base import Reason
from mailsift.service.db import (
    Runner,
    core_runner,
    hot_statement,
    lock_key_for,
    nowait_engine,
    nowait_first,
    nowait_raw_transaction,
    raw_runner,
    write_transaction,
)
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
    truncated: bool,
) -> Refusal | None:
    """``None`` when the message may be learned as ham, else why not. Pure.

    Guards: learning enabled; the model is past its learning phase (an empty model's
    "ham" means nothing); verdict ham with margin (score at most
    ``outbound_learn_max_score``); no forced action from any check; no DLP finding
    above low; sender under its limits and in state ``ok``; the whole message seen (a
    gateway that sends only the start of a large one leaves the rest unchecked).
    """
    if not settings.outbound_learning:
        return Refusal("outbound learning is off")
    if not model_ready:
        return Refusal("the model is still learning")
    if truncated:
        return Refusal("only the start of the message was sent")
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
# The shared budget: a token bucket in one row, refilled at outbound_learn_per_minute / 60
# examples a second and holding at most a second's worth (at least one), so learning is
# spread out evenly instead of arriving in bursts.
_budget = Table(
    "outbound_learning_budget",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tokens", Float, nullable=False),
    Column("at", Float, nullable=False),
)
_LOCK_KEY = lock_key_for("outbound-quota")
_q, _b = _quota.c, _budget.c
_USER = bindparam("user", type_=String)
_HOUR = bindparam("hour", type_=Integer)


def _upsert(table: Table, key: list[Column[Any]], set_: Callable[[Any], dict[str, Any]]) -> Any:
    def build(dialect: str) -> Any:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        ins = insert(table)
        return ins.on_conflict_do_update(index_elements=key, set_=set_(ins.excluded))

    return build


_BUDGET = hot_statement(lambda _: select(_b.tokens, _b.at).where(_b.id == 1))
_SPEND = hot_statement(
    _upsert(_budget, [_b.id], lambda new: {"tokens": new.tokens, "at": new.at}),
    "id",
    "tokens",
    "at",
)
_USED_BY_USER = hot_statement(
    lambda _: select(_q.learned).where(_q.user == _USER, _q.hour == _HOUR)
)
_COUNT_USER = hot_statement(
    _upsert(_quota, [_q.user, _q.hour], lambda new: {"learned": _q.learned + new.learned}),
    "user",
    "hour",
    "learned",
)
_FORGET_USERS = hot_statement(lambda _: delete(_quota).where(_q.hour < _HOUR))


class OutboundQuota:
    """How many outbound ham examples each user contributed per clock hour, and the budget
    all users share (``outbound_learn_per_minute``), kept for every worker and replica in
    the state database."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._closed_until = 0.0  # the shared budget was found used up until then
        self._nowait_engine = nowait_engine(engine)
        with write_transaction(engine, lock_key=lock_key_for("outbound-quota:schema")) as conn:
            _metadata.create_all(conn)

    def close(self) -> None:
        """Release the connections of the no-wait engine (the caller owns ``engine``)."""
        if self._nowait_engine is not None:
            self._nowait_engine.dispose()

    def open(self, now: float | None = None) -> bool:
        """Whether an example might still be taken now; no I/O, so every message can ask.

        False when outbound learning is off or has no budget, or when this process
        already found the shared budget used up for now.
        """
        s = self.settings
        if not s.outbound_learning or s.outbound_learn_per_minute <= 0:
            return False
        if s.outbound_learn_per_user_per_hour <= 0:
            return False
        return (now if now is not None else time.time()) >= self._closed_until

    async def claim(self, user: str) -> bool:
        """:meth:`take` from the event loop: on the loop itself on SQLite (retrying while
        another writer is busy), in a thread on PostgreSQL."""
        now = time.time()
        nowait = None
        if self._nowait_engine is not None:
            nowait = functools.partial(self.take, user, now, wait=False)
        return await nowait_first(nowait, functools.partial(self.take, user, now))

    def take(self, user: str, now: float | None = None, *, wait: bool = True) -> bool:
        """Use one of this minute's shared examples and one of ``user``'s for this hour;
        False (and nothing used) when either is gone.

        With ``wait=False`` (SQLite only, for the event loop) it raises
        :class:`~mailsift.service.db.Busy` rather than wait for another writer.
        """
        per_user = self.settings.outbound_learn_per_user_per_hour
        per_minute = self.settings.outbound_learn_per_minute
        if per_user <= 0 or per_minute <= 0:
            return False
        now = now if now is not None else time.time()
        if now < self._closed_until:
            return False
        if wait or self._nowait_engine is None:
            with write_transaction(self.engine, lock_key=_LOCK_KEY) as conn:
                return self._take(core_runner(conn), user, now, per_minute, per_user)
        with nowait_raw_transaction(self._nowait_engine) as db:
            return self._take(raw_runner(db), user, now, per_minute, per_user)

    def _take(self, run: Runner, user: str, now: float, per_minute: int, per_user: int) -> bool:
        rate = per_minute / 60.0  # examples a second
        capacity = max(1.0, rate)
        row = run(_BUDGET, {})
        tokens = capacity
        if row is not None:
            tokens = min(capacity, float(row[0]) + max(0.0, now - float(row[1])) * rate)
        if tokens < 1.0:
            self._closed_until = now + (1.0 - tokens) / rate  # when the next one is there
            return False
        hour = int(now // 3600)
        used = run(_USED_BY_USER, {"user": user, "hour": hour})
        if used is not None and used[0] >= per_user:
            return False
        run(_SPEND, {"id": 1, "tokens": tokens - 1.0, "at": now})
        run(_COUNT_USER, {"user": user, "hour": hour, "learned": 1})
        if row is None or int(float(row[1]) // 60) != int(now // 60):
            run(_FORGET_USERS, {"hour": hour - 1})  # about once a minute: old hours go
        return True
