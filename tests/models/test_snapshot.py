from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mailsift.models import snapshot
from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig, Features, extract
from mailsift.models.parse import parse_message
from mailsift.models.snapshot import (
    FORMAT_VERSION,
    SnapshotConfigMismatch,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotVersionMismatch,
    load_snapshot,
    read_snapshot_info,
    save_snapshot,
)

CONFIG = FeatureConfig(n_bits=16)
MESSAGES = [
    (b"Subject: cheap pills\r\nFrom: a@pharm.example\r\n\r\nbuy cheap pills now", "spam"),
    (b"Subject: lunch\r\nFrom: b@work.example\r\n\r\nnoon at the canteen?", "ham"),
    (b"Subject: you won\r\nFrom: c@lottery.example\r\n\r\nclaim your prize now", "spam"),
    (b"Subject: notes\r\nFrom: d@work.example\r\n\r\nmeeting notes attached", "ham"),
    (b"Subject: report\r\nFrom: e@work.example\r\n\r\nplease review the draft", "ham"),
]
PROBES = [
    b"Subject: cheap prize\r\n\r\nbuy now",
    b"Subject: meeting\r\n\r\nsee the notes",
    b"Subject: something else\r\n\r\nnever seen words",
]


def feats(raw: bytes) -> Features:
    return extract(parse_message(raw), CONFIG)


def trained(messages: list[tuple[bytes, str]] = MESSAGES) -> SpamModel:
    model = SpamModel(CONFIG)
    for raw, label in messages:
        model.learn(feats(raw), label)  # type: ignore[arg-type]
    return model


def scores(model: SpamModel) -> list[float]:
    return [model.score(feats(raw)).probability for raw in PROBES]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "model.joblib"  # the directory does not exist yet
    save_snapshot(trained(), path, log_position=7)
    return path


def test_round_trip_keeps_scores_and_info(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "model.joblib"
    info = save_snapshot(model, path, log_position=42)
    loaded, loaded_info = load_snapshot(path, CONFIG)
    assert scores(loaded) == scores(model)
    assert loaded_info == info
    assert (info.ham, info.spam, info.log_position) == (3, 2, 42)
    assert info.format_version == FORMAT_VERSION
    assert info.feature_config == CONFIG.as_dict()
    assert loaded.config == CONFIG
    assert (loaded.n_ham, loaded.n_spam) == (3, 2)
    assert read_snapshot_info(path) == info
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_model_version_changes_with_the_state(tmp_path: Path) -> None:
    first = save_snapshot(trained(), tmp_path / "a.joblib", log_position=3)
    same = save_snapshot(trained(), tmp_path / "b.joblib", log_position=3)
    other = save_snapshot(trained(MESSAGES[:-1]), tmp_path / "c.joblib", log_position=3)
    assert first.model_version == same.model_version
    assert first.model_version != other.model_version


def test_the_replaced_file_is_kept_as_prev(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    prev = tmp_path / "model.joblib.prev"
    save_snapshot(trained(MESSAGES[:2]), path, log_position=1)
    assert not prev.exists()
    save_snapshot(trained(), path, log_position=2)
    assert load_snapshot(prev)[1].log_position == 1
    assert load_snapshot(path)[1].log_position == 2
    save_snapshot(trained(), path, log_position=3)
    assert load_snapshot(prev)[1].log_position == 2
    assert load_snapshot(path)[1].log_position == 3


def test_the_snapshot_never_goes_missing_while_it_is_replaced(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service reloading (or starting) at any moment of a save must find a snapshot.
    seen: list[bool] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        seen.append(saved.is_file())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_snapshot(trained(), saved, log_position=8)
    assert seen
    assert all(seen)


def test_a_failed_write_leaves_the_old_snapshot(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_dump(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(joblib, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(SpamModel(CONFIG), saved, log_position=99)
    assert load_snapshot(saved)[1].log_position == 7
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.joblib"]


# -- refusals --------------------------------------------------------------------------


def refused(path: Path, expected: type[SnapshotError], *words: str, **kwargs: Any) -> None:
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(path, **kwargs)
    assert type(caught.value) is expected
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message


def rewrite(path: Path, change: Any) -> None:
    """Load the raw payload, let ``change`` edit it, dump it back (checksum untouched)."""
    payload = joblib.load(path)
    change(payload)
    joblib.dump(payload, path)


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    refused(saved, SnapshotCorrupt, "not a readable snapshot")


def test_random_garbage(saved: Path) -> None:
    saved.write_bytes(random.Random(1).randbytes(4096))
    refused(saved, SnapshotCorrupt, "not a readable snapshot")


@pytest.mark.parametrize("payload", [{"hello": "world"}, [1, 2, 3], np.zeros(4)])
def test_valid_joblib_that_is_not_ours(tmp_path: Path, payload: Any) -> None:
    path = tmp_path / "other.joblib"
    joblib.dump(payload, path)
    refused(path, SnapshotCorrupt, "not a mailsift snapshot")


def test_another_format_version(saved: Path) -> None:
    def bump(payload: dict[str, Any]) -> None:
        payload["info"]["format_version"] = FORMAT_VERSION + 1

    rewrite(saved, bump)
    refused(saved, SnapshotVersionMismatch, f"version {FORMAT_VERSION + 1}", "retrain")
    with pytest.raises(SnapshotVersionMismatch):
        read_snapshot_info(saved)


def test_other_feature_settings(saved: Path) -> None:
    refused(saved, SnapshotConfigMismatch, "feature settings", expected_config=FeatureConfig())
    # Without an expectation the snapshot's own settings are used.
    assert load_snapshot(saved)[0].config == CONFIG


def test_one_flipped_byte_inside_an_array(saved: Path) -> None:
    def flip(payload: dict[str, Any]) -> None:
        counts = payload["state"]["bayes.spam_counts_"]
        raw = counts.view(np.uint8)
        raw[12345] ^= 0x01

    rewrite(saved, flip)
    refused(saved, SnapshotCorrupt, "checksum")


def test_state_of_the_wrong_shape_with_a_matching_checksum(saved: Path) -> None:
    def shrink(payload: dict[str, Any]) -> None:
        state = payload["state"]
        state["words.coef_"] = state["words.coef_"][:10]
        payload["sha256"] = snapshot._checksum(state)

    rewrite(saved, shrink)
    refused(saved, SnapshotCorrupt, "words.coef_")


def test_missing_header(saved: Path) -> None:
    rewrite(saved, lambda payload: payload.pop("info"))
    refused(saved, SnapshotCorrupt, "header")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "nope.joblib", SnapshotError, "no such snapshot file")


def test_a_directory_is_not_a_snapshot(tmp_path: Path) -> None:
    refused(tmp_path, SnapshotError, "no such snapshot file")


def test_info_fields_are_what_was_saved(saved: Path) -> None:
    info = read_snapshot_info(saved)
    assert set(dataclasses.asdict(info)) == {
        "format_version",
        "feature_config",
        "ham",
        "spam",
        "created_at",
        "log_position",
        "model_version",
    }
    assert info.model_version.startswith("7-")
