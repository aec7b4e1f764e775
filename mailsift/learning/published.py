"""Published models: the snapshots a rebuild publishes, kept in the training log's database.

A rebuild trains a model from the log's live examples and publishes it here at the log
position it covers; every worker of every replica swaps it in and replays the tail. So a
new replica needs nothing but the database URL, and no file is ever copied between
hosts. The bytes are a snapshot (:mod:`mailsift.models.snapshot`): a JSON header checked
before anything else, never a pickle. Only the newest few are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
)

from mailsift.service.db import lock_key_for, write_transaction

__all__ = ["Published", "PublishedModels"]

KEEP = 2

_metadata = MetaData()
_id = BigInteger().with_variant(Integer, "sqlite")
_models = Table(
    "trainlog_models",
    _metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("position", _id, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("examples", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("data", LargeBinary, nullable=False),
)
_LOCK_KEY = lock_key_for("trainlog-models")


@dataclass(frozen=True, slots=True)
class Published:
    """A published model, without its bytes."""

    id: int
    position: int
    model_version: str
    examples: int
    created_at: float


class PublishedModels:
    """Publish and fetch rebuilt models; safe across processes and replicas."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        with write_transaction(engine, lock_key=_LOCK_KEY) as conn:
            _metadata.create_all(conn)

    def publish(self, data: bytes, *, position: int, model_version: str, examples: int) -> int:
        """Store a model; returns its id (ids grow: the highest is the newest)."""
        with write_transaction(self._engine, lock_key=_LOCK_KEY) as conn:
            new_id = conn.execute(
                insert(_models)
                .values(
                    position=position,
                    model_version=model_version[:64],
                    examples=examples,
                    created_at=time.time(),
                    data=data,
                )
                .returning(_models.c.id)
            ).scalar_one()
            conn.execute(delete(_models).where(_models.c.id <= new_id - KEEP))
        return int(new_id)

    def newest(self) -> Published | None:
        m = _models.c
        query = select(m.id, m.position, m.model_version, m.examples, m.created_at).where(
            m.id == select(func.max(m.id)).scalar_subquery()
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Published(
            int(row.id), int(row.position), row.model_version, int(row.examples), row.created_at
        )

    def data(self, model_id: int) -> bytes | None:
        """The snapshot bytes of a published model, or None once it was replaced."""
        with self._engine.connect() as conn:
            found = conn.execute(select(_models.c.data).where(_models.c.id == model_id)).scalar()
        return None if found is None else bytes(found)
