"""``measure_influence``: one wrong label on a copy of a trained model, rescored probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig
from mailsift.training.corpus import CorpusError, Label, LabelledMessage, open_source
from mailsift.training.influence import InfluenceReport, measure_influence
from tests.corpora import SPAMASSASSIN, require

MAILSIFT = Path(sys.executable).parent / "mailsift"
N = 40  # messages; every 4th is spam


def message(i: int) -> LabelledMessage:
    label: Label = "spam" if i % 4 == 0 else "ham"
    if label == "spam":
        raw = (
            f"From: deals{i % 3}@pharm.example\r\nSubject: cheap pills {i}\r\n\r\n"
            f"Buy cheap pills now at http://pharm{i % 5}.example/ - offer {i}!\r\n"
        )
    else:
        raw = (
            f"From: colleague{i % 6}@work.example\r\nSubject: meeting notes {i}\r\n\r\n"
            f"Hi, the notes from meeting {i} are attached. See you at lunch on day {i % 7}.\r\n"
        )
    return LabelledMessage(label, raw.encode(), f"synthetic/{i}")


def measure(examples: int = 3) -> InfluenceReport:
    model = SpamModel(FeatureConfig(n_bits=16))
    stream = [message(i) for i in range(N)]
    return measure_influence(stream, train_frac=0.5, examples=examples, model=model)


def test_each_direction_mislabels_held_out_messages_of_its_class() -> None:
    report = measure()
    held = list(range(N // 2, N))
    assert report.trained == N // 2
    assert report.spam_probes == sum(1 for i in held if i % 4 == 0)
    assert report.ham_probes == len(held) - report.spam_probes
    assert [r.learned_as for r in report.ham_as_spam] == ["spam"] * 3
    assert [r.learned_as for r in report.spam_as_ham] == ["ham"] * 3
    # Spread evenly through the held-out part: first, middle, last of each class.
    assert [r.source for r in report.ham_as_spam] == [f"synthetic/{i}" for i in (21, 30, 39)]
    assert [r.source for r in report.spam_as_ham] == [f"synthetic/{i}" for i in (20, 28, 36)]


def test_figures_are_in_range_and_point_the_wrong_way() -> None:
    report = measure()
    for runs, probes in ((report.ham_as_spam, report.ham_probes), (report.spam_as_ham, 5)):
        for r in runs:
            assert 0.0 <= r.median_change <= r.p99_change <= r.max_change <= 1.0
            assert 0 <= r.flips <= probes - 1
            assert set(r.member_max) == {"words", "chars", "bayes", "raw", "combined"}
    # A ham learned as spam scores no less spammy afterwards, a spam learned as ham no more
    # (a confident score may not move in six decimals), and the others' log-odds did move.
    assert all(r.self_change >= 0 for r in report.ham_as_spam)
    assert all(r.self_change < 0 for r in report.spam_as_ham)
    assert all(r.member_max["combined"] > 0 for r in report.ham_as_spam + report.spam_as_ham)


def test_deterministic_and_json_ready() -> None:
    first, second = measure().as_dict(), measure().as_dict()
    assert first == second
    assert json.loads(json.dumps(first)) == first
    summary = first["summary"]
    assert set(summary) == {"ham_as_spam", "spam_as_ham"}
    assert summary["ham_as_spam"]["examples"] == 3
    assert summary["ham_as_spam"]["max_change"] == max(
        r["max_change"] for r in first["ham_as_spam"]
    )


def test_more_examples_than_probes_takes_each_once() -> None:
    report = measure(examples=100)
    assert len(report.spam_as_ham) == report.spam_probes
    assert len({r.source for r in report.ham_as_spam}) == report.ham_probes


def test_refuses_bad_arguments_and_one_class_held_out() -> None:
    stream = [message(i) for i in range(N)]
    with pytest.raises(ValueError, match="train_frac"):
        measure_influence(stream, train_frac=1.0)
    with pytest.raises(ValueError, match="examples"):
        measure_influence(stream, examples=0)
    hams = [m for m in stream if m.label == "ham"]
    with pytest.raises(CorpusError, match="one ham and one spam"):
        measure_influence(hams, model=SpamModel(FeatureConfig(n_bits=16)))


def test_command_prints_one_json_object(tmp_path: Path) -> None:
    index = tmp_path / "full" / "index"
    index.parent.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    lines = []
    for i in range(N):
        msg = message(i)
        (tmp_path / "data" / f"m{i}").write_bytes(msg.raw)
        lines.append(f"{msg.label} ../data/m{i}\n")
    index.write_text("".join(lines))
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [str(MAILSIFT), "influence", str(tmp_path), "--train-frac", "0.5", "--examples", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ham_as_spam" in done.stdout and "max_change" in done.stdout
    done = subprocess.run(
        [str(MAILSIFT), "influence", str(tmp_path), "--examples", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["trained"] == int(N * 0.8)
    assert len(report["ham_as_spam"]) == len(report["spam_as_ham"]) == 2


@pytest.mark.corpus
def test_one_ham_labelled_spam_moves_other_hams_a_bounded_way_on_the_developer_corpus() -> None:
    require(SPAMASSASSIN)
    report = measure_influence(open_source(str(SPAMASSASSIN)), examples=5)
    # Learned 4,836 messages: each linear member's step is capped at
    # max_step * (1 + step_warmup / 4,837).
    defaults = SpamModel()
    assert defaults.max_step is not None
    cap = defaults.max_step * (1 + defaults.step_warmup / (report.trained + 1))
    linear = ("words", "chars", "raw")
    for r in report.ham_as_spam:
        # At most the one borderline ham of the held-out 1,210 crosses 0.5 (none did
        # before the raw view, whose own capped step adds to the combined bound).
        assert r.flips <= 1
        assert r.max_change <= 0.4  # it was 0.98 or more before the cap
        assert max(r.member_max[m] for m in linear) <= cap + 1e-3
    for r in report.spam_as_ham:
        assert max(r.member_max[m] for m in linear) <= 1.5 * cap + 1e-3
