"""Model snapshots: a JSON header and plain numpy arrays, never a pickle.

A snapshot is a file in the data dir or bytes in the training log's database, laid out
(format 2) as::

    b"MAILSIFT-SNAPSHOT 2\\n"        magic line: what this is, and the format version
    N, 4 bytes big-endian           length of the header
    N bytes of UTF-8 JSON           the header (below)
    32 bytes                        SHA-256 of everything above
    payload                         numpy.savez_compressed archive of the state arrays

The header (one JSON object; no other fields are allowed) holds ``format``
(``"mailsift-snapshot"``), ``format_version``, ``feature_config``, ``params`` (the
``SpamModel`` hyper-parameters), ``ham`` and ``spam`` counts, ``created_at``,
``log_position``, ``model_version``, ``extra`` (string fields of the caller's, such as
the id of the published model a snapshot continues) and ``payload``: its ``encoding``
(``"npz"``), ``length`` and ``sha256``. Nothing follows the payload.

A snapshot must never load as a silently wrong model, and a swapped file must never run
code. So a reader checks, in order and before it reads further: the magic line, the
header's length and checksum, its fields and the file's size, the feature settings; then
the payload's checksum; then it opens the archive with ``allow_pickle=False``, taking
exactly the arrays a fresh model of those settings has, each of the same dtype and shape.
Every refusal raises a :class:`SnapshotError` that names the source and the problem.
Writes are atomic (temp file, fsync, rename, fsync of the directory), mode 0600, and the
replaced file is kept as ``<name>.prev``.

>>> data, info = snapshot_bytes(SpamModel(FeatureConfig(n_bits=16)), 7, base="3")
>>> data.startswith(MAGIC), info.log_position, info.extra
(True, 7, {'base': '3'})
>>> snapshot_from_bytes(data)[1] == info
True
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeAlias

import numpy as np
import numpy.typing as npt

from mailsift.models.ensemble import SpamModel
from mailsift.models.estimator import EstimatorMixin
from mailsift.models.features import FeatureConfig

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SnapshotConfigMismatch",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotVersionMismatch",
    "load_snapshot",
    "read_snapshot_info",
    "save_snapshot",
    "snapshot_bytes",
    "snapshot_from_bytes",
]

FORMAT = "mailsift-snapshot"
FORMAT_VERSION = 2
_MAGIC_NAME = b"MAILSIFT-SNAPSHOT "
MAGIC = _MAGIC_NAME + str(FORMAT_VERSION).encode() + b"\n"
_LENGTH_BYTES = 4
_DIGEST_BYTES = 32
_MAX_HEADER_BYTES = 1 << 20
_NPY_HEADER_ROOM = 4096
"""Bytes an archived array may take beyond its data (the .npy header)."""
_HEADER_FIELDS = frozenset(
    {
        "format",
        "format_version",
        "feature_config",
        "params",
        "ham",
        "spam",
        "created_at",
        "log_position",
        "model_version",
        "extra",
        "payload",
    }
)
# Leading bytes of pickles (protocol 2+) and of the compressed files joblib writes.
_PICKLE_LIKE = (b"\x80", b"x", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18", b"ZF")

Scalar: TypeAlias = bool | int | float | str | None
StateValue: TypeAlias = npt.NDArray[Any] | np.generic | int | float


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
    """Stable id of this model state: the log position and a digest of the state."""
    params: dict[str, Scalar] = field(default_factory=dict)
    """The ``SpamModel`` hyper-parameters."""
    extra: dict[str, str] = field(default_factory=dict)
    """The caller's own fields, e.g. the id of the published model this one continues."""


# -- writing ---------------------------------------------------------------------------


def snapshot_bytes(
    model: SpamModel, log_position: int = 0, **extra: str
) -> tuple[bytes, SnapshotInfo]:
    """``model`` as snapshot bytes (to store in a database), and their header."""
    for key, value in extra.items():
        if not isinstance(value, str):
            raise TypeError(f"snapshot field {key!r} must be a string, not {type(value).__name__}")
    state = _state(model)
    arrays = {key: np.asarray(value) for key, value in state.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    payload = buf.getvalue()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_config": model.config.as_dict(),
        "params": _params(model),
        "ham": model.n_ham,
        "spam": model.n_spam,
        "created_at": time.time(),
        "log_position": log_position,
        "model_version": f"{log_position}-{_state_digest(arrays)[:12]}",
        "extra": dict(extra),
        "payload": {
            "encoding": "npz",
            "length": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
    }
    text = json.dumps(header, allow_nan=False, sort_keys=True, separators=(",", ":")).encode()
    head = MAGIC + len(text).to_bytes(_LENGTH_BYTES, "big") + text
    # The info is parsed back from the header, so it equals what a reader will get.
    info, _, _ = _parse_header(json.loads(text), "snapshot being written")
    return head + hashlib.sha256(head).digest() + payload, info


def save_snapshot(
    model: SpamModel, path: Path, log_position: int = 0, **extra: str
) -> SnapshotInfo:
    """Write ``model`` atomically to ``path`` (mode 0600); the file it replaces becomes
    ``path.prev``. ``extra`` string fields are kept in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data, info = snapshot_bytes(model, log_position, **extra)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
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


# -- reading ---------------------------------------------------------------------------


def load_snapshot(
    path: Path, expected_config: FeatureConfig | None = None
) -> tuple[SpamModel, SnapshotInfo]:
    """Load a snapshot file, refusing anything that is not exactly what it claims to be."""
    with _open(Path(path)) as fh:
        return _load(fh, os.fstat(fh.fileno()).st_size, str(path), expected_config)


def snapshot_from_bytes(
    data: bytes, expected_config: FeatureConfig | None = None, source: str = "snapshot bytes"
) -> tuple[SpamModel, SnapshotInfo]:
    """Load snapshot bytes (from :func:`snapshot_bytes`); ``source`` names them in errors."""
    return _load(io.BytesIO(data), len(data), source, expected_config)


def read_snapshot_info(path: Path) -> SnapshotInfo:
    """The verified header of a snapshot file; the payload is not read."""
    with _open(Path(path)) as fh:
        return _read_header(fh, os.fstat(fh.fileno()).st_size, str(path))[0]


def _open(path: Path) -> BinaryIO:
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot file")
    try:
        return path.open("rb")
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot open the snapshot ({exc.strerror})") from exc


def _load(
    fh: BinaryIO, size: int, source: str, expected_config: FeatureConfig | None
) -> tuple[SpamModel, SnapshotInfo]:
    info, length, digest = _read_header(fh, size, source)
    if expected_config is not None and info.feature_config != expected_config.as_dict():
        raise SnapshotConfigMismatch(
            f"{source}: made with feature settings {info.feature_config}, "
            f"but this service uses {expected_config.as_dict()}"
        )
    payload = fh.read(length)
    if len(payload) != length or fh.read(1):
        raise SnapshotCorrupt(f"{source}: the payload is not {length} bytes as its header says")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise SnapshotCorrupt(f"{source}: payload checksum mismatch, the model data is damaged")
    model = _model(info, payload, source)
    if (model.n_ham, model.n_spam) != (info.ham, info.spam):
        raise SnapshotCorrupt(
            f"{source}: the header says ham {info.ham}, spam {info.spam}, but the model "
            f"state holds ham {model.n_ham}, spam {model.n_spam}"
        )
    return model, info


def _read_header(fh: BinaryIO, size: int, source: str) -> tuple[SnapshotInfo, int, str]:
    """Magic line, header length, header, its checksum, its fields, the total size."""
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        _refuse_start(magic, source)
    raw_length = fh.read(_LENGTH_BYTES)
    length = int.from_bytes(raw_length, "big")
    if len(raw_length) != _LENGTH_BYTES:
        raise SnapshotCorrupt(f"{source}: truncated inside the header")
    if not 0 < length <= _MAX_HEADER_BYTES:
        raise SnapshotCorrupt(f"{source}: implausible header length {length}")
    text = fh.read(length)
    digest = fh.read(_DIGEST_BYTES)
    if len(text) != length or len(digest) != _DIGEST_BYTES:
        raise SnapshotCorrupt(f"{source}: truncated inside the header")
    if hashlib.sha256(magic + raw_length + text).digest() != digest:
        raise SnapshotCorrupt(f"{source}: header checksum mismatch, the header is damaged")
    try:
        header = json.loads(text.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SnapshotCorrupt(f"{source}: the header is not JSON ({exc})") from exc
    info, payload_length, payload_digest = _parse_header(header, source)
    expected = len(MAGIC) + _LENGTH_BYTES + length + _DIGEST_BYTES + payload_length
    if size != expected:
        raise SnapshotCorrupt(
            f"{source}: {size} bytes, but its header says {expected} "
            f"({'truncated' if size < expected else 'trailing data'})"
        )
    return info, payload_length, payload_digest


def _refuse_start(start: bytes, source: str) -> NoReturn:
    if start.startswith(_MAGIC_NAME):
        version = start[len(_MAGIC_NAME) :].split(b"\n")[0].decode("ascii", "replace")
        raise SnapshotVersionMismatch(
            f"{source}: snapshot format version {version}, this mailsift reads version "
            f"{FORMAT_VERSION}; retrain with `mailsift train`"
        )
    if start.startswith(_PICKLE_LIKE):
        raise SnapshotVersionMismatch(
            f"{source}: looks like a pickle or joblib file (as snapshots were before format "
            f"version "
            f"{FORMAT_VERSION}), which mailsift never loads because unpickling can run "
            f"code; retrain with `mailsift train`"
        )
    if not start:
        raise SnapshotCorrupt(f"{source}: empty file, not a mailsift snapshot")
    raise SnapshotCorrupt(f"{source}: not a mailsift snapshot (it does not start with {MAGIC!r})")


def _parse_header(header: Any, source: str) -> tuple[SnapshotInfo, int, str]:
    def bad(problem: str) -> SnapshotCorrupt:
        return SnapshotCorrupt(f"{source}: the header {problem}")

    if not isinstance(header, dict):
        raise bad("is not a JSON object")
    if set(header) != _HEADER_FIELDS:
        missing, unknown = _HEADER_FIELDS - set(header), set(header) - _HEADER_FIELDS
        raise bad(f"has missing fields {sorted(missing)} or unknown ones {sorted(unknown)}")
    if header["format"] != FORMAT:
        raise bad(f"names format {header['format']!r}, not {FORMAT!r}")
    if header["format_version"] != FORMAT_VERSION:
        raise bad(
            f"says format version {header['format_version']!r}, its first line {FORMAT_VERSION}"
        )
    counts = {key: header[key] for key in ("ham", "spam", "log_position")}
    for key, value in counts.items():
        if not _is_int(value) or value < 0:
            raise bad(f"has {key} {value!r}, not a count")
    created_at = header["created_at"]
    if not isinstance(created_at, int | float) or isinstance(created_at, bool):
        raise bad(f"has created_at {created_at!r}, not a time")
    config, params, extra = header["feature_config"], header["params"], header["extra"]
    if not isinstance(config, dict):
        raise bad("has no feature settings")
    if not isinstance(params, dict) or not all(_is_scalar(v) for v in params.values()):
        raise bad(f"has model parameters {params!r}, not a map of numbers")
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise bad(f"has extra fields {extra!r}, not a map of strings")
    if not isinstance(header["model_version"], str):
        raise bad("has no model version")
    payload = header["payload"]
    if (
        not isinstance(payload, dict)
        or set(payload) != {"encoding", "length", "sha256"}
        or payload["encoding"] != "npz"
        or not _is_int(payload["length"])
        or payload["length"] < 0
        or not isinstance(payload["sha256"], str)
        or len(payload["sha256"]) != 64
    ):
        raise bad(f"describes the payload as {payload!r}")
    info = SnapshotInfo(
        format_version=FORMAT_VERSION,
        # Snapshots from before the raw view name no ``raw_bytes``: they had none.
        feature_config={"raw_bytes": 0, **config},
        ham=counts["ham"],
        spam=counts["spam"],
        created_at=float(created_at),
        log_position=counts["log_position"],
        model_version=header["model_version"],
        params=params,
        extra=extra,
    )
    return info, payload["length"], payload["sha256"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


# -- model state -----------------------------------------------------------------------


def _param_names() -> list[str]:
    """``SpamModel``'s hyper-parameters: its constructor's arguments after ``config``."""
    return [
        p.name
        for p in inspect.signature(SpamModel.__init__).parameters.values()
        if p.name not in ("self", "config") and p.kind is p.POSITIONAL_OR_KEYWORD
    ]


def _params(model: SpamModel) -> dict[str, Scalar]:
    params = {name: getattr(model, name) for name in _param_names()}
    for name, value in params.items():
        if not _is_scalar(value):
            raise TypeError(f"SpamModel parameter {name}={value!r} cannot go in a snapshot")
    return params


def _fits(value: Scalar, hint: Any) -> bool:
    """``value`` is of the annotated type (an int does for a float, as in PEP 484)."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and float in (hint, *typing.get_args(hint))
    ):
        return True
    try:
        return isinstance(value, hint)
    except TypeError:  # an annotation isinstance cannot check
        return True


def _state(model: SpamModel) -> dict[str, StateValue]:
    """Learned state by name: the model's attributes ending in ``_`` and its members'
    (``words.coef_`` …), so a new state attribute needs no change here."""
    state: dict[str, StateValue] = {}
    owners: list[tuple[str, object]] = [("", model)]
    owners += [(f"{k}.", v) for k, v in vars(model).items() if isinstance(v, EstimatorMixin)]
    for prefix, owner in owners:
        for name, value in vars(owner).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if not isinstance(value, np.ndarray | np.generic | int | float) or isinstance(
                value, bool | np.bool_ | np.object_
            ):
                raise TypeError(f"state {prefix}{name} ({type(value).__name__}) cannot be saved")
            state[prefix + name] = value
    return state


def _model(info: SnapshotInfo, payload: bytes, source: str) -> SpamModel:
    """A model of the header's settings holding the payload's arrays, all checked."""
    unknown = set(info.params) - set(_param_names())
    if unknown:
        raise SnapshotCorrupt(f"{source}: unknown model parameters {sorted(unknown)}")
    hints = typing.get_type_hints(SpamModel.__init__)
    for name, value in info.params.items():
        if not _fits(value, hints.get(name, object)):
            raise SnapshotCorrupt(
                f"{source}: model parameter {name}={value!r} is not a {hints[name]}"
            )
    try:
        params: dict[str, Any] = dict(info.params)
        model = SpamModel(FeatureConfig(**info.feature_config), **params)
    except (TypeError, ValueError) as exc:
        raise SnapshotCorrupt(f"{source}: unusable settings in the header ({exc})") from exc
    template = _state(model)
    if not payload.startswith(b"PK\x03\x04"):
        raise SnapshotCorrupt(f"{source}: the payload is not an npz archive")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            if sorted(archive.files) != sorted(template):  # duplicates too
                raise SnapshotCorrupt(
                    f"{source}: the payload holds {sorted(archive.files)}, "
                    f"a model needs {sorted(template)}"
                )
            for key, like in template.items():
                _restore(model, key, _array(archive, key, np.asarray(like), source), like)
    except SnapshotError:
        raise
    except Exception as exc:  # a damaged archive fails in many ways inside zipfile/numpy
        raise SnapshotCorrupt(
            f"{source}: the payload is not a readable archive ({type(exc).__name__}: {exc})"
        ) from exc
    return model


def _array(archive: Any, key: str, like: npt.NDArray[Any], source: str) -> npt.NDArray[Any]:
    # Check the size before numpy inflates it: the checksum proves integrity, not intent.
    if archive.zip.getinfo(f"{key}.npy").file_size > like.nbytes + _NPY_HEADER_ROOM:
        raise SnapshotCorrupt(f"{source}: {key} is larger than a model's")
    try:
        value: npt.NDArray[Any] = archive[key]  # an npz member is always an ndarray
    except ValueError as exc:  # an object array (a pickle) among them
        raise SnapshotCorrupt(f"{source}: {key} cannot be read ({exc})") from exc
    if value.dtype != like.dtype or value.shape != like.shape:
        raise SnapshotCorrupt(
            f"{source}: {key} has the wrong type or shape ({value.dtype} {value.shape}, "
            f"a model's is {like.dtype} {like.shape})"
        )
    return value


def _restore(model: SpamModel, key: str, value: npt.NDArray[Any], like: StateValue) -> None:
    member, _, name = key.rpartition(".")
    owner = getattr(model, member) if member else model
    restored: StateValue = value
    if isinstance(like, int):
        restored = int(value)
    elif isinstance(like, float):
        restored = float(value)
    setattr(owner, name, restored)


def _state_digest(arrays: dict[str, npt.NDArray[Any]]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key} {value.dtype.str} {value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# -- files -----------------------------------------------------------------------------


def _keep_previous(path: Path) -> None:
    """Link the current file as ``<name>.prev`` (renaming it would leave ``path`` missing
    until the new file is moved in, and a reader in between would find no snapshot)."""
    prev = path.with_name(path.name + ".prev")
    prev.unlink(missing_ok=True)
    try:
        os.link(path, prev)
    except OSError:  # no hard links on this filesystem
        shutil.copyfile(path, prev)
        os.chmod(prev, 0o600)


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
