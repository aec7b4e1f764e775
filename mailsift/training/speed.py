"""Where one message's time goes: parse, features, model score — medians per message."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mailsift.models.ensemble import SpamModel
from mailsift.models.parse import parse_message
from mailsift.models.snapshot import save_snapshot
from mailsift.training.corpus import LabelledMessage

__all__ = ["measure_speed"]


def measure_speed(messages: Sequence[LabelledMessage]) -> dict[str, float]:
    """Train on ``messages`` (online pass), then time each stage on every message.

    Each stage is timed per message with ``perf_counter`` around that stage alone, so
    the medians do not include the others; the model is the fully trained one.
    """
    model = SpamModel()
    started = time.perf_counter()
    for msg in messages:
        f = model.features(parse_message(msg.raw))
        model.score(f)
        if msg.label:
            model.learn(f, msg.label)
    online = time.perf_counter() - started
    parse_t: list[float] = []
    feat_t: list[float] = []
    score_t: list[float] = []
    explain_t: list[float] = []
    for msg in messages:
        t0 = time.perf_counter()
        parsed = parse_message(msg.raw)
        t1 = time.perf_counter()
        f = model.features(parsed)
        t2 = time.perf_counter()
        model.score(f)
        t3 = time.perf_counter()
        model.score(f, explain=8)
        t4 = time.perf_counter()
        parse_t.append(t1 - t0)
        feat_t.append(t2 - t1)
        score_t.append(t3 - t2)
        explain_t.append(t4 - t3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.snapshot"
        save_snapshot(model, path)
        snapshot_mb = path.stat().st_size / 2**20
    ms = 1000.0
    return {
        "messages": len(messages),
        "online_msgs_per_s": round(len(messages) / online, 1),
        "parse_ms_median": round(statistics.median(parse_t) * ms, 4),
        "features_ms_median": round(statistics.median(feat_t) * ms, 4),
        "score_ms_median": round(statistics.median(score_t) * ms, 4),
        "score_explain_ms_median": round(statistics.median(explain_t) * ms, 4),
        "parsed_to_score_ms_median": round(
            statistics.median(f + s for f, s in zip(feat_t, explain_t, strict=True)) * ms, 4
        ),
        "model_memory_mb": round(model.nbytes / 2**20, 1),
        "snapshot_mb": round(snapshot_mb, 1),
    }
