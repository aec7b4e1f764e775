"""The README's "Choosing thresholds" commands work on what ``mailsift eval --scores``
writes: the histogram and the per-threshold counts, run as an administrator pastes them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.server import message
from tests.test_docs import README

MAILSIFT = Path(sys.executable).with_name("mailsift")
N_HAM, N_SPAM = 24, 16


def _shell_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Choosing thresholds\n(?P<body>.*?)(?=^##)", text, re.M | re.S)
    assert section, "README has no '### Choosing thresholds'"
    return re.findall(r"```sh\n(.*?)```", section.group("body"), re.S)


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scores.txt`` as ``mailsift eval CORPUS --scores scores.txt`` writes it."""
    root = tmp_path_factory.mktemp("thresholds")
    for label, count in (("ham", N_HAM), ("spam", N_SPAM)):
        (root / "corpus" / label).mkdir(parents=True)
        for i in range(count):
            (root / "corpus" / label / f"{i:02d}.eml").write_bytes(message(i, label == "spam"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    done = subprocess.run(
        [str(MAILSIFT), "eval", "corpus", "--mode", "online", "--scores", "scores.txt"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = (root / "scores.txt").read_text().splitlines()
    assert len(lines) == N_HAM + N_SPAM
    assert all(re.fullmatch(r"(ham|spam) [01]\.\d{6}", line) for line in lines), lines[:3]
    return root / "scores.txt"


def _run(script: str, cwd: Path) -> list[str]:
    """A README block, reading the fixture's scores where the README says /tmp/scores.txt."""
    assert "/tmp/scores.txt" in script  # the docs keep the file out of the checkout
    script = script.replace("/tmp/scores.txt", str(cwd / "scores.txt"))
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.splitlines()


def test_the_histogram_counts_every_scored_message(scores: Path) -> None:
    histogram, _ = _shell_blocks()
    rows = _run(histogram, scores.parent)
    assert len(rows) == 10 and rows[0].startswith("< 0.001") and rows[-1].startswith(">= 0.9999")
    counts = [re.search(r"(\d+) ham\s+(\d+) spam$", row) for row in rows]
    assert all(counts), rows
    assert sum(int(m.group(1)) for m in counts if m) == N_HAM
    assert sum(int(m.group(2)) for m in counts if m) == N_SPAM


def test_the_threshold_table_counts_ham_and_spam_at_or_above(scores: Path) -> None:
    _, thresholds = _shell_blocks()
    rows = _run(thresholds, scores.parent)
    assert [row.split()[0] for row in rows] == ["0.5", "0.9", "0.99", "0.999", "0.9999"]
    values = [line.split() for line in scores.read_text().splitlines()]
    for row in rows:
        t = float(row.split()[0])
        ham = sum(1 for label, v in values if label == "ham" and float(v) >= t)
        spam = sum(1 for label, v in values if label == "spam" and float(v) >= t)
        assert f"ham {ham} of {N_HAM}, spam {spam} of {N_SPAM}" in row, row
