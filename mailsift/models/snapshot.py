"""Model snapshots: one joblib file holding the model state and what it was made from.

A snapshot must never load as a silently wrong model, so the file carries a format
marker and version, the feature settings, and a SHA-256 of every state array; each
mismatch is refused with its own exception. Writes are atomic (temp file, fsync,
rename, fsync of the directory) and the replaced file is kept as ``<name>.prev``.

joblib unpickles, so load only files the service itself wrote into its data dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from mailsift.models.ensemble import SpamModel
from mailsift.models.features import FeatureConfig

__all__ = [
    "FORMAT_VERSION",
    "SnapshotConfigMismatch",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotVersionMismatch",
    "load_snapshot",
    "read_snapshot_info",
    "save_snapshot",
]

FORMAT = "mailsift-snapshot"
FORMAT_VERSION = 1


class SnapshotError(Exception):
    """A snapshot could not be used; the message names the file and the problem."""


class SnapshotCorrupt(SnapshotError):
    pass


class SnapshotVersionMismatch(SnapshotError):
    pass


class SnapshotConfigMismatch(SnapshotError):
    pass


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    format_version: int
    feature_config: dict[str, Any]
    ham: int
    spam: int
    created_at: float
    log_position: int
    """Training-log position whose entries are all included (0 = none / not from a log)."""
    model_version: str
    """Stable id of this model state: changes whenever a snapshot is written."""


def save_snapshot(model: SpamModel, path: Path, log_position: int = 0) -> SnapshotInfo:
    """Write ``model`` atomically to ``path``; the file it replaces becomes ``path.prev``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _state(model)
    created = time.time()
    checksum = _checksum(state)
    info = SnapshotInfo(
        format_version=FORMAT_VERSION,
        feature_config=model.config.as_dict(),
        ham=model.n_ham,
        spam=model.n_spam,
        created_at=created,
        log_position=log_position,
        model_version=f"{log_position}-{checksum[:12]}",
    )
    payload = {"format": FORMAT, "info": asdict(info), "state": state, "sha256": checksum}
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            joblib.dump(payload, fh, compress=("zlib", 3))
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def load_snapshot(
    path: Path, expected_config: FeatureConfig | None = None
) -> tuple[SpamModel, SnapshotInfo]:
    """Load a snapshot, refusing anything that is not exactly what it claims to be."""
    payload = _read(Path(path))
    info = _info(payload, path)
    if expected_config is not None and info.feature_config != expected_config.as_dict():
        raise SnapshotConfigMismatch(
            f"{path}: made with feature settings {info.feature_config}, "
            f"but this service uses {expected_config.as_dict()}"
        )
    state = payload.get("state")
    if not isinstance(state, dict) or payload.get("sha256") != _checksum(state):
        raise SnapshotCorrupt(f"{path}: checksum mismatch, the model data is damaged")
    try:
        model = _from_state(state, FeatureConfig(**info.feature_config))
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotCorrupt(f"{path}: model state is incomplete ({exc})") from exc
    return model, info


def read_snapshot_info(path: Path) -> SnapshotInfo:
    """The header of a snapshot (whole file is read and verified by format, not checksum)."""
    return _info(_read(Path(path)), path)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot file")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # truncated or garbage files fail in many ways inside joblib
        raise SnapshotCorrupt(f"{path}: not a readable snapshot ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SnapshotCorrupt(f"{path}: not a mailsift snapshot")
    return payload


def _info(payload: dict[str, Any], path: Path) -> SnapshotInfo:
    raw = payload.get("info")
    if not isinstance(raw, dict):
        raise SnapshotCorrupt(f"{path}: snapshot header is missing")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise SnapshotVersionMismatch(
            f"{path}: snapshot format version {version}, this mailsift reads version "
            f"{FORMAT_VERSION}; retrain with `mailsift train`"
        )
    try:
        return SnapshotInfo(**raw)
    except TypeError as exc:
        raise SnapshotCorrupt(f"{path}: snapshot header is malformed ({exc})") from exc


def _state(model: SpamModel) -> dict[str, Any]:
    return {
        "params": {
            "learning_rate": model.learning_rate,
            "bayes_weight": model.bayes_weight,
            "calibration_rate": model.calibration_rate,
            "ham_weight": model.ham_weight,
        },
        "words.coef_": model.words.coef_,
        "words.grad_sq_": model.words.grad_sq_,
        "words.n_seen_": model.words.n_seen_,
        "chars.coef_": model.chars.coef_,
        "chars.grad_sq_": model.chars.grad_sq_,
        "chars.n_seen_": model.chars.n_seen_,
        "bayes.spam_counts_": model.bayes.spam_counts_,
        "bayes.ham_counts_": model.bayes.ham_counts_,
        "bayes.n_spam_": model.bayes.n_spam_,
        "bayes.n_ham_": model.bayes.n_ham_,
        "calibration_": model.calibration_,
    }


def _from_state(state: dict[str, Any], config: FeatureConfig) -> SpamModel:
    model = SpamModel(config, **state["params"])
    n = 2**config.n_bits
    for name in ("words", "chars"):
        member = getattr(model, name)
        member.coef_ = _array(state, f"{name}.coef_", np.float32, n)
        member.grad_sq_ = _array(state, f"{name}.grad_sq_", np.float32, n)
        member.n_seen_ = int(state[f"{name}.n_seen_"])
    model.bayes.spam_counts_ = _array(state, "bayes.spam_counts_", np.int32, n)
    model.bayes.ham_counts_ = _array(state, "bayes.ham_counts_", np.int32, n)
    model.bayes.n_spam_ = int(state["bayes.n_spam_"])
    model.bayes.n_ham_ = int(state["bayes.n_ham_"])
    model.calibration_ = _array(state, "calibration_", np.float64, 4)
    return model


def _array(state: dict[str, Any], key: str, dtype: type, size: int) -> np.ndarray:
    value = state[key]
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (size,):
        raise ValueError(f"{key} has the wrong type or shape")
    return value


def _checksum(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, np.ndarray):
            digest.update(str(value.dtype).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _keep_previous(path: Path) -> None:
    """Link the current file as ``<name>.prev`` (renaming it would leave ``path`` missing
    until the new file is moved in, and a reader in between would find no snapshot)."""
    prev = path.with_name(path.name + ".prev")
    prev.unlink(missing_ok=True)
    try:
        os.link(path, prev)
    except OSError:  # no hard links on this filesystem
        shutil.copyfile(path, prev)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
