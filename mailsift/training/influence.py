"""How far one wrongly labelled message moves a trained model's other scores.

An admin who labels one ordinary ham as spam (or lets one spam through as ham) teaches
the model one wrong example. This measures what that costs, on a real corpus:

1. learn the first ``train_frac`` of the stream in order, as a filter would have;
2. score the held-out messages (the *probes*);
3. for ``examples`` held-out messages of each class, chosen evenly through the stream,
   learn that one message with the wrong label on a copy of the model, and rescore the
   probes of its class: how far did the *other* probes' spam probability move, how many
   changed verdict, and how far did the mislabelled message itself move?

Nothing is random, so two runs on the same corpus give the same figures.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mailsift.models.ensemble import MEMBERS, Label, SpamModel
from mailsift.models.features import Features
from mailsift.models.parse import DEFAULT_LIMITS, ParseLimits, parse_message
from mailsift.training.corpus import CorpusError, LabelledMessage

__all__ = ["Influence", "InfluenceReport", "measure_influence", "mislabel_each"]

Progress = Callable[[int], None]
FloatArray = npt.NDArray[np.float64]
_WRONG: dict[Label, Label] = {"ham": "spam", "spam": "ham"}


@dataclass(frozen=True, slots=True)
class Influence:
    """What learning one held-out message with the wrong label did to its class's probes."""

    source: str
    learned_as: Label
    self_change: float
    """Change of the mislabelled message's own spam probability (signed)."""
    max_change: float
    """Largest change of any other probe's spam probability (absolute)."""
    median_change: float
    p99_change: float
    flips: int
    """Other probes whose verdict (probability >= threshold) changed."""
    member_max: dict[str, float]
    """Largest change of each member's log-odds, and of the combined log-odds, on the others."""


@dataclass(frozen=True, slots=True)
class InfluenceReport:
    trained: int
    ham_probes: int
    spam_probes: int
    ham_as_spam: list[Influence]
    """Held-out hams learned as spam; probes are the other held-out hams."""
    spam_as_ham: list[Influence]
    """Held-out spams learned as ham; probes are the other held-out spams."""

    def summary(self) -> dict[str, dict[str, float | int]]:
        """Worst and typical figures over the examples of each direction."""
        return {
            "ham_as_spam": _summarise(self.ham_as_spam),
            "spam_as_ham": _summarise(self.spam_as_ham),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "trained": self.trained,
            "ham_probes": self.ham_probes,
            "spam_probes": self.spam_probes,
            "summary": self.summary(),
            "ham_as_spam": [asdict(i) for i in self.ham_as_spam],
            "spam_as_ham": [asdict(i) for i in self.spam_as_ham],
        }


def measure_influence(
    messages: Iterable[LabelledMessage],
    *,
    train_frac: float = 0.8,
    examples: int = 20,
    threshold: float = 0.5,
    model: SpamModel | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> InfluenceReport:
    """Train on the head of the stream, then mislabel held-out messages one at a time.

    ``progress`` is called once per message read and once per mislabelled example.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be between 0 and 1")
    if examples < 1:
        raise ValueError("examples must be at least 1")
    model = model or SpamModel()
    stream = list(messages)
    n_train = int(len(stream) * train_frac)
    held: dict[Label, list[tuple[str, Features]]] = {"ham": [], "spam": []}
    for i, msg in enumerate(stream):
        label = _gold(msg)
        f = model.features(parse_message(msg.raw, limits))
        if i < n_train:
            model.learn(f, label)
        else:
            held[label].append((msg.source, f))
        if progress:
            progress(1)
    if not held["ham"] or not held["spam"]:
        raise CorpusError("the held-out part needs at least one ham and one spam")
    results = {
        label: mislabel_each(model, probes, _WRONG[label], examples, threshold, progress)
        for label, probes in held.items()
    }
    return InfluenceReport(
        trained=n_train,
        ham_probes=len(held["ham"]),
        spam_probes=len(held["spam"]),
        ham_as_spam=results["ham"],
        spam_as_ham=results["spam"],
    )


def mislabel_each(
    model: SpamModel,
    probes: list[tuple[str, Features]],
    learned_as: Label,
    examples: int,
    threshold: float = 0.5,
    progress: Progress | None = None,
) -> list[Influence]:
    """Learn ``examples`` of ``probes`` as ``learned_as``, each on its own copy of ``model``."""
    feats = [f for _, f in probes]
    before = _member_logits(model, feats)
    results = []
    for i in _evenly(len(probes), examples):
        source, f = probes[i]
        after = _member_logits(copy.deepcopy(model).learn(f, learned_as), feats)
        results.append(_influence(source, learned_as, i, before, after, threshold))
        if progress:
            progress(1)
    return results


def _gold(msg: LabelledMessage) -> Label:
    if msg.label is None:
        raise CorpusError(f"{msg.source}: no label (give one, e.g. spam:PATH)")
    return msg.label


def _evenly(n: int, k: int) -> list[int]:
    """``k`` distinct positions spread evenly over ``range(n)`` (all of them if k >= n)."""
    positions: list[int] = np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()
    return sorted(set(positions))


def _member_logits(model: SpamModel, feats: list[Features]) -> FloatArray:
    """One row per message: each member's log-odds, then the combined log-odds."""
    rows = []
    for f in feats:
        score = model.score(f)
        rows.append([score.members[m] for m in model.members] + [score.logit])
    return np.array(rows, dtype=np.float64).reshape(len(feats), len(model.members) + 1)


def _probability(logits: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logits, -35.0, 35.0))), dtype=np.float64)


def _influence(
    source: str,
    learned_as: Label,
    position: int,
    before: FloatArray,
    after: FloatArray,
    threshold: float,
) -> Influence:
    p_before = _probability(before[:, -1])
    p_after = _probability(after[:, -1])
    others = np.arange(p_before.size) != position
    change = np.abs(p_after - p_before)[others]
    flipped = (p_before >= threshold) != (p_after >= threshold)
    logit_change = np.abs(after - before)[others]
    names = [*MEMBERS[: before.shape[1] - 1], "combined"]  # a model's members lead MEMBERS
    member_max = {
        name: round(float(logit_change[:, j].max(initial=0.0)), 4) for j, name in enumerate(names)
    }
    return Influence(
        source=source,
        learned_as=learned_as,
        self_change=round(float(p_after[position] - p_before[position]), 6),
        max_change=round(float(change.max(initial=0.0)), 6),
        median_change=round(float(np.median(change)) if change.size else 0.0, 6),
        p99_change=round(float(np.percentile(change, 99)) if change.size else 0.0, 6),
        flips=int(flipped[others].sum()),
        member_max=member_max,
    )


def _summarise(runs: list[Influence]) -> dict[str, float | int]:
    if not runs:
        return {}
    worst = np.array([r.max_change for r in runs])
    return {
        "examples": len(runs),
        "max_change": float(worst.max()),
        "median_of_max_change": round(float(np.median(worst)), 4),
        "max_p99_change": max(r.p99_change for r in runs),
        "flips": sum(r.flips for r in runs),
        "examples_with_flips": sum(1 for r in runs if r.flips),
        "max_abs_self_change": max(abs(r.self_change) for r in runs),
        **{
            f"max_{name}_logodds": max(r.member_max[name] for r in runs)
            for name in runs[0].member_max
        },
    }
