"""Batch training: labelled corpora onto the training log, or into a standalone snapshot.

``train_log`` is what ``mailsift train`` does: every message becomes an administrator's
example on the training log (features computed once, on both cores), so every worker
and replica learns it and a rebuild includes it; nothing needs copying between hosts.
``train_snapshot`` learns a corpus into a model file of its own, which no service reads
unless told to (``mailsift bench --model``, experiments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from joblib import Parallel, delayed

from mailsift.learning.examples import learning_limits
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import Example, Label, TrainingLog
from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig, extract
from mailsift.models.fingerprint import fingerprint
from mailsift.models.parse import DEFAULT_LIMITS, ParseLimits, parse_message
from mailsift.models.snapshot import SnapshotInfo, load_snapshot, save_snapshot
from mailsift.models.stored import encode_features, features_version
from mailsift.training.corpus import CorpusError, LabelledMessage

__all__ = ["LogTrainReport", "Repeats", "TrainReport", "train_log", "train_snapshot"]

BATCH = 500
"""Examples appended per transaction."""


EXAMPLES = 3
"""Sources of conflicting repeats a report names."""


@dataclass(slots=True)
class Repeats:
    """Messages met more than once in one run, by fingerprint (as the log counts them):
    the first copy counts, later copies are skipped."""

    same: int = 0
    """Later copies with the label the first one had."""
    conflicting: int = 0
    """Later copies with the other label: the first label given stands."""
    examples: list[str] = field(default_factory=list)
    """The sources of the first few conflicting copies."""
    _seen: dict[str, Label] = field(default_factory=dict, repr=False)

    def first(self, fp: str, label: Label, source: str) -> bool:
        """Whether this is the first copy of the message in the run (else it is counted)."""
        seen = self._seen.get(fp)
        if seen is None:
            self._seen[fp] = label
            return True
        if seen == label:
            self.same += 1
        else:
            self.conflicting += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(f"{source} (given {seen} earlier in this run)")
        return False

    @property
    def skipped(self) -> int:
        return self.same + self.conflicting

    @property
    def distinct(self) -> int:
        return len(self._seen)

    def lines(self, read: int) -> list[str]:
        """What a summary says of them: nothing when every message came once."""
        if not self.skipped:
            return []
        return [
            f"read {read} messages, {self.distinct} distinct: skipped {self.skipped} repeats "
            f"of a message earlier in this run ({self.same} with the same label, "
            f"{self.conflicting} with the other label)"
        ]

    def warnings(self) -> list[str]:
        if not self.conflicting:
            return []
        more = " ..." if self.conflicting > len(self.examples) else ""
        return [
            f"messages given both labels in this run: the first label given stands, "
            f"{self.conflicting} later copies with the other one were skipped: "
            f"{'; '.join(self.examples)}{more}"
        ]


@dataclass(frozen=True, slots=True)
class LogTrainReport:
    read: int
    """Messages read from the sources, repeats included."""
    learned: int
    """New examples on the log."""
    relabelled: int
    """Examples the log held with the other label, now this one."""
    unchanged: int
    """Already on the log with that label (a corpus trained twice counts once)."""
    kept: int
    """A label of higher rank holds the message with the other label, and stays."""
    repeats: Repeats
    head: int

    def lines(self) -> list[str]:
        """The summary for an administrator, a line each."""
        return [
            f"appended {self.learned + self.relabelled} examples to the training log "
            f"({self.learned} new, {self.relabelled} relabelled); {self.unchanged} already "
            f"there with the same label, {self.kept} kept by a label of higher rank; "
            f"log head {self.head}",
            *self.repeats.lines(self.read),
        ]


def _example(
    raw: bytes, label: Label | None, source: str, config: FeatureConfig, limits: ParseLimits
) -> tuple[str, Label, Example, str]:
    if label is None:
        raise CorpusError(f"{source}: no label (prefix the source with spam: or ham:)")
    parsed = parse_message(raw, learning_limits(limits))
    features = extract(parsed, config)
    example = Example(raw, encode_features(features), features_version(config), parsed.from_addr)
    return fingerprint(parsed), label, example, source


def train_log(
    messages: Iterable[LabelledMessage],
    trainlog: TrainingLog,
    *,
    actor: str,
    config: FeatureConfig | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    jobs: int = 2,
    progress: Callable[[int], None] | None = None,
) -> LogTrainReport:
    """Append ``messages`` in order as administrator examples, featurised in ``jobs``
    processes and appended :data:`BATCH` to a transaction.

    A message met again in the same run (same fingerprint) is skipped and counted in
    :class:`Repeats`, whatever its label: the first label given stands."""
    config = config or FeatureConfig()
    work = (delayed(_example)(m.raw, m.label, m.source, config, limits) for m in messages)
    results = Parallel(n_jobs=jobs, return_as="generator", batch_size=64)(work)
    counts = dict.fromkeys(("learned", "relabelled", "unchanged", "kept"), 0)
    repeats = Repeats()
    read = done = 0
    batch: list[tuple[str, Label, Example]] = []

    def flush() -> None:
        nonlocal done
        if batch:
            for result in trainlog.append_many(batch, source=Source.ADMIN, actor=actor):
                counts[result.result] = counts.get(result.result, 0) + 1
            batch.clear()
        if progress and read > done:
            progress(read - done)
        done = read

    for fp, label, example, source in results:
        read += 1
        if repeats.first(fp, label, source):
            batch.append((fp, label, example))
        if len(batch) >= BATCH or read - done >= BATCH:
            flush()
    flush()
    return LogTrainReport(
        read,
        counts["learned"],
        counts["relabelled"],
        counts["unchanged"],
        counts["kept"],
        repeats,
        trainlog.head(),
    )


@dataclass(frozen=True, slots=True)
class TrainReport:
    read: int
    """Messages read from the sources, repeats included."""
    learned: int
    """Distinct messages learned in this run."""
    repeats: Repeats
    info: SnapshotInfo
    continued: SnapshotInfo | None = None
    """The snapshot this run continued, as it was before; None for a new one."""

    def lines(self, path: Path) -> list[str]:
        """The summary for an administrator, a line each."""
        info = self.info
        return [
            f"learned {self.learned} messages -> {path} "
            f"(ham {info.ham}, spam {info.spam}, version {info.model_version})",
            *self.repeats.lines(self.read),
        ]

    def notes(self, path: Path) -> list[str]:
        before = self.continued
        if before is None:
            return []
        return [
            f"continued {path}, which held ham {before.ham}, spam {before.spam}: a snapshot "
            "does not record which messages it learned, so one learned by an earlier run "
            "counts again (the training log counts each message once)"
        ]


def train_snapshot(
    messages: Iterable[LabelledMessage],
    model_path: Path,
    *,
    config: FeatureConfig | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Callable[[int], None] | None = None,
) -> TrainReport:
    """Learn ``messages`` in order into the snapshot at ``model_path`` and publish it.

    An existing snapshot is continued (its feature settings must match ``config`` when
    one is given); otherwise training starts from an empty model. The snapshot keeps the
    log position it had, so a service replaying a training log does not apply twice what
    it already holds.

    A message met again in the same run (same fingerprint) is learned once, as on the
    log (see :class:`Repeats`). A snapshot does not record which messages it learned, so
    a message learned into it by an earlier run is learned again.
    """
    position = 0
    continued: SnapshotInfo | None = None
    if model_path.exists():
        model, continued = load_snapshot(model_path, config)
        position = continued.log_position
    else:
        model = SpamModel(config)
    learning = learning_limits(limits)  # as the log featurises: the same on every machine
    read = learned = 0
    repeats = Repeats()
    for msg in messages:
        if msg.label is None:
            raise CorpusError(f"{msg.source}: no label (prefix the source with spam: or ham:)")
        read += 1
        parsed = parse_message(msg.raw, learning)
        if repeats.first(fingerprint(parsed), msg.label, msg.source):
            model.learn(model.features(parsed), msg.label)
            learned += 1
        if progress:
            progress(1)
    info = save_snapshot(model, model_path, log_position=position)
    return TrainReport(read, learned, repeats, info, continued)
