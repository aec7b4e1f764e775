"""Training-log examples for tests, featurised as the service does."""

from __future__ import annotations

import dataclasses

from mailsift.learning.examples import example_of
from mailsift.learning.trainlog import Example
from mailsift.models.features import FeatureConfig
from mailsift.models.parse import DEFAULT_LIMITS
from mailsift.models.stored import features_version

CONFIG = FeatureConfig()
VERSION = features_version(CONFIG)


def ex(raw: bytes, sender: str | None = None) -> Example:
    """``raw`` as the log stores it; ``sender`` stands for its From address when given."""
    example = example_of(raw, CONFIG, VERSION, DEFAULT_LIMITS)
    return dataclasses.replace(example, sender=sender) if sender else example


def slow_to_parse() -> bytes:
    """250 text parts: several milliseconds of MIME parsing, past a 1 ms parse budget."""
    parts = "".join(
        f"--b\r\nContent-Type: text/plain\r\n\r\npart {i} " + "word " * 400 + "\r\n"
        for i in range(250)
    )
    return (
        "From: big@list.example\r\nSubject: a long digest\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + "--b--\r\n"
    ).encode()
