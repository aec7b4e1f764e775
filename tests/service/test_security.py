"""Tokens and roles, listeners and TLS — end to end against a real server."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.server import Service, free_port, message, train, wait_for

RFC822 = {"content-type": "message/rfc822"}
MAILSIFT = str(Path(sys.executable).with_name("mailsift"))
ALICE = "alice@corp.example"


def create_token(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [MAILSIFT, "token", "create", *args],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]  # the token is the last word of the output


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Service, dict[str, str | None]]]:
    base = tmp_path_factory.mktemp("security")
    # Roles, not delivery, are under test: a report need not follow a score here.
    env = {
        "MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "1000",
        "MAILSIFT_FEEDBACK_REQUIRE_SCORED": "0",
    }
    svc = Service(base / "data", env=env)
    with svc:
        tokens: dict[str, str | None] = {
            "gateway": create_token(svc.data_dir, "--role", "gateway", "--name", "mx1"),
            "user": create_token(svc.data_dir, "--role", "user", "--address", ALICE),
            "admin": create_token(svc.data_dir, "--role", "admin", "--name", "ops"),
            "none": None,
            "bogus": "msk_000000000000_" + "x" * 43,
        }
        yield svc, tokens


MSG = message(1, spammy=True)
# (method, path, request kwargs, roles that may call it)
ENDPOINTS: list[tuple[str, str, dict[str, Any], set[str]]] = [
    ("POST", "/v1/score?direction=inbound", {"content": MSG, "headers": RFC822}, {"gateway"}),
    (
        "POST",
        "/v1/score?direction=outbound&user=" + ALICE,
        {"content": MSG, "headers": RFC822},
        {"gateway"},
    ),
    (
        "POST",
        "/v1/events",
        {"json": {"type": "auth_failure", "user": ALICE, "client_ip": "192.0.2.1"}},
        {"gateway"},
    ),
    (
        "POST",
        "/v1/dlp/scan",
        {"content": b"nothing here", "headers": {"content-type": "text/plain"}},
        {"gateway"},
    ),
    (
        "POST",
        f"/v1/feedback?label=spam&user={ALICE}",
        {"content": MSG, "headers": RFC822},
        {"user"},
    ),
    ("POST", "/v1/train?label=spam", {"content": MSG, "headers": RFC822}, set()),
    ("DELETE", "/v1/examples/" + "0" * 32, {}, set()),
    ("GET", "/v1/model", {}, set()),
    ("POST", "/v1/model/reload", {}, set()),
    ("GET", f"/v1/lists/allow?scope=user&user={ALICE}", {}, {"user"}),
    ("PUT", f"/v1/lists/block/spammer.example?scope=user&user={ALICE}", {}, {"user"}),
    ("PUT", "/v1/lists/block/spammer.example?scope=global", {}, set()),
    ("GET", f"/v1/accounts/{ALICE}", {}, set()),
    ("POST", "/v1/accounts/nobody@corp.example/clear", {}, set()),
    ("GET", "/v1/audit", {}, set()),
    ("GET", "/v1/reports/outbound", {}, set()),
    ("GET", "/v1/admin/diagnostics", {}, set()),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "roles"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
@pytest.mark.parametrize("role", ["gateway", "user", "admin", "none", "bogus"])
def test_each_role_can_do_exactly_what_it_should(
    secured: tuple[Service, dict[str, str | None]],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    roles: set[str],
    role: str,
) -> None:
    svc, tokens = secured
    with svc.client(tokens[role]) as c:
        r = c.request(method, path, **kwargs)
    if role in ("none", "bogus"):
        expected = 401
    elif role == "admin" or role in roles:
        assert r.status_code not in (401, 403), r.text
        assert r.status_code < 500, r.text
        return
    else:
        expected = 403
    assert r.status_code == expected, r.text
    assert set(r.json()) == {"error", "detail"}


def test_health_needs_no_token(secured: tuple[Service, dict[str, str | None]]) -> None:
    svc, _ = secured
    with svc.client(None) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_a_user_token_cannot_report_for_another_mailbox(
    secured: tuple[Service, dict[str, str | None]],
) -> None:
    svc, tokens = secured
    with svc.client(tokens["user"]) as c:
        r = c.post(
            "/v1/feedback",
            params={"label": "spam", "user": "bob@corp.example"},
            content=MSG,
            headers=RFC822,
        )
        assert r.status_code == 403 and "bob@corp.example" in r.json()["detail"]
        r = c.put(
            "/v1/lists/allow/partner.example", params={"scope": "user", "user": "bob@corp.example"}
        )
        assert r.status_code == 403


def test_revoked_tokens_fail_at_once(secured: tuple[Service, dict[str, str | None]]) -> None:
    svc, _ = secured
    token = create_token(svc.data_dir, "--role", "gateway", "--name", "mx-old")
    with svc.client(token) as c:
        assert c.post("/v1/score?direction=inbound", content=MSG, headers=RFC822).status_code == 200
        token_id = token.split("_")[1]
        subprocess.run(
            [MAILSIFT, "token", "revoke", token_id],
            env={**os.environ, "MAILSIFT_DATA_DIR": str(svc.data_dir)},
            check=True,
            capture_output=True,
        )
        assert c.post("/v1/score?direction=inbound", content=MSG, headers=RFC822).status_code == 401


def test_feedback_is_rate_limited_per_token(tmp_path: Path) -> None:
    env = {"MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "3", "MAILSIFT_FEEDBACK_REQUIRE_SCORED": "0"}
    with Service(tmp_path / "data", env=env) as svc:
        token = create_token(svc.data_dir, "--role", "user", "--address", ALICE)
        with svc.client(token) as c:
            codes = [
                c.post(
                    "/v1/feedback",
                    params={"label": "spam", "user": ALICE},
                    content=message(i, True),
                    headers=RFC822,
                ).status_code
                for i in range(4)
            ]
        assert codes == [200, 200, 200, 429]


def test_admin_listener_is_not_reachable_on_the_gateway_port(tmp_path: Path) -> None:
    """Also: started without --host/--admin-host, both listeners bind loopback only."""
    with Service(tmp_path / "data", split_listeners=True) as svc:
        with svc.client() as gateway_side:
            assert gateway_side.get("/v1/model").status_code == 404
            assert gateway_side.get("/v1/audit").status_code == 404
            assert (
                gateway_side.post(
                    "/v1/score?direction=inbound", content=MSG, headers=RFC822
                ).status_code
                == 200
            )
        with svc.client(admin=True) as admin_side:
            assert admin_side.get("/v1/model").status_code == 200
        listening = _listening_addresses({svc.port, svc.admin_port})
        assert listening == {("127.0.0.1", svc.port), ("127.0.0.1", svc.admin_port)}


def _listening_addresses(ports: set[int]) -> set[tuple[str, int]]:
    """Local addresses of LISTEN sockets on ``ports``, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            port = int(port_hex, 16)
            if port in ports:
                if len(addr_hex) == 8:
                    addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
                else:
                    addr = "ipv6:" + addr_hex
                found.add((addr, port))
    return found


def test_serve_refuses_plain_http_beyond_loopback(tmp_path: Path) -> None:
    r = subprocess.run(
        [MAILSIFT, "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--admin-port", "0"],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing plain HTTP" in r.stderr


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _handshake(port: int, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # the client is willing; only the server refuses
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


def test_tls_12_and_13_succeed_and_11_is_refused(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    env = {"MAILSIFT_TLS_CERTFILE": str(cert), "MAILSIFT_TLS_KEYFILE": str(key)}
    with Service(tmp_path / "data", env=env) as svc:
        assert _handshake(svc.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        assert _handshake(svc.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            _handshake(svc.port, ssl.TLSVersion.TLSv1_1)
        with svc.client() as c:
            assert c.get("/healthz").json() == {"status": "ok"}


def _open_to_others(root: Path) -> dict[str, str]:
    """Every path under ``root`` (itself included) that grants group or others anything,
    with its mode; files that vanish meanwhile (temporary snapshots) are skipped."""
    found = {}
    for path in [root, *root.rglob("*")]:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            found[str(path.relative_to(root))] = oct(mode)
    return found


def test_the_service_keeps_its_data_dir_and_files_private(tmp_path: Path) -> None:
    """Directories 0700, files 0600: databases, their WAL, snapshots, locks, metrics.
    A data dir and a database left open by an older install are tightened, and logged."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "state.db").touch()
    (data / "state.db").chmod(0o644)
    env = {"MAILSIFT_SNAPSHOT_EVERY_ENTRIES": "1"}
    with Service(data, workers=2, env=env) as svc, svc.client() as admin:
        for i in range(4):
            train(admin, message(i, spammy=i % 2 == 0), "spam" if i % 2 == 0 else "ham")
        assert admin.post("/v1/model/rebuild").status_code == 200
        for i in range(4, 8):
            train(admin, message(i, spammy=i % 2 == 0), "spam" if i % 2 == 0 else "ham")
        create_token(data, "--role", "gateway", "--name", "mx1")
        assert wait_for(lambda: (data / "model.snapshot.prev").exists(), timeout=20)
        names = {p.name for p in data.iterdir()}
        assert {"mailsift.db", "mailsift.db-wal", "state.db", "state.db-wal"} <= names
        assert {"model.snapshot", "rebuild.lock"} <= names
        assert any(name.startswith("metrics-") for name in names)
        assert _open_to_others(data) == {}
    assert _open_to_others(data) == {}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    log = svc.log_path.read_text()
    assert f"{data} was open to other users (0755): now 0700" in log
    assert f"{data / 'state.db'} was open to other users (0644): now 0600" in log


def test_token_create_leaves_nothing_open_to_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_token(data, "--role", "gateway", "--name", "mx1")  # a data dir that was not there
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {p.name for p in data.iterdir()} >= {"state.db"}
    assert _open_to_others(data) == {}
    data.chmod(0o755)
    create_token(data, "--role", "admin", "--name", "ops")
    assert _open_to_others(data) == {}
