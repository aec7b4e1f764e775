"""Recently scored messages, kept whole for a while so an administrator can label one
from the history by its fingerprint alone: they rarely have the raw message at hand.

Each message is one file, ``history/<UTC hour>/<fingerprint>``, written 0600 by a
background thread (scoring only queues it: a file write per message must not sit on
the event loop), so pruning past ``MAILSIFT_HISTORY_RETENTION_HOURS`` or past
``MAILSIFT_HISTORY_MAX_MB`` removes whole hours, oldest first (a closed hour's size is
measured once per process).
The same content scored again within an hour is one file. Files, not the database: a
site scoring a million messages a day would otherwise add gigabytes of writes to the
database every worker and replica shares; the price is that a replica can label only
what it scored itself.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from pathlib import Path

__all__ = ["HISTORY_DIRNAME", "MessageHistory"]

log = logging.getLogger("mailsift.history")

HISTORY_DIRNAME = "history"
HOUR = 3600
_BUCKET = re.compile(r"^\d{10}$")  # YYYYMMDDHH, UTC
_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
_FLUSH_SECONDS = 0.5
_PRUNE_SECONDS = 300.0
_QUEUE_BYTES = 64 * 1024 * 1024
"""Messages waiting to be written, at most: past it new ones are not kept (and counted)."""


def _bucket(at: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(at))


class MessageHistory:
    """The raw messages scored in the last ``retention_hours`` (0: none are kept)."""

    def __init__(self, root: Path, retention_hours: int, max_bytes: int) -> None:
        self.root = root
        self.retention_hours = retention_hours
        self.max_bytes = max_bytes
        self._queue: deque[tuple[str, bytes, float]] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        self._sizes: dict[str, int] = {}
        self.dropped = 0
        """Messages not kept because writing fell behind (logged once a minute at most)."""

    @property
    def enabled(self) -> bool:
        return self.retention_hours > 0

    def keep(self, fingerprint: str, raw: bytes, at: float | None = None) -> None:
        """Queue one scored message; written within about half a second. Cheap."""
        if not self.enabled:
            return
        with self._lock:
            if self._queued_bytes + len(raw) > _QUEUE_BYTES:
                self.dropped += 1
                return
            self._queue.append((fingerprint, raw, time.time() if at is None else at))
            self._queued_bytes += len(raw)
        if self._thread is None:
            self._start()

    def find(self, fingerprint: str, now: float | None = None) -> bytes | None:
        """The message with ``fingerprint`` if still kept, newest copy first."""
        if not self.enabled or not _FINGERPRINT.match(fingerprint):
            return None
        now = time.time() if now is None else now
        cutoff = now - self.retention_hours * HOUR
        with self._lock:
            for fp, raw, at in reversed(self._queue):
                if fp == fingerprint and at >= cutoff:
                    return raw
        for bucket in sorted(self._buckets(), reverse=True):
            if self._bucket_end(bucket) <= cutoff:
                break
            try:
                return (self.root / bucket / fingerprint).read_bytes()
            except FileNotFoundError:
                continue
        return None

    def flush(self) -> None:
        """Write every queued message now (the writer thread's job; tests and shutdown)."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                fingerprint, raw, at = self._queue.popleft()
                self._queued_bytes -= len(raw)
            try:
                self._write(fingerprint, raw, at)
            except OSError as exc:
                log.error("history: cannot keep a message: %s", exc.strerror or exc)

    def prune(self, now: float | None = None) -> int:
        """Remove the hours past retention, then the oldest while over ``max_bytes``."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_hours * HOUR
        buckets = sorted(self._buckets())
        removed = 0
        for bucket in buckets:
            if self.enabled and self._bucket_end(bucket) > cutoff:
                break
            removed += self._remove(bucket)
        kept = [b for b in buckets if (self.root / b).exists()]
        current = _bucket(now)
        total = sum(self._size(b, closed=b != current) for b in kept)
        for bucket in kept:
            if total <= self.max_bytes or bucket == current:  # never the hour being written
                break
            total -= self._size(bucket)
            removed += self._remove(bucket)
        return removed

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    # --- inside -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_FLUSH_SECONDS)
            self.flush()
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + _PRUNE_SECONDS
                try:
                    self.prune()
                except OSError as exc:
                    log.error("history: prune failed: %s", exc.strerror or exc)

    def _write(self, fingerprint: str, raw: bytes, at: float) -> None:
        folder = self.root / _bucket(at)
        path = folder / fingerprint
        if path.exists():
            return
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = folder / f".{fingerprint}.{os.getpid()}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
            os.replace(part, path)  # readers never see half a message
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def _buckets(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.root) if _BUCKET.match(e.name)]
        except FileNotFoundError:
            return []

    @staticmethod
    def _bucket_end(bucket: str) -> float:
        return float(calendar.timegm(time.strptime(bucket, "%Y%m%d%H")) + HOUR)

    def _size(self, bucket: str, *, closed: bool = True) -> int:
        """Bytes in an hour; a closed one is measured once (nothing is added to it)."""
        size = self._sizes.get(bucket)
        if size is None:
            try:
                size = sum(e.stat().st_size for e in os.scandir(self.root / bucket))
            except FileNotFoundError:
                size = 0
            if closed:
                self._sizes[bucket] = size
        return size

    def _remove(self, bucket: str) -> int:
        shutil.rmtree(self.root / bucket, ignore_errors=True)
        self._sizes.pop(bucket, None)
        return 1
