"""How responsive one worker's event loop stays while it scores large outbound messages.

Starts a real service (``mailsift serve``, one worker, a fresh data dir), keeps CLIENTS
clients posting a ~2 MB outbound message each (text attachments the leak scan reads in
full) for SECONDS, and meanwhile probes ``GET /healthz`` every 20 ms. ``/healthz`` does
no work, so its latency is the time the loop was busy with something else. Prints the
probes' p50, p99 and max in milliseconds, and the messages scored, as JSON.

    .venv/bin/python -m benchmarks.loop_latency [SECONDS] [CLIENTS]   # 15 s, 6 clients
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.service.server import Service

_WORDS = [
    "the",
    "quarterly",
    "invoice",
    "order",
    "report",
    "meeting",
    "budget",
    "account",
    "reference",
    "booking",
    "ticket",
    "shipment",
    "agenda",
    "review",
    "customer",
    "supplier",
    "total",
    "amount",
    "due",
]


def large_outbound(n: int, size: int = 2 * 1024 * 1024, seed: int = 7) -> bytes:
    """An outbound message of about ``size`` bytes: a short note and CSV attachments of
    words and numbers, so that parsing, features and the leak scan all have work."""
    rng = random.Random(seed)
    part_size = 240 * 1024
    head = (
        f"From: Ann <ann@corp.example>\r\nTo: bob@partner.example\r\n"
        f"Subject: Quarterly figures {n}\r\nMessage-ID: <fig{n}@corp.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
        "--b0\r\nContent-Type: text/plain\r\n\r\nThe figures are attached.\r\n"
    )
    parts = [head]
    total = len(head)
    i = 0
    while total < size:
        rows: list[str] = []
        length = 0
        while length < part_size:
            row = ",".join(
                rng.choice(_WORDS) if rng.random() < 0.6 else str(rng.randrange(10**4, 10**12))
                for _ in range(10)
            )
            rows.append(row)
            length += len(row) + 2
        part = (
            f"--b0\r\nContent-Type: text/csv\r\n"
            f'Content-Disposition: attachment; filename="sheet{i}.csv"\r\n\r\n'
            + "\r\n".join(rows)
            + "\r\n"
        )
        parts.append(part)
        total += len(part)
        i += 1
    parts.append("--b0--\r\n")
    return "".join(parts).encode()


def measure(svc: Service, seconds: float, clients: int) -> dict[str, float]:
    """Probe ``/healthz`` while ``clients`` threads score large outbound messages."""
    stop = threading.Event()
    scored = [0] * clients
    failures: list[str] = []

    def load(k: int) -> None:
        raw = large_outbound(k)
        params = {"direction": "outbound", "mail_from": "ann@corp.example"}
        with svc.client() as client:
            while not stop.is_set():
                r = client.post(
                    "/v1/score",
                    params={**params, "rcpt": f"bob{k}@partner.example"},
                    content=raw,
                    headers={"content-type": "message/rfc822"},
                    timeout=120,
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    return
                scored[k] += 1

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    probes: list[float] = []
    with httpx.Client(base_url=svc.url, timeout=30) as probe:
        time.sleep(1.0)  # let every client have a message in flight
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            r = probe.get("/healthz")
            probes.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
            time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    if failures:
        raise RuntimeError(f"scoring failed: {failures[0]}")
    ordered = sorted(probes)
    return {
        "probes": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
        "messages_scored": sum(scored),
        "clients": clients,
        "message_bytes": len(large_outbound(0)),
    }


def main(seconds: float, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mailsift-loop-bench-") as tmp:
        env = {"MAILSIFT_LIMIT_MESSAGES_PER_HOUR": "0", "MAILSIFT_LIMIT_MESSAGES_PER_DAY": "0"}
        with Service(Path(tmp) / "data", env=env) as svc:
            return measure(svc, seconds, clients)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    print(json.dumps(main(seconds, clients)))
