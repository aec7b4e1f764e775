"""Modern phishing through a service taught only old mail: the share not passed as ham.

Trains a fresh service's training log on the given corpora with ``mailsift train`` (an
administrator's examples, then the rebuild that publishes the served model), starts
``mailsift serve`` on it, scores every message of a folder of phishing inbound through
``POST /v1/score`` with a gateway token, and prints one JSON object: how many got each
verdict, and the share whose verdict is not ``ham``.

    .venv/bin/python -m benchmarks.phishing PHISH_DIR --train ../shared/corpora/spamassassin \\
        --train ../shared/corpora/trec07p_dev

A public collection of 2022-26 phishing is rf-peixoto/phishing_pot (``email/*.eml``).
Nothing of it is kept in this repository.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.service.server import Service

_CLI = [sys.executable, "-m", "mailsift.cli"]


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(_CLI + args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mailsift {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def main(phish_dir: Path, train: list[str]) -> dict[str, object]:
    files = sorted(p for p in phish_dir.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory(prefix="mailsift-phish-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "MAILSIFT_DATA_DIR": str(data_dir), "NO_COLOR": "1"}
        started = time.perf_counter()
        _run(["train", *train], env)
        trained_s = time.perf_counter() - started
        token = _run(["token", "create", "--role", "gateway", "--name", "bench"], env).split()[-1]
        verdicts: collections.Counter[str] = collections.Counter()
        learning = 0
        service = Service(data_dir, env={"MAILSIFT_REBUILD_EVERY_ENTRIES": "0"})
        with service as svc, svc.client(token) as client:
            for path in files:
                answer = client.post(
                    "/v1/score",
                    params={"direction": "inbound", "rcpt": "user@example.com"},
                    content=path.read_bytes(),
                    headers={"content-type": "message/rfc822"},
                )
                if answer.status_code != 200:
                    verdicts[f"http_{answer.status_code}"] += 1
                    continue
                body = answer.json()
                verdicts[body["verdict"]] += 1
                learning += bool(body["model"]["learning"])
    scored = sum(v for k, v in verdicts.items() if not k.startswith("http_"))
    return {
        "messages": len(files),
        "trained_on": train,
        "train_seconds": round(trained_s, 1),
        "verdicts": dict(verdicts),
        "model_learning": learning,
        "not_ham_pct": round(100 * (scored - verdicts["ham"]) / max(1, scored), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phish_dir", type=Path)
    parser.add_argument("--train", action="append", required=True, help="a corpus (repeat)")
    args = parser.parse_args()
    print(json.dumps(main(args.phish_dir, args.train)))
