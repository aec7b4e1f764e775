"""What every replica pays for every training-log entry: the CPU of applying it (#14,
docs/scale-out.md). Every replica applies every entry, so this is the part of learning
that grows with the number of replicas: N replicas spend N times it per entry.

    .venv/bin/python -m benchmarks.replay_cost [CORPUS]

Appends the corpus to a fresh SQLite training log (as ``mailsift train`` does: features
stored with each entry), then replays it into an empty model the way a worker follows
the log (``Learner.catch_up``) and prints one JSON object: entries, seconds, CPU
milliseconds per entry, and the entries per second one core can apply.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from mailsift.learning.learner import Learner
from mailsift.learning.published import PublishedModels
from mailsift.learning.rebuild import publish, rebuild_lock, rebuild_model
from mailsift.learning.trainlog import open_training_log
from mailsift.service.settings import Settings
from mailsift.training.corpus import open_source
from mailsift.training.train import train_log


def main() -> None:
    corpus = sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora/spamassassin"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data)
        trainlog = open_training_log(None, data)
        train_log(list(open_source(corpus)), trainlog, actor="replay-cost")
        learner = Learner(
            trainlog, PublishedModels(trainlog.engine), data / "model.snapshot",
            settings.parse_limits,
        )  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        applied = asyncio.run(learner.catch_up())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with trainlog.engine.connect() as conn:
            raw, features = conn.execute(
                text("SELECT avg(length(raw)), avg(length(features)) FROM trainlog_entries")
            ).one()
        published = PublishedModels(trainlog.engine)
        with rebuild_lock(trainlog, data, wait=True):
            publish(trainlog, rebuild_model(trainlog, settings.parse_limits))
        newest = published.newest()
        blob = None if newest is None else published.data(newest.id)
        model_bytes = None if blob is None else len(blob)
        trainlog.close()
    print(
        json.dumps(
            {
                "entries": applied,
                "seconds": round(wall, 2),
                "cpu_ms_per_entry": round(cpu * 1000 / max(1, applied), 3),
                "entries_per_core_second": round(applied / max(cpu, 1e-9), 1),
                # What each worker reads per entry: the follower fetches both.
                "raw_bytes_per_entry": round(float(raw)),
                "features_bytes_per_entry": round(float(features)),
                "published_model_bytes": model_bytes,
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
