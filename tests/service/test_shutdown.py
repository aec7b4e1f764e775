"""Stopping the service: SIGTERM ends it within its grace, whatever clients hold open.

A client that stalls mid-upload used to hold a worker until the body idle timeout
(30 s): with systemd's stop timeout as long, the service was SIGKILLed, mid-snapshot
perhaps. Idle keep-alive connections (a gateway's pool) never held it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from mailsift.service.http.listeners import SHUTDOWN_GRACE_SECONDS
from tests.service.server import Service, score_head


def _held(port: int, stalled: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if stalled:  # a message upload that stops after three of its 1,000 bytes
        sock.sendall(score_head(1000) + b"abc")
    else:  # one request answered, the connection kept for the next
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_the_service_within_its_grace_whatever_clients_hold(
    tmp_path: Path, workers: int
) -> None:
    svc = Service(tmp_path / "data", workers=workers).start()
    held = [_held(svc.port, stalled) for stalled in (True, True, False, False)]
    time.sleep(0.3)  # the uploads are under way in the workers
    try:
        assert svc.proc is not None
        started = time.monotonic()
        os.killpg(svc.proc.pid, signal.SIGTERM)
        svc.proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
        svc.kill()
    assert took < SHUTDOWN_GRACE_SECONDS + 5, took  # 30 s before, the body idle timeout
    assert "Traceback" not in svc.log_path.read_text()
