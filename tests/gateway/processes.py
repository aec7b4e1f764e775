"""Run the real ``mailsift milter`` / ``mailsift policy`` in subprocesses, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from tests.service.server import _started, free_port, wait_for


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def gateway_token(data_dir: Path, env: dict[str, str], *role: str) -> str:
    """A token created the way an administrator does it (``role``: CLI options; default
    a gateway token)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "token", "create", *(role or ("--role", "gateway"))],
        env={**env, "MAILSIFT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()[-1]


class GatewayProcess:
    """``mailsift milter`` or ``mailsift policy`` on a free port; a context manager."""

    def __init__(self, command: str, log_dir: Path, *args: str) -> None:
        self.command = command
        self.port = free_port()
        self.args = args
        self.log_path = log_dir / f"{command}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailsift.cli",
                self.command,
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(self.proc)  # killed at exit if a test dies before stopping it
        if not wait_for(lambda: accepts(self.port) or self.proc.poll() is not None, timeout):
            raise RuntimeError(f"{self.command} did not listen: {self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.command} exited: {self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
