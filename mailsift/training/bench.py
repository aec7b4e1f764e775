"""Load benchmark: a real ``mailsift serve`` on a free port, driven over keep-alive HTTP.

The load generator is an asyncio client speaking raw HTTP/1.1 on persistent connections
(no HTTP library per request), so on a 2-core machine it costs a few percent of a core
and measures the server, not itself; ``baseline`` runs the same client against
``/healthz`` to show its own ceiling.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailsift.service.auth import TokenStore
from mailsift.service.db import open_state_engine

__all__ = ["BenchResult", "run_bench"]


@dataclass(frozen=True, slots=True)
class BenchResult:
    requests: int
    errors: int
    seconds: float
    msgs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rss_mb: float
    """Peak resident memory of the largest server worker."""
    rss_total_mb: float
    """Peak resident memory of all server processes together."""
    baseline_req_per_s: float | None
    server_cpu_ms_per_msg: float = float("nan")
    """CPU time (user + system) all server processes spent per message: unlike
    messages/s, it hardly moves when other programs share the machine."""
    client_cpu_ms_per_msg: float = float("nan")
    """CPU time this load generator spent per message, to show it is not the bottleneck."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "msgs_per_s": round(self.msgs_per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "rss_mb": round(self.rss_mb, 1),
            "rss_total_mb": round(self.rss_total_mb, 1),
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "baseline_req_per_s": None
            if self.baseline_req_per_s is None
            else round(self.baseline_req_per_s, 1),
            "server_cpu_ms_per_msg": round(self.server_cpu_ms_per_msg, 3),
            "client_cpu_ms_per_msg": round(self.client_cpu_ms_per_msg, 3),
        }


def run_bench(
    messages: Sequence[bytes],
    *,
    workers: int = 2,
    concurrency: int = 16,
    model: Path | None = None,
    rounds: int = 1,
    baseline: bool = True,
    direction: str = "inbound",
    warmup: int = 0,
) -> BenchResult:
    """Start a server, send every message ``rounds`` times, stop it, report.

    ``warmup`` messages (the corpus's first) are scored before the measured run and not
    counted: a worker's first second (code paths run for the first time, empty caches)
    held about a third of a cold run's slowest 1 %, which a server in service never sees.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="mailsift-bench-"))
    try:
        if model is not None:
            shutil.copy(model, data_dir / "model.snapshot")
        with _gateway_token(data_dir) as token:
            port = _free_port()
            env = {
                **os.environ,
                "MAILSIFT_DATA_DIR": str(data_dir),
                "MAILSIFT_SNAPSHOT_CHECK_SECONDS": "3600",
            }
            env.pop("MAILSIFT_ADMIN_TOKEN", None)
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mailsift.cli",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--admin-port",
                    "0",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                _wait_ready(port, workers, server)
                base = None
                if baseline:
                    base_latencies, base_seconds, _ = asyncio.run(
                        _drive(port, "GET", [("/healthz", b"")] * 5000, concurrency, token)
                    )
                    base = len(base_latencies) / base_seconds
                payload = [
                    (_score_path(direction, i), body)
                    for i, body in enumerate(list(messages) * rounds)
                ]
                if warmup:
                    asyncio.run(_drive(port, "POST", payload[:warmup], concurrency, token))
                server_cpu, client_cpu = _cpu_seconds(server.pid), _own_cpu_seconds()
                latencies, seconds, errors = asyncio.run(
                    _drive(port, "POST", payload, concurrency, token)
                )
                server_cpu = _cpu_seconds(server.pid) - server_cpu
                client_cpu = _own_cpu_seconds() - client_cpu
                rss, rss_total = _peak_rss(server.pid)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    ordered = sorted(latencies)
    return BenchResult(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        msgs_per_s=len(latencies) / seconds,
        p50_ms=_pct(ordered, 50),
        p95_ms=_pct(ordered, 95),
        p99_ms=_pct(ordered, 99),
        rss_mb=rss,
        rss_total_mb=rss_total,
        baseline_req_per_s=base,
        server_cpu_ms_per_msg=server_cpu * 1000 / max(1, len(latencies)),
        client_cpu_ms_per_msg=client_cpu * 1000 / max(1, len(latencies)),
    )


@contextmanager
def _gateway_token(data_dir: Path) -> Iterator[str]:
    """A stored gateway token, as ``mailsift token create --role gateway`` makes, in the
    database the server will use, revoked afterwards: the load generator authenticates
    the way every MTA does, database lookup included."""
    engine = open_state_engine(os.environ.get("MAILSIFT_DATABASE_URL") or None, data_dir)
    try:
        tokens = TokenStore(engine)
        info, secret = tokens.create("gateway", "mailsift-bench")
        try:
            yield secret
        finally:
            tokens.revoke(info.id)
    finally:
        engine.dispose()


def _score_path(direction: str, i: int) -> str:
    """Outbound requests come from 500 simulated users, so the default sending limits
    are not what is measured."""
    if direction == "outbound":
        user = f"user{i % 500}@bench.example"
        rcpt = f"peer{i % 97}@elsewhere.example"
        return f"/v1/score?direction=outbound&user={user}&mail_from={user}&rcpt={rcpt}"
    return "/v1/score?direction=inbound"


async def _drive(
    port: int, method: str, requests: Sequence[tuple[str, bytes]], concurrency: int, token: str
) -> tuple[list[float], float, int]:
    """``concurrency`` keep-alive connections pull the next request from a shared queue."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                path, body = queue.get_nowait()
                start = time.perf_counter()
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: message/rfc822\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(
    port: int, workers: int, server: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200 and len(_children(server.pid)) >= (
                    workers if workers > 1 else 0
                ):
                    time.sleep(1.0)  # let every worker finish its own start-up
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready in time")


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def _peak_rss(pid: int) -> tuple[float, float]:
    """(largest process, all processes) peak RSS in MiB, from /proc's VmHWM."""
    peaks = []
    for proc in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{proc}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return (max(peaks) if peaks else 0.0, sum(peaks))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in [pid, *_children(pid)]:
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _own_cpu_seconds() -> float:
    """This process's CPU time, to the nanosecond: os.times() counts 10 ms ticks, and a
    short run can spend less than one."""
    return time.process_time()


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]
