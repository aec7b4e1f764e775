"""The installed ``mailsift`` command, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsift.models.snapshot import load_snapshot

MAILSIFT = Path(sys.executable).parent / "mailsift"
# The folder reader yields ham/ before spam/; more ham than spam keeps both classes in
# the second half of the stream, so every measure in the summary is defined.
N_HAM, N_SPAM = 12, 8
SUMMARY_KEYS = {
    "n",
    "ham",
    "spam",
    "one_minus_roca_pct",
    "hm_pct",
    "sm_pct",
    "lam_pct",
    "second_half_one_minus_roca_pct",
    "seconds",
    "msgs_per_s",
}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def mailsift(*args: str | Path) -> Run:
    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"}  # no wrapping of long paths
    done = subprocess.run(
        [str(MAILSIFT), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    return Run(done.returncode, done.stdout, done.stderr)


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(N_HAM):
        path = root / "ham" / f"{i:02d}.eml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(
            f"From: colleague{i}@work.example\r\nSubject: meeting notes {i}\r\n\r\n"
            f"Hi, the notes from meeting {i} are attached. See you at lunch.\r\n".encode()
        )
    for i in range(N_SPAM):
        path = root / "spam" / f"{i:02d}.eml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(
            f"From: deals{i}@pharm.example\r\nSubject: cheap pills {i}\r\n\r\n"
            f"Buy cheap pills now at http://pharm{i}.example/ - offer {i}!\r\n".encode()
        )
    return root


def test_train_writes_a_snapshot_and_continues_it(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.snapshot"
    first = mailsift("train", corpus, "--model", model)
    assert first.code == 0, first.err
    assert f"learned {N_HAM + N_SPAM} messages" in first.out
    assert f"ham {N_HAM}, spam {N_SPAM}" in first.out
    assert str(model) in first.out
    _, info = load_snapshot(model)
    assert (info.ham, info.spam) == (N_HAM, N_SPAM)

    again = mailsift("train", corpus, "--model", model)
    assert again.code == 0, again.err
    assert f"ham {2 * N_HAM}, spam {2 * N_SPAM}" in again.out
    _, info = load_snapshot(model)
    assert (info.ham, info.spam) == (2 * N_HAM, 2 * N_SPAM)
    _, prev = load_snapshot(model.with_name(model.name + ".prev"))
    assert (prev.ham, prev.spam) == (N_HAM, N_SPAM)


def test_train_with_a_labelled_prefix(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.snapshot"
    done = mailsift("train", f"spam:{corpus / 'spam' / '00.eml'}", "--model", model)
    assert done.code == 0, done.err
    assert "ham 0, spam 1" in done.out


@dataclass(frozen=True)
class EvalOutputs:
    run: Run
    scores: Path
    plot: Path


@pytest.fixture(scope="module")
def evaluated(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> EvalOutputs:
    out = tmp_path_factory.mktemp("eval")
    scores, plot = out / "scores.txt", out / "roc.png"
    run = mailsift("eval", corpus, "--json", "--scores", scores, "--plot", plot)
    assert run.code == 0, run.err
    return EvalOutputs(run, scores, plot)


def test_eval_json_is_one_object_with_the_summary(evaluated: EvalOutputs) -> None:
    lines = evaluated.run.out.splitlines()
    assert len(lines) == 1
    summary = strict_json(lines[0])
    assert isinstance(summary, dict)
    assert set(summary) == SUMMARY_KEYS
    assert (summary["n"], summary["ham"], summary["spam"]) == (N_HAM + N_SPAM, N_HAM, N_SPAM)
    for key in SUMMARY_KEYS - {"n", "ham", "spam"}:
        assert isinstance(summary[key], float | int)
        assert summary[key] >= 0


def test_eval_scores_file_has_one_line_per_message(evaluated: EvalOutputs) -> None:
    lines = evaluated.scores.read_text().splitlines()
    assert len(lines) == N_HAM + N_SPAM
    labels = []
    for line in lines:
        label, value = line.split(" ")
        assert 0.0 <= float(value) <= 1.0
        labels.append(label)
    assert labels == ["ham"] * N_HAM + ["spam"] * N_SPAM  # the corpus order
    assert float(lines[0].split()[1]) == 0.5  # scored before anything was learned


def test_eval_plot_is_a_png(evaluated: EvalOutputs) -> None:
    assert evaluated.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_text_output(corpus: Path) -> None:
    done = mailsift("eval", corpus, "--mode", "split", "--train-frac", "0.5")
    assert done.code == 0, done.err
    keys = [line.split()[0] for line in done.out.splitlines()]
    assert set(keys) == SUMMARY_KEYS
    assert f"n {(N_HAM + N_SPAM) // 2}" in " ".join(done.out.split())


@pytest.mark.parametrize("command", ["train", "eval"])
def test_missing_corpus_exits_2_without_a_traceback(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    model: list[str | Path] = ["--model", tmp_path / "m.snapshot"] if command == "train" else []
    done = mailsift(command, missing, *model)
    assert done.code == 2
    assert "error" in done.err
    assert str(missing) in done.err
    assert "Traceback" not in done.err + done.out
    assert not (tmp_path / "m.snapshot").exists()


def test_unknown_eval_mode_exits_2(corpus: Path) -> None:
    done = mailsift("eval", corpus, "--mode", "sideways")
    assert done.code == 2
    assert "online or split" in done.err
    assert "Traceback" not in done.err
