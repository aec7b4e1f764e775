"""Progress on stderr for long commands, and the corpora they read while it shows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TypeVar, overload

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from mailsift.cli.app import err
from mailsift.training.corpus import LabelledMessage, count_messages, open_source

T = TypeVar("T")


def progress(total: int | None, label: str, *, refresh_per_second: float = 10) -> Progress:
    """A progress line on stderr while a long command runs, gone when it ends; nothing
    at all unless stderr is an interactive terminal (logs, pipes and cron stay clean).

    ``label`` may show the task's own description: ``"{task.description}"``. Commands
    that measure time refresh it less often, so that drawing it costs them nothing.
    """
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_interactive,
        refresh_per_second=refresh_per_second,
    )


class Phases:
    """One progress line for a command that runs in phases: each phase replaces the one
    before, with its own label, count (when known) and elapsed time."""

    def __init__(self, bar: Progress, prefix: str) -> None:
        self._bar = bar
        self._prefix = prefix
        self._task: TaskID | None = None

    def start(self, label: str, total: int | None = None) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(self._prefix + label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def over(
        self, items: Sequence[T], labels: Sequence[str] = (), then: str | None = None
    ) -> Sequence[T]:
        """``items``, marking phases as a library function reads them: pass ``i`` over
        them is phase ``labels[i]`` (counted; the last label repeats), and once the pass
        of the last label ends, phase ``then`` begins (what the function does next)."""
        return _PhaseItems(items, self, labels, then)


class _PhaseItems(Sequence[T]):
    def __init__(
        self, items: Sequence[T], phases: Phases, labels: Sequence[str], then: str | None
    ) -> None:
        self._items = items
        self._phases = phases
        self._labels = labels
        self._then = then
        self._passes = 0

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        counted = bool(self._labels)
        if counted:
            label = self._labels[min(self._passes, len(self._labels) - 1)]
            self._phases.start(label, len(self._items))
        self._passes += 1
        for item in self._items:
            yield item
            if counted:
                self._phases.advance()
        if self._then is not None and self._passes >= len(self._labels):
            self._phases.start(self._then)


def read_corpus(corpus: str, phases: Phases) -> list[LabelledMessage]:
    phases.start(f"reading {corpus}", count_messages(corpus))
    messages = []
    for message in open_source(corpus):
        messages.append(message)
        phases.advance()
    return messages


def open_sources(specs: list[str]) -> tuple[Iterator[LabelledMessage], int | None]:
    counts = [count_messages(s) for s in specs]
    total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    return itertools.chain.from_iterable(open_source(s) for s in specs), total
