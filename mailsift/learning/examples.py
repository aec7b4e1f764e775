"""Turning a raw message into what the training log stores, the same on every machine.

Learning must never depend on how loaded the machine was: the parse time budget protects
scoring, so a message is featurised for learning without one (the size caps still bound
the work). When scoring's parse finished within its budget, its features are exactly
those and are reused; only a parse the budget cut short is done again.
"""

from __future__ import annotations

import dataclasses
import logging

from mailsift.learning.trainlog import Example
from mailsift.models.features import FeatureConfig, Features, extract
from mailsift.models.parse import TIME_BUDGET, ParsedMessage, ParseLimits, parse_message
from mailsift.models.stored import StoredFeaturesError, decode_features, encode_features

__all__ = ["NO_TIME_BUDGET_MS", "example_of", "learning_limits", "stored_or_fresh"]

log = logging.getLogger("mailsift.learning")

NO_TIME_BUDGET_MS = 10**9
"""A parse budget that never runs out: the caps on bytes, parts and depth bound the work."""
_CUT = TIME_BUDGET


def learning_limits(limits: ParseLimits) -> ParseLimits:
    """``limits`` without the wall-clock budget."""
    return dataclasses.replace(limits, time_budget_ms=NO_TIME_BUDGET_MS)


def learning_features(raw: bytes, config: FeatureConfig, limits: ParseLimits) -> Features:
    return extract(parse_message(raw, learning_limits(limits)), config)


def example_of(
    raw: bytes,
    config: FeatureConfig,
    version: str,
    limits: ParseLimits,
    *,
    parsed: ParsedMessage | None = None,
    features: Features | None = None,
) -> Example:
    """The log's example of ``raw``; reuses scoring's parse unless its budget cut it."""
    if parsed is None or features is None or _CUT in parsed.defects:
        parsed = parse_message(raw, learning_limits(limits))
        features = extract(parsed, config)
    return Example(raw, encode_features(features), version, parsed.from_addr or None)


def stored_or_fresh(
    stored: bytes | None,
    stored_version: str | None,
    raw: bytes,
    config: FeatureConfig,
    version: str,
    limits: ParseLimits,
) -> Features | None:
    """The features to learn: stored ones of this version, else computed from ``raw``
    (an entry from before features were stored, or from other feature settings); None
    when neither is there (its raw bytes are past retention)."""
    if stored is not None and stored_version == version:
        try:
            return decode_features(stored)
        except StoredFeaturesError as exc:
            log.error("stored features unreadable (%s): learning from the raw bytes", exc)
    if raw:
        return learning_features(raw, config, limits)
    return None
