"""How far one learned message can move the model: the bound the docstrings promise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from mailsift.models.ensemble import Label, SpamModel
from mailsift.models.features import FeatureConfig, Features, extract
from mailsift.models.linear import OnlineLogistic
from mailsift.models.parse import parse_message
from mailsift.models.snapshot import load_snapshot, save_snapshot

CONFIG = FeatureConfig(n_bits=16)
BAYES_RANGE = math.log(0.99 / 0.01)  # one token's clipped log-odds; the ensemble's bayes input
FLOAT32_SLACK = 1e-4  # coef_ is float32: a realised change differs from the step by rounding


def feats(subject: str, sender: str, body: str) -> Features:
    raw = f"Subject: {subject}\r\nFrom: {sender}\r\n\r\n{body}\r\n".encode()
    return extract(parse_message(raw), CONFIG)


def ham(i: int) -> Features:
    return feats(
        f"Project notes {i}",
        f"colleague{i % 5}@work.example",
        f"Hi team, the minutes of meeting {i} are attached; lunch at noon on day {i % 7}.",
    )


def spam(i: int) -> Features:
    return feats(
        f"Cheap offer {i}",
        f"deals{i % 4}@pharm{i % 3}.example",
        f"Buy cheap pills now, {i}% off, no prescription, click http://pharm{i % 3}.example",
    )


STREAM: list[tuple[Features, Label]] = [
    pair for i in range(40) for pair in ((ham(i), "ham"), (spam(i), "spam"))
]
PROBES = [ham(i) for i in range(40, 60)] + [spam(i) for i in range(40, 60)]
WRONG: list[tuple[Features, Label]] = [(ham(60), "spam"), (spam(60), "ham")]  # wrong way round


def trained(**params: float | None) -> SpamModel:
    # No warm-up: the cap is max_step from the first message, as for a well trained model.
    model = SpamModel(CONFIG, **{"step_warmup": 0.0, **params})  # type: ignore[arg-type]
    for f, label in STREAM:
        model.learn(f, label)
    return model


def member_logits(model: SpamModel, fs: list[Features]) -> npt.NDArray[np.float64]:
    """Rows of (words, chars, bayes, combined) log-odds."""
    rows = []
    for f in fs:
        score = model.score(f)
        rows.append([*score.members.values(), score.logit])
    return np.array(rows)


# -- one linear member -------------------------------------------------------------------


def unit_message(
    rng: np.random.Generator, n: int, size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    idx = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    return idx, np.full(size, size**-0.5, dtype=np.float32)


def test_one_huge_step_is_cut_to_the_cap() -> None:
    rng = np.random.default_rng(7)
    idx, val = unit_message(rng, 4096, 400)
    capped = OnlineLogistic(n_features=4096, max_step=1.0, step_warmup=0.0)
    free = OnlineLogistic(n_features=4096, max_step=None)
    for model in (capped, free):
        model.learn_one(idx, val, 1, weight=4.0)
    assert np.linalg.norm(free.coef_) > 20  # what one fresh message could do before the cap
    assert 0.999 <= np.linalg.norm(capped.coef_) <= 1.0
    # The accumulator saw the whole gradient either way.
    assert np.array_equal(capped.grad_sq_, free.grad_sq_)


def test_no_message_moves_by_more_than_the_cap() -> None:
    rng = np.random.default_rng(11)
    model = OnlineLogistic(n_features=4096, max_step=2.0, step_warmup=50.0)
    messages = [unit_message(rng, 4096, int(rng.integers(5, 300))) for _ in range(200)]
    for i, (idx, val) in enumerate(messages[:150]):
        model.learn_one(idx, val, i % 2)
    for idx, val in messages[150:]:
        cap = model.step_cap(cap_scale=1.5)
        before = model.coef_.copy()
        model.learn_one(idx, val, 1 - int(model.decision_one(idx, val) > 0), 3.0, 1.5)
        assert np.linalg.norm(model.coef_ - before) <= cap + FLOAT32_SLACK
        for probe_idx, probe_val in messages:
            moved = (model.coef_ - before)[probe_idx] @ probe_val
            assert abs(moved) <= cap + FLOAT32_SLACK


@pytest.mark.parametrize(
    ("learned", "cap"), [(0, 3 * 4001), (999, 15.0), (3999, 6.0), (7999, 4.5), (19999, 3.6)]
)
def test_the_cap_loosens_only_while_the_model_is_young(learned: int, cap: float) -> None:
    model = OnlineLogistic()
    model.n_seen_ = learned
    assert model.step_cap() == pytest.approx(cap)
    assert model.step_cap(cap_scale=1.5) == pytest.approx(1.5 * cap)
    model.set_params(max_step=None)
    assert model.step_cap() == math.inf


# -- the ensemble ------------------------------------------------------------------------


@pytest.mark.parametrize(("f", "label"), WRONG)
def test_one_wrong_label_moves_every_member_of_every_other_message_within_the_bound(
    f: Features, label: Label
) -> None:
    model = trained()
    scale = 1.0 if label == "spam" else model.ham_cap_scale
    words_cap, chars_cap = model.words.step_cap(scale), model.chars.step_cap(scale)
    assert words_cap == pytest.approx(scale * SpamModel().max_step)  # no warm-up here
    calibration = model.calibration_.copy()
    before = member_logits(model, PROBES)
    model.learn(f, label)
    moved = np.abs(member_logits(model, PROBES) - before)
    assert moved[:, 0].max() <= words_cap + FLOAT32_SLACK
    assert moved[:, 1].max() <= chars_cap + FLOAT32_SLACK
    assert moved[:, 2].max() <= 2 * BAYES_RANGE
    # The combined log-odds: members through the new weights, plus the calibrator's step.
    c = np.abs(model.calibration_)
    l_norm = np.linalg.norm(np.column_stack([before[:, :3], np.ones(len(PROBES))]), axis=1)
    bound = c[0] * words_cap + c[1] * chars_cap + c[2] * 2 * BAYES_RANGE
    bound += np.linalg.norm(model.calibration_ - calibration) * l_norm
    assert np.linalg.norm(model.calibration_ - calibration) < model.calibration_rate
    assert np.all(moved[:, 3] <= bound + FLOAT32_SLACK)


def test_without_the_cap_the_same_label_moves_a_look_alike_much_further() -> None:
    f, label = WRONG[0]
    look_alike = ham(61)
    moves = {}
    for max_step in (3.0, None):
        model = trained(max_step=max_step)
        before = member_logits(model, [look_alike])
        moves[max_step] = np.abs(member_logits(model.learn(f, label), [look_alike]) - before)[0]
    assert moves[3.0][0] <= 3.0 + FLOAT32_SLACK
    assert moves[None][0] > 2 * 3.0


def test_the_bayes_input_stays_in_its_range() -> None:
    model = trained()
    for f in PROBES + [f for f, _ in STREAM]:
        assert abs(model.score(f).members["bayes"]) <= BAYES_RANGE + 1e-9


def test_the_bound_survives_a_snapshot(tmp_path: Path) -> None:
    model = trained(max_step=1.5, ham_cap_scale=2.0)
    save_snapshot(model, tmp_path / "model.snapshot")
    loaded, _ = load_snapshot(tmp_path / "model.snapshot", CONFIG)
    assert (loaded.max_step, loaded.step_warmup, loaded.ham_cap_scale) == (1.5, 0.0, 2.0)
    assert (loaded.words.max_step, loaded.chars.step_warmup) == (1.5, 0.0)
    assert loaded.words.step_cap() == model.words.step_cap()
