"""This process's models: the newest valid snapshot plus the training-log entries after it.

Shared entries teach the shared :class:`SpamModel` and the exact labels (which message
an administrator or users in consensus labelled how); personal entries build the users'
:class:`PersonalLayers`. A snapshot holds the shared model only, so the rest is replayed
from the log's entries up to the snapshot's position first, from their metadata alone
(cheap: no message is read or parsed for them).

Every worker (and every replica) runs one :class:`Learner`. It applies log entries in
position order, so the same log gives the same model everywhere without a coordinator.
Model mutation happens only on the event loop (the background task and request
handlers call in from there), so scoring never sees a half-applied entry; blocking I/O
(database reads, snapshot files) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from mailsift.learning.personal import PersonalLayers
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import Label, LogEntry, TrainingLog
from mailsift.models.ensemble import SpamModel
from mailsift.models.parse import ParseLimits, parse_message
from mailsift.models.snapshot import SnapshotError, SnapshotInfo, load_snapshot, save_snapshot

__all__ = ["Learner", "ModelStatus"]

log = logging.getLogger("mailsift.learner")

_BATCH = 200
_FileStamp = tuple[int, int, int]  # (inode, size, mtime_ns)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    version: str
    ham: int
    spam: int
    log_position: int
    snapshot_position: int
    snapshot_created_at: float | None
    updated_at: float


class Learner:
    def __init__(
        self,
        trainlog: TrainingLog,
        snapshot_path: Path,
        limits: ParseLimits,
        *,
        snapshot_every_entries: int = 500,
        snapshot_every_seconds: float = 300.0,
    ) -> None:
        self.trainlog = trainlog
        self.snapshot_path = snapshot_path
        self.limits = limits
        self.snapshot_every_entries = snapshot_every_entries
        self.snapshot_every_seconds = snapshot_every_seconds
        self.model = SpamModel()
        self.personal = PersonalLayers()
        self.labels: dict[str, Label] = {}
        """Fingerprint -> the label an administrator or users in consensus gave that
        very message (outbound mail's labels are not here: they teach the model only)."""
        self._meta_position = 0
        """Entries up to here are in :attr:`personal` and :attr:`labels` (may run ahead
        of :attr:`position` after a snapshot from the past is installed: each entry sets
        a key's state outright, so replaying entries again changes nothing)."""
        self.position = 0
        self.snapshot: SnapshotInfo | None = None
        self.updated_at = time.time()
        self._stamp: _FileStamp | None = None
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
        )

    @property
    def pending_entries(self) -> int:
        """Entries applied since the last snapshot this process wrote or loaded."""
        return self._unsnapshotted

    # -- snapshots -------------------------------------------------------------------

    def load_initial(self) -> None:
        """Start-up: newest valid snapshot (else the previous one, else empty)."""
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
            self._install(
                model, info, _stamp(self.snapshot_path) if path == self.snapshot_path else None
            )
            self._replay_meta(info.log_position)
            log.info("loaded snapshot %s at log position %d", info.model_version, info.log_position)
            return
        log.info("no snapshot: starting with an empty model")

    async def reload_if_changed(self, force: bool = False) -> bool:
        """Pick up a snapshot someone else published (``mailsift train``, another worker)."""
        stamp = _stamp(self.snapshot_path)
        if stamp is None or (stamp == self._stamp and not force):
            return False
        try:
            model, info = await run_in_threadpool(
                load_snapshot, self.snapshot_path, self.model.config
            )
        except SnapshotError as exc:
            log.error("new snapshot refused, keeping the current model: %s", exc)
            self._stamp = stamp  # do not retry the same broken file every few seconds
            return False
        async with self._apply_lock:
            self._install(model, info, stamp)
            entries = await run_in_threadpool(self._meta_entries, info.log_position)
            self._apply_all_meta(entries, info.log_position)
        await self.catch_up()
        log.info("reloaded snapshot %s at log position %d", info.model_version, info.log_position)
        return True

    def _install(self, model: SpamModel, info: SnapshotInfo, stamp: _FileStamp | None) -> None:
        self.model = model
        self.snapshot = info
        self.position = info.log_position
        self._stamp = stamp
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
        """Publish the current model; skipped if another process is writing one right now."""
        if _stamp(self.snapshot_path) not in (None, self._stamp):
            # Someone published since we loaded: take theirs rather than overwrite it.
            await self.reload_if_changed()
            return None
        model, position = copy.deepcopy(self.model), self.position
        info = await run_in_threadpool(_save_locked, model, self.snapshot_path, position)
        self._unsnapshotted = 0
        self._last_snapshot = time.monotonic()
        if info is not None:
            self.snapshot = info
            self._stamp = _stamp(self.snapshot_path)
        return info

    # -- the training log ------------------------------------------------------------

    async def catch_up(self, until: int | None = None) -> int:
        """Apply every committed entry after our position (at least up to ``until``)."""
        applied = 0
        async with self._apply_lock:
            while until is None or self.position < until:
                entries = await run_in_threadpool(self.trainlog.read, self.position, _BATCH)
                if not entries:
                    break
                for entry in entries:
                    if entry.position != self.position + 1:
                        log.error("training log gap: at %d, got %d", self.position, entry.position)
                    self._apply(entry)
                    applied += 1
                    await asyncio.sleep(0)  # let scoring requests in between entries
                if len(entries) < _BATCH:
                    break
        return applied

    def _apply(self, entry: LogEntry) -> None:
        self._apply_meta(entry)
        if entry.layer:
            self._advance(entry)
            return
        model = self.model
        if entry.undo_label:
            learned = model.features(parse_message(entry.undo_raw, self.limits))
            try:
                model.unlearn(learned, entry.undo_label)
            except ValueError as exc:
                # Only when the snapshot never held what the log says was learned (a
                # model retrained from scratch): nothing to take back, go on.
                log.warning("entry %d: %s", entry.position, exc)
        if entry.label:
            model.learn(model.features(parse_message(entry.raw, self.limits)), entry.label)
        self._advance(entry)

    def _advance(self, entry: LogEntry) -> None:
        self.position = entry.position
        self._unsnapshotted += 1
        self.updated_at = time.time()


def _stamp(path: Path) -> _FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _save_locked(model: SpamModel, path: Path, position: int) -> SnapshotInfo | None:
    """Write a snapshot under an advisory lock, so workers sharing a data dir take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            return save_snapshot(model, path, log_position=position)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
