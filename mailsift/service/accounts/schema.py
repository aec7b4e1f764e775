"""The account tables, and the dialect's upserts into them.

Defined once here so that the counters, the usage figures and the state machine, each
in its own module, read and write the same rows; the upserts are built once per dialect
because only their parameters change from call to call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    func,
)
from sqlalchemy.dialects import postgresql, sqlite

from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.identity import MAX_IDENTITY, identity_key

__all__ = [
    "BASE_COLUMNS",
    "DAY_START",
    "HOUR_START",
    "KEY",
    "KEYS",
    "MAX_DOMAIN",
    "MAX_REASON",
    "MAX_USER",
    "Upserts",
    "auth",
    "create_tables",
    "domains",
    "history",
    "hours",
    "in_hour",
    "insert_for",
    "minutes",
    "normalise_user",
    "state",
    "upserts",
    "user_lock",
]

MAX_USER = MAX_IDENTITY
MAX_DOMAIN = 255
MAX_REASON = 1000

_metadata = MetaData()

minutes = Table(
    "account_minutes",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("minute", Integer, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("scored", Integer, nullable=False),
    Column("spam", Integer, nullable=False),
)
Index("account_minutes_by_minute", minutes.c.minute)

hours = Table(
    "account_hours",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("hour", Integer, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("recipients", Integer, nullable=False),
)
Index("account_hours_by_hour", hours.c.hour)

domains = Table(
    "account_domains",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("domain", String(MAX_DOMAIN), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)
Index("account_domains_by_first_seen", domains.c.user, domains.c.first_seen)
Index("account_domains_by_last_seen", domains.c.last_seen)

auth = Table(
    "account_auth_failures",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("client_ip", String(64), primary_key=True),
    Column("minute", Integer, primary_key=True),
    Column("failures", Integer, nullable=False),
)
Index("account_auth_failures_by_user", auth.c.user, auth.c.minute)
Index("account_auth_failures_by_minute", auth.c.minute)

state = Table(
    "account_state",
    _metadata,
    Column("user", String(MAX_USER), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("since", Float, nullable=False),
    Column("reason", String(MAX_REASON), nullable=False),
    # The administrator's last clear, and the counts its minute bucket already held then:
    # the risk window starts at that bucket minus those counts, to the message.
    Column("reset_at", Float, nullable=True),
    Column("reset_messages", Integer, nullable=False, default=0),
    Column("reset_recipients", Integer, nullable=False, default=0),
    Column("reset_scored", Integer, nullable=False, default=0),
    Column("reset_spam", Integer, nullable=False, default=0),
    Column("reset_auth", Integer, nullable=False, default=0),
)
BASE_COLUMNS = ("messages", "recipients", "scored", "spam", "auth")
"""The counts a clear records as ``reset_<name>`` (see :mod:`.window`)."""

history = Table(
    "account_state_history",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(MAX_USER), nullable=False),
    Column("at", Float, nullable=False),
    Column("old_state", String(16), nullable=False),
    Column("new_state", String(16), nullable=False),
    Column("reason", String(MAX_REASON), nullable=False),
    Column("by", String(MAX_USER), nullable=False),
)
Index("account_state_history_by_user", history.c.user, history.c.id)


def create_tables(engine: Engine) -> None:
    """Create what is missing, once across workers starting together."""
    with write_transaction(engine, lock_key=lock_key_for("accounts:schema")) as conn:
        _metadata.create_all(conn)


def normalise_user(user: str) -> str:
    """The key one user's counters are kept under (:func:`identity_key`: checked after
    lower-casing); InvalidIdentity, a ValueError and a 400, when unusable."""
    return identity_key(user)


def user_lock(key: str) -> int:
    """The lock every write that must be exact for one user holds."""
    return lock_key_for("limits:" + key)


def insert_for(conn: Connection) -> Callable[[Table], Any]:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


# -- parameters and sums shared by statements built once ------------------------------

_m, _h, _d = minutes.c, hours.c, domains.c
KEY = bindparam("key", type_=String)
KEYS = bindparam("keys", expanding=True, type_=String)
HOUR_START = bindparam("hour_start", type_=Integer)  # the first minute of the risk window
DAY_START = bindparam("day_start", type_=Integer)


def in_hour(column: Any) -> Any:
    """The sum of a minute bucket column from :data:`HOUR_START` on."""
    return func.coalesce(func.sum(case((_m.minute >= HOUR_START, column), else_=0)), 0)


@dataclass(frozen=True, slots=True)
class Upserts:
    """The dialect's ``INSERT … ON CONFLICT DO UPDATE`` statements; rows come as parameters."""

    sent: Any
    outcome: Any
    hour: Any
    domain: Any


@functools.cache
def upserts(dialect: str) -> Upserts:
    insert: Callable[[Table], Any] = postgresql.insert if dialect == "postgresql" else sqlite.insert
    minute = [_m.user, _m.minute]
    sent = insert(minutes)
    outcome = insert(minutes)
    hour = insert(hours)
    domain = insert(domains)
    new = domain.excluded
    return Upserts(
        sent=sent.on_conflict_do_update(
            index_elements=minute,
            set_={
                "messages": _m.messages + sent.excluded.messages,
                "recipients": _m.recipients + sent.excluded.recipients,
            },
        ),
        outcome=outcome.on_conflict_do_update(
            index_elements=minute,
            set_={
                "scored": _m.scored + outcome.excluded.scored,
                "spam": _m.spam + outcome.excluded.spam,
            },
        ),
        hour=hour.on_conflict_do_update(
            index_elements=[_h.user, _h.hour],
            set_={
                "messages": _h.messages + hour.excluded.messages,
                "recipients": _h.recipients + hour.excluded.recipients,
            },
        ),
        # Flushes of several workers may land out of order: keep the earliest first sight.
        domain=domain.on_conflict_do_update(
            index_elements=[_d.user, _d.domain],
            set_={
                "first_seen": case(
                    (new.first_seen < _d.first_seen, new.first_seen), else_=_d.first_seen
                ),
                "last_seen": case(
                    (new.last_seen > _d.last_seen, new.last_seen), else_=_d.last_seen
                ),
            },
        ),
    )
