"""What one outbound message costs the shared PostgreSQL, and how many connections
replicas hold (#14, docs/scale-out.md).

    .venv/bin/python -m benchmarks.pg_writes [--replicas N] [--direction outbound]

Creates a fresh database on the local PostgreSQL (MAILSIFT_BENCH_PG, default
postgresql://127.0.0.1:5432/test, names the server), runs ``mailsift bench`` against it
and prints one JSON object: the bench result; per table of the state, the rows
inserted, updated and deleted per scored request (``pg_stat_user_tables`` over the whole
run, warm-up included; the training log's tables, written by the bench's training phase,
left out); transactions per scored request (``pg_stat_database``, the training phase's
few included); and the most connections the database had open at once.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import sql

SERVER = os.environ.get("MAILSIFT_BENCH_PG", "postgresql://127.0.0.1:5432/test")
CORPUS = os.environ.get("MAILSIFT_BENCH_CORPUS", "../shared/corpora/spamassassin")
TRAINING_TABLES = {"trainlog_entries", "trainlog_labels", "trainlog_meta", "published_models"}


def _url(name: str) -> str:
    return SERVER.rsplit("/", 1)[0] + "/" + name


def _table_counts(url: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        ).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def _commits(url: str, name: str) -> int:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--direction", default="outbound")
    parser.add_argument("--corpus", default=CORPUS)
    args = parser.parse_args()
    name = f"mailsift_writes_{secrets.token_hex(4)}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        with psycopg.connect(SERVER, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchone()
                peak = max(peak, int(row[0]) if row else 0)
                time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        env = {**os.environ, "MAILSIFT_DATABASE_URL": _url(name)}
        command = [sys.executable, "-m", "mailsift.cli", "bench", args.corpus, "--json"]
        command += ["--direction", args.direction, "--concurrency", "16"]
        command += ["--replicas", str(args.replicas)] if args.replicas > 1 else ["--workers", "2"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"mailsift bench failed (peak connections {peak}): {done.stderr[-2000:]}")
        result = json.loads(done.stdout)
        stop.set()
        watcher.join()
        time.sleep(1.0)
        counts = _table_counts(_url(name))
        commits = _commits(_url(name), name)
        # Every message is sent twice (warm-up 300 + the measured run): per scored request.
        scored = result["requests"] + 300
        per_message = {
            table: {
                "inserted": round(ins / scored, 3),
                "updated": round(upd / scored, 3),
                "deleted": round(dele / scored, 3),
            }
            for table, (ins, upd, dele) in sorted(counts.items())
            if table not in TRAINING_TABLES and (ins or upd or dele)
        }
        print(
            json.dumps(
                {
                    "direction": args.direction,
                    "replicas": args.replicas,
                    "scored_requests": scored,
                    "transactions_per_message": round(commits / scored, 3),
                    "rows_per_message": per_message,
                    "peak_connections": peak,
                    "bench": result,
                    "uptime": os.getloadavg(),
                }
            )
        )
    finally:
        stop.set()
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
