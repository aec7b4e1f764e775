"""The estimator contract, run against every model class, then each model's own promises."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import pytest
from scipy import sparse
from sklearn.base import clone

from mailsift.models.ensemble import Label, SpamModel
from mailsift.models.features import FeatureConfig, Features, extract
from mailsift.models.linear import OnlineLogistic
from mailsift.models.naive_bayes import NaiveBayes
from mailsift.models.parse import parse_message
from mailsift.models.snapshot import load_snapshot, save_snapshot

CONFIG = FeatureConfig(n_bits=16)
N_FEATURES = 2**CONFIG.n_bits

HAM_TEXTS = [
    ("Lunch tomorrow?", "alice@work.example", "Shall we meet at noon in the canteen?"),
    ("Meeting notes", "bob@work.example", "Attached are the notes from the project meeting."),
    ("Re: build failure", "ci@work.example", "The nightly build failed on the parser tests."),
    ("Holiday plans", "carol@family.example", "We arrive on Friday evening, see you then."),
    ("Quarterly report", "dave@work.example", "Please review the draft report before Monday."),
    ("Code review", "erin@work.example", "I left comments on your pull request."),
]
SPAM_TEXTS = [
    ("Cheap pills online", "deals@pharm.example", "Buy cheap pills now, no prescription needed!"),
    ("You have WON", "lottery@win.example", "Claim your prize money now, click the link!"),
    ("Hot singles", "date@singles.example", "Meet hot singles tonight, click here now!"),
    ("Cheap watches", "deals@replica.example", "Replica watches at cheap prices, buy now!"),
    (
        "Urgent transfer",
        "prince@money.example",
        "Transfer of million dollars, reply with bank details!",
    ),
    ("Lose weight fast", "diet@pharm.example", "Miracle pills make you lose weight fast, buy now!"),
]
UNSEEN_TEXTS = [
    ("Zyxwvut qwertyuiop", "nobody@unseen.invalid", "Plokijuh mnbvcxz lkjhgfdsa"),
    ("", "", ""),
]


def features(subject: str, sender: str, body: str) -> Features:
    raw = f"Subject: {subject}\r\nFrom: {sender}\r\n\r\n{body}\r\n".encode()
    return extract(parse_message(raw), CONFIG)


def interleave() -> tuple[list[Features], npt.NDArray[np.int64]]:
    fs: list[Features] = []
    ys: list[int] = []
    for ham, spam in zip(HAM_TEXTS, SPAM_TEXTS, strict=True):
        fs += [features(*ham), features(*spam)]
        ys += [0, 1]
    return fs, np.array(ys)


TRAIN, LABELS = interleave()
UNSEEN = [features(*t) for t in UNSEEN_TEXTS]


def csr(fs: list[Features]) -> sparse.csr_matrix:
    """One row per message: the word view, as a scikit-learn estimator would get it."""
    indptr = np.cumsum([0] + [f.word_idx.size for f in fs])
    indices = np.concatenate([f.word_idx for f in fs]) if fs else np.zeros(0, np.int64)
    data = np.concatenate([f.word_val for f in fs]) if fs else np.zeros(0, np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(fs), N_FEATURES))


# -- one adapter per model class -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """How the contract drives one model class: batches in, an (n, 2) probability array out."""

    make: Callable[[], Any]
    batch: Callable[[list[Features]], Any]
    learn: Callable[[Any, Any, npt.NDArray[np.int64]], Any]
    proba: Callable[[Any, Any], npt.NDArray[np.float64]]
    roundtrip: Callable[[Any, Path], Any]


def _sk_learn(model: Any, x: Any, y: npt.NDArray[np.int64]) -> Any:
    return model.partial_fit(x, y)


def _sk_proba(model: Any, x: Any) -> npt.NDArray[np.float64]:
    return np.asarray(model.predict_proba(x))


def _joblib_roundtrip(model: Any, tmp_path: Path) -> Any:
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    return joblib.load(path)


def _spam_learn(model: SpamModel, fs: list[Features], y: npt.NDArray[np.int64]) -> SpamModel:
    for f, label in zip(fs, y, strict=True):
        assert model.learn(f, "spam" if label else "ham") is model
    return model


def _spam_proba(model: SpamModel, fs: list[Features]) -> npt.NDArray[np.float64]:
    p = np.array([model.score(f).probability for f in fs])
    return np.column_stack([1.0 - p, p])


def _snapshot_roundtrip(model: SpamModel, tmp_path: Path) -> SpamModel:
    path = tmp_path / "model.snapshot"
    save_snapshot(model, path)
    loaded, _ = load_snapshot(path, CONFIG)
    return loaded


CASES = {
    "NaiveBayes": Case(
        lambda: NaiveBayes(n_features=N_FEATURES), csr, _sk_learn, _sk_proba, _joblib_roundtrip
    ),
    "OnlineLogistic": Case(
        lambda: OnlineLogistic(n_features=N_FEATURES), csr, _sk_learn, _sk_proba, _joblib_roundtrip
    ),
    "SpamModel": Case(
        lambda: SpamModel(CONFIG), list, _spam_learn, _spam_proba, _snapshot_roundtrip
    ),
}
SKLEARN = ["NaiveBayes", "OnlineLogistic"]


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def trained(case: Case) -> Any:
    model = case.make()
    assert case.learn(model, case.batch(TRAIN), LABELS) is model
    return model


def assert_valid(proba: npt.NDArray[np.float64], n: int) -> None:
    assert proba.shape == (n, 2)
    assert np.all(np.isfinite(proba))
    assert np.all((proba >= 0.0) & (proba <= 1.0))
    assert np.allclose(proba.sum(axis=1), 1.0)


def same(a: Any, b: Any) -> bool:
    """Deep equality for what the models are given: sparse matrices, arrays, Features."""
    if sparse.issparse(a):
        return (
            a.shape == b.shape
            and np.array_equal(a.data, b.data)
            and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.indptr, b.indptr)
        )
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, Features):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- the shared contract ---------------------------------------------------------------


def test_untrained_model_is_undecided(case: Case) -> None:
    proba = case.proba(case.make(), case.batch(TRAIN))
    assert_valid(proba, len(TRAIN))
    assert np.all(proba == 0.5)


def test_probabilities_are_valid_and_learned(case: Case) -> None:
    model = trained(case)
    proba = case.proba(model, case.batch(TRAIN))
    assert_valid(proba, len(TRAIN))
    spam = proba[LABELS == 1, 1]
    ham = proba[LABELS == 0, 1]
    assert spam.min() > 0.5 > ham.max()


def test_inputs_are_not_modified(case: Case) -> None:
    x = case.batch(TRAIN)
    y = LABELS.copy()
    x_before, y_before = copy.deepcopy(x), y.copy()
    model = case.make()
    case.learn(model, x, y)
    case.proba(model, x)
    assert same(x, x_before)
    assert same(y, y_before)


def test_unseen_tokens_are_fine(case: Case) -> None:
    model = trained(case)
    proba = case.proba(model, case.batch(UNSEEN))
    assert_valid(proba, len(UNSEEN))


def test_identical_after_a_save_load_round_trip(case: Case, tmp_path: Path) -> None:
    model = trained(case)
    loaded = case.roundtrip(model, tmp_path)
    x = case.batch(TRAIN + UNSEEN)
    assert np.array_equal(case.proba(loaded, x), case.proba(model, x))
    # The whole learned state came along: both keep learning identically.
    extra = case.batch([features("Cheap meeting", "x@new.example", "buy the notes now")])
    case.learn(model, extra, np.array([1]))
    case.learn(loaded, extra, np.array([1]))
    assert np.array_equal(case.proba(loaded, x), case.proba(model, x))


@pytest.mark.parametrize("name", SKLEARN)
def test_sklearn_params(name: str) -> None:
    model = trained(CASES[name])
    params = model.get_params()
    assert params["n_features"] == N_FEATURES
    assert set(params) == set(type(model)().get_params())
    fresh = clone(model)
    assert fresh.get_params() == params
    assert np.all(_sk_proba(fresh, csr(TRAIN)) == 0.5)  # clone keeps params, not state
    fresh.set_params(n_features=N_FEATURES)
    assert fresh.get_params()["n_features"] == N_FEATURES


# -- naive Bayes -----------------------------------------------------------------------


def _nb_state(nb: NaiveBayes) -> tuple[Any, ...]:
    return (nb.spam_counts_.copy(), nb.ham_counts_.copy(), nb.n_spam_, nb.n_ham_)


def _assert_nb_state(nb: NaiveBayes, state: tuple[Any, ...]) -> None:
    spam_counts, ham_counts, n_spam, n_ham = state
    assert np.array_equal(nb.spam_counts_, spam_counts)
    assert np.array_equal(nb.ham_counts_, ham_counts)
    assert (nb.n_spam_, nb.n_ham_) == (n_spam, n_ham)


@pytest.mark.parametrize("label", [0, 1])
def test_naive_bayes_unlearn_is_the_exact_inverse_of_learn(label: int) -> None:
    nb = trained(CASES["NaiveBayes"])
    before = _nb_state(nb)
    idx = features("Cheap meeting", "x@new.example", "buy the notes now").word_idx
    assert nb.learn_one(idx, label) is nb
    assert (nb.n_spam_, nb.n_ham_) != (before[2], before[3])
    assert nb.unlearn_one(idx, label) is nb
    _assert_nb_state(nb, before)


def test_naive_bayes_refuses_to_unlearn_what_it_never_learned() -> None:
    nb = NaiveBayes(n_features=N_FEATURES)
    idx = TRAIN[1].word_idx
    with pytest.raises(ValueError, match="not learned"):
        nb.unlearn_one(idx, 1)  # nothing learned at all
    nb.learn_one(idx, 1)
    before = _nb_state(nb)
    with pytest.raises(ValueError, match="not learned"):
        nb.unlearn_one(idx, 0)  # learned, but as spam
    with pytest.raises(ValueError, match="not learned"):
        nb.unlearn_one(TRAIN[0].word_idx, 1)  # other tokens
    _assert_nb_state(nb, before)  # a refused unlearn changes nothing


def test_naive_bayes_counts_presence_once_per_message() -> None:
    nb = NaiveBayes(n_features=16)
    x = sparse.csr_matrix((np.ones(3), np.array([2, 2, 5]), np.array([0, 3])), shape=(1, 16))
    nb.partial_fit(x, [1])
    assert nb.spam_counts_[2] == 1
    assert nb.spam_counts_[5] == 1
    assert nb.spam_counts_.sum() == 2


def _taught(nb: NaiveBayes) -> NaiveBayes:
    """Token 1 in the one spam and in one of four hams; token 2 in the spam only."""
    nb.learn_one(np.array([1, 2]), 1)
    for idx in ([1, 3], [3], [3], [3]):
        nb.learn_one(np.array(idx), 0)
    return nb


def test_naive_bayes_ham_weight_makes_a_token_shared_with_ham_less_spammy() -> None:
    plain = _taught(NaiveBayes(n_features=16))
    costly = _taught(NaiveBayes(n_features=16, ham_weight=4.0))
    shared, spam_only = np.array([1]), np.array([2])
    # Token 1 is in every spam and a quarter of the hams: 0.8 spammy (shrunk) if a ham
    # counts once, exactly 0.5 (neither way) if it counts four times.
    assert plain.token_spamminess(shared)[0] > 0.7
    assert costly.token_spamminess(shared)[0] == pytest.approx(0.5)
    assert plain.decision_one(shared) > 0 == costly.decision_one(shared)
    # A token no ham carries reads the same, and the counts are the same counts.
    assert costly.token_spamminess(spam_only) == pytest.approx(plain.token_spamminess(spam_only))
    assert np.array_equal(costly.ham_counts_, plain.ham_counts_)


def test_naive_bayes_unlearn_stays_exact_with_a_ham_weight() -> None:
    nb = _taught(NaiveBayes(n_features=16, ham_weight=4.0))
    before, score = _nb_state(nb), nb.decision_one(np.array([1, 2, 3]))
    nb.learn_one(np.array([1, 2]), 0).unlearn_one(np.array([1, 2]), 0)
    _assert_nb_state(nb, before)
    assert nb.decision_one(np.array([1, 2, 3])) == score


def test_the_ensemble_reads_its_bayes_counts_with_its_own_ham_weight(tmp_path: Path) -> None:
    model = SpamModel(CONFIG, ham_weight=2.5)
    assert model.bayes.ham_weight == 2.5
    save_snapshot(model, tmp_path / "m.snap")
    loaded, _ = load_snapshot(tmp_path / "m.snap", CONFIG)
    assert loaded.bayes.ham_weight == 2.5


# -- the ensemble ----------------------------------------------------------------------


def test_empty_model_scores_exactly_one_half() -> None:
    score = SpamModel(CONFIG).score(TRAIN[1], explain=5)
    assert score.probability == 0.5
    assert score.logit == 0.0
    assert score.members == {"words": 0.0, "chars": 0.0, "bayes": 0.0, "raw": 0.0}
    assert (score.spam_tokens, score.ham_tokens) == ([], [])


@pytest.mark.parametrize(("wrong", "right"), [("ham", "spam"), ("spam", "ham")])
def test_relabel_moves_the_score_and_fixes_the_counts(wrong: Label, right: Label) -> None:
    target = features("Cheap meeting", "x@new.example", "buy the notes now")
    model = trained(CASES["SpamModel"]).learn(target, wrong)
    reference = trained(CASES["SpamModel"]).learn(target, right)
    before = model.score(target).probability
    assert model.relabel(target, wrong, right) is model
    after = model.score(target).probability
    assert after > before if right == "spam" else after < before
    _assert_nb_state(model.bayes, _nb_state(reference.bayes))
    assert (model.n_spam, model.n_ham) == (reference.n_spam, reference.n_ham)


def test_relabel_refuses_a_message_not_learned_with_the_old_label() -> None:
    model = trained(CASES["SpamModel"])
    target = features("Cheap meeting", "x@new.example", "buy the notes now")
    with pytest.raises(ValueError):
        model.relabel(target, "ham", "spam")


def test_unlearn_restores_the_bayes_counts() -> None:
    model = trained(CASES["SpamModel"])
    before = _nb_state(model.bayes)
    target = features("Cheap meeting", "x@new.example", "buy the notes now")
    model.learn(target, "spam").unlearn(target, "spam")
    _assert_nb_state(model.bayes, before)


def test_learn_refuses_an_unknown_label() -> None:
    with pytest.raises(ValueError, match="label"):
        SpamModel(CONFIG).learn(TRAIN[0], "junk")  # type: ignore[arg-type]


def test_explanations_are_readable_tokens_of_the_message() -> None:
    model = trained(CASES["SpamModel"])
    target = features("Cheap pills", "deals@pharm.example", "buy cheap pills now, meeting notes")
    score = model.score(target, explain=5)
    assert 0 < len(score.spam_tokens) <= 5
    assert 0 < len(score.ham_tokens) <= 5
    for tw in score.spam_tokens + score.ham_tokens:
        assert tw.token in target.tokens
        assert tw.token.isprintable()
        assert ":" in tw.token
    spam_weights = [tw.weight for tw in score.spam_tokens]
    ham_weights = [tw.weight for tw in score.ham_tokens]
    assert all(w > 0 for w in spam_weights)
    assert all(w < 0 for w in ham_weights)
    assert spam_weights == sorted(spam_weights, reverse=True)
    assert ham_weights == sorted(ham_weights)
    spam_words = {tw.token for tw in score.spam_tokens}
    assert spam_words & {"body:cheap", "body:pills", "subject:cheap", "subject:pills", "body:buy"}
    assert model.score(target).spam_tokens == []  # no explanation unless asked
