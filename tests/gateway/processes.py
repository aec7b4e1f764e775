"""Run the real ``mailsift milter`` / ``mailsift policy`` in subprocesses, for tests, and
a stand-in service with a canned ``/v1/score`` answer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.service.server import _started, accepts, free_port, wait_for


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


def gateway_options(
    data_dir: Path, env: dict[str, str], url: str, network: str | None = None
) -> tuple[str, ...]:
    """What every gateway process of a test stack is started with: the service's URL, a
    stored gateway token in a private file beside the data dir, the internal networks
    (the gateway's default when None)."""
    token_file = data_dir.parent / "gateway.token"
    token_file.write_text(gateway_token(data_dir, env) + "\n")
    token_file.chmod(0o600)
    options = ("--service-url", url, "--token-file", str(token_file))
    return options + (("--internal-networks", network) if network else ())


class GatewayProcess:
    """``mailsift milter`` or ``mailsift policy`` on a free port; a context manager."""

    def __init__(
        self, command: str, log_dir: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        """``env``: variables set for the process on top of this one's (settings that
        have no command-line option)."""
        self.command = command
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, **env} if env else None
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
            env=self.env,
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


class CannedService:
    """A stand-in for the service: ``POST /v1/score`` answers ``answer`` (a test sets it)
    and keeps each call's query parameters in ``calls`` and body in ``bodies``; a context
    manager."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {}
        self.calls: list[dict[str, list[str]]] = []
        self.bodies: list[bytes] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                canned.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                canned.calls.append(parse_qs(urlsplit(self.path).query))
                body = json.dumps(canned.answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CannedService:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.server.shutdown()
        self.server.server_close()
