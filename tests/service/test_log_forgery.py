"""No client-chosen value can start a line of its own in the service log.

Two halves: identities with control characters are refused at the API edge (400), and
whatever is logged anyway (a token's name, an exception's message) has its control
characters escaped by the filter on every handler.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from mailsift.service.logsafe import EscapeControls
from tests.service.server import Service, message

BREAKS = ["\n", "\r", "\x1b[31m", "\u2028", "\r\n"]
"""Line breaks (and a terminal escape) a forger would use; str.splitlines() splits on all
but the escape, as do log viewers."""
ESCAPES = ("\\x0a", "\\x0d", "\\x1b", "\\u2028")
FORGED = "FORGED level=CRITICAL user=root"
RFC822 = {"content-type": "message/rfc822"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("forgery") / "data", extra_args=("--access-log",)) as svc:
        yield svc


def attempts(c: httpx.Client, user: str) -> dict[str, httpx.Response]:
    """The identity ``user`` in every field and path segment that takes one, and in the
    envelope's free-text fields (HELO name, queue id, gateway name)."""
    quoted = quote(user, safe="@")
    return {
        "events user": c.post(
            "/v1/events", json={"type": "auth_failure", "user": user, "client_ip": "192.0.2.1"}
        ),
        "score user": c.post(
            "/v1/score",
            params={"direction": "outbound", "user": user},
            content=message(3, False),
            headers=RFC822,
        ),
        "score mail_from": c.post(
            "/v1/score",
            params={"direction": "inbound", "mail_from": user},
            content=message(3, False),
            headers=RFC822,
        ),
        "score rcpt": c.post(
            "/v1/score",
            params={"direction": "inbound", "rcpt": user},
            content=message(3, False),
            headers=RFC822,
        ),
        **{
            f"score {field}": c.post(
                "/v1/score",
                params={"direction": "inbound", field: user},
                content=message(3, False),
                headers=RFC822,
            )
            for field in ("helo", "queue_id", "gateway")
        },
        "clear by": c.post("/v1/accounts/alice@example.org/clear", params={"by": user}),
        "lists user": c.put("/v1/lists/block/evil.example", params={"scope": "user", "user": user}),
        "lists actor": c.put("/v1/lists/block/evil.example", params={"actor": user}),
        "lists entry": c.put(f"/v1/lists/block/{quoted}"),
        "accounts path": c.get(f"/v1/accounts/{quoted}"),
        "admission path": c.get(f"/v1/admission/{quoted}"),
        "feedback user": c.post(
            "/v1/feedback",
            params={"label": "spam", "user": user},
            content=message(1, True),
            headers=RFC822,
        ),
    }


@pytest.mark.parametrize("brk", BREAKS)
def test_identities_with_control_characters_are_refused_at_the_edge(
    service: Service, brk: str
) -> None:
    with service.client() as c:
        answers = attempts(c, f"alice@example.org{brk}{FORGED}")
    for where, r in answers.items():
        assert r.status_code == 400, (where, r.status_code, r.text)
        assert r.json()["error"] == "bad_request", where


def test_no_line_of_the_log_is_forged(service: Service) -> None:
    """The refused identities left no line; a value that is logged anyway (a token's
    name, logged with every label it gives) has its control characters escaped."""
    with service.client() as c:
        for brk in BREAKS:
            attempts(c, f"alice@example.org{brk}{FORGED}")
    names = "".join(f"a{brk}{FORGED[:8]}" for brk in BREAKS)
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "token", "create", "--role=admin", "--name", names],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(service.data_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with service.client(out.split()[-1], admin=True) as c:
        r = c.post("/v1/train", params={"label": "spam"}, content=message(2, True), headers=RFC822)
        assert r.status_code == 200, r.text
    time.sleep(0.3)
    raw = service.log_path.read_bytes()
    assert b"\x1b" not in raw
    logged = [line for line in raw.decode().splitlines() if "FORGED" in line]
    for line in logged:  # every line with the forger's text is one the service began
        assert line.startswith(("INFO:", "WARNING:", "ERROR:")), line
    label = [line for line in logged if "label by=" in line]
    assert len(label) == 1 and all(e in label[0] for e in ESCAPES), logged


def test_a_traceback_cannot_start_a_line_either() -> None:
    """The filter on a record with an exception whose message carries line breaks."""
    record = logging.LogRecord(
        "mailsift.x", logging.ERROR, __file__, 1, "failed: %s", ("a\nb",), None
    )
    try:
        raise ValueError(f"bad\n{FORGED}\u2028{FORGED}")
    except ValueError:
        record.exc_info = sys.exc_info()
    EscapeControls().filter(record)
    text = logging.Formatter("ERROR: %(message)s").format(record)
    lines = text.splitlines()
    assert lines[0] == "ERROR: failed: a\\x0ab"
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert not any(line.startswith("FORGED") for line in lines), lines
