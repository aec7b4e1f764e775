"""A gateway token the service refuses is a configuration error, not an outage: the
milter and the policy server refuse to start with one (exit 2, one clear line), and a
token revoked while they run makes them fail closed whatever ``--fail-mode`` says, with
an ERROR line. Real processes against a real service; the milter is driven by the
protocol client of ``test_milter`` (the Postfix half is in ``test_postfix_e2e``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.processes import GatewayProcess, gateway_options, gateway_token
from tests.gateway.test_milter import Mta, connect, transaction
from tests.gateway.test_policy_server import PolicyClient, outbound
from tests.service.server import Service, free_port

AWS_KEY = (
    b"From: dave@corp.test\r\nTo: x@partner.test\r\nSubject: keys\r\n\r\n"
    b"aws_access_key_id = AKIAIOSFODNN7QWERTY1\r\n"
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("token")
    with Service(tmp / "data", env={"MAILSIFT_OUTBOUND_LEARNING": "false"}) as svc:
        yield svc


def _cli(service: Service, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", *args],
        env={**service.env, "MAILSIFT_DATA_DIR": str(service.data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _revoke_all_named(service: Service, name: str) -> None:
    for line in _cli(service, "token", "list").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == name and fields[2] == "active":
            _cli(service, "token", "revoke", fields[0])


@pytest.mark.parametrize("command", ["milter", "policy"])
@pytest.mark.parametrize("token", ["msk_not-a-token-the-service-knows", "user", "none"])
def test_a_token_the_service_refuses_stops_the_process_at_start(
    tmp_path: Path, service: Service, command: str, token: str
) -> None:
    args = ["--service-url", service.url, "--port", str(free_port())]
    if token == "user":  # a real token of the wrong role: 403
        token = gateway_token(
            service.data_dir, service.env, "--role", "user", "--address", "bob@corp.test"
        )
    if token != "none":
        (tmp_path / "token").write_text(token + "\n")
        args += ["--token-file", str(tmp_path / "token")]
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    (last,) = done.stderr.strip().splitlines()[-1:]
    assert last.startswith(f"mailsift {command}: the service refused the gateway token: HTTP 40")
    assert "msk_" not in done.stderr  # the secret never reaches the log


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_token_revoked_at_run_time_fails_closed_whatever_the_mode(
    tmp_path: Path, service: Service, mode: str
) -> None:
    name = f"gw-{mode}"
    token = tmp_path / "token"
    token.write_text(
        gateway_token(service.data_dir, service.env, "--role", "gateway", "--name", name)
    )
    args = ("--service-url", service.url, "--token-file", str(token), "--fail-mode", mode)
    nets = ("--internal-networks", "192.0.2.0/24,10.0.0.0/8")
    with (
        GatewayProcess("milter", tmp_path, *args, *nets) as milter,
        GatewayProcess("policy", tmp_path, *args, *nets) as policy,
    ):
        _revoke_all_named(service, name)
        mta = Mta(milter.port)
        try:
            connect(mta)  # from 192.0.2.7: outbound
            (reply,) = transaction(mta, AWS_KEY)
        finally:
            mta.close()
        asker = PolicyClient(policy.port)
        try:
            answer = asker.ask(**outbound())
        finally:
            asker.close()
        milter_log, policy_log = milter.log(), policy.log()
    assert bytes(reply.content).startswith(b"451 4.3.0"), reply  # not passed unscanned
    assert answer.startswith("DEFER 4.3.0"), answer
    (error,) = [line for line in milter_log.splitlines() if " ERROR " in line]
    assert "HTTP 401" in error and "failing closed whatever the fail mode" in error
    (error,) = [line for line in policy_log.splitlines() if " ERROR " in line]
    assert "HTTP 401" in error and "failing closed" in error


def test_an_identity_the_service_refuses_is_refused_not_passed(
    tmp_path: Path, service: Service
) -> None:
    """A recipient that lower-casing lengthens past 320 characters: the service's 400 is
    no outage (it was, and the message passed unscanned), so the milter rejects the
    message even failing open."""
    args = (*gateway_options(service.data_dir, service.env, service.url), "--fail-mode", "open")
    with GatewayProcess("milter", tmp_path, *args) as milter:
        mta = Mta(milter.port)
        try:
            connect(mta)
            (reply,) = transaction(mta, AWS_KEY, rcpts=("\u0130" * 161 + "@x.test",))
        finally:
            mta.close()
    assert bytes(reply.content).startswith(b"550 5.7.1"), reply
