"""ParsedMessage -> tokens -> hashed sparse vectors.

Three views of a message feed the models:

* **words** — word unigrams and adjacent word pairs, each prefixed with where it was
  found (``subject:``, ``body:``, ``from:``, ``url:``, ``hdr:`` …), so the same word in
  different places is a different feature;
* **chars** — byte 4-grams of the first few kilobytes of the decoded subject, sender
  and body text, which survive the obfuscation spammers use against word filters
  (``V1agra``, split words, odd spacing) and need no tokeniser at all;
* **raw** — byte n-grams of the first ``raw_bytes`` of the message exactly as it came,
  headers first: the relays, mailers, boundaries and encodings the text view never sees.
  Headers are site-specific, which is why this view is a member of its own beside the
  text view rather than replacing it: a filter learns one site's mail, where its own
  headers tell, and the ensemble weighs the view by how well it does on that stream.
  (Alone it was better on ``trec07p_dev`` and worse on SpamAssassin; beside the others,
  better on both.)

All three are hashed into a fixed space with hashes that do not depend on the process
(``zlib.crc32`` and a multiplicative mix, never Python's salted ``hash()``), so every
worker and replica maps a message to the same vector.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mailsift.models.parse import ParsedMessage
from mailsift.models.trace import added_by_receiver, without_receiver_fields

__all__ = ["TOKENISER_VERSION", "FeatureConfig", "Features", "extract", "tokenize", "words"]

TOKENISER_VERSION = 2
"""Bump whenever :func:`tokenize` or :func:`extract` would map a message differently:
features stored on the training log under another version are then computed afresh."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

_GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)
_NONE: IntArray = np.zeros(0, dtype=np.int64)
_WORD_RE = re.compile(r"[^\W_][\w'$%.,@-]*[^\W_]|[^\W_]|[$!€£]")
_NUMBER_RE = re.compile(r"[\d.,:%$-]+")
_MAX_TOKEN_CHARS = 40
_SHORT_VALUE = 1000
"""Header values up to this many characters are tokenised whole, then cut to ``header_words``."""

# Header fields whose words are features. Names of *all* fields are features too
# (presence of e.g. List-Id or X-Mailer says a lot); values of the rest are mostly
# noise (dates, ids) that would only grow the model.
_WORD_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "reply-to",
        "return-path",
        "sender",
        "x-mailer",
        "user-agent",
        "content-type",
        "content-transfer-encoding",
        "x-priority",
        "x-msmail-priority",
        "mime-version",
        "list-id",
        "list-unsubscribe",
        "precedence",
        "organization",
        "errors-to",
    }
)


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How messages become vectors; a snapshot is only valid for the config it was made with."""

    n_bits: int = 20
    """Hash space is 2**n_bits per view."""
    body_chars: int = 20_000
    """Characters of body text (plain + HTML-visible) tokenised."""
    word_pairs: bool = True
    """Add adjacent word pairs of the subject and body."""
    header_words: int = 50
    """Words taken from one header field value."""
    char_ngram: int = 4
    """Byte n-gram length of the chars view; 0 turns the view off."""
    char_bytes: int = 5000
    """Bytes the chars view reads."""
    char_source: str = "text"
    """What the chars view reads: ``raw`` message bytes (headers first) or decoded ``text``."""
    raw_bytes: int = 3000
    """Bytes of the raw message (headers first) the raw view reads, in ``char_ngram``-grams;
    0 turns the view off. About 3 KB, as in the TREC 2007 runs that read raw bytes."""

    def __post_init__(self) -> None:
        if not 16 <= self.n_bits <= 26:
            raise ValueError("n_bits must be between 16 and 26")
        if self.char_ngram not in (0, 2, 3, 4, 5, 6, 7, 8):
            raise ValueError("char_ngram must be 0 (off) or 2..8")
        if self.char_source not in ("raw", "text"):
            raise ValueError("char_source must be 'raw' or 'text'")
        if min(self.body_chars, self.header_words, self.char_bytes, self.raw_bytes) < 0:
            raise ValueError(
                "body_chars, header_words, char_bytes and raw_bytes must not be negative"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Features:
    """One message's vectors; word indices are unique and parallel to ``tokens``."""

    tokens: tuple[str, ...]
    word_idx: IntArray
    word_val: FloatArray
    char_idx: IntArray
    char_val: FloatArray
    raw_idx: IntArray
    raw_val: FloatArray


def tokenize(msg: ParsedMessage, config: FeatureConfig) -> list[str]:
    """Prefixed tokens of the words view, in first-seen order.

    Repeats within a field are dropped before prefixing (a body says "the" a hundred
    times); a token may still repeat across fields, which :func:`extract` folds.

    >>> from mailsift.models.parse import parse_message
    >>> m = parse_message(b"Subject: Cheap pills\\r\\nFrom: x@spam.test\\r\\n\\r\\nBuy now")
    >>> [t for t in tokenize(m, FeatureConfig()) if t.startswith("subject:")]
    ['subject:cheap', 'subject:pills', 'subject:cheap pills']
    """
    out: list[str] = []
    subject = _words(msg.subject)
    out += _prefixed("subject:", subject)
    if config.word_pairs:
        out += _prefixed("subject:", _pairs(subject))
    address = msg.from_addr
    domain = address.rpartition("@")[2]
    out += ["from:" + address, "from-name:" + msg.from_name.lower()[:_MAX_TOKEN_CHARS]]
    out += ["from-domain:" + d for d in _parent_domains(domain)]
    if msg.reply_to and msg.reply_to != address:
        out.append("reply-to-domain:" + msg.reply_to.rpartition("@")[2])
    body = _words((msg.text + "\n" + msg.html_text)[: config.body_chars])
    out += _prefixed("body:", body)
    if config.word_pairs:
        out += _prefixed("body:", _pairs(body))
    for url_domain in msg.url_domains:
        out += ["url:" + d for d in _parent_domains(url_domain)]
    for name, value in msg.headers:
        if added_by_receiver(name):
            continue
        out.append("hdr:" + name[:_MAX_TOKEN_CHARS])
        if name == "received":
            out += _prefixed(
                "hdr:received:", _not_numbers(_first_words(value, config.header_words))
            )
        elif name in _WORD_HEADERS:
            out += _prefixed("hdr:" + name + ":", _first_words(value, config.header_words))
    out.append("type:" + msg.content_type)
    if msg.mailer:
        out.append("mailer:" + msg.mailer.lower()[:_MAX_TOKEN_CHARS])
    out += ["attach:" + a.content_type for a in msg.attachments]
    out.append(f"shape:hops={min(msg.received_hops, 10)}")
    if msg.html_text and not msg.text:
        out.append("shape:html-only")
    out += ["shape:" + d for d in msg.defects]
    return out


def extract(msg: ParsedMessage, config: FeatureConfig) -> Features:
    """The hashed views of a message, each L2-normalised so long mail does not shout."""
    tokens = tuple(dict.fromkeys(tokenize(msg, config)))  # distinct, in first-seen order
    hashed = hash_tokens(tokens, config.n_bits)
    # Distinct indices, each with the first token that hashed there (for explanations).
    order = np.argsort(hashed, kind="stable")
    ordered = hashed[order]
    keep = _first_of_runs(ordered)
    word_idx = ordered[keep]
    kept = tuple(map(tokens.__getitem__, order[keep].tolist()))
    word_val = np.full(word_idx.size, _inv_sqrt(word_idx.size), dtype=np.float32)
    char_idx = _char_ngrams(_char_input(msg, config), config)
    char_val = np.full(char_idx.size, _inv_sqrt(char_idx.size), dtype=np.float32)
    raw_idx = _char_ngrams(_raw_input(msg, config), config) if config.raw_bytes else _NONE
    raw_val = np.full(raw_idx.size, _inv_sqrt(raw_idx.size), dtype=np.float32)
    return Features(kept, word_idx, word_val, char_idx, char_val, raw_idx, raw_val)


def hash_tokens(tokens: tuple[str, ...] | list[str], n_bits: int) -> IntArray:
    """Deterministic token -> index in [0, 2**n_bits): CRC-32 of the UTF-8, then mixed.

    ``map`` over C functions keeps this free of Python frames, about 0.3 µs a token. A
    memo of earlier tokens was slower: a dict of a few hundred thousand strings misses
    the CPU cache on every lookup, which costs more than hashing a short string again.
    """
    try:
        encoded = list(map(str.encode, tokens))
    except UnicodeEncodeError:  # a lone surrogate (undecodable bytes kept by the parser)
        encoded = [t.encode("utf-8", "surrogatepass") for t in tokens]
    crc = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint64, count=len(encoded))
    return _mix(crc, n_bits)


def _first_of_runs(ordered: IntArray) -> npt.NDArray[np.bool_]:
    """Mask of the first element of each run of equal values in a sorted array.

    (``np.unique`` does the same but costs ~20x more on arrays this small.)
    """
    keep = np.empty(ordered.size, dtype=bool)
    if ordered.size:
        keep[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return keep


def _mix(values: npt.NDArray[np.uint64], n_bits: int) -> IntArray:
    """Fibonacci hashing: spreads CRC (linear, clustered low bits) over the top bits."""
    with np.errstate(over="ignore"):
        mixed = (values * _GOLDEN64) >> np.uint64(64 - n_bits)
    return mixed.astype(np.int64)


def _char_ngrams(data: bytes, config: FeatureConfig) -> IntArray:
    """Unique hashed byte n-grams, computed as whole-array operations (no Python loop)."""
    n = config.char_ngram
    if n == 0 or len(data) < n:
        return np.zeros(0, dtype=np.int64)
    b = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    width = b.size - n + 1
    packed = np.zeros(width, dtype=np.uint64)
    for i in range(n):
        packed = (packed << np.uint64(8)) | b[i : i + width]
    ordered = np.sort(_mix(packed + np.uint64(n), config.n_bits))
    return ordered[_first_of_runs(ordered)]


def _raw_input(msg: ParsedMessage, config: FeatureConfig) -> bytes:
    """The message's first bytes as the sender sent them (see :mod:`mailsift.models.trace`)."""
    return without_receiver_fields(msg.prefix)[: config.raw_bytes]


def _char_input(msg: ParsedMessage, config: FeatureConfig) -> bytes:
    if config.char_source == "raw":
        return msg.prefix[: config.char_bytes]
    text = f"{msg.subject}\n{msg.from_name} {msg.from_addr}\n{msg.text}\n{msg.html_text}"
    return text[: config.char_bytes].encode("utf-8", "surrogatepass")


def words(text: str) -> list[str]:
    """The words of ``text`` exactly as tokens spell them (lower case, capped)."""
    return _words(text)


def _words(text: str) -> list[str]:
    words: list[str] = _WORD_RE.findall(text.lower())
    if words and max(map(len, words)) > _MAX_TOKEN_CHARS:  # rare: skip the copy otherwise
        words = [w[:_MAX_TOKEN_CHARS] for w in words]
    return words


def _prefixed(prefix: str, words: Iterable[str]) -> list[str]:
    """``prefix + w`` for each distinct word, in first-seen order (all in C: no frame per word)."""
    return list(map(prefix.__add__, dict.fromkeys(words)))


def _pairs(words: list[str]) -> Iterator[str]:
    """Adjacent words joined by a space."""
    return map(" ".join, itertools.pairwise(words))


def _not_numbers(words: list[str]) -> list[str]:
    """``words`` without the numbers: a trace header's times, dates and addresses
    (see :mod:`mailsift.models.trace`)."""
    return [w for w in words if not _NUMBER_RE.fullmatch(w)]


def _first_words(text: str, n: int) -> list[str]:
    """``_words(text)[:n]`` without tokenising all of a long value (one may be 32 KB)."""
    if len(text) <= _SHORT_VALUE:  # nearly every header: findall is 3x cheaper than finditer
        return _words(text)[:n]
    found = itertools.islice(_WORD_RE.finditer(text.lower()), n)
    return [m.group()[:_MAX_TOKEN_CHARS] for m in found]


def _parent_domains(domain: str) -> list[str]:
    """``a.b.example.com`` -> the domain and its parents down to two labels."""
    if not domain:
        return []
    labels = domain.lower().split(".")
    start = max(0, len(labels) - 4)
    return [".".join(labels[i:]) for i in range(start, max(start + 1, len(labels) - 1))]


def _inv_sqrt(n: int) -> float:
    return float(n) ** -0.5 if n else 0.0
