"""Evaluation measures of the TREC spam track, so results compare with published filters.

Scores are spam probabilities or any score that grows with spamminess; ``is_spam`` is True
for spam. Percentages are 0-100. The ROC curve and its area come from ``sklearn.metrics``;
this module adds the TREC conventions around them (1-ROCA as a percentage, NaN when a
class is empty, LAM, the log-axis plot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn import metrics as skm

from mailsift.training.outputs import write_atomically

Labels = Sequence[bool] | npt.NDArray[Any]
Scores = Sequence[float] | npt.NDArray[Any]


def _arrays(
    is_spam: Labels, scores: Scores
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    labels = np.asarray(is_spam, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != values.shape:
        raise ValueError(
            f"is_spam and scores must be 1-D of equal length, got {labels.shape} and {values.shape}"
        )
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    return labels, values


def one_minus_roca_pct(is_spam: Labels, scores: Scores) -> float:
    """100 * (1 - area under the ROC curve); ties count half. NaN when a class is empty.

    >>> one_minus_roca_pct([False, False, True, True], [0.1, 0.6, 0.4, 0.6])
    37.5
    """
    labels, values = _arrays(is_spam, scores)
    if not _both_classes(labels):
        return math.nan
    # A tie between a ham and a spam is a diagonal step of the curve: it counts half.
    return 100.0 * (1.0 - float(skm.roc_auc_score(labels, values)))


def _both_classes(labels: npt.NDArray[np.bool_]) -> bool:
    return bool(labels.any()) and not bool(labels.all())


def _error_counts(is_spam: Labels, scores: Scores, threshold: float) -> tuple[int, int, int, int]:
    """(ham misclassified, n ham, spam misclassified, n spam)."""
    labels, values = _arrays(is_spam, scores)
    flagged = values >= threshold
    return (
        int((flagged & ~labels).sum()),
        int((~labels).sum()),
        int((~flagged & labels).sum()),
        int(labels.sum()),
    )


def _pct(count: int, n: int) -> float:
    return 100.0 * count / n if n else math.nan


def misclassification_pct(is_spam: Labels, scores: Scores, threshold: float) -> tuple[float, float]:
    """(hm%, sm%): ham scored >= threshold and spam scored < threshold, per class."""
    hm, n_ham, sm, n_spam = _error_counts(is_spam, scores, threshold)
    return _pct(hm, n_ham), _pct(sm, n_spam)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _finite_rate(count: int, n: int) -> float:
    # A rate of exactly 0 or 1 has an infinite logit; (count + 0.5) / (n + 1) nudges it
    # inside (0, 1) so one perfect class does not make the whole LAM 0 or 100.
    return (count + 0.5) / (n + 1) if count in (0, n) else count / n


def lam_pct(is_spam: Labels, scores: Scores, threshold: float) -> float:
    """Logistic average misclassification: logit^-1 of the mean logit of hm and sm, in %.

    A rate of exactly 0 or 1 is replaced by (count + 0.5) / (n + 1) to keep it finite.
    NaN when a class is empty.
    """
    hm, n_ham, sm, n_spam = _error_counts(is_spam, scores, threshold)
    if n_ham == 0 or n_spam == 0:
        return math.nan
    mean_logit = (_logit(_finite_rate(hm, n_ham)) + _logit(_finite_rate(sm, n_spam))) / 2
    return 100.0 / (1.0 + math.exp(-mean_logit))


@dataclass(frozen=True)
class RocCurve:
    """False and true positive rates (fractions), one point per distinct score, from (0, 0)."""

    fpr: npt.NDArray[np.float64]
    tpr: npt.NDArray[np.float64]


def roc_curve(is_spam: Labels, scores: Scores) -> RocCurve:
    """ROC points for thresholds at each distinct score, highest first; needs both classes."""
    labels, values = _arrays(is_spam, scores)
    if not _both_classes(labels):
        raise ValueError("roc_curve needs at least one ham and one spam")
    # Keep every distinct score (sklearn drops collinear points by default); sklearn's
    # first point is (0, 0), for a threshold above every score.
    fpr, tpr, _ = skm.roc_curve(labels, values, drop_intermediate=False)
    return RocCurve(fpr=np.asarray(fpr, dtype=np.float64), tpr=np.asarray(tpr, dtype=np.float64))


def plot_roc(is_spam: Labels, scores: Scores, path: Path, title: str = "") -> None:
    """Write the ROC curve as a PNG, ham misclassification % on a log axis as TREC plots it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels, _ = _arrays(is_spam, scores)
    curve = roc_curve(is_spam, scores)
    n_ham = int((~labels).sum())
    fpr_pct = 100.0 * np.maximum(curve.fpr, 1.0 / (2 * n_ham))  # log axis cannot show 0
    area = one_minus_roca_pct(is_spam, scores)

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.plot(fpr_pct, 100.0 * curve.tpr, drawstyle="steps-post", label=f"1-ROCA% = {area:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(fpr_pct[0], 100.0)
    ax.set_ylim(0.0, 100.5)
    ax.set_xlabel("ham misclassification (false positive rate, %)")
    ax.set_ylabel("spam caught (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    write_atomically(path, lambda fh: fig.savefig(fh, format="png", dpi=100))


def summary(
    is_spam: Labels, scores: Scores, threshold: float, seconds: float
) -> dict[str, float | int]:
    """All headline measures for one run; the second half shows the filter after learning."""
    labels, values = _arrays(is_spam, scores)
    n = int(labels.size)
    half = n // 2
    hm_pct, sm_pct = misclassification_pct(labels, values, threshold)
    result: dict[str, float | int] = {
        "n": n,
        "ham": n - int(labels.sum()),
        "spam": int(labels.sum()),
        "one_minus_roca_pct": round(one_minus_roca_pct(labels, values), 4),
        "hm_pct": round(hm_pct, 4),
        "sm_pct": round(sm_pct, 4),
    }
    # One class alone has no ROC curve and no LAM: what its own rate says applies.
    match only_class(labels):
        case "spam":
            result["spam_caught_pct"] = round(100.0 - sm_pct, 4)
        case "ham":
            result["ham_kept_pct"] = round(100.0 - hm_pct, 4)
    result |= {
        "lam_pct": round(lam_pct(labels, values, threshold), 4),
        "second_half_one_minus_roca_pct": round(
            one_minus_roca_pct(labels[half:], values[half:]), 4
        ),
        "seconds": round(seconds, 2),
        "msgs_per_s": round(n / seconds, 2) if seconds > 0 else math.nan,
    }
    return result


def only_class(is_spam: Labels) -> str | None:
    """``"spam"`` or ``"ham"`` when every message is of that class; None for both (or none)."""
    labels = np.asarray(is_spam, dtype=bool)
    if labels.size == 0 or _both_classes(labels):
        return None
    return "spam" if bool(labels.all()) else "ham"


def undefined(is_spam: Labels, context: str = "") -> dict[str, str]:
    """Why each measure :func:`summary` cannot give (NaN) is undefined, by key.

    ``context`` ends every reason (e.g. which part of the stream was scored).

    >>> undefined([True, True])["one_minus_roca_pct"]
    'ROC needs both ham and spam; all 2 messages scored are spam'
    """
    labels = np.asarray(is_spam, dtype=bool)
    reasons: dict[str, str] = {}
    only = only_class(labels)
    if only is not None:
        every = f"all {labels.size} messages scored are {only}{context}"
        missing = "hm_pct" if only == "spam" else "sm_pct"
        reasons["one_minus_roca_pct"] = f"ROC needs both ham and spam; {every}"
        reasons[missing] = f"no {'ham' if only == 'spam' else 'spam'} to misclassify; {every}"
        reasons["lam_pct"] = f"LAM needs both ham and spam; {every}"
        reasons["second_half_one_minus_roca_pct"] = f"ROC needs both ham and spam; {every}"
        return reasons
    second = labels[labels.size // 2 :]
    second_only = only_class(second)
    if second_only is not None:
        reasons["second_half_one_minus_roca_pct"] = (
            f"ROC needs both ham and spam; the second half of the messages scored "
            f"({second.size}) is all {second_only}{context}"
        )
    return reasons
