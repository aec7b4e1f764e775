"""The installed ``mailsift`` command, run as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsift.models.snapshot import load_snapshot
from tests.corpora import SPAMASSASSIN, require

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


def mailsift(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    # No wrapping of long paths.
    full_env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", **(env or {})}
    done = subprocess.run(
        [str(MAILSIFT), *map(str, args)], capture_output=True, text=True, env=full_env, timeout=120
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


# -- the same message counts once in a run, as on the log -----------------------------------

N = N_HAM + N_SPAM


def test_train_into_a_snapshot_learns_a_repeated_message_once(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.snapshot"
    done = mailsift("train", corpus, corpus, "--model", model)
    assert done.code == 0, done.err
    assert done.out.splitlines()[0].startswith(
        f"learned {N} messages -> {model} (ham {N_HAM}, spam {N_SPAM}, "
    )
    assert done.out.splitlines()[1] == (
        f"read {2 * N} messages, {N} distinct: skipped {N} repeats of a message earlier in "
        f"this run ({N} with the same label, 0 with the other label)"
    )
    _, info = load_snapshot(model)
    assert (info.ham, info.spam) == (N_HAM, N_SPAM)


def test_train_onto_the_log_counts_a_repeated_message_once(corpus: Path, tmp_path: Path) -> None:
    env = {"MAILSIFT_DATA_DIR": str(tmp_path / "data")}
    done = mailsift("train", corpus, corpus, "--no-rebuild", env=env)
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        f"appended {N} examples to the training log ({N} new, 0 relabelled); 0 already there "
        f"with the same label, 0 kept by a label of higher rank; log head {N}",
        f"read {2 * N} messages, {N} distinct: skipped {N} repeats of a message earlier in "
        f"this run ({N} with the same label, 0 with the other label)",
    ]
    again = mailsift("train", corpus, "--no-rebuild", env=env)
    assert again.code == 0, again.err
    assert again.out.splitlines() == [
        f"appended 0 examples to the training log (0 new, 0 relabelled); {N} already there "
        f"with the same label, 0 kept by a label of higher rank; log head {N}"
    ]
    rebuilt = mailsift("rebuild", "--json", env=env)
    assert rebuilt.code == 0, rebuilt.err
    assert strict_json(rebuilt.out.splitlines()[-1])["examples"] == N  # type: ignore[index]


def test_train_keeps_the_first_label_of_a_message_given_both(corpus: Path, tmp_path: Path) -> None:
    both = tmp_path / "both"
    (both / "ham").mkdir(parents=True)
    (both / "spam").mkdir()
    raw = (corpus / "ham" / "03.eml").read_bytes()
    (both / "ham" / "a.eml").write_bytes(raw)
    (both / "spam" / "b.eml").write_bytes(raw.replace(b"\r\n", b"\n"))  # another copy
    env = {"MAILSIFT_DATA_DIR": str(tmp_path / "data")}
    done = mailsift("train", both, "--no-rebuild", env=env)
    assert done.code == 0, done.err
    assert "appended 1 examples to the training log (1 new, 0 relabelled)" in done.out
    assert "skipped 1 repeats of a message earlier in this run (0 with the same label, 1 " in (
        done.out
    )
    assert done.err.strip() == (
        "warning: messages given both labels in this run: the first label given stands, "
        f"1 later copies with the other one were skipped: {both / 'spam' / 'b.eml'} "
        "(given ham earlier in this run)"
    )


@pytest.mark.corpus
def test_train_the_spamassassin_corpus_and_one_of_its_own_folders(tmp_path: Path) -> None:
    """A real overlap: the TREC corpus, then its spam-1 folder (a plain folder of files)."""
    require(SPAMASSASSIN)
    model = tmp_path / "model.snapshot"
    done = mailsift("train", SPAMASSASSIN, f"spam:{SPAMASSASSIN / 'data/spam-1'}", "--model", model)
    assert done.code == 0, done.err
    first, repeats = done.out.splitlines()
    found = re.fullmatch(
        r"read 6546 messages, (\d+) distinct: skipped (\d+) repeats of a message earlier in "
        r"this run \((\d+) with the same label, 0 with the other label\)",
        repeats,
    )
    assert found is not None, repeats
    distinct, skipped, same = map(int, found.groups())
    assert distinct + skipped == 6546 and same == skipped >= 500  # all of spam-1 again
    assert first.startswith(f"learned {distinct} messages -> {model}")
    _, info = load_snapshot(model)
    assert info.ham + info.spam == distinct


def test_train_takes_a_plain_folder_of_message_files(corpus: Path, tmp_path: Path) -> None:
    plain = tmp_path / "exported"
    plain.mkdir()
    for f in (corpus / "spam").iterdir():
        (plain / f"{f.stem}.eml").write_bytes(f.read_bytes())
    (plain / ".index.sqlite").write_bytes(b"a mail client's own file: skipped")
    model = tmp_path / "model.snapshot"
    done = mailsift("train", f"spam:{plain}", "--model", model)
    assert done.code == 0, done.err
    assert f"learned {N_SPAM} messages" in done.out and f"ham 0, spam {N_SPAM}" in done.out
    # Without a label there is nothing to learn: a clear error, not a guess.
    unlabelled = mailsift("train", plain, "--model", tmp_path / "other.snapshot")
    assert unlabelled.code == 2 and "no label (prefix the source with spam: or ham:)" in (
        unlabelled.err
    )


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


def test_eval_names_what_it_wrote_on_stderr(evaluated: EvalOutputs) -> None:
    lines = evaluated.run.err.splitlines()
    assert f"wrote --scores {evaluated.scores} ({N_HAM + N_SPAM} lines)" in lines
    assert f"wrote --plot {evaluated.plot} (ROC curve, PNG)" in lines
    assert "wrote" not in evaluated.run.out  # stdout is the JSON alone
    # Written beside their names and renamed: no temporary file is left behind.
    assert sorted(p.name for p in evaluated.scores.parent.iterdir()) == ["roc.png", "scores.txt"]


def one_error_line(done: Run) -> str:
    """The single line a refused command prints (progress bars aside)."""
    assert done.code == 2, (done.out, done.err)
    assert done.out == ""
    assert "Traceback" not in done.err
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("option", ["--plot", "--scores"])
def test_eval_refuses_an_output_it_cannot_write_before_the_run(option: str, tmp_path: Path) -> None:
    # An unlabelled message would fail the run at once: the error shows the check came first.
    unlabelled = tmp_path / "one.eml"
    unlabelled.write_bytes(b"Subject: hi\r\n\r\nno label\r\n")
    missing = tmp_path / "no-such-dir" / "out.png"
    line = one_error_line(mailsift("eval", unlabelled, option, missing))
    assert line == f"error: {option} {missing}: directory {missing.parent} does not exist"

    line = one_error_line(mailsift("eval", unlabelled, option, tmp_path))
    assert line.startswith(f"error: {option} {tmp_path}: is a directory")
    not_a_dir = unlabelled / "out.png"
    line = one_error_line(mailsift("eval", unlabelled, option, not_a_dir))
    assert line == f"error: {option} {not_a_dir}: {unlabelled} is not a directory"


def test_eval_refuses_one_file_for_two_outputs(corpus: Path, tmp_path: Path) -> None:
    same = tmp_path / "out"
    line = one_error_line(mailsift("eval", corpus, "--scores", same, "--plot", same))
    assert line == f"error: --scores and --plot name the same file {same}"
    assert not same.exists()


def test_train_refuses_a_model_path_it_cannot_write_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "m.snapshot"
    line = one_error_line(mailsift("train", tmp_path / "no-corpus", "--model", missing))
    assert line == f"error: --model {missing}: directory {missing.parent} does not exist"


def test_train_refuses_a_model_file_that_is_not_a_snapshot(corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not a model\n")
    line = one_error_line(mailsift("train", corpus, "--model", other))
    assert line.startswith(f"error: {other}: not a mailsift snapshot")
    assert other.read_text() == "not a model\n"


# -- one class only: no ROC, but what applies ----------------------------------------------


def test_eval_of_spam_only_reports_spam_caught_and_why_roc_is_missing(corpus: Path) -> None:
    done = mailsift("eval", f"spam:{corpus / 'spam'}")
    assert done.code == 0, done.err
    rows = dict(line.split(maxsplit=1) for line in done.out.splitlines())
    every = f"all {N_SPAM} messages scored are spam"
    assert rows["one_minus_roca_pct"] == f"n/a: ROC needs both ham and spam; {every}"
    assert rows["lam_pct"] == f"n/a: LAM needs both ham and spam; {every}"
    assert rows["hm_pct"] == f"n/a: no ham to misclassify; {every}"
    assert float(rows["spam_caught_pct"]) == 100.0 - float(rows["sm_pct"])
    assert (rows["ham"], rows["spam"]) == ("0", str(N_SPAM))
    assert "None" not in done.out and "nan" not in done.out.lower()

    as_json = mailsift("eval", f"spam:{corpus / 'spam'}", "--json")
    assert as_json.code == 0, as_json.err
    summary = strict_json(as_json.out)
    assert isinstance(summary, dict)
    assert summary["one_minus_roca_pct"] is None and summary["lam_pct"] is None
    assert summary["spam_caught_pct"] == float(rows["spam_caught_pct"])
    assert "ham_kept_pct" not in summary
    assert summary["undefined"] == {
        "one_minus_roca_pct": f"ROC needs both ham and spam; {every}",
        "hm_pct": f"no ham to misclassify; {every}",
        "lam_pct": f"LAM needs both ham and spam; {every}",
        "second_half_one_minus_roca_pct": f"ROC needs both ham and spam; {every}",
    }


def test_eval_of_ham_only_reports_ham_kept(corpus: Path) -> None:
    done = mailsift("eval", f"ham:{corpus / 'ham'}", "--json")
    assert done.code == 0, done.err
    summary = strict_json(done.out)
    assert isinstance(summary, dict)
    assert summary["ham_kept_pct"] == 100.0 - summary["hm_pct"]
    assert summary["sm_pct"] is None and "spam_caught_pct" not in summary
    assert set(summary["undefined"]) == {
        "one_minus_roca_pct",
        "sm_pct",
        "lam_pct",
        "second_half_one_minus_roca_pct",
    }


def test_eval_plot_of_one_class_is_refused_before_the_run(corpus: Path, tmp_path: Path) -> None:
    plot = tmp_path / "roc.png"
    line = one_error_line(mailsift("eval", f"spam:{corpus / 'spam'}", "--plot", plot))
    assert line.startswith(f"error: --plot {plot}: a ROC curve needs both ham and spam")
    assert "gives only spam" in line
    assert not plot.exists()


def test_eval_split_that_scores_one_class_prints_measures_then_fails_the_plot(
    corpus: Path, tmp_path: Path
) -> None:
    # The folder lists ham before spam: split mode scores only the last 30 %, all spam.
    plot, scores = tmp_path / "roc.png", tmp_path / "scores.txt"
    done = mailsift("eval", corpus, "--mode", "split", "--json", "--plot", plot, "--scores", scores)
    assert done.code == 1
    summary = strict_json(done.out)
    assert isinstance(summary, dict) and summary["ham"] == 0 and summary["spam"] == 6
    assert "split mode scores the last 6 of 20 messages" in summary["undefined"]["lam_pct"]
    assert f"wrote --scores {scores} (6 lines)" in done.err
    assert f"error: --plot {plot} not written: ROC needs both ham and spam" in done.err
    assert not plot.exists() and "Traceback" not in done.err


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
