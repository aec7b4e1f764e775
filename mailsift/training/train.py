"""Batch training: learn labelled corpora into a snapshot (new, or continued)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig
from mailsift.models.parse import DEFAULT_LIMITS, ParseLimits, parse_message
from mailsift.models.snapshot import SnapshotInfo, load_snapshot, save_snapshot
from mailsift.training.corpus import CorpusError, LabelledMessage

__all__ = ["TrainReport", "train_snapshot"]


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
