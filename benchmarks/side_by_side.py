"""Server CPU per scored message of two versions of mailsift, side by side.

This VM's speed drifts by ±20 % within an hour, so benchmarks run one after the other
cannot tell a few percent apart. Here both versions serve at once (``mailsift serve
--workers 2``, each with a model its own code trained on CORPUS and a stored gateway
token), and each round sends the same messages to one and then the other, alternating
which goes first: drift hits both alike. A server's CPU is its process group's utime +
stime from /proc. Prints each round and then the medians as JSON lines.

    git worktree add /tmp/base <commit>
    .venv/bin/python -m benchmarks.side_by_side /tmp/base . ../shared/corpora/spamassassin \\
        [--score OTHER_CORPUS] [--rounds 30] [--messages 1500]

Each version runs from /tmp with PYTHONPATH set to its tree, so it imports its own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import httpx

from mailsift.training.corpus import open_source
from tests.service.server import free_port


def _env(code: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    return env | {
        "PYTHONPATH": str(code.resolve()),
        "MAILSIFT_DATA_DIR": str(data),
        "MAILSIFT_REBUILD_EVERY_ENTRIES": "0",
        "MAILSIFT_REBUILD_EVERY_SECONDS": "0",
    }


def _cli(code: Path, data: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", *args],
        env=_env(code, data),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    group = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout
    total = 0.0
    for proc in {pid, *map(int, group.split())}:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def _send(port: int, token: str, messages: list[bytes], concurrency: int = 8) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in messages:
        queue.put_nowait(raw)
    headers = {"authorization": f"Bearer {token}", "content-type": "message/rfc822"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                answer = await client.post(
                    "/v1/score", params={"direction": "inbound"}, content=queue.get_nowait()
                )
                answer.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


class _Server:
    def __init__(self, name: str, code: Path, data: Path, corpus: str) -> None:
        self.name = name
        _cli(code, data, "train", corpus)
        self.token = _cli(code, data, "token", "create", "--role", "gateway").split()[-1]
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mailsift.cli", "serve"),
                *("--port", str(self.port), "--workers", "2", "--admin-port", "0"),
            ],
            env=_env(code, data),
            cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{name}: the server did not become ready")

    def cpu_ms_per_message(self, messages: list[bytes]) -> float:
        before = _cpu_seconds(self.proc.pid)
        asyncio.run(_send(self.port, self.token, messages))
        return (_cpu_seconds(self.proc.pid) - before) * 1000 / len(messages)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the first version's source tree")
    parser.add_argument("head", type=Path, help="the second version's source tree")
    parser.add_argument("corpus", help="what both models are trained on")
    parser.add_argument("--score", help="what is scored (default: the training corpus)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--messages", type=int, default=1500)
    args = parser.parse_args()
    corpus = str(Path(args.corpus).resolve())  # the servers run from /tmp
    scored = args.score or corpus
    messages = [m.raw for m in islice(open_source(scored), args.messages)]
    with tempfile.TemporaryDirectory(prefix="mailsift-side-by-side-") as tmp:
        servers = [
            _Server(name, code, Path(tmp) / name, corpus)
            for name, code in (("base", args.base), ("head", args.head))
        ]
        try:
            for server in servers:
                server.cpu_ms_per_message(messages[:300])  # warm-up, not counted
            rounds: dict[str, list[float]] = {s.name: [] for s in servers}
            for n in range(args.rounds):
                for server in servers if n % 2 == 0 else servers[::-1]:
                    rounds[server.name].append(server.cpu_ms_per_message(messages))
                print(json.dumps({k: round(v[-1], 3) for k, v in rounds.items()}), flush=True)
        finally:
            for server in servers:
                server.stop()
    diffs = [h - b for b, h in zip(rounds["base"], rounds["head"], strict=True)]
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "median_base_ms": round(statistics.median(rounds["base"]), 3),
                "median_head_ms": round(statistics.median(rounds["head"]), 3),
                "median_paired_diff_ms": round(statistics.median(diffs), 3),
                "head_higher_in": sum(d > 0 for d in diffs),
            }
        )
    )


if __name__ == "__main__":
    main()
