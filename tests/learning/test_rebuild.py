"""Rebuilds: exact corrections, one model for one log, and learning that ignores load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mailsift.learning.examples import example_of
from mailsift.learning.published import PublishedModels
from mailsift.learning.rebuild import RebuildBusy, publish, rebuild_lock, rebuild_model
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLog, open_training_log
from mailsift.models.ensemble import SpamModel
from mailsift.models.features import extract
from mailsift.models.parse import DEFAULT_LIMITS, TIME_BUDGET, ParseLimits, parse_message
from mailsift.models.snapshot import snapshot_from_bytes
from mailsift.models.stored import encode_features
from tests.learning.examples import CONFIG, VERSION, ex, slow_to_parse
from tests.service.pgbouncer import PGBOUNCER, pgbouncer
from tests.service.server import message

ADMIN = Source.ADMIN
BASE = [(message(n, spammy=bool(n % 2)), "spam" if n % 2 else "ham") for n in range(40)]
PROBES = [message(1000 + n, spammy=bool(n % 3 == 0)) for n in range(30)]


def fp(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[tuple[TrainingLog, TrainingLog]]:
    a, b = open_training_log(None, tmp_path / "a"), open_training_log(None, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _teach(log: TrainingLog, items: list[tuple[bytes, str]], first: int = 0) -> None:
    log.append_many(
        [(fp(first + i), label, ex(raw)) for i, (raw, label) in enumerate(items)],  # type: ignore[misc]
        source=ADMIN,
        actor="a",
    )


def _scores(model: SpamModel) -> list[float]:
    return [
        model.score(extract(parse_message(p, DEFAULT_LIMITS), CONFIG)).probability for p in PROBES
    ]


def _same(a: SpamModel, b: SpamModel) -> None:
    for name in ("coef_", "grad_sq_"):
        for member in ("words", "chars"):
            assert np.array_equal(
                getattr(getattr(a, member), name), getattr(getattr(b, member), name)
            )
    assert np.array_equal(a.bayes.spam_counts_, b.bayes.spam_counts_)
    assert np.array_equal(a.bayes.ham_counts_, b.bayes.ham_counts_)
    assert np.array_equal(a.calibration_, b.calibration_)
    assert _scores(a) == _scores(b)  # float equality, every probe


def test_after_a_forget_a_rebuild_equals_a_log_that_never_had_the_example(
    logs: tuple[TrainingLog, TrainingLog],
) -> None:
    with_mistake, clean = logs
    _teach(with_mistake, BASE)
    _teach(clean, BASE)
    online = SpamModel()
    for raw, label in BASE:
        online.learn(extract(parse_message(raw, DEFAULT_LIMITS), CONFIG), label)  # type: ignore[arg-type]
    before = _scores(online)
    with_mistake.append(fp(999), "spam", ex(PROBES[1]), source=ADMIN, actor="oops")
    assert with_mistake.forget(fp(999), actor="a").result == "forgotten"
    rebuilt = rebuild_model(with_mistake, DEFAULT_LIMITS)
    assert rebuilt.examples == len(BASE) and rebuilt.position == with_mistake.head()
    _same(rebuilt.model, rebuild_model(clean, DEFAULT_LIMITS).model)
    # And the same as the model grown online before the mistake: one function of the log.
    assert _scores(rebuilt.model) == before


def test_after_a_relabel_a_rebuild_equals_a_log_that_had_the_right_label(
    logs: tuple[TrainingLog, TrainingLog],
) -> None:
    relabelled, right = logs
    _teach(relabelled, BASE)
    _teach(right, BASE)
    relabelled.append(fp(999), "spam", ex(PROBES[2]), source=ADMIN, actor="oops")
    assert relabelled.append(fp(999), "ham", ex(PROBES[2]), source=ADMIN, actor="a").result == (
        "relabelled"
    )
    right.append(fp(999), "ham", ex(PROBES[2]), source=ADMIN, actor="a")
    _same(
        rebuild_model(relabelled, DEFAULT_LIMITS).model, rebuild_model(right, DEFAULT_LIMITS).model
    )


def test_a_published_model_loads_bit_identical(
    logs: tuple[TrainingLog, TrainingLog],
) -> None:
    log, _ = logs
    _teach(log, BASE)
    rebuilt = rebuild_model(log, DEFAULT_LIMITS)
    model_id, version = publish(log, rebuilt)
    published = PublishedModels(log.engine)
    newest = published.newest()
    assert newest is not None and (newest.id, newest.model_version) == (model_id, version)
    assert newest.position == log.head() and newest.examples == len(BASE)
    data = published.data(model_id)
    assert data is not None
    model, info = snapshot_from_bytes(data, CONFIG, "test")
    assert info.log_position == log.head()
    _same(model, rebuilt.model)
    # Only the newest few are kept.
    for _ in range(3):
        publish(log, rebuilt)
    assert published.data(model_id) is None


def test_one_rebuild_at_a_time(logs: tuple[TrainingLog, TrainingLog], tmp_path: Path) -> None:
    log, _ = logs
    with (
        rebuild_lock(log, tmp_path, wait=False),
        pytest.raises(RebuildBusy),
        rebuild_lock(log, tmp_path, wait=False),
    ):
        pass
    with rebuild_lock(log, tmp_path, wait=False):
        pass


def test_one_rebuild_at_a_time_across_replicas(pg_url: str, tmp_path: Path) -> None:
    first, second = (
        open_training_log(pg_url, tmp_path / "a"),
        open_training_log(pg_url, tmp_path / "b"),
    )
    try:
        with (
            rebuild_lock(first, tmp_path / "a", wait=False),
            pytest.raises(RebuildBusy),
            rebuild_lock(second, tmp_path / "b", wait=False),
        ):
            pass
        with rebuild_lock(second, tmp_path / "b", wait=False):
            pass
    finally:
        first.close()
        second.close()


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="no pgbouncer installed")
def test_one_rebuild_at_a_time_behind_pgbouncer_in_transaction_mode(
    pg_database: tuple[str, str], tmp_path: Path
) -> None:
    """Replicas behind PgBouncer share its server connections a transaction at a time:
    a lock left on a session would be handed to the next client along with the
    connection, and two rebuilds would run at once."""
    with pgbouncer(*pg_database) as url:
        first, second = (
            open_training_log(url, tmp_path / "a"),
            open_training_log(url, tmp_path / "b"),
        )
        try:
            for _ in range(3):  # whichever server connection the pooler hands out
                with rebuild_lock(first, tmp_path / "a", wait=False):
                    with (
                        pytest.raises(RebuildBusy),
                        rebuild_lock(second, tmp_path / "b", wait=False),
                    ):
                        pass
                    first.head()  # the holder's own work goes on meanwhile
                with rebuild_lock(second, tmp_path / "b", wait=False):
                    pass
        finally:
            first.close()
            second.close()


def test_a_tiny_parse_budget_stores_the_same_features_as_an_idle_machine() -> None:
    raw = slow_to_parse()
    tiny = ParseLimits(time_budget_ms=1)
    cut = parse_message(raw, tiny)
    assert TIME_BUDGET in cut.defects  # scoring's parse really was cut short
    under_load = example_of(raw, CONFIG, VERSION, tiny, parsed=cut, features=extract(cut, CONFIG))
    idle = example_of(raw, CONFIG, VERSION, DEFAULT_LIMITS)
    assert under_load.features == idle.features
    # What the cut parse saw differs: storing it would have made learning depend on load.
    assert encode_features(extract(cut, CONFIG)) != idle.features


def test_raw_bytes_past_retention_go_and_a_rebuild_still_learns_everything(
    logs: tuple[TrainingLog, TrainingLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = logs
    clock = [1_000_000.0]
    monkeypatch.setattr("mailsift.learning.log_rows.time", SimpleNamespace(time=lambda: clock[0]))
    _teach(log, BASE[:20])
    clock[0] += 40 * 86_400
    _teach(log, BASE[20:], first=20)
    full = rebuild_model(log, DEFAULT_LIMITS).model
    assert log.prune_raw(clock[0] - 30 * 86_400, batch=7) == 20
    assert log.prune_raw(clock[0] - 30 * 86_400) == 0
    entries = log.read(0)
    assert [bool(e.raw) for e in entries] == [False] * 20 + [True] * 20
    assert all(e.features for e in entries)
    assert log.raw_at(1) == b"" and log.raw_at(21) == BASE[20][0]
    _same(rebuild_model(log, DEFAULT_LIMITS).model, full)
