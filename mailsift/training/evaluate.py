"""Accuracy evaluation on a labelled corpus, by the TREC spam-track protocols.

* ``online`` — immediate feedback: from an empty model, each message in order is first
  scored, then learned with its gold label. This is how a filter lives in production.
* ``split``  — learn the first ``train_frac`` of the stream in order, score the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mailsift.models.ensemble import SpamModel
from mailsift.models.parse import DEFAULT_LIMITS, ParseLimits, parse_message
from mailsift.training.corpus import CorpusError, LabelledMessage
from mailsift.training.metrics import summary

__all__ = ["EvalResult", "Mode", "evaluate"]

Mode = Literal["online", "split"]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class EvalResult:
    is_spam: np.ndarray
    scores: np.ndarray
    seconds: float
    summary: dict[str, float | int]


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
        for i, msg in enumerate(stream):
            label = _gold(msg)
            f = model.features(parse_message(msg.raw, limits))
            if i < n_train:
                model.learn(f, label)
            else:
                scores.append(model.score(f).probability)
                labels.append(label == "spam")
            if progress:
                progress(1)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    seconds = time.perf_counter() - start
    if not labels:
        raise CorpusError("the corpus gave no messages to score")
    is_spam = np.array(labels)
    values = np.array(scores)
    return EvalResult(is_spam, values, seconds, summary(is_spam, values, threshold, seconds))


def _gold(msg: LabelledMessage) -> Literal["ham", "spam"]:
    if msg.label is None:
        raise CorpusError(f"{msg.source}: no label (give one, e.g. spam:PATH)")
    return msg.label
