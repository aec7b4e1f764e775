"""Features as the training log stores them: computed once, when an example is appended.

Replay and rebuild learn from these bytes and never parse a message again, so every
process learns exactly the same vectors whatever its load or its parse time budget.
Only the indices are stored: every view is sorted unique indices whose values are all
``1/sqrt(n)`` (see :func:`~mailsift.models.features.extract`), so values are recomputed
bit for bit. Indices are delta-encoded and compressed (a message costs about as much as
its compressed raw bytes). :func:`features_version` names the feature settings and the
tokeniser; an entry stored under another version is featurised again from its raw bytes
(while they are kept) or skipped.

>>> from mailsift.models.features import FeatureConfig, extract
>>> from mailsift.models.parse import parse_message
>>> f = extract(parse_message(b"Subject: hi\\r\\n\\r\\nlunch at noon?"), FeatureConfig())
>>> g = decode_features(encode_features(f))
>>> bool((g.word_idx == f.word_idx).all() and (g.char_val == f.char_val).all())
True
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import numpy as np

from mailsift.models.features import TOKENISER_VERSION, FeatureConfig, Features

__all__ = ["StoredFeaturesError", "decode_features", "encode_features", "features_version"]

_HEAD = struct.Struct(">BIII")  # format, word, char and raw counts
_FORMAT = 2


class StoredFeaturesError(ValueError):
    """Stored feature bytes that cannot be decoded (damaged, or another format)."""


def features_version(config: FeatureConfig) -> str:
    """A short name for (feature settings, tokeniser): vectors of one version compare."""
    text = json.dumps({"config": config.as_dict(), "tokeniser": TOKENISER_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_features(f: Features) -> bytes:
    """The views' index arrays, delta-encoded as uint32 and compressed."""
    word, char, raw = _deltas(f.word_idx), _deltas(f.char_idx), _deltas(f.raw_idx)
    body = word.tobytes() + char.tobytes() + raw.tobytes()
    return _HEAD.pack(_FORMAT, word.size, char.size, raw.size) + zlib.compress(body, 6)


def decode_features(data: bytes) -> Features:
    """Features for learning (no tokens: those only explain a score)."""
    if data[:1] != bytes([_FORMAT]):
        fmt = data[0] if data else "none"
        raise StoredFeaturesError(f"stored features have format {fmt}, not {_FORMAT}")
    if len(data) < _HEAD.size:
        raise StoredFeaturesError("stored features are truncated")
    _, n_word, n_char, n_raw = _HEAD.unpack_from(data)
    try:
        body = zlib.decompress(data[_HEAD.size :])
    except zlib.error as exc:
        raise StoredFeaturesError(f"stored features are damaged ({exc})") from None
    if len(body) != 4 * (n_word + n_char + n_raw):
        raise StoredFeaturesError("stored features have the wrong length")
    deltas = np.frombuffer(body, dtype=">u4").astype(np.int64)
    word_idx = np.cumsum(deltas[:n_word])
    char_idx = np.cumsum(deltas[n_word : n_word + n_char])
    raw_idx = np.cumsum(deltas[n_word + n_char :])
    return Features(
        (), word_idx, _values(n_word), char_idx, _values(n_char), raw_idx, _values(n_raw)
    )


def _deltas(idx: np.ndarray) -> np.ndarray:
    if idx.size and (idx[0] < 0 or (np.diff(idx) <= 0).any()):
        raise ValueError("feature indices must be sorted, unique and non-negative")
    return np.diff(idx, prepend=0).astype(">u4")


def _values(n: int) -> np.ndarray:
    return np.full(n, float(n) ** -0.5 if n else 0.0, dtype=np.float32)
