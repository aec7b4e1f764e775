"""The TREC protocols run whole on the SpamAssassin public corpus (TREC layout).

What these assert is behaviour: every message is scored once, the measures are defined,
the model that learned the corpus round-trips. How accurate the filter is, is measured
by ``mailsift eval`` and quoted with its command, never asserted here: a floor in a test
tunes the filter to one corpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsift.models.ensemble import SpamModel
from mailsift.models.snapshot import load_snapshot, save_snapshot
from mailsift.training.corpus import open_source
from mailsift.training.evaluate import EvalResult, evaluate
from tests.corpora import SPAMASSASSIN, require

pytestmark = pytest.mark.corpus


@pytest.fixture(scope="module")
def corpus() -> str:
    return str(require(SPAMASSASSIN))


@pytest.fixture(scope="module")
def online(corpus: str) -> tuple[EvalResult, SpamModel]:
    """One online run; the model it leaves has learned the whole corpus, in order."""
    model = SpamModel()
    return evaluate(open_source(corpus), mode="online", model=model), model


def test_online_scores_every_message_once(online: tuple[EvalResult, SpamModel]) -> None:
    result, model = online
    summary = result.summary
    assert summary["n"] == summary["ham"] + summary["spam"] == 6046 == result.scores.size
    assert (model.n_ham, model.n_spam) == (summary["ham"], summary["spam"])
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    assert not result.undefined


def test_split_scores_the_rest(corpus: str) -> None:
    result = evaluate(open_source(corpus), mode="split", train_frac=0.7)
    assert result.summary["n"] == 6046 - int(6046 * 0.7)
    assert not result.undefined


def test_snapshot_of_the_whole_corpus_is_small(
    online: tuple[EvalResult, SpamModel], tmp_path: Path
) -> None:
    _, model = online
    path = tmp_path / "model.snapshot"
    info = save_snapshot(model, path)
    assert (info.ham, info.spam) == (online[0].summary["ham"], online[0].summary["spam"])
    assert path.stat().st_size <= 32 * 2**20
    loaded, _ = load_snapshot(path, model.config)
    assert (loaded.n_ham, loaded.n_spam) == (info.ham, info.spam)
