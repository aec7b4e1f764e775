"""Run the real ``mailsift serve`` in a subprocess, for end-to-end tests over HTTP."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    """Something listens on ``port`` of the loopback address."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


ADMIN_TOKEN = "test-admin-token-0123456789"
_started: list[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_leftovers() -> None:
    """A test that dies between start and stop must not leave a server behind."""
    for proc in _started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


class Service:
    """A ``mailsift serve`` process with its own data dir; a context manager."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        split_listeners: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.port = free_port()
        # One listener for everything unless a test is about the admin/gateway split.
        self.admin_port = free_port() if split_listeners else 0
        self.extra_args = extra_args
        self.env = {
            **os.environ,
            "MAILSIFT_DATA_DIR": str(data_dir),
            "MAILSIFT_LOG_POLL_SECONDS": "0.1",
            "MAILSIFT_SNAPSHOT_CHECK_SECONDS": "0.5",
            "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "0",
            "MAILSIFT_ADMIN_TOKEN": ADMIN_TOKEN,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        scheme = "https" if "MAILSIFT_TLS_CERTFILE" in self.env else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.admin_url = f"{scheme}://127.0.0.1:{self.admin_port or self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"

    def start(self, timeout: float = 30.0) -> Service:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailsift.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--admin-port",
                str(self.admin_port),
                *self.extra_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def __enter__(self) -> Service:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.kill(signal.SIGTERM)

    def client(self, token: str | None = ADMIN_TOKEN, *, admin: bool = False) -> httpx.Client:
        """A client of the gateway listener (or the admin one), with a bearer token."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        base = self.admin_url if admin else self.url
        return httpx.Client(base_url=base, timeout=30, headers=headers, verify=False)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll until ``predicate`` holds or ``timeout`` seconds pass; its final answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def score(
    client: httpx.Client, raw: bytes, direction: str = "inbound", rcpt: tuple[str, ...] = ()
) -> dict[str, Any]:
    params: dict[str, Any] = {"direction": direction}
    if rcpt:
        params["rcpt"] = list(rcpt)
    r = client.post(
        "/v1/score",
        params=params,
        content=raw,
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def train(client: httpx.Client, raw: bytes, label: str) -> dict[str, Any]:
    """An administrator's example (``client`` carries an admin token): the shared model."""
    r = client.post(
        "/v1/train",
        params={"label": label},
        content=raw,
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def feedback(
    client: httpx.Client, raw: bytes, label: str, user: str = "alice@example.org"
) -> dict[str, Any]:
    """A user's report (the message must have been scored for ``user`` first)."""
    r = client.post(
        "/v1/feedback",
        params={"label": label, "user": user},
        content=raw,
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def score_head(length: int) -> bytes:
    """The head of a raw ``POST /v1/score`` announcing a ``length``-byte message (for tests
    that send the body themselves, slowly or not at all)."""
    return (
        f"POST /v1/score?direction=inbound HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: message/rfc822\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def message(n: int, spammy: bool) -> bytes:
    """A small distinct message; spammy ones share spam words, hammy ones work words."""
    if spammy:
        subject, body = (
            f"Cheap pills offer {n}",
            f"Buy cheap viagra now, limited offer {n}! Click here to win money.",
        )
    else:
        subject, body = (
            f"Meeting notes {n}",
            f"Hi team, the quarterly review {n} moved to Thursday. Agenda attached.",
        )
    return (
        f"From: sender{n}@example.{'biz' if spammy else 'org'}\r\nTo: alice@example.org\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{n}.{int(spammy)}@example>\r\n\r\n{body}\r\n"
    ).encode()
