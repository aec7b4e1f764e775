"""Console sessions over plain HTTP (no browser): the cookie's flags under TLS, which
tokens may sign in, and revocation ending a session at once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.server import ADMIN_TOKEN, Service
from tests.service.test_security import certificate  # noqa: F401  (a fixture)

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
_SECRET = re.compile(r'id="secret" type="text" readonly value="(msk_[^"]+)"')


@contextmanager
def _signed_in(svc: Service, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.admin_url, verify=False, timeout=30) as client:
        r = client.post("/console/login", data={"token": token})
        assert r.status_code == 303, r.text
        yield client


def _csrf(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def _create_token(client: httpx.Client, role: str, *addresses: str) -> str:
    r = client.post(
        "/console/tokens",
        data={
            "csrf": _csrf(client, "/console/tokens"),
            "name": f"{role}-made-in-console",
            "role": role,
            "addresses": " ".join(addresses),
        },
    )
    assert r.status_code == 200, r.text
    found = _SECRET.search(r.text)
    assert found is not None
    return found.group(1)


def test_the_session_cookie_is_secure_under_tls(
    tmp_path: Path,
    certificate: tuple[Path, Path],  # noqa: F811
) -> None:
    cert, key = certificate
    env = {"MAILSIFT_TLS_CERTFILE": str(cert), "MAILSIFT_TLS_KEYFILE": str(key)}
    with Service(tmp_path / "data", env=env) as svc:
        with httpx.Client(base_url=svc.admin_url, verify=False) as client:
            r = client.post("/console/login", data={"token": ADMIN_TOKEN})
        assert r.status_code == 303
        flags = {part.strip().lower() for part in r.headers["set-cookie"].split(";")}
        assert {"httponly", "secure", "samesite=strict", "path=/console"} <= flags
        with _signed_in(svc, ADMIN_TOKEN) as client:
            page = client.get("/console/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"


def test_only_live_admin_tokens_sign_in_and_revoking_one_ends_its_session(
    tmp_path: Path,
) -> None:
    with Service(tmp_path / "data") as svc, _signed_in(svc, ADMIN_TOKEN) as admin:
        (cookie,) = admin.cookies.jar
        assert not cookie.secure  # plain HTTP: a Secure cookie would never be sent back
        user_token = _create_token(admin, "user", "alice@example.org")
        refused = httpx.post(f"{svc.admin_url}/console/login", data={"token": user_token})
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers

        stored_admin = _create_token(admin, "admin")
        with _signed_in(svc, stored_admin) as second:
            assert second.get("/console/history").status_code == 200
            token_id = stored_admin.split("_")[1]
            r = admin.post(
                f"/console/tokens/{token_id}/revoke", data={"csrf": _csrf(admin, "/console/tokens")}
            )
            assert r.status_code == 200 and f"Token {token_id} revoked." in r.text
            gone = second.get("/console/history")
            assert (gone.status_code, gone.headers["location"]) == (303, "/console/login")


@pytest.mark.parametrize("csrf", [None, "", "0" * 64])
def test_changes_without_this_sessions_csrf_token_are_refused(
    tmp_path: Path, csrf: str | None
) -> None:
    with Service(tmp_path / "data") as svc, _signed_in(svc, ADMIN_TOKEN) as admin:
        form = {"kind": "block", "scope": "global", "entry": "spammer.example"}
        if csrf is not None:
            form["csrf"] = csrf
        r = admin.post("/console/lists/add", data=form)
        assert r.status_code == 403
        assert "CSRF" in r.text
        with svc.client(admin=True) as api:
            listed = api.get("/v1/lists/block").json()
        assert listed["count"] == 0
