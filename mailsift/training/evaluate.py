"""Accuracy evaluation on a labelled corpus, by the TREC spam-track protocols.

* ``online`` — immediate feedback: from an empty model, each message in order is first
  scored, then learned with its gold label. This is how a filter lives in production.
* ``split``  — learn the first ``train_frac`` of the stream as a rebuild would, score the
  rest. A rebuild learns each live example of the training log once: a message seen
  again with the same label is not a new example, one seen again with the other label
  is relabelled, and examples are learned in the order of the entries that set them.
  Split mode learns its part the same way, so it measures the model that is served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mailsift.models.ensemble import SpamModel
from mailsift.models.fingerprint import fingerprint
from mailsift.models.parse import DEFAULT_LIMITS, ParseLimits, parse_message
from mailsift.training.corpus import CorpusError, LabelledMessage
from mailsift.training.metrics import plot_roc, summary, undefined
from mailsift.training.outputs import write_atomically

__all__ = ["EvalResult", "Mode", "Written", "evaluate", "write_outputs", "write_scores"]

Mode = Literal["online", "split"]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class EvalResult:
    is_spam: np.ndarray
    scores: np.ndarray
    seconds: float
    summary: dict[str, float | int]
    undefined: dict[str, str]
    """Why each measure of ``summary`` that is NaN is undefined (e.g. one class only)."""


def evaluate(
    messages: Iterable[LabelledMessage],
    *,
    mode: Mode = "online",
    train_frac: float = 0.7,
    threshold: float = 0.5,
    model: SpamModel | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> EvalResult:
    """Run one protocol; ``seconds`` covers parsing, scoring and learning."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be between 0 and 1")
    model = model or SpamModel()
    labels: list[bool] = []
    scores: list[float] = []
    start = time.perf_counter()
    if mode == "online":
        for msg in messages:
            label = _gold(msg)
            f = model.features(parse_message(msg.raw, limits))
            scores.append(model.score(f).probability)
            labels.append(label == "spam")
            model.learn(f, label)
            if progress:
                progress(1)
    elif mode == "split":
        stream = list(messages)
        n_train = int(len(stream) * train_frac)
        for i in _as_the_log_keeps(stream[:n_train], limits):
            msg = stream[i]
            model.learn(model.features(parse_message(msg.raw, limits)), _gold(msg))
            if progress:
                progress(1)
        for msg in stream[n_train:]:
            f = model.features(parse_message(msg.raw, limits))
            scores.append(model.score(f).probability)
            labels.append(_gold(msg) == "spam")
            if progress:
                progress(1)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    seconds = time.perf_counter() - start
    if not labels:
        raise CorpusError("the corpus gave no messages to score")
    is_spam = np.array(labels)
    values = np.array(scores)
    context = ""
    if mode == "split":
        context = f" (split mode scores the last {len(labels)} of {len(stream)} messages)"
    return EvalResult(
        is_spam,
        values,
        seconds,
        summary(is_spam, values, threshold, seconds),
        undefined(is_spam, context),
    )


def write_scores(path: Path, result: EvalResult) -> None:
    """One ``label score`` line per scored message, in stream order (written whole)."""
    lines = "".join(
        f"{'spam' if s else 'ham'} {v:.6f}\n"
        for s, v in zip(result.is_spam, result.scores, strict=True)
    )
    write_atomically(path, lambda fh: fh.write(lines.encode()))


@dataclass(frozen=True, slots=True)
class Written:
    """What :func:`write_outputs` wrote (one line each), and what it could not."""

    written: list[str]
    failed: list[str]


def write_outputs(
    result: EvalResult, *, scores: Path | None, plot: Path | None, title: str = ""
) -> Written:
    """Write the requested files of a finished run; a failure is reported, not raised,
    so the run's measures are never lost to it."""
    done = Written([], [])
    if scores is not None:
        try:
            write_scores(scores, result)
            done.written.append(f"wrote --scores {scores} ({len(result.scores)} lines)")
        except OSError as exc:
            done.failed.append(f"--scores {scores} not written: {exc.strerror or exc}")
    if plot is not None:
        why = result.undefined.get("one_minus_roca_pct")
        if why is not None:
            done.failed.append(f"--plot {plot} not written: {why}")
        else:
            try:
                plot_roc(result.is_spam, result.scores, plot, title=title)
                done.written.append(f"wrote --plot {plot} (ROC curve, PNG)")
            except OSError as exc:
                done.failed.append(f"--plot {plot} not written: {exc.strerror or exc}")
    return done


def _as_the_log_keeps(part: list[LabelledMessage], limits: ParseLimits) -> list[int]:
    """Positions in ``part`` of the examples a training log holds after appending it all:
    one per fingerprint, with its last label, in the order of the entries that set them
    (a repeat with the same label changes nothing; one with the other label relabels).

    A pass of its own, so split mode parses its training part twice: learning in this
    order in one pass would mean holding every message's vectors (hundreds of MB for a
    corpus of ten thousand) until the last relabel is known."""
    setting: dict[str, tuple[int, str]] = {}
    for i, msg in enumerate(part):
        label = _gold(msg)
        fp = fingerprint(parse_message(msg.raw, limits))
        prior = setting.get(fp)
        if prior is None or prior[1] != label:
            setting[fp] = (i, label)
    return sorted(i for i, _ in setting.values())


def _gold(msg: LabelledMessage) -> Literal["ham", "spam"]:
    if msg.label is None:
        raise CorpusError(f"{msg.source}: no label (give one, e.g. spam:PATH)")
    return msg.label
