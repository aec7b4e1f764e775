from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import rankdata

from mailsift.training.metrics import (
    lam_pct,
    misclassification_pct,
    one_minus_roca_pct,
    plot_roc,
    roc_curve,
    summary,
    undefined,
)
from mailsift.training.outputs import OutputError, check_outputs, write_atomically

LABELS = [False, False, True, True]


def test_one_minus_roca_hand_cases() -> None:
    assert one_minus_roca_pct(LABELS, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert one_minus_roca_pct(LABELS, [0.9, 0.8, 0.2, 0.1]) == 100.0
    assert one_minus_roca_pct(LABELS, [0.5, 0.5, 0.5, 0.5]) == 50.0
    # 4 ham/spam pairs: one inverted (0.6 > 0.4), one tied (0.6 == 0.6) -> 1.5 / 4 wrong.
    assert one_minus_roca_pct(LABELS, [0.1, 0.6, 0.4, 0.6]) == pytest.approx(37.5)


def test_one_minus_roca_needs_both_classes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning either: sklearn is not asked
        assert math.isnan(one_minus_roca_pct([True, True], [0.1, 0.2]))
        assert math.isnan(one_minus_roca_pct([False], [0.1]))
        assert math.isnan(one_minus_roca_pct([], []))


def _rank_sum_one_minus_roca(
    is_spam: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]
) -> float:
    """The Mann-Whitney form of the AUC, an independent reference for sklearn's."""
    n_spam = int(is_spam.sum())
    n_ham = is_spam.size - n_spam
    u = float(rankdata(scores)[is_spam].sum()) - n_spam * (n_spam + 1) / 2
    return 100.0 * (1.0 - u / (n_spam * n_ham))


def test_one_minus_roca_matches_the_rank_sum_form_with_ties() -> None:
    rng = np.random.default_rng(7)
    is_spam = rng.random(2000) < 0.3
    scores = rng.integers(0, 20, size=2000) + 3 * is_spam  # many ties, imperfect separation
    expected = _rank_sum_one_minus_roca(is_spam, scores.astype(np.float64))
    assert one_minus_roca_pct(is_spam, scores) == pytest.approx(expected, abs=1e-9)


def test_shape_mismatch_and_nan_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal length"):
        one_minus_roca_pct([True, False], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        one_minus_roca_pct([True, False], [0.1, math.nan])


def test_misclassification_pct_threshold_is_inclusive_for_spam() -> None:
    # ham at 0.5 counts as misclassified (>= threshold); spam at 0.5 counts as caught.
    labels = [False, False, False, False, True, True]
    scores = [0.1, 0.2, 0.5, 0.9, 0.5, 0.3]
    assert misclassification_pct(labels, scores, 0.5) == (50.0, 50.0)
    assert misclassification_pct(labels, scores, 0.0) == (100.0, 0.0)


def test_lam_of_equal_rates_is_that_rate() -> None:
    labels = [False] * 10 + [True] * 10
    scores = [0.9] * 2 + [0.1] * 8 + [0.1] * 2 + [0.9] * 8  # hm = sm = 20 %
    assert lam_pct(labels, scores, 0.5) == pytest.approx(20.0)


def test_lam_is_logit_mean_of_rates() -> None:
    labels = [False] * 10 + [True] * 4
    scores = [0.9] + [0.1] * 9 + [0.1] * 2 + [0.9] * 2  # hm = 0.1, sm = 0.5
    mean_logit = (math.log(0.1 / 0.9) + 0.0) / 2
    assert lam_pct(labels, scores, 0.5) == pytest.approx(100 / (1 + math.exp(-mean_logit)))


def test_lam_stays_finite_for_perfect_and_total_failure() -> None:
    # hm = 0 -> 0.5 / 5, sm = 1 -> 2.5 / 3
    labels = [False] * 4 + [True] * 2
    scores = [0.1] * 4 + [0.1] * 2
    hm, sm = 0.5 / 5, 2.5 / 3
    mean_logit = (math.log(hm / (1 - hm)) + math.log(sm / (1 - sm))) / 2
    assert lam_pct(labels, scores, 0.5) == pytest.approx(100 / (1 + math.exp(-mean_logit)))
    assert 0 < lam_pct(LABELS, [0.1, 0.2, 0.8, 0.9], 0.5) < 50


def test_roc_curve_groups_ties() -> None:
    curve = roc_curve([False, True, False, True], [0.2, 0.9, 0.5, 0.5])
    np.testing.assert_allclose(curve.fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve.tpr, [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="one ham and one spam"):
        roc_curve([True], [0.5])


def test_roc_curve_keeps_a_point_for_every_distinct_score() -> None:
    # The middle points are collinear: sklearn's default would drop them, the plot keeps them.
    curve = roc_curve([True, True, True, False], [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(curve.tpr, [0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(curve.fpr, [0.0, 0.0, 0.0, 0.0, 1.0])
    assert curve.fpr.dtype == curve.tpr.dtype == np.float64


def test_roc_curve_area_matches_one_minus_roca() -> None:
    rng = np.random.default_rng(3)
    is_spam = rng.random(500) < 0.4
    scores = rng.integers(0, 10, size=500) + 2 * is_spam
    curve = roc_curve(is_spam, scores)
    area = float(np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1]) / 2))
    assert 100 * (1 - area) == pytest.approx(one_minus_roca_pct(is_spam, scores))


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "roc.png"
    plot_roc(LABELS * 5, [0.1, 0.0, 0.7, 0.9] * 5, path, title="test")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_summary_keys_and_values() -> None:
    # Only the second half is ordered right: 3 of 4 ham/spam pairs wrong overall.
    labels = [False, True, False, True]
    scores = [0.9, 0.1, 0.2, 0.8]
    result = summary(labels, scores, threshold=0.5, seconds=2.0)
    assert result == {
        "n": 4,
        "ham": 2,
        "spam": 2,
        "one_minus_roca_pct": 75.0,
        "hm_pct": 50.0,
        "sm_pct": 50.0,
        "lam_pct": 50.0,
        "second_half_one_minus_roca_pct": 0.0,
        "seconds": 2.0,
        "msgs_per_s": 2.0,
    }


def test_summary_rounds() -> None:
    labels = [False, False, False, True, True, True]
    result = summary(labels, [0.1, 0.6, 0.2, 0.3, 0.9, 0.8], threshold=0.5, seconds=3.0)
    assert result["hm_pct"] == 33.3333
    assert result["sm_pct"] == 33.3333
    assert result["one_minus_roca_pct"] == 11.1111
    assert result["msgs_per_s"] == 2.0


def test_summary_of_one_class_gives_its_own_rate_and_says_why_the_rest_is_missing() -> None:
    spam = summary([True] * 4, [0.9, 0.8, 0.2, 0.7], threshold=0.5, seconds=1.0)
    assert spam["spam_caught_pct"] == 75.0 and spam["sm_pct"] == 25.0
    assert "ham_kept_pct" not in spam
    nan = {k for k, v in spam.items() if isinstance(v, float) and math.isnan(v)}
    assert nan == {"one_minus_roca_pct", "hm_pct", "lam_pct", "second_half_one_minus_roca_pct"}
    assert set(undefined([True] * 4)) == nan
    ham = summary([False] * 2, [0.9, 0.1], threshold=0.5, seconds=1.0)
    assert ham["ham_kept_pct"] == 50.0 and "spam_caught_pct" not in ham
    assert undefined([False] * 2, " (here)")["sm_pct"] == (
        "no spam to misclassify; all 2 messages scored are ham (here)"
    )


def test_undefined_names_a_second_half_of_one_class() -> None:
    reasons = undefined([False, True, True, True])
    assert reasons == {
        "second_half_one_minus_roca_pct": "ROC needs both ham and spam; the second half of "
        "the messages scored (2) is all spam"
    }
    assert undefined(LABELS * 2) == {}


def test_outputs_are_checked_and_written_whole(tmp_path: Path) -> None:
    check_outputs({"--scores": tmp_path / "s.txt", "--plot": None})
    with pytest.raises(OutputError, match=r"^--plot .*: directory .*missing does not exist$"):
        check_outputs({"--plot": tmp_path / "missing" / "x.png"})
    with pytest.raises(OutputError, match="name the same file"):
        check_outputs({"--scores": tmp_path / "a", "--plot": tmp_path / "." / "a"})

    def fail(fh: BinaryIO) -> None:
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    target = write_text(tmp_path / "kept.txt", "before\n")
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, fail)
    assert target.read_text() == "before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
