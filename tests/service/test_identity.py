"""Identities over HTTP: every endpoint that takes a user, a sender or a recipient keys it
the same way and checks it after normalising, so a value that lower-casing lengthens
("İ", U+0130, becomes two code points) past 320 characters is a 400 with the JSON
error shape, never a 500 (which a gateway would take for an outage and fail open on)
and never a stored 640-character key. Real service, real SQLite, over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.service.server import Service, message

RAW = message(1, spammy=False)
MSG = {"content-type": "message/rfc822"}
FP = "0" * 32  # a well-formed fingerprint

# (character, length once lower-cased). U+0130 is the one character whose lower case is
# longer (161 of them: 322); U+FB03 (a ligature) and U+1E9E (capital sharp s) keep their
# length, so only more than 320 of them is too long.
OVER_LONG = [("\u0130", 322), ("\u0130", 640), ("\ufb03", 321), ("\u1e9e", 321), ("a", 321)]
# At the bound once lower-cased: usable.
AT_LIMIT = [("\u0130", 320), ("\ufb03", 320), ("a", 320)]

Call = Callable[[httpx.Client, str], httpx.Response]


def _path(value: str) -> str:
    return quote(value, safe="@")


# Every place an identity is taken: query parameters, path parameters, JSON bodies.
CALLS: dict[str, Call] = {
    "score outbound user": lambda c, v: c.post(
        "/v1/score", params={"direction": "outbound", "user": v}, content=RAW, headers=MSG
    ),
    "score outbound mail_from": lambda c, v: c.post(
        "/v1/score", params={"direction": "outbound", "mail_from": v}, content=RAW, headers=MSG
    ),
    "score inbound mail_from": lambda c, v: c.post(
        "/v1/score", params={"direction": "inbound", "mail_from": v}, content=RAW, headers=MSG
    ),
    "score inbound rcpt": lambda c, v: c.post(
        "/v1/score",
        params={"direction": "inbound", "rcpt": ["bob@example.org", v]},
        content=RAW,
        headers=MSG,
    ),
    "feedback user": lambda c, v: c.post(
        "/v1/feedback", params={"label": "spam", "user": v}, content=RAW, headers=MSG
    ),
    "feedback withdraw user": lambda c, v: c.delete(f"/v1/feedback/{FP}", params={"user": v}),
    "list put user": lambda c, v: c.put(
        "/v1/lists/block/partner.example", params={"scope": "user", "user": v}
    ),
    "list get user": lambda c, v: c.get(
        "/v1/lists/block/partner.example", params={"scope": "user", "user": v}
    ),
    "list delete user": lambda c, v: c.delete(
        "/v1/lists/block/partner.example", params={"scope": "user", "user": v}
    ),
    "list entries user": lambda c, v: c.get("/v1/lists/block", params={"scope": "user", "user": v}),
    "list put entry": lambda c, v: c.put(f"/v1/lists/block/{_path(v)}", params={"scope": "global"}),
    "admission path": lambda c, v: c.get(f"/v1/admission/{_path(v)}"),
    "account path": lambda c, v: c.get(f"/v1/accounts/{_path(v)}"),
    "account clear path": lambda c, v: c.post(f"/v1/accounts/{_path(v)}/clear"),
    "audit sender": lambda c, v: c.get("/v1/audit", params={"sender": v}),
    "audit user": lambda c, v: c.get("/v1/audit", params={"user": v}),
    "event body user": lambda c, v: c.post(
        "/v1/events", json={"type": "auth_failure", "user": v, "client_ip": "192.0.2.7"}
    ),
}
# These take an address, not a login; a list entry's local part is also held to email
# syntax (at most 64 octets), so at the bound it is refused for that, never a 500.
ADDRESSES = {"score inbound rcpt", "list put entry", "feedback user", "feedback withdraw user"}
SYNTAX_BOUND = {"list put entry"}


def _value(name: str, char: str, length: int) -> str:
    """A value of ``length`` characters once lower-cased, made of ``char``: a login, or
    for the calls that take an address the local part of one (the domain counts too)."""
    suffix = "@x.example" if name in ADDRESSES or name.startswith("score") else ""
    value = char * ((length - len(suffix)) // len(char.lower())) + suffix
    assert len(value.lower()) == length
    return value


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("identity")
    env = {"MAILSIFT_OUTBOUND_LEARNING": "false"}
    with Service(tmp / "data", env=env) as svc:
        yield svc


@pytest.mark.parametrize(("char", "length"), OVER_LONG)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_identity_too_long_once_lower_cased_is_a_400_everywhere(
    service: Service, name: str, char: str, length: int
) -> None:
    value = _value(name, char, length)
    with service.client() as admin:
        r = CALLS[name](admin, value)
    assert r.status_code == 400, (name, r.status_code, r.text)
    body = r.json()
    assert body["error"] == "bad_request" and body["detail"], body


@pytest.mark.parametrize(("char", "length"), AT_LIMIT)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_identity_at_the_bound_once_lower_cased_is_taken(
    service: Service, name: str, char: str, length: int
) -> None:
    """The same calls with 320 characters once lower-cased: not refused for the identity
    (a list entry may still be refused for its syntax, a report for a message never
    scored for that user, an unknown entry is 404)."""
    value = _value(name, char, length)
    with service.client() as admin:
        r = CALLS[name](admin, value)
    assert r.status_code < 500, (name, r.status_code, r.text)
    if r.status_code == 400 and name not in SYNTAX_BOUND:
        detail = r.json()["detail"]
        assert "320" not in detail and "character" not in detail, (name, detail)


def test_lists_never_store_a_key_longer_than_320(service: Service) -> None:
    """The hostile test's find: a per-user entry for a 320 x U+0130 user was stored under
    a 640-character owner. Refused now, and nothing is stored."""
    user = "\u0130" * 320
    with service.client() as admin:
        refused = admin.put(
            "/v1/lists/block/partner.example", params={"scope": "user", "user": user}
        )
        assert refused.status_code == 400, refused.text
        kept = admin.put(
            "/v1/lists/block/partner.example", params={"scope": "user", "user": "İ" * 160}
        )
        assert kept.status_code in (200, 201), kept.text
        entries = admin.get("/v1/lists/block", params={"scope": "user"}).json()
    owners = (
        [e["user"] for e in entries["entries"]]
        if isinstance(entries, dict)
        else [e["user"] for e in entries]
    )
    assert owners and all(len(o) <= 320 for o in owners), [len(o) for o in owners]
    assert "i\u0307" * 160 in owners


def test_an_outbound_score_with_a_lengthening_user_never_fails_the_service(
    service: Service,
) -> None:
    """The original finding: 161 x U+0130 as ``user`` gave a 500 (the milter's outage,
    failing open). Now a 400; and the service still scores the next message."""
    with service.client() as admin:
        bad = admin.post(
            "/v1/score",
            params={"direction": "outbound", "user": "\u0130" * 161},
            content=RAW,
            headers=MSG,
        )
        assert bad.status_code == 400, bad.text
        good = admin.post(
            "/v1/score",
            params={"direction": "outbound", "user": "\u0130" * 160},
            content=RAW,
            headers=MSG,
        )
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(("local", "ok"), [("\u0130" * 155, True), ("\u0130" * 161, False)])
def test_a_user_tokens_address_is_keyed_and_bounded_the_same_way(
    tmp_path: Path, local: str, ok: bool
) -> None:
    """``token create --address``: 320 characters once lower-cased, the bound every
    endpoint the token then calls applies; over it, one line and exit 2, no traceback."""
    create = ["token", "create", "--role", "user", "--name", "t"]
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", *create, "--address", f"{local}@x.example"],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "320 characters once lower-cased" in " ".join(done.stderr.split())
