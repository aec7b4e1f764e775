"""The real ``mailsift policy`` over a real socket, speaking Postfix's policy protocol to
a running service (no Postfix needed): recipients, limits, and a service that is down."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.processes import GatewayProcess, gateway_options
from tests.service.server import Service, free_port, message

USER = "carol@corp.example"
CLIENT = "client:10.0.0.5"  # whose limit an internal client without a login counts against


class PolicyClient:
    """What Postfix's smtpd does: requests on one connection, one ``action=`` line each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rwb")

    def ask(self, **attributes: str) -> str:
        request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", **attributes}
        self.file.write(b"".join(f"{k}={v}\n".encode() for k, v in request.items()) + b"\n")
        self.file.flush()
        answer = self.file.readline().decode().rstrip("\n")
        assert self.file.readline() == b"\n"
        assert answer.startswith("action=")
        return answer.removeprefix("action=")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def outbound(**extra: str) -> dict[str, str]:
    return {"client_address": "10.0.0.5", "sender": USER, "recipient": "x@partner.example", **extra}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    env = {"MAILSIFT_LIMIT_MESSAGES_PER_HOUR": "3", "MAILSIFT_OUTBOUND_LEARNING": "false"}
    with Service(tmp_path / "data", env=env) as svc:
        yield svc


def test_policy_answers_recipients_and_limits_from_the_service(
    tmp_path: Path, service: Service
) -> None:
    recipients = tmp_path / "recipients"
    recipients.write_text("alice@example.org\n")
    args = gateway_options(service.data_dir, service.env, service.url, "10.0.0.0/8")
    args += ("--recipients-file", str(recipients))
    with GatewayProcess("policy", tmp_path, *args) as policy:
        client = PolicyClient(policy.port)
        try:
            inbound = {"client_address": "192.0.2.9", "sender": "x@remote.example"}
            assert client.ask(**inbound, recipient="alice@example.org") == "DUNNO"
            refused = client.ask(**inbound, recipient="nobody@example.org")
            assert refused.startswith("550 5.1.1 ")
            assert client.ask(**inbound, recipient="someone@elsewhere.example") == "DUNNO"
            assert client.ask(**outbound()) == "DUNNO"
            assert client.ask(**outbound(), protocol_state="DATA") == "DUNNO"

            with service.client() as c:
                for i in range(3):  # what the milter's /v1/score calls count
                    r = c.post(
                        "/v1/score",
                        params={"direction": "outbound", "user": CLIENT},
                        content=message(i, spammy=False),
                        headers={"content-type": "message/rfc822"},
                    )
                    assert r.status_code == 200, r.text
            deferred = client.ask(**outbound(queue_id="4F2A1C"))
            assert deferred.startswith("DEFER 4.7.1 ") and "messages_per_hour" in deferred
            assert client.ask(**outbound(sasl_username="dave")) == "DUNNO"  # another user
            assert client.ask(**outbound(client_address="192.0.2.9")) == "DUNNO"  # inbound
            hostile = "no\x1b[2Jbody\u202e@example.org"  # clears a terminal; flips the line
            assert client.ask(**inbound, recipient=hostile).startswith("550 5.1.1 ")
        finally:
            client.close()
        # One line per refusal, none for the rest: who, to whom, why; no message content.
        refusals = [line for line in policy.log().splitlines() if " refused " in line]
        assert len(refusals) == 3, policy.log()
        assert refusals[0].endswith(
            "refused queue_id=- client=192.0.2.9 user=- sender=x@remote.example "
            'recipient=nobody@example.org reason="unknown recipient" '
            'answer="550 5.1.1 no such user here"'
        )
        assert refusals[1].endswith(
            f"refused queue_id=4F2A1C client=10.0.0.5 user={CLIENT} sender={USER} "
            'recipient=x@partner.example reason="over the limit: messages_per_hour (ok)" '
            f'answer="{deferred}"'
        )
        assert "INFO mailsift.gateway.policy: refused" in refusals[1]
        assert "recipient=no\\x1b[2Jbody\\u202e@example.org " in refusals[2]
        assert "\x1b" not in policy.log() and "\u202e" not in policy.log()


@pytest.mark.parametrize(("mode", "expected"), [("open", "DUNNO"), ("closed", "DEFER 4.3.0")])
def test_a_dead_service_fails_open_or_closed(tmp_path: Path, mode: str, expected: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    args = ("--service-url", dead, "--internal-networks", "10.0.0.0/8", "--fail-mode", mode)
    with GatewayProcess("policy", tmp_path, *args, "--metrics-port", str(port := free_port())) as p:
        client = PolicyClient(p.port)
        try:
            assert client.ask(**outbound()).startswith(expected)
        finally:
            client.close()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        line = f'mailsift_gateway_service_failures_total{{component="policy",mode="{mode}"}} 1.0'
        assert line in metrics
        (warning,) = [line for line in p.log().splitlines() if "service unavailable" in line]
        assert " WARNING " in warning and f"failing {mode}" in warning
        assert f"user={CLIENT}" in warning and "recipient=x@partner.example" in warning
        # Failing closed refuses the recipient: that is the refusal's one line.
        assert (" refused queue_id=- " in warning) == (mode == "closed")


def test_garbage_is_dropped_and_the_server_keeps_serving(tmp_path: Path) -> None:
    args = ("--service-url", f"http://127.0.0.1:{free_port()}")
    with GatewayProcess("policy", tmp_path, *args) as policy:
        with socket.create_connection(("127.0.0.1", policy.port), timeout=10) as s:
            s.sendall(b"this is not a policy request\n\n")
            assert s.recv(100) == b""  # closed without an answer
        client = PolicyClient(policy.port)
        try:
            inbound = {"client_address": "192.0.2.9", "recipient": "a@example.org"}
            assert client.ask(**inbound) == "DUNNO"
        finally:
            client.close()


def test_a_recipient_file_removed_while_running_keeps_the_list_last_loaded(
    tmp_path: Path,
) -> None:
    recipients = tmp_path / "recipients"
    recipients.write_text("alice@example.org\n")
    args = ("--service-url", f"http://127.0.0.1:{free_port()}", "--recipients-file")
    with GatewayProcess("policy", tmp_path, *args, str(recipients)) as policy:
        client = PolicyClient(policy.port)
        try:
            inbound = {"client_address": "192.0.2.9", "sender": "x@remote.example"}
            recipients.unlink()  # as an editor or a deploy script replacing it does
            for _ in range(2):  # answered each time, and warned about once
                assert client.ask(**inbound, recipient="nobody@example.org").startswith("550 ")
                assert client.ask(**inbound, recipient="alice@example.org") == "DUNNO"
            recipients.write_text("alice@example.org\nbob@example.org\n")
            assert client.ask(**inbound, recipient="bob@example.org") == "DUNNO"
        finally:
            client.close()
        warnings = [line for line in policy.log().splitlines() if " WARNING " in line]
        unreadable = [line for line in warnings if "recipient list" in line]
        assert len(unreadable) == 1, policy.log()
        assert "No such file or directory" in unreadable[0] and "keeping the 1 " in unreadable[0]
        assert "recipient list loaded: 2 addresses" in policy.log()


@pytest.mark.parametrize(
    ("command", "option"),
    [("milter", "--token-file"), ("policy", "--token-file"), ("policy", "--recipients-file")],
)
def test_a_file_that_cannot_be_read_stops_the_process_at_start(
    tmp_path: Path, command: str, option: str
) -> None:
    missing = tmp_path / "recipients"  # the README's step 2 before the file was written
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", command, option, str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().splitlines() == [
        f"error: {option}={missing}: cannot read it: No such file or directory"
    ]


@pytest.mark.parametrize(
    ("options", "refused", "looked_up"),
    [
        ((), "nobody@example.org", "t-k3x9q2m7ab@example.org"),
        (("--alias-prefix", "tmp."), "t-k3x9q2m7ab@example.org", "tmp.k3x9q2m7ab@example.org"),
    ],
)
def test_only_an_unlisted_recipient_shaped_like_a_temporary_address_is_looked_up(
    tmp_path: Path, options: tuple[str, ...], refused: str, looked_up: str
) -> None:
    """A dictionary attack costs the service nothing, and is refused while it is down;
    an address with the temporary-address prefix (``--alias-prefix``, default ``t-``)
    cannot be judged without it."""
    recipients = tmp_path / "recipients"
    recipients.write_text("alice@example.org\n")
    args = ("--service-url", f"http://127.0.0.1:{free_port()}", *options, "--recipients-file")
    with GatewayProcess("policy", tmp_path, *args, str(recipients)) as policy:
        client = PolicyClient(policy.port)
        try:
            inbound = {"client_address": "192.0.2.9", "sender": "x@remote.example"}
            assert client.ask(**inbound, recipient=refused).startswith("550 ")
            assert client.ask(**inbound, recipient=looked_up).startswith("DEFER 4.3.0")
        finally:
            client.close()
