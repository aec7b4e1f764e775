"""The hostile test's three figures against a real ``mailsift serve``: prints JSON.

(a) 2,000 stalled connections, half of them half a request head, half a full head and a
    stalled body: how many the server closes within 60 s, and when;
(b) a 1 GiB chunked body without a token to every POST/PUT/PATCH operation (from the
    app's own table): the status, the time to answer, how much the client got to send;
(c) the worker's RSS before and after (the target: within +150 MiB).

    .venv/bin/python -m benchmarks.hostile [--connections 2000] [--workers 1]

The service runs with its default deadlines (10 s head, 30 s body idle). 2,000
connections need more descriptors than the usual soft limit of 1,024: the script raises
its own soft limit to the hard one (``resource.setrlimit``), and the server it starts
inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.service.routes import BODY_METHODS, concrete, operations
from tests.service.server import ADMIN_TOKEN, Service

GiB = 1 << 30
CHUNK = 1 << 20
WINDOW = 60.0
HALF_HEAD = b"POST /v1/score?direction=inbound HTTP/1.1\r\nHost: hostile\r\nX-Slow: "
STALLED_BODY = (
    f"POST /v1/score?direction=inbound HTTP/1.1\r\nHost: hostile\r\n"
    f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: message/rfc822\r\n"
    f"Content-Length: 100000\r\n\r\nFrom: a@example.org\r\nSubject: stalled\r\n"
).encode()


def raise_descriptor_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def workers(svc: Service) -> list[int]:
    """The processes that serve: the server itself with one worker, else its children."""
    assert svc.proc is not None
    if svc.workers == 1:
        return [svc.proc.pid]
    children = Path(f"/proc/{svc.proc.pid}/task/{svc.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


async def stalled(port: int, head: bytes, started: float) -> float | None:
    """Send ``head`` and nothing more; seconds until the server closed, None if it did not."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        await writer.drain()
    except OSError:
        return None
    try:
        async with asyncio.timeout(WINDOW - (time.monotonic() - started)):
            while await reader.read(65536):
                pass
        return time.monotonic() - started
    except TimeoutError:
        return None
    except OSError:
        return time.monotonic() - started
    finally:
        writer.close()


async def stalled_connections(port: int, count: int) -> dict[str, Any]:
    started = time.monotonic()
    heads = [HALF_HEAD if i % 2 == 0 else STALLED_BODY for i in range(count)]
    closed = await asyncio.gather(*(stalled(port, head, started) for head in heads))
    report: dict[str, Any] = {"connections": count, "window_s": WINDOW}
    for kind, picks in (("half_head", closed[0::2]), ("stalled_body", closed[1::2])):
        times = [t for t in picks if t is not None]
        report[kind] = {
            "opened": len(picks),
            "closed_within_window": len(times),
            "median_close_s": round(statistics.median(times), 2) if times else None,
            "max_close_s": round(max(times), 2) if times else None,
        }
    report["closed_within_window"] = sum(t is not None for t in closed)
    return report


async def tokenless_upload(port: int, method: str, path: str, ctype: str) -> dict[str, Any]:
    """Stream a 1 GiB chunked body as fast as the server takes it, reading the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"{method} {path}?direction=inbound&label=spam&user=a%40example.org HTTP/1.1\r\n"
        f"Host: hostile\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    sent = 0
    started = time.monotonic()
    writer.write(head)

    async def pump() -> None:
        nonlocal sent
        while sent < GiB:
            writer.write(piece)
            await writer.drain()
            sent += CHUNK

    pumping = asyncio.create_task(pump())
    status, answered, closed_after = 0, None, None
    try:
        async with asyncio.timeout(120):
            line = await reader.readline()
            answered = time.monotonic() - started
            status = int(line.split()[1]) if line else 0
            while await reader.read(65536):
                pass
            closed_after = time.monotonic() - started
            await asyncio.wait([pumping], timeout=30)
    except (OSError, TimeoutError):
        pass
    cut_off = pumping.done() and pumping.exception() is not None
    if not pumping.done():
        pumping.cancel()
    writer.close()
    return {
        "method": method,
        "path": path,
        "status": status,
        "answer_s": round(answered, 3) if answered is not None else None,
        "server_closed_s": round(closed_after, 3) if closed_after is not None else None,
        "client_sent_mib": sent // CHUNK,
        "cut_off_by_server": cut_off,
    }


async def tokenless_uploads(port: int) -> list[dict[str, Any]]:
    results = []
    for op in operations():
        if op.method not in BODY_METHODS:
            continue
        ctype = "message/rfc822" if op.body == "message" else "application/json"
        results.append(await tokenless_upload(port, op.method, concrete(op), ctype))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    soft, hard = raise_descriptor_limit()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Service(Path(tmp) / "data", workers=args.workers) as svc,
    ):
        time.sleep(1.0)
        before = {pid: rss_mib(pid) for pid in workers(svc)}
        stalls = asyncio.run(stalled_connections(svc.port, args.connections))
        uploads = asyncio.run(tokenless_uploads(svc.port))
        after = {pid: rss_mib(pid) for pid in workers(svc)}
        log = svc.log_path.read_text()
    grown = max(after.get(pid, 0.0) - rss for pid, rss in before.items())
    print(
        json.dumps(
            {
                "descriptor_limit": {"was": soft, "raised_to": hard},
                "workers": args.workers,
                "a_stalled_connections": stalls,
                "b_tokenless_1gib_uploads": uploads,
                "c_worker_rss_mib": {
                    "before": {str(k): round(v, 1) for k, v in before.items()},
                    "after": {str(k): round(v, 1) for k, v in after.items()},
                    "max_growth": round(grown, 1),
                    "target_max_growth": 150,
                },
                "log": {
                    "lines": log.count("\n"),
                    "tracebacks": log.count("Traceback"),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
