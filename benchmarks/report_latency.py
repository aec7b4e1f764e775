"""Wall time of ``mailsift report``, as Dovecot runs it: one process per report.

Starts a real service (``mailsift serve``, a fresh data dir), creates a reporter token,
scores N messages for one user, then reports each of them through the command line
(alternating spam and ham across users) and prints the median and p99 wall time as JSON.

    .venv/bin/python -m benchmarks.report_latency [N]     # N defaults to 200
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.service.server import Service, score
from tests.service.test_feedback_e2e import create_token


def _message(n: int) -> bytes:
    return (
        f"From: Club {n} <club{n}@garden.example>\r\nTo: members@corp.example\r\n"
        f"Subject: Seed swap {n}\r\nMessage-ID: <seed{n}@garden.example>\r\n\r\n"
        f"Bring spare seeds to the hall, list {n}.\r\n"
    ).encode()


def main(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mailsift-report-bench-") as tmp:
        env = {"MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": str(10 * n)}
        with Service(Path(tmp) / "data", env=env) as svc, svc.client() as admin:
            token = Path(tmp) / "reporter.token"
            token.write_text(
                create_token(svc.data_dir, "--role", "reporter", "--address", "@corp.example")
            )
            users = [f"user{i % 20}@corp.example" for i in range(n)]
            for i, user in enumerate(users):
                score(admin, _message(i), "inbound", (user,))
            command = [sys.executable, "-m", "mailsift.cli", "report"]
            args = ["--url", svc.url, "--token-file", str(token), "--via", "imap"]
            walls: list[float] = []
            for i, user in enumerate(users):
                label = "spam" if i % 2 == 0 else "ham"
                started = time.perf_counter()
                done = subprocess.run(
                    [*command, label, "--user", user, *args],
                    input=_message(i),
                    capture_output=True,
                    env=os.environ.copy(),
                )
                walls.append((time.perf_counter() - started) * 1000)
                if done.returncode != 0:
                    raise SystemExit(f"report {i} failed: {done.stderr.decode().strip()}")
    ordered = sorted(walls)
    return {
        "reports": n,
        "median_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(n - 1, int(0.99 * n))], 1),
        "max_ms": round(ordered[-1], 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)))
