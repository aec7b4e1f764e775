"""This process's models: a published or cached snapshot plus the log entries after it.

Every worker (and every replica) runs one :class:`Learner`. Shared entries teach the
shared :class:`SpamModel` and the exact labels (which message an administrator or users
in consensus labelled how); personal entries build the users' :class:`PersonalLayers`.
Entries are applied in position order from the features stored with them, never by
parsing again, so the same log gives bit-identical models everywhere.

Online learning between rebuilds is approximate for corrections (naive Bayes unlearns
exactly, the linear members take a step back). A *rebuild* trains from scratch over the
log's live examples and is published in the database (:mod:`.published`); each learner
swaps it in and replays the tail, and from then on every process serves the scores of a
log that never held the forgotten examples.

A snapshot holds the shared model only, so the personal layers and exact labels are
replayed from the log's metadata up to the snapshot's position first (cheap: no
message is read for them). The snapshot file in the data dir is this host's cache of
the model it derives from; it is used at start-up only when it derives from the newest
published model. Model mutation happens only on the event loop; blocking I/O (database
reads, snapshot files) and CPU work (decoding or parsing the entries replayed, copying
the model for a snapshot, with learning held back meanwhile) run in worker threads.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from mailsift.learning.examples import stored_or_fresh
from mailsift.learning.personal import PersonalLayers
from mailsift.learning.published import Published, PublishedModels
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import Label, LogEntry, TrainingLog
from mailsift.models.ensemble import SpamModel
from mailsift.models.features import Features
from mailsift.models.parse import ParseLimits
from mailsift.models.snapshot import (
    SnapshotError,
    SnapshotInfo,
    load_snapshot,
    save_snapshot,
    snapshot_from_bytes,
)
from mailsift.models.stored import features_version

__all__ = ["BASE_KEY", "Learner", "ModelStatus"]

log = logging.getLogger("mailsift.learner")

BASE_KEY = "base"
"""Snapshot header field: the id of the published model a cached snapshot derives from."""
_BATCH = 200


@dataclass(frozen=True, slots=True)
class ModelStatus:
    version: str
    ham: int
    spam: int
    log_position: int
    snapshot_position: int
    snapshot_created_at: float | None
    updated_at: float
    published_id: int = 0
    """The published (rebuilt) model this one derives from; 0: none."""


class Learner:
    def __init__(
        self,
        trainlog: TrainingLog,
        published: PublishedModels,
        snapshot_path: Path,
        limits: ParseLimits,
        *,
        snapshot_every_entries: int = 500,
        snapshot_every_seconds: float = 300.0,
    ) -> None:
        self.trainlog = trainlog
        self.published = published
        self.snapshot_path = snapshot_path
        self.limits = limits
        self.snapshot_every_entries = snapshot_every_entries
        self.snapshot_every_seconds = snapshot_every_seconds
        self.model = SpamModel()
        self.features_version = features_version(self.model.config)
        self.personal = PersonalLayers()
        self.labels: dict[str, Label] = {}
        """Fingerprint -> the label an administrator or users in consensus gave that
        very message (outbound mail's labels are not here: they teach the model only)."""
        self._meta_position = 0
        """Entries up to here are in :attr:`personal` and :attr:`labels` (may run ahead
        of :attr:`position` after a snapshot from the past is installed: each entry sets
        a key's state outright, so replaying entries again changes nothing)."""
        self.position = 0
        self.base_id = 0
        """The published model the current one derives from (0: none)."""
        self.snapshot: SnapshotInfo | None = None
        self.updated_at = time.time()
        self._unsnapshotted = 0
        self._last_snapshot = time.monotonic()
        self._apply_lock = asyncio.Lock()

    # -- status ----------------------------------------------------------------------

    def status(self) -> ModelStatus:
        snap = self.snapshot
        base = snap.model_version if snap else "empty"
        return ModelStatus(
            version=f"{base}+{self.position - (snap.log_position if snap else 0)}",
            ham=self.model.n_ham,
            spam=self.model.n_spam,
            log_position=self.position,
            snapshot_position=snap.log_position if snap else 0,
            snapshot_created_at=snap.created_at if snap else None,
            updated_at=self.updated_at,
            published_id=self.base_id,
        )

    @property
    def pending_entries(self) -> int:
        """Entries applied since the last snapshot this process wrote or loaded."""
        return self._unsnapshotted

    # -- snapshots -------------------------------------------------------------------

    def load_initial(self) -> None:
        """Start-up: this host's cached snapshot if it derives from the newest published
        model, else that published model, else an empty model (the log replays it all)."""
        newest = self.published.newest()
        wanted = newest.id if newest else 0
        for path in (
            self.snapshot_path,
            self.snapshot_path.with_name(self.snapshot_path.name + ".prev"),
        ):
            if not path.exists():
                continue
            try:
                model, info = load_snapshot(path, self.model.config)
            except SnapshotError as exc:
                log.error("snapshot refused: %s", exc)
                continue
            if _base_of(info) != wanted:
                log.info("cached snapshot %s predates published model %d", path, wanted)
                continue
            self._install(model, info, wanted)
            self._replay_meta(info.log_position)
            log.info("loaded snapshot %s at log position %d", info.model_version, info.log_position)
            return
        if newest is not None and self._install_published(newest):
            self._replay_meta(self.position)
            return
        log.info("no snapshot: starting with an empty model")

    def _install_published(self, newest: Published) -> bool:
        data = self.published.data(newest.id)
        if data is None:
            return False
        try:
            model, info = snapshot_from_bytes(data, self.model.config, f"published {newest.id}")
        except SnapshotError as exc:
            log.error("published model refused: %s", exc)
            return False
        self._install(model, info, newest.id)
        log.info("loaded published model %d at log position %d", newest.id, info.log_position)
        return True

    async def reload_if_published(self, newest: Published | None = None) -> bool:
        """Swap in a model a rebuild published since ours (``newest``, looked up when not
        given), then replay the tail."""
        if newest is None:
            newest = await run_in_threadpool(self.published.newest)
        if newest is None or newest.id <= self.base_id:
            return False
        data = await run_in_threadpool(self.published.data, newest.id)
        if data is None:
            return False
        try:
            model, info = await run_in_threadpool(
                snapshot_from_bytes, data, self.model.config, f"published {newest.id}"
            )
        except SnapshotError as exc:
            log.error("published model refused, keeping the current one: %s", exc)
            self.base_id = newest.id  # do not retry the same broken model every round
            return False
        async with self._apply_lock:
            self._install(model, info, newest.id)
            entries = await run_in_threadpool(self._meta_entries, info.log_position)
            self._apply_all_meta(entries, info.log_position)
        await self.catch_up()
        log.info("swapped in published model %d (log position %d)", newest.id, info.log_position)
        return True

    def _install(self, model: SpamModel, info: SnapshotInfo, base_id: int) -> None:
        self.model = model
        self.snapshot = info
        self.position = info.log_position
        self.base_id = base_id
        self._unsnapshotted = 0
        self.updated_at = time.time()

    def _replay_meta(self, until: int) -> None:
        self._apply_all_meta(self._meta_entries(until), until)

    def _meta_entries(self, until: int) -> list[LogEntry]:
        """Entries after what the metadata state holds, up to ``until`` (reads only: may
        run in a thread; that state is changed on the loop, where scoring reads it)."""
        entries: list[LogEntry] = []
        after = self._meta_position
        while after < until:
            batch = self.trainlog.read_meta(after, until)
            if not batch:
                break
            entries += batch
            after = batch[-1].position
        return entries

    def _apply_all_meta(self, entries: list[LogEntry], until: int) -> None:
        for entry in entries:
            self._apply_meta(entry)
        self._meta_position = max(self._meta_position, until)

    def _apply_meta(self, entry: LogEntry) -> None:
        """What an entry changes besides the shared model: a user's layer, or the label
        of that exact message."""
        if entry.position <= self._meta_position:
            return
        self._meta_position = entry.position
        if entry.layer:
            self.personal.apply(
                entry.layer,
                entry.position,
                entry.fingerprint,
                entry.label,
                entry.undo_label,
                entry.sender,
            )
        elif entry.label is None:
            self.labels.pop(entry.fingerprint, None)
        elif entry.source != Source.OUTBOUND.value:
            self.labels[entry.fingerprint] = entry.label

    async def snapshot_if_due(self) -> SnapshotInfo | None:
        due = self._unsnapshotted >= self.snapshot_every_entries or (
            self._unsnapshotted > 0
            and time.monotonic() - self._last_snapshot >= self.snapshot_every_seconds
        )
        return await self.write_snapshot() if due else None

    async def write_snapshot(self) -> SnapshotInfo | None:
        """Cache the current model on this host; skipped if another process is writing."""
        # The copy (24 MiB for a trained model, tens of ms) is made in a thread, with
        # learning held back so it is consistent; scoring reads on meanwhile.
        async with self._apply_lock:
            model = await run_in_threadpool(copy.deepcopy, self.model)
            position, base = self.position, self.base_id
        info = await run_in_threadpool(_save_locked, model, self.snapshot_path, position, base)
        self._unsnapshotted = 0
        self._last_snapshot = time.monotonic()
        return info

    # -- the training log ------------------------------------------------------------

    async def catch_up(self, until: int | None = None) -> int:
        """Apply every committed entry after our position (at least up to ``until``)."""
        applied = 0
        async with self._apply_lock:
            while until is None or self.position < until:
                batch = await run_in_threadpool(self._prepare, self.position)
                if not batch:
                    break
                for entry, learned, undo in batch:
                    if entry.position != self.position + 1:
                        log.error("training log gap: at %d, got %d", self.position, entry.position)
                    if not entry.layer:
                        self._apply_shared(entry, learned, undo)
                    self._apply_meta(entry)
                    self._advance(entry)
                    applied += 1
                    await asyncio.sleep(0)  # let scoring requests in between entries
                if len(batch) < _BATCH:
                    break
        return applied

    def _prepare(self, after: int) -> list[tuple[LogEntry, Features | None, Features | None]]:
        """The next batch of entries with the features each learns and unlearns, decoded
        or parsed from raw bytes: in a thread, so a replay never parses on the loop."""
        return [
            (entry, *self._entry_features(entry))
            for entry in self.trainlog.read(after, _BATCH, features_version=self.features_version)
        ]

    def _entry_features(self, entry: LogEntry) -> tuple[Features | None, Features | None]:
        """(features learned, features unlearned) of a shared entry."""
        if entry.layer:
            return None, None
        undo = None
        if entry.undo_label:
            undo = self._features(entry.undo_features, entry.undo_features_version, b"")
            if undo is None and entry.undo_raw:
                undo = self._features(None, None, entry.undo_raw)
        learned = None
        if entry.label:
            learned = self._features(entry.features, entry.features_version, entry.raw)
        return learned, undo

    def _apply_shared(
        self, entry: LogEntry, learned: Features | None, undo: Features | None
    ) -> None:
        model = self.model
        if entry.undo_label and undo is not None:
            try:
                model.unlearn(undo, entry.undo_label)
            except ValueError as exc:
                # Only when the model never held what the log says was learned (a
                # snapshot made without the log): nothing to take back, go on.
                log.warning("entry %d: %s", entry.position, exc)
        if entry.label:
            if learned is None:
                log.warning("entry %d: no features and no raw bytes: not learned", entry.position)
            else:
                model.learn(learned, entry.label)

    def _features(self, stored: bytes | None, version: str | None, raw: bytes) -> Features | None:
        """Stored features of this version, else features of ``raw`` (an entry from before
        features were stored); None when neither is there."""
        if stored is not None and version == self.features_version:
            return stored_or_fresh(stored, version, b"", self.model.config, version, self.limits)
        if not raw:
            return None
        return stored_or_fresh(
            None, None, raw, self.model.config, self.features_version, self.limits
        )

    def _advance(self, entry: LogEntry) -> None:
        self.position = entry.position
        self._unsnapshotted += 1
        self.updated_at = time.time()


def _base_of(info: SnapshotInfo) -> int:
    try:
        return int(info.extra.get(BASE_KEY, "0"))
    except ValueError:
        return -1


def _save_locked(model: SpamModel, path: Path, position: int, base: int) -> SnapshotInfo | None:
    """Write a snapshot under an advisory lock, so workers sharing a data dir take turns."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            return save_snapshot(model, path, log_position=position, **{BASE_KEY: str(base)})
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
