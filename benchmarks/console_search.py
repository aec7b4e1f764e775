"""The console's History search (and Overview charts) on a million audit rows, SQLite.

Fills a fresh state database with N audit rows (default 1,000,000) spread over the last
seven days — dense: a week of a busy site, the worst case for the time-bounded scans —
through the audit trail's own writer, then times each kind of search the History page
runs (``mailsift.service.console.search``), on a day's and a week's window, plus the
Overview's traffic query (its slowest run is the first draw, which groups every row of
the range; the median is a redraw, which reads only the buckets not yet settled).
Prints JSON: per query the median and slowest of 5 runs in ms,
the rows found and how many hours back the answer looked (a search for something rare
stops at its time budget and offers to go on: see ``mailsift.service.console.search``).

    .venv/bin/python -m benchmarks.console_search [N]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailsift.service.audit import AuditRecord, AuditTrail
from mailsift.service.console.search import HistoryQuery, search
from mailsift.service.console.traffic import RANGES, traffic
from mailsift.service.db import open_state_engine
from mailsift.service.settings import Settings

RUNS = 5
SPAN = 7 * 86_400.0
RARE_SENDER = "rare.sender@once.example"
RARE_RCPT = "rare.rcpt@corp.example"
RARE_REASON = "dlp_iban"
FINGERPRINT = "f" * 32


def _fill(trail: AuditTrail, n: int, now: float) -> None:
    rng = random.Random(7)
    senders = [f"s{i}@sender{i % 997}.example" for i in range(20_000)]
    rcpts = [f"u{i}@corp.example" for i in range(5_000)]
    specials = {n // 3, n // 2, (2 * n) // 3}  # the rare rows, spread through the week
    for i in range(n):
        at = now - SPAN + SPAN * i / n
        direction = "outbound" if rng.random() < 0.2 else "inbound"
        roll = rng.random()
        verdict, action = (
            ("spam", "reject")
            if roll < 0.2
            else ("suspect", "tag")
            if roll < 0.3
            else ("ham", "accept")
        )
        reasons: tuple[tuple[str, float], ...] = (("model", rng.uniform(-5, 5)),)
        if rng.random() < 0.05:
            reasons += (("auth_spf_fail", 1.5),)
        special = i in specials
        if special:
            reasons += ((RARE_REASON, 4.0),)
        rcpt = [rng.choice(rcpts) for _ in range(1 + (rng.random() < 0.1))]
        trail.record(
            AuditRecord(
                time=at,
                direction=direction,
                score=rng.random(),
                verdict=verdict,
                action=action,
                gateway="mx1",
                queue_id=f"Q{i:08X}",
                message_id=f"{i}@mail.example",
                mail_from=RARE_SENDER if special else rng.choice(senders),
                from_addr=rng.choice(senders),
                recipients=(*rcpt, RARE_RCPT) if special else tuple(rcpt),
                user=rng.choice(rcpts) if direction == "outbound" else None,
                reasons=reasons,
                model_version="bench+1",
                fingerprint=FINGERPRINT if i == n // 2 else f"{rng.getrandbits(128):032x}",
            )
        )
        if trail.buffered >= 20_000:
            trail.flush()
    trail.flush()


def _time(call: Any) -> tuple[float, float, Any]:
    times, found = [], None
    for _ in range(RUNS):
        started = time.perf_counter()
        found = call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2), round(max(times), 2), found


def main(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mailsift-console-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), audit_retention_days=90)
        engine = open_state_engine(None, settings.data_dir)
        trail = AuditTrail(engine, settings, batch_rows=5_000, max_buffer=50_000)
        now = time.time()
        started = time.perf_counter()
        _fill(trail, n, now)
        fill_s = time.perf_counter() - started
        latest = search(engine, HistoryQuery(window="hour"), now=now, limit=1)
        common_sender = latest.rows[0]["mail_from"]
        filters: dict[str, dict[str, str]] = {
            "latest (no filter)": {},
            "sender, rare": {"sender": RARE_SENDER},
            "sender, common": {"sender": common_sender},
            "recipient, rare": {"recipient": RARE_RCPT},
            "recipient, common": {"recipient": "u1@corp.example"},
            "fingerprint": {"fingerprint": FINGERPRINT},
            "message id": {"message_id": f"{n // 2}@mail.example"},
            "verdict spam": {"verdict": "spam"},
            "action reject": {"action": "reject"},
            "reason, rare": {"reason": RARE_REASON},
            "reason, common": {"reason": "auth_spf_fail"},
            "outbound spam": {"direction": "outbound", "verdict": "spam"},
        }
        results: dict[str, Any] = {}
        for window in ("day", "week"):
            for name, given in filters.items():
                query = HistoryQuery.of({**given, "window": window})
                median, worst, found = _time(lambda q=query: search(engine, q, now=now))
                results[f"{name} [{window}]"] = {
                    "median_ms": median,
                    "max_ms": worst,
                    "rows": len(found.rows),
                    "hours_searched": round((now - found.searched_from) / 3600, 1),
                }
        charts = {}
        for span in RANGES:
            median, worst, found = _time(lambda s=span: traffic(engine, s, now))
            charts[span] = {"median_ms": median, "max_ms": worst, "messages": found.total}
        size = sum(f.stat().st_size for f in Path(tmp).glob("state.db*"))
        engine.dispose()
    return {
        "rows": n,
        "fill_seconds": round(fill_s, 1),
        "database_mb": round(size / 1e6, 1),
        "search": results,
        "slowest_search_ms": max(r["max_ms"] for r in results.values()),
        "overview_traffic": charts,
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), indent=2))
