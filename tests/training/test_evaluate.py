"""Split mode learns its training part as a rebuild learns the training log."""

from __future__ import annotations

from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig
from mailsift.training.corpus import LabelledMessage
from mailsift.training.evaluate import evaluate


def msg(n: int, label: str, hop: str = "") -> LabelledMessage:
    received = f"Received: from relay{hop}.example by mx.example\r\n" if hop else ""
    raw = f"{received}Subject: note {n}\r\nFrom: a{n}@example.org\r\n\r\nbody {n} words".encode()
    return LabelledMessage(label, raw, f"m{n}")  # type: ignore[arg-type]


def test_split_learns_each_message_once_with_its_last_label() -> None:
    train = [
        msg(0, "ham"),
        msg(0, "ham", hop="2"),  # the same message by another relay: not a new example
        msg(1, "spam"),
        msg(1, "ham"),  # relabelled: learned once, as ham
        msg(2, "spam"),
    ]
    held_out = [msg(3, "ham"), msg(4, "spam")]
    model = SpamModel(FeatureConfig(n_bits=16))
    result = evaluate(train + held_out, mode="split", train_frac=5 / 7, model=model)
    assert (model.n_ham, model.n_spam) == (2, 1)
    assert result.summary["n"] == 2


def test_split_learns_in_the_order_of_the_entries_that_set_each_example() -> None:
    relabelled = [msg(0, "spam"), msg(1, "ham"), msg(0, "ham"), msg(2, "spam")]
    in_log_order = [msg(1, "ham"), msg(0, "ham"), msg(2, "spam")]
    held_out = [msg(3, "ham"), msg(4, "spam")]
    a, b = SpamModel(FeatureConfig(n_bits=16)), SpamModel(FeatureConfig(n_bits=16))
    first = evaluate(relabelled + held_out, mode="split", train_frac=4 / 6, model=a)
    second = evaluate(in_log_order + held_out, mode="split", train_frac=3 / 5, model=b)
    assert (a.calibration_ == b.calibration_).all()
    assert (a.words.coef_ == b.words.coef_).all()
    assert first.scores.tolist() == second.scores.tolist()
