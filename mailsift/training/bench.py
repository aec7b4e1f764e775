"""Load benchmark: a real ``mailsift serve`` on a free port, driven over keep-alive HTTP.

The server starts the way a service in use does: the corpus is on its training log as
an administrator's examples and a rebuild has published the model it serves (or it
serves a given snapshot file). ``rebuild_during`` asks for rebuilds back to back while
the measured requests run, to show what a rebuild costs the requests it overlaps.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mailsift.learning.rebuild import publish, rebuild_lock, rebuild_model
from mailsift.learning.trainlog import open_training_log
from mailsift.service.auth import Role, TokenStore
from mailsift.service.db import open_state_engine
from mailsift.service.settings import Settings
from mailsift.training.corpus import LabelledMessage
from mailsift.training.train import train_log

__all__ = ["BenchResult", "run_bench"]


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    """One replica's share of a run with several."""

    requests: int
    errors: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_msg: float
    rss_mb: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "server_cpu_ms_per_msg": round(self.server_cpu_ms_per_msg, 3),
            "rss_mb": round(self.rss_mb, 1),
        }


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
    rebuilds: int | None = None
    """Rebuilds (``POST /v1/model/rebuild``) run back to back from the start of the
    measured phase, the last finishing after it; None when none were asked for."""
    rebuild_mean_s: float | None = None
    """Mean seconds of one rebuild request: its process, training, publishing, swap-in."""
    rebuild_busy_share: float | None = None
    """Share of the measured phase during which a rebuild was running."""
    rebuilds_in_phase: int | None = None
    """Rebuilds that ended within the measured phase: their publishing, and the swap-in
    by the worker that answered, were measured too (a rebuild at a lower CPU priority
    may make little headway while the workers are saturated)."""
    rebuild_errors: int = 0
    db_cpu_ms_per_msg: float | None = None
    """CPU time the PostgreSQL processes on this host spent per message (anyone else's
    queries included), when the database is local: its share of the same cores. None
    on SQLite or a remote database."""
    per_replica: tuple[ReplicaFigures, ...] | None = None
    """With several replicas, each one's share (the figures above are their total)."""

    def as_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.per_replica is not None:
            extra["replicas"] = [r.as_dict() for r in self.per_replica]
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
            "rebuilds": self.rebuilds,
            "rebuild_mean_s": _rounded(self.rebuild_mean_s, 2),
            "rebuild_busy_share": _rounded(self.rebuild_busy_share, 3),
            "rebuilds_in_phase": self.rebuilds_in_phase,
            "rebuild_errors": self.rebuild_errors,
            "db_cpu_ms_per_msg": _rounded(self.db_cpu_ms_per_msg, 3),
            **extra,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def run_bench(
    messages: Sequence[bytes],
    *,
    workers: int = 2,
    concurrency: int = 16,
    model: Path | None = None,
    training: Sequence[LabelledMessage] = (),
    rounds: int = 1,
    baseline: bool = True,
    direction: str = "inbound",
    warmup: int = 0,
    rebuild_during: bool = False,
    replicas: int = 1,
) -> BenchResult:
    """Start a server, send every message ``rounds`` times, stop it, report.

    Before the server starts, ``training`` is appended to its training log as an
    administrator's examples and a rebuild publishes the model it serves, as
    ``mailsift train`` does; or, when ``model`` is given, that snapshot file is the
    server's cached snapshot instead. The server reads the same ``MAILSIFT_*`` settings
    as this process (``MAILSIFT_DATABASE_URL`` included: then it is that database's log
    the corpus is appended to); its data dir is a fresh temporary one.

    ``warmup`` messages (the corpus's first) are scored before the measured run and not
    counted: a worker's first second (code paths run for the first time, empty caches)
    held about a third of a cold run's slowest 1 %, which a server in service never sees.

    ``rebuild_during``: from the start of the measured run until its end, an administrator
    asks for rebuilds back to back (``POST /v1/model/rebuild``); the last one is waited
    for. Scheduled rebuilds are off in either case: the bench decides when they run.

    ``replicas`` > 1 starts that many servers of one worker each (``workers`` is then
    ignored), each with its own data dir, all on the one database of
    ``MAILSIFT_DATABASE_URL`` (required then: replicas share learning and limits only
    through it); the load generator spreads its connections over them and the result
    has figures per replica too.
    """
    if replicas > 1 and not Settings().database_url:
        raise RuntimeError("--replicas needs MAILSIFT_DATABASE_URL: replicas share one database")
    data_dir = Path(tempfile.mkdtemp(prefix="mailsift-bench-"))
    try:
        settings = Settings(data_dir=data_dir)
        if model is not None:
            shutil.copy(model, settings.snapshot_path)
        elif training:
            _publish_trained(settings, training)
        with (
            _stored_token(settings, "gateway") as token,
            _stored_token(settings, "admin") if rebuild_during else nullcontext() as admin_token,
        ):
            env = {
                **os.environ,
                "MAILSIFT_REBUILD_EVERY_ENTRIES": "0",
                "MAILSIFT_REBUILD_EVERY_SECONDS": "0",
            }
            env.pop("MAILSIFT_ADMIN_TOKEN", None)
            # Replicas stand for separate hosts: each its own data dir (snapshot cache,
            # message history), one database between them.
            servers = [
                _Server(data_dir if replicas == 1 else data_dir / f"replica{i}", env)
                for i in range(replicas)
            ]
            try:
                for server in servers:
                    server.start(workers if replicas == 1 else 1)
                for server in servers:
                    server.wait_ready()
                ports = [server.port for server in servers]
                base = None
                if baseline:
                    base_run = asyncio.run(
                        _drive(ports, "GET", [("/healthz", b"")] * 5000, concurrency, token)
                    )
                    base = base_run.requests / base_run.seconds
                payload = [
                    (_score_path(direction, i), body)
                    for i, body in enumerate(list(messages) * rounds)
                ]
                if warmup:
                    asyncio.run(_drive(ports, "POST", payload[:warmup], concurrency, token))
                cpu_before = [_cpu_seconds(server.pid) for server in servers]
                db_before = _local_postgres_cpu()
                client_cpu = _own_cpu_seconds()
                measured, rebuilds = asyncio.run(
                    _measure(ports, payload, concurrency, token, admin_token)
                )
                cpu = [
                    _cpu_seconds(server.pid) - before
                    for server, before in zip(servers, cpu_before, strict=True)
                ]
                client_cpu = _own_cpu_seconds() - client_cpu
                db_cpu = _db_cpu_spent(db_before, _local_postgres_cpu())
                peaks = [_peak_rss(server.pid) for server in servers]
            finally:
                for server in servers:
                    server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    latencies, seconds = measured.latencies, measured.seconds
    ordered = sorted(latencies)
    result = BenchResult(
        requests=len(latencies),
        errors=measured.errors,
        seconds=seconds,
        msgs_per_s=len(latencies) / seconds,
        p50_ms=_pct(ordered, 50),
        p95_ms=_pct(ordered, 95),
        p99_ms=_pct(ordered, 99),
        rss_mb=max(peak for peak, _ in peaks),
        rss_total_mb=sum(total for _, total in peaks),
        baseline_req_per_s=base,
        server_cpu_ms_per_msg=sum(cpu) * 1000 / max(1, len(latencies)),
        client_cpu_ms_per_msg=client_cpu * 1000 / max(1, len(latencies)),
        db_cpu_ms_per_msg=None if db_cpu is None else db_cpu * 1000 / max(1, len(latencies)),
        per_replica=None
        if replicas == 1
        else tuple(
            _replica_figures(measured, i, seconds, cpu[i], peaks[i][1]) for i in range(replicas)
        ),
    )
    return result if rebuilds is None else rebuilds.onto(result)


def _replica_figures(
    measured: _Driven, replica: int, seconds: float, cpu: float, rss_mb: float
) -> ReplicaFigures:
    mine = sorted(
        ms for ms, at in zip(measured.latencies, measured.replica, strict=True) if at == replica
    )
    errors = sum(1 for at in measured.failed_at if at == replica)
    return ReplicaFigures(
        requests=len(mine),
        errors=errors,
        msgs_per_s=len(mine) / seconds,
        p50_ms=_pct(mine, 50),
        p99_ms=_pct(mine, 99),
        server_cpu_ms_per_msg=cpu * 1000 / max(1, len(mine)),
        rss_mb=rss_mb,
    )


class _Server:
    """One ``mailsift serve`` (a replica) on a free port, its data dir ``data_dir``."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = {**env, "MAILSIFT_DATA_DIR": str(data_dir)}
        self.port = _free_port()
        self.workers = 1
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, workers: int) -> None:
        self.workers = workers
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailsift.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--admin-port",
                "0",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        assert self.proc is not None
        _wait_ready(self.port, self.workers, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def _publish_trained(settings: Settings, training: Sequence[LabelledMessage]) -> None:
    """What ``mailsift train`` does, before the server starts: the corpus onto the
    training log as an administrator's examples, then a rebuild published from it."""
    trainlog = open_training_log(settings.database_url, settings.data_dir)
    try:
        train_log(training, trainlog, actor="mailsift bench", limits=settings.parse_limits)
        with rebuild_lock(trainlog, settings.data_dir, wait=True):
            publish(trainlog, rebuild_model(trainlog, settings.parse_limits))
    finally:
        trainlog.close()


@contextmanager
def _stored_token(settings: Settings, role: Role) -> Iterator[str]:
    """A stored token, as ``mailsift token create --role ROLE`` makes, in the database
    the server will use, revoked afterwards: the load generator authenticates the way
    every MTA (or administrator) does, database lookup included."""
    engine = open_state_engine(settings.database_url, settings.data_dir)
    try:
        tokens = TokenStore(engine)
        info, secret = tokens.create(role, "mailsift-bench")
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


@dataclass(slots=True)
class _Driven:
    """What one :func:`_drive` measured: each answer's latency and the replica (index
    into the ports) that gave it; the replicas of the failed ones."""

    latencies: list[float]
    replica: list[int]
    failed_at: list[int]
    seconds: float

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return len(self.failed_at)


async def _drive(
    ports: Sequence[int],
    method: str,
    requests: Sequence[tuple[str, bytes]],
    concurrency: int,
    token: str,
) -> _Driven:
    """``concurrency`` keep-alive connections, spread evenly over the replicas' ports,
    pull the next request from a shared queue (a replica that answers faster gets more,
    as behind a least-busy load balancer)."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    driven = _Driven([], [], [], 0.0)

    async def connection(replica: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[replica])
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
                driven.latencies.append((time.perf_counter() - start) * 1000)
                driven.replica.append(replica)
                if status != 200:
                    driven.failed_at.append(replica)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i % len(ports)) for i in range(concurrency)))
    driven.seconds = time.perf_counter() - started
    return driven


@dataclass(frozen=True, slots=True)
class _Rebuilds:
    spans: list[tuple[float, float]]
    """(start, end) of each rebuild request, ``time.perf_counter()`` seconds; a failed
    one is the last (it ends the series)."""
    errors: int
    window: tuple[float, float]
    """(start, end) of the measured phase."""

    def onto(self, result: BenchResult) -> BenchResult:
        first, last = self.window
        busy = sum(max(0.0, min(end, last) - max(start, first)) for start, end in self.spans)
        done = self.spans[: len(self.spans) - self.errors]
        return replace(
            result,
            rebuilds=len(done),
            rebuild_mean_s=statistics.fmean(end - start for start, end in done) if done else None,
            rebuild_busy_share=busy / max(last - first, 1e-9),
            rebuilds_in_phase=sum(1 for _, end in done if end <= last),
            rebuild_errors=self.errors,
        )


async def _measure(
    ports: Sequence[int],
    requests: Sequence[tuple[str, bytes]],
    concurrency: int,
    token: str,
    admin_token: str | None,
) -> tuple[_Driven, _Rebuilds | None]:
    """:func:`_drive` the scoring requests; with ``admin_token``, rebuilds meanwhile
    (asked of the first replica)."""
    if admin_token is None:
        return await _drive(ports, "POST", requests, concurrency, token), None
    stop = asyncio.Event()
    rebuilding = asyncio.create_task(_rebuild_until(stop, ports[0], admin_token))
    started = time.perf_counter()
    try:
        measured = await _drive(ports, "POST", requests, concurrency, token)
    finally:
        stop.set()
    ended = time.perf_counter()
    spans, errors = await rebuilding
    return measured, _Rebuilds(spans, errors, (started, ended))


async def _rebuild_until(
    stop: asyncio.Event, port: int, token: str
) -> tuple[list[tuple[float, float]], int]:
    """Rebuild after rebuild on one connection until ``stop`` is set (the one running
    then is waited for); a failed one ends the series rather than repeat at once."""
    spans: list[tuple[float, float]] = []
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/model/rebuild HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    try:
        while not stop.is_set():
            start = time.perf_counter()
            writer.write(head)
            status = await _read_response(reader)
            spans.append((start, time.perf_counter()))
            if status != 200:
                errors += 1
                break
    finally:
        writer.close()
    return spans, errors


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


def _local_postgres_cpu() -> dict[int, float] | None:
    """CPU seconds so far of each process on this host named ``postgres`` (a local
    PostgreSQL's server and backends); None when the bench does not use PostgreSQL."""
    if not (Settings().database_url or "").startswith("postgres"):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("postgres"):
            fields = stat.rpartition(")")[2].split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def _db_cpu_spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """What the processes of :func:`_local_postgres_cpu` spent between two readings (a
    backend started in between counts from zero; one that ended is missed)."""
    if before is None or after is None or not after:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


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
