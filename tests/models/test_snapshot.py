from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import os
import pickle
import random
import shlex
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig, Features, extract
from mailsift.models.parse import parse_message
from mailsift.models.snapshot import (
    FORMAT_VERSION,
    MAGIC,
    SnapshotConfigMismatch,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotVersionMismatch,
    load_snapshot,
    read_snapshot_info,
    save_snapshot,
    snapshot_bytes,
    snapshot_from_bytes,
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


def trained(messages: list[tuple[bytes, str]] = MESSAGES, **params: Any) -> SpamModel:
    model = SpamModel(CONFIG, **params)
    for raw, label in messages:
        model.learn(feats(raw), label)  # type: ignore[arg-type]
    return model


def scores(model: SpamModel) -> list[float]:
    return [model.score(feats(raw)).probability for raw in PROBES]


def hyper_parameters(model: SpamModel) -> dict[str, Any]:
    names = [p for p in inspect.signature(SpamModel.__init__).parameters if p != "self"]
    return {name: getattr(model, name) for name in names}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "model.snapshot"  # the directory does not exist yet
    save_snapshot(trained(), path, log_position=7)
    return path


# -- the layout, spelled out independently of the module -------------------------------


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a snapshot, checking the layout the module documents."""
    assert data.startswith(MAGIC) and MAGIC == b"MAILSIFT-SNAPSHOT 2\n"
    start = len(MAGIC) + 4
    length = int.from_bytes(data[len(MAGIC) : start], "big")
    header = json.loads(data[start : start + length])
    assert (
        data[start + length : start + length + 32]
        == hashlib.sha256(data[: start + length]).digest()
    )
    payload = data[start + length + 32 :]
    assert header["payload"] == {
        "encoding": "npz",
        "length": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return header, payload


def forge(header: dict[str, Any], payload: bytes, fix_payload: bool = True) -> bytes:
    """Assemble a snapshot with valid checksums around whatever header and payload."""
    if fix_payload:
        header = {
            **header,
            "payload": {
                "encoding": "npz",
                "length": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
            },
        }
    text = json.dumps(header).encode()
    head = MAGIC + len(text).to_bytes(4, "big") + text
    return head + hashlib.sha256(head).digest() + payload


def rewrite(path: Path, change: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    """Let ``change`` edit the header and the state arrays; write them back, checksums fixed."""
    header, payload = split(path.read_bytes())
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(header, arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=True, **arrays)  # so a test can plant a pickle
    path.write_bytes(forge(header, buf.getvalue()))


def test_the_layout_is_magic_length_header_checksum_payload(saved: Path) -> None:
    header, payload = split(saved.read_bytes())
    assert header["format"] == "mailsift-snapshot"
    assert header["format_version"] == FORMAT_VERSION == 2
    assert header["feature_config"] == CONFIG.as_dict()
    assert header["params"] == {
        k: v for k, v in hyper_parameters(trained()).items() if k != "config"
    }
    assert (header["ham"], header["spam"], header["log_position"]) == (3, 2, 7)
    assert header["extra"] == {}
    assert payload.startswith(b"PK\x03\x04")  # a zip: numpy's npz
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        assert "words.coef_" in archive.files
        assert archive["bayes.n_ham_"] == 3


# -- round trips -----------------------------------------------------------------------


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "model.snapshot"
    info = save_snapshot(model, path, log_position=42)
    loaded, loaded_info = load_snapshot(path, CONFIG)
    assert scores(loaded) == scores(model)  # float equality, not approx
    for name in ("words", "chars", "bayes", "raw"):
        for attr, value in vars(getattr(model, name)).items():
            again = getattr(getattr(loaded, name), attr)
            if isinstance(value, np.ndarray):
                assert again.dtype == value.dtype
                assert again.tobytes() == value.tobytes()
            else:
                assert again == value and type(again) is type(value)
    assert loaded.calibration_.tobytes() == model.calibration_.tobytes()
    assert hyper_parameters(loaded) == hyper_parameters(model)
    assert loaded_info == info
    assert (info.ham, info.spam, info.log_position) == (3, 2, 42)
    assert info.format_version == FORMAT_VERSION
    assert info.feature_config == CONFIG.as_dict()
    assert loaded.config == CONFIG
    assert (loaded.n_ham, loaded.n_spam) == (3, 2)
    assert read_snapshot_info(path) == info
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_a_snapshot_from_before_the_raw_view_loads_and_scores_as_it_did(tmp_path: Path) -> None:
    # Such a snapshot names no raw_bytes, holds no raw.* arrays and a four-entry
    # calibrator: it is a model without the raw member, and serves exactly as before.
    config = FeatureConfig(n_bits=16, raw_bytes=0)
    old = SpamModel(config)
    for raw, label in MESSAGES:
        old.learn(extract(parse_message(raw), config), label)  # type: ignore[arg-type]
    path = tmp_path / "old.snapshot"
    save_snapshot(old, path)
    header, payload = split(path.read_bytes())
    del header["feature_config"]["raw_bytes"]
    del header["params"]["raw_weight"]
    path.write_bytes(forge(header, payload))
    loaded, _ = load_snapshot(path, config)
    assert loaded.raw is None and loaded.members == ("words", "chars", "bayes")
    assert loaded.calibration_.shape == (4,)
    probes = [extract(parse_message(raw), config) for raw in PROBES]
    assert [loaded.score(f).probability for f in probes] == [
        old.score(f).probability for f in probes
    ]


def test_a_loaded_model_learns_on_exactly_like_the_original(tmp_path: Path) -> None:
    model = trained()
    save_snapshot(model, tmp_path / "m.snapshot")
    loaded, _ = load_snapshot(tmp_path / "m.snapshot", CONFIG)
    for raw, label in reversed(MESSAGES):
        model.learn(feats(raw), label)  # type: ignore[arg-type]
        loaded.learn(feats(raw), label)  # type: ignore[arg-type]
    assert scores(loaded) == scores(model)


def test_every_hyper_parameter_survives(tmp_path: Path) -> None:
    # Each parameter off its default (None-defaulted ones set to a number), so a new
    # hyper-parameter of SpamModel is covered without editing this test.
    params: dict[str, Any] = {}
    for p in inspect.signature(SpamModel.__init__).parameters.values():
        if p.name in ("self", "config"):
            continue
        params[p.name] = 0.75 if p.default is None else p.default * 1.5 + 0.125
    model = trained(**params)
    save_snapshot(model, tmp_path / "m.snapshot")
    loaded, info = load_snapshot(tmp_path / "m.snapshot", CONFIG)
    assert info.params == params
    assert hyper_parameters(loaded) == hyper_parameters(model)
    assert scores(loaded) == scores(model)


def test_bytes_round_trip_with_extra_fields() -> None:
    model = trained()
    data, info = snapshot_bytes(model, 5, base="12", note="rebuilt")
    loaded, loaded_info = snapshot_from_bytes(data, CONFIG, "published 12")
    assert loaded_info == info
    assert info.extra == {"base": "12", "note": "rebuilt"}
    assert scores(loaded) == scores(model)
    with pytest.raises(TypeError, match="base"):
        snapshot_bytes(model, 5, base=12)  # type: ignore[arg-type]


def test_save_keeps_extra_fields_in_the_file(tmp_path: Path) -> None:
    info = save_snapshot(trained(), tmp_path / "m.snapshot", log_position=3, base="4")
    assert info.extra == {"base": "4"}
    assert read_snapshot_info(tmp_path / "m.snapshot").extra == {"base": "4"}


def test_errors_from_bytes_name_their_source() -> None:
    data, _ = snapshot_bytes(trained(), 1)
    with pytest.raises(SnapshotCorrupt, match=r"^published 9: .*truncated"):
        snapshot_from_bytes(data[:-10], CONFIG, "published 9")


def test_model_version_changes_with_the_state(tmp_path: Path) -> None:
    first = save_snapshot(trained(), tmp_path / "a.snapshot", log_position=3)
    same = save_snapshot(trained(), tmp_path / "b.snapshot", log_position=3)
    other = save_snapshot(trained(MESSAGES[:-1]), tmp_path / "c.snapshot", log_position=3)
    assert first.model_version == same.model_version
    assert first.model_version != other.model_version


def test_files_are_private(saved: Path) -> None:
    save_snapshot(trained(), saved, log_position=8)
    for path in (saved, saved.with_name(saved.name + ".prev")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_replaced_file_is_kept_as_prev(tmp_path: Path) -> None:
    path = tmp_path / "model.snapshot"
    prev = tmp_path / "model.snapshot.prev"
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
    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(SpamModel(CONFIG), saved, log_position=99)
    monkeypatch.undo()
    assert load_snapshot(saved)[1].log_position == 7
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.snapshot"]


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
        "params",
        "extra",
    }
    assert info.model_version.startswith("7-")


def test_reading_the_info_does_not_read_the_payload(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0xFF  # damaged payload: only a full load notices
    saved.write_bytes(bytes(data))

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("read_snapshot_info opened the payload")

    monkeypatch.setattr(np, "load", no_load)
    assert read_snapshot_info(saved).log_position == 7
    monkeypatch.undo()
    refused(saved, SnapshotCorrupt, "payload checksum")


# -- refusals --------------------------------------------------------------------------


def refused(path: Path, expected: type[SnapshotError], *words: str, **kwargs: Any) -> str:
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(path, **kwargs)
    assert type(caught.value) is expected, caught.value
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize("keep", [0, 5, len(MAGIC) + 2, len(MAGIC) + 30, -1])
def test_truncated_file(saved: Path, keep: int) -> None:
    data = saved.read_bytes()
    cut = keep if keep >= 0 else len(data) + keep
    saved.write_bytes(data[:cut])
    refused(saved, SnapshotCorrupt)
    if cut > len(MAGIC) + 10:
        with pytest.raises(SnapshotCorrupt, match="truncated"):
            read_snapshot_info(saved)  # the size is checked against the header


def test_trailing_data(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes() + b"\0")
    refused(saved, SnapshotCorrupt, "trailing data")


def test_one_flipped_payload_byte(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[len(data) // 2 + 200] ^= 0x01
    saved.write_bytes(bytes(data))
    refused(saved, SnapshotCorrupt, "payload checksum")


def test_one_flipped_header_byte(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    at = data.index(b'"log_position":7') + len('"log_position":')
    data[at] = ord("8")  # still valid JSON: only the checksum can tell
    saved.write_bytes(bytes(data))
    refused(saved, SnapshotCorrupt, "header checksum")
    with pytest.raises(SnapshotCorrupt, match="header checksum"):
        read_snapshot_info(saved)


def test_random_garbage(saved: Path) -> None:
    saved.write_bytes(b"#" + random.Random(1).randbytes(4096))
    refused(saved, SnapshotCorrupt, "not a mailsift snapshot")


def test_empty_file(saved: Path) -> None:
    saved.write_bytes(b"")
    refused(saved, SnapshotCorrupt, "empty")


def test_a_newer_format_version(saved: Path) -> None:
    saved.write_bytes(b"MAILSIFT-SNAPSHOT 3\n" + saved.read_bytes()[len(MAGIC) :])
    refused(saved, SnapshotVersionMismatch, "version 3", "retrain")
    with pytest.raises(SnapshotVersionMismatch):
        read_snapshot_info(saved)


def test_a_header_that_contradicts_the_magic_line(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header.update(format_version=3))
    refused(saved, SnapshotCorrupt, "format version 3")


def test_other_feature_settings(saved: Path) -> None:
    refused(saved, SnapshotConfigMismatch, "feature settings", expected_config=FeatureConfig())
    # Without an expectation the snapshot's own settings are used.
    assert load_snapshot(saved)[0].config == CONFIG


def test_the_config_is_checked_before_the_payload_is_read(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0xFF
    saved.write_bytes(bytes(data))
    refused(saved, SnapshotConfigMismatch, expected_config=FeatureConfig())


def test_header_lies_about_the_counts(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header.update(ham=30))
    refused(saved, SnapshotCorrupt, "ham 30", "ham 3")


def test_header_lies_about_the_feature_settings(saved: Path) -> None:
    # It claims 2**18 features: every array of the payload then has the wrong shape.
    rewrite(saved, lambda header, arrays: header["feature_config"].update(n_bits=18))
    refused(saved, SnapshotCorrupt, "wrong type or shape")


def test_header_lies_about_the_payload_length(saved: Path) -> None:
    header, payload = split(saved.read_bytes())
    header["payload"]["length"] += 10
    saved.write_bytes(forge(header, payload, fix_payload=False))
    refused(saved, SnapshotCorrupt, "truncated")


def test_header_with_an_unknown_field(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header.update(compat="yes"))
    refused(saved, SnapshotCorrupt, "unknown", "compat")


def test_header_with_an_unknown_parameter(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header["params"].update(turbo=1.0))
    refused(saved, SnapshotCorrupt, "turbo")


def test_header_with_a_parameter_of_the_wrong_type(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header["params"].update(learning_rate="fast"))
    refused(saved, SnapshotCorrupt, "learning_rate")


def test_header_without_a_newer_parameter_uses_its_default(saved: Path) -> None:
    rewrite(saved, lambda header, arrays: header["params"].pop("ham_weight"))
    assert load_snapshot(saved, CONFIG)[0].ham_weight == SpamModel().ham_weight


@pytest.mark.parametrize("header", [[1, 2], {"format": "mailsift-snapshot"}, "x"])
def test_header_that_is_not_a_header(saved: Path, header: Any) -> None:
    saved.write_bytes(forge(header, b"", fix_payload=False))
    refused(saved, SnapshotCorrupt, "header")


def test_state_of_the_wrong_shape_with_matching_checksums(saved: Path) -> None:
    def shrink(header: dict[str, Any], arrays: dict[str, Any]) -> None:
        arrays["words.coef_"] = arrays["words.coef_"][:10]

    rewrite(saved, shrink)
    refused(saved, SnapshotCorrupt, "words.coef_", "shape")


def test_state_of_the_wrong_dtype(saved: Path) -> None:
    def widen(header: dict[str, Any], arrays: dict[str, Any]) -> None:
        arrays["bayes.spam_counts_"] = arrays["bayes.spam_counts_"].astype(np.uint32)

    rewrite(saved, widen)
    refused(saved, SnapshotCorrupt, "bayes.spam_counts_", "uint32")


@pytest.mark.parametrize(
    "change",
    [
        lambda arrays: arrays.pop("chars.grad_sq_"),
        lambda arrays: arrays.update(extra_=np.zeros(3)),
    ],
    ids=["missing", "unexpected"],
)
def test_state_arrays_missing_or_unexpected(saved: Path, change: Callable[..., Any]) -> None:
    rewrite(saved, lambda header, arrays: change(arrays))
    refused(saved, SnapshotCorrupt, "payload holds")


def test_a_payload_that_is_not_an_archive(saved: Path) -> None:
    header, _ = split(saved.read_bytes())
    saved.write_bytes(forge(header, pickle.dumps({"a": 1})))
    refused(saved, SnapshotCorrupt, "not an npz archive")


def test_an_oversized_array_is_refused_before_it_is_inflated(saved: Path) -> None:
    big = np.zeros(2**16 * 64, dtype=np.float32)  # 16 MiB inflated, a few KiB compressed
    rewrite(saved, lambda header, arrays: arrays.update({"words.coef_": big}))
    refused(saved, SnapshotCorrupt, "words.coef_", "larger")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "nope.snapshot", SnapshotError, "no such snapshot file")


def test_a_directory_is_not_a_snapshot(tmp_path: Path) -> None:
    refused(tmp_path, SnapshotError, "no such snapshot file")


# -- nothing is ever unpickled ---------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches for pickle or joblib while loading."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a snapshot load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(joblib, "load", forbidden)


def test_the_pickle_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so its absence below means something


def _pickle(obj: Any, path: Path, how: str) -> None:
    if how.startswith("pickle"):
        path.write_bytes(pickle.dumps(obj, protocol=int(how.removeprefix("pickle-"))))
    else:
        joblib.dump(obj, path, compress=int(how.removeprefix("joblib-")))


@pytest.mark.parametrize("how", ["pickle-0", "pickle-2", "pickle-5", "joblib-0", "joblib-3"])
def test_a_hand_made_pickle_in_place_of_a_snapshot_is_refused_without_running(
    saved: Path, how: str, no_unpickling: None
) -> None:
    marker = saved.parent / "pwned"
    _pickle(Payload(marker), saved, how)
    with pytest.raises(SnapshotError):
        load_snapshot(saved, CONFIG)
    with pytest.raises(SnapshotError):
        read_snapshot_info(saved)
    with pytest.raises(SnapshotError):
        snapshot_from_bytes(saved.read_bytes(), CONFIG)
    assert not marker.exists()


def test_a_pickle_inside_the_payload_is_refused_without_running(
    saved: Path, no_unpickling: None
) -> None:
    # Valid magic, header, checksums and array names; one array is an object array, which
    # numpy stores as a pickle.
    marker = saved.parent / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    rewrite(saved, lambda header, arrays: arrays.update({"words.coef_": evil}))
    refused(saved, SnapshotCorrupt, "words.coef_", "allow_pickle=False")
    assert not marker.exists()


@pytest.mark.parametrize("compress", [0, 3])
def test_an_old_joblib_snapshot_is_refused_with_a_clear_message(
    tmp_path: Path, compress: int, no_unpickling: None
) -> None:
    # What format 1 wrote: a dict with a format marker, unpickled by joblib.load.
    path = tmp_path / "model.joblib"
    model = trained()
    joblib.dump(
        {
            "format": "mailsift-snapshot",
            "info": {"format_version": 1, "log_position": 3},
            "state": {"words.coef_": model.words.coef_},
            "sha256": "0" * 64,
        },
        path,
        compress=("zlib", compress) if compress else 0,
    )
    message = refused(path, SnapshotVersionMismatch, "pickle or joblib", "retrain")
    assert "before format version 2" in message
