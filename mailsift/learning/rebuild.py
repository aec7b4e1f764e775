"""Rebuild: the shared model trained from scratch over the log's live examples.

Online learning cannot take an example back exactly (the linear members only step the
other way). A rebuild can: it learns the examples the log holds *now* — relabels and
forgets applied — each once, in the order of the entries that set them, from their
stored features, into an empty model, and publishes it at the log position it covers.
So after a forget and a rebuild every score equals, bit for bit, that of a log that
never had the example; and every replica that swaps the published model in serves the
same scores.

The rebuild learns with the same learner the service runs online: the served model is
one function of the log whether it was built here or grown entry by entry, so a
rebuild never jumps the scores of examples that were never corrected.

One rebuild runs at a time across every worker and replica (:func:`rebuild_lock`); it
runs in its own process (``mailsift rebuild``), so workers keep serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from mailsift.learning.examples import stored_or_fresh
from mailsift.learning.published import PublishedModels
from mailsift.learning.trainlog import TrainingLog
from mailsift.models.ensemble import SpamModel
from mailsift.models.parse import ParseLimits
from mailsift.models.snapshot import snapshot_bytes
from mailsift.models.stored import features_version
from mailsift.service.db import lock_key_for

__all__ = ["RebuildBusy", "Rebuilt", "publish", "rebuild_lock", "rebuild_model"]

log = logging.getLogger("mailsift.rebuild")

_LOCK_KEY = lock_key_for("trainlog-rebuild")


class RebuildBusy(Exception):
    """Another rebuild holds the lock (asked not to wait)."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    model: SpamModel
    position: int
    examples: int
    skipped: int
    """Live examples with neither usable stored features nor raw bytes to compute them."""
    seconds: float


def rebuild_model(
    trainlog: TrainingLog,
    limits: ParseLimits,
    *,
    model: SpamModel | None = None,
    progress: Callable[[int], None] | None = None,
) -> Rebuilt:
    """Train ``model`` (a fresh default one) on the log's live examples, in log order."""
    started = time.perf_counter()
    model = model if model is not None else SpamModel()
    version = features_version(model.config)
    learned = skipped = 0
    with trainlog.live_examples() as (position, examples):
        for example in examples:
            raw = b"" if example.features_version == version else trainlog.raw_at(example.position)
            f = stored_or_fresh(
                example.features, example.features_version, raw, model.config, version, limits
            )
            if f is None:
                skipped += 1
                continue
            model.learn(f, example.label)
            learned += 1
            if progress is not None:
                progress(1)
    if skipped:
        log.warning("rebuild skipped %d examples: features of other settings, raw gone", skipped)
    return Rebuilt(model, position, learned, skipped, time.perf_counter() - started)


def publish(trainlog: TrainingLog, rebuilt: Rebuilt) -> tuple[int, str]:
    """Store the rebuilt model in the log's database; returns (id, model version)."""
    data, info = snapshot_bytes(rebuilt.model, rebuilt.position)
    published = PublishedModels(trainlog.engine)
    model_id = published.publish(
        data, position=rebuilt.position, model_version=info.model_version, examples=rebuilt.examples
    )
    return model_id, info.model_version


@contextlib.contextmanager
def rebuild_lock(trainlog: TrainingLog, data_dir: Path, *, wait: bool) -> Iterator[None]:
    """One rebuild at a time: an advisory lock on PostgreSQL (every replica), a file lock
    in the data dir on SQLite (whose workers all share that dir). Raises
    :class:`RebuildBusy` when ``wait`` is false and another rebuild runs.

    On PostgreSQL the lock belongs to a transaction held open for the whole rebuild,
    not to the session: behind PgBouncer in transaction mode a session lock stays on a
    server connection that the next client is handed, which would then hold it too; an
    open transaction keeps its server connection to itself, and ends, lock and all, if
    the rebuild dies. (It holds back vacuum while it is open, as the rebuild's own
    one-snapshot read of the log does for nearly as long.)
    """
    engine = trainlog.engine
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            if wait:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            elif not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_KEY}
            ).scalar():
                raise RebuildBusy("another rebuild is running")
            yield
        return
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(data_dir / "rebuild.lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RebuildBusy("another rebuild is running") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
