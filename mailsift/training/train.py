"""Batch training: labelled corpora onto the training log, or into a standalone snapshot.

``train_log`` is what ``mailsift train`` does: every message becomes an administrator's
example on the training log (features computed once, on both cores), so every worker
and replica learns it and a rebuild includes it; nothing needs copying between hosts.
``train_snapshot`` learns a corpus into a model file of its own, which no service reads
unless told to (``mailsift bench --model``, experiments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

__all__ = ["LogTrainReport", "TrainReport", "train_log", "train_snapshot"]

BATCH = 500
"""Examples appended per transaction."""


@dataclass(frozen=True, slots=True)
class LogTrainReport:
    learned: int
    """New examples, and relabelled ones."""
    unchanged: int
    """Already on the log with that label (a corpus trained twice counts once)."""
    kept: int
    head: int


def _example(
    raw: bytes, label: Label | None, source: str, config: FeatureConfig, limits: ParseLimits
) -> tuple[str, Label, Example]:
    if label is None:
        raise CorpusError(f"{source}: no label (prefix the source with spam: or ham:)")
    parsed = parse_message(raw, learning_limits(limits))
    features = extract(parsed, config)
    example = Example(raw, encode_features(features), features_version(config), parsed.from_addr)
    return fingerprint(parsed), label, example


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
    processes and appended :data:`BATCH` to a transaction."""
    config = config or FeatureConfig()
    work = (delayed(_example)(m.raw, m.label, m.source, config, limits) for m in messages)
    results = Parallel(n_jobs=jobs, return_as="generator", batch_size=64)(work)
    learned = unchanged = kept = 0
    batch: list[tuple[str, Label, Example]] = []

    def flush() -> None:
        nonlocal learned, unchanged, kept
        for result in trainlog.append_many(batch, source=Source.ADMIN, actor=actor):
            if result.result == "unchanged":
                unchanged += 1
            elif result.result == "kept":
                kept += 1
            else:
                learned += 1
        if progress:
            progress(len(batch))
        batch.clear()

    for item in results:
        batch.append(item)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return LogTrainReport(learned, unchanged, kept, trainlog.head())


@dataclass(frozen=True, slots=True)
class TrainReport:
    learned: int
    info: SnapshotInfo


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
    """
    position = 0
    if model_path.exists():
        model, info = load_snapshot(model_path, config)
        position = info.log_position
    else:
        model = SpamModel(config)
    learned = 0
    for msg in messages:
        if msg.label is None:
            raise CorpusError(f"{msg.source}: no label (prefix the source with spam: or ham:)")
        model.learn(model.features(parse_message(msg.raw, limits)), msg.label)
        learned += 1
        if progress:
            progress(1)
    return TrainReport(learned, save_snapshot(model, model_path, log_position=position))
