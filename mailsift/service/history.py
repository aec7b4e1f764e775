"""Recently scored messages, kept whole for a while so an administrator can label one
from the history by its fingerprint alone: they rarely have the raw message at hand.

Scoring only queues a message; a background thread appends it to this process's segment
of the current UTC hour (``history/<YYYYMMDDHH>-<pid>.msgs``, 0600) and then one line,
``<fingerprint> <offset> <length>``, to the segment's index (``….idx``). Segments, not a
file per message: at a million messages a day that would be three million files for 72
hours, an inode and a rename each. Data is flushed before its index line, so an index
never points past what was written. Pruning past ``MAILSIFT_HISTORY_RETENTION_HOURS`` or
past ``MAILSIFT_HISTORY_MAX_MB`` removes whole hours, oldest first. A lookup searches
the indexes of the kept hours, newest first (a ``bytes.find`` over each, in C). Files,
not the shared database: a busy site would otherwise add gigabytes a day of writes that
every replica shares; the price is that a replica can label only what it scored itself.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

from mailsift.models.fingerprint import is_fingerprint

__all__ = ["HOUR", "MessageHistory"]

log = logging.getLogger("mailsift.history")

HOUR = 3600
_SEGMENT = re.compile(r"^(\d{10})-(\d+)\.(msgs|idx)$")  # YYYYMMDDHH (UTC)-pid
_FLUSH_SECONDS = 0.5
_PRUNE_SECONDS = 300.0
_QUEUE_BYTES = 64 * 1024 * 1024
"""Messages waiting to be written, at most: past it new ones are not kept (and counted)."""


def _hour(at: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(at))


def _hour_end(hour: str) -> float:
    return float(calendar.timegm(time.strptime(hour, "%Y%m%d%H")) + HOUR)


class _Segment:
    """This process's open pair of files for one hour."""

    def __init__(self, root: Path, hour: str) -> None:
        self.hour = hour
        stem = root / f"{hour}-{os.getpid()}"
        self.data = _open_private(stem.with_suffix(".msgs"))
        self.index = _open_private(stem.with_suffix(".idx"))
        self.offset = self.data.seek(0, os.SEEK_END)
        self.seen: set[str] = set()

    def close(self) -> None:
        self.data.close()
        self.index.close()


def _open_private(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


class MessageHistory:
    """The raw messages scored in the last ``retention_hours`` (0: none are kept)."""

    def __init__(self, root: Path, retention_hours: int, max_bytes: int) -> None:
        self.root = root
        self.retention_hours = retention_hours
        self.max_bytes = max_bytes
        self._queue: deque[tuple[str, bytes, float]] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()  # the queue
        self._write_lock = threading.Lock()  # the open segment
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._segment: _Segment | None = None
        self._next_prune = 0.0
        self.dropped = 0
        """Messages not kept because writing fell behind."""

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
        if not self.enabled or not is_fingerprint(fingerprint):
            return None
        now = time.time() if now is None else now
        cutoff = now - self.retention_hours * HOUR
        with self._lock:
            for fp, raw, at in reversed(self._queue):
                if fp == fingerprint and at >= cutoff:
                    return raw
        needle = fingerprint.encode() + b" "
        for name in sorted(self._files(".idx"), reverse=True):
            if _hour_end(name[:10]) <= cutoff:
                break
            found = self._read(name, needle)
            if found is not None:
                return found
        return None

    def flush(self) -> None:
        """Write every queued message now (the writer thread's job; tests and shutdown)."""
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if not batch:
            return
        try:
            with self._write_lock:
                self._append(batch)
        except OSError as exc:
            log.error("history: cannot keep %d messages: %s", len(batch), exc.strerror or exc)

    def prune(self, now: float | None = None) -> int:
        """Remove the hours past retention, then the oldest while over ``max_bytes``;
        never the current hour. Returns the hours removed."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_hours * HOUR
        current = _hour(now)
        by_hour: dict[str, list[str]] = {}
        for name in self._files(""):
            by_hour.setdefault(name[:10], []).append(name)
        sizes = {hour: sum(self._size(n) for n in names) for hour, names in by_hour.items()}
        total = sum(sizes.values())
        removed = 0
        for hour in sorted(by_hour):
            if hour == current:
                break
            if self.enabled and _hour_end(hour) > cutoff and total <= self.max_bytes:
                break
            with self._write_lock:
                if self._segment is not None and self._segment.hour == hour:
                    self._segment.close()
                    self._segment = None
                for name in by_hour[hour]:
                    (self.root / name).unlink(missing_ok=True)
            total -= sizes[hour]
            removed += 1
        return removed

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        with self._write_lock:
            if self._segment is not None:
                self._segment.close()
                self._segment = None

    # --- inside -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_FLUSH_SECONDS):
            self.flush()
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + _PRUNE_SECONDS
                try:
                    self.prune()
                except OSError as exc:
                    log.error("history: prune failed: %s", exc.strerror or exc)

    def _append(self, batch: list[tuple[str, bytes, float]]) -> None:
        lines: list[bytes] = []
        segment = self._segment
        for fingerprint, raw, at in batch:
            hour = _hour(at)
            if segment is None or segment.hour != hour:
                if segment is not None:
                    self._finish(segment, lines)
                    segment.close()
                    lines = []
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                segment = self._segment = _Segment(self.root, hour)
            if fingerprint in segment.seen:
                continue
            segment.seen.add(fingerprint)
            segment.data.write(raw)
            lines.append(b"%s %d %d\n" % (fingerprint.encode(), segment.offset, len(raw)))
            segment.offset += len(raw)
        if segment is not None:
            self._finish(segment, lines)

    @staticmethod
    def _finish(segment: _Segment, lines: list[bytes]) -> None:
        """Data first, then the index lines that point into it."""
        segment.data.flush()
        segment.index.write(b"".join(lines))
        segment.index.flush()

    def _read(self, index_name: str, needle: bytes) -> bytes | None:
        try:
            index = (self.root / index_name).read_bytes()
        except FileNotFoundError:
            return None
        at = index.rfind(needle)
        while at > 0 and index[at - 1 : at] != b"\n":  # not at a line's start
            at = index.rfind(needle, 0, at)
        end = index.find(b"\n", at)
        fields = index[at:end].split() if at >= 0 and end > at else []
        if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            return None  # absent, or a line still being written
        offset, length = int(fields[1]), int(fields[2])
        try:
            with (self.root / index_name.replace(".idx", ".msgs")).open("rb") as data:
                data.seek(offset)
                raw = data.read(length)
        except FileNotFoundError:
            return None
        return raw if len(raw) == length else None

    def _files(self, suffix: str) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.root)]
        except FileNotFoundError:
            return []
        return [n for n in names if _SEGMENT.match(n) and n.endswith(suffix)]

    def _size(self, name: str) -> int:
        try:
            return (self.root / name).stat().st_size
        except FileNotFoundError:
            return 0
