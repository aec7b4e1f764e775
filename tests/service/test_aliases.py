"""Temporary addresses over HTTP against a real service and its SQLite state database:
who may create, see, extend and delete which; that addresses are random (50 bits) and
never handed out twice; and what scoring does with mail to one (the owner named for the
gateway, the sender it was made for learned, a foreign sender weighed and recorded).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsift.reasons import ALIAS_EXPIRED, ALIAS_FOREIGN_SENDER, ALIAS_RECIPIENT
from mailsift.service.aliases.store import RANDOM_BITS
from mailsift.service.db import STATE_FILENAME
from tests.gateway.processes import gateway_token
from tests.service.server import Service, message, wait_for

DOMAIN = "corp.example"
BOB, CAROL = f"bob@{DOMAIN}", f"carol@{DOMAIN}"
MSG = {"content-type": "message/rfc822"}
ADDRESS = re.compile(rf"^t-([a-z2-7]{{10}})@{re.escape(DOMAIN)}$")
MAX_PER_USER = 300


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("aliases")
    env = {
        "MAILSIFT_LOCAL_DOMAINS": f"{DOMAIN},other.example",
        "MAILSIFT_ALIAS_MAX_PER_USER": str(MAX_PER_USER),
        "MAILSIFT_ALIAS_MAX_DAYS": "90",
        "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10",  # learning: the reasons are all there is
    }
    with Service(tmp / "data", env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def bob(service: Service) -> Iterator[httpx.Client]:
    token = gateway_token(service.data_dir, service.env, "--role", "user", "--address", BOB)
    with service.client(token) as client:
        yield client


@pytest.fixture(scope="module")
def carol(service: Service) -> Iterator[httpx.Client]:
    token = gateway_token(service.data_dir, service.env, "--role", "user", "--address", CAROL)
    with service.client(token) as client:
        yield client


def _create(client: httpx.Client, user: str, **params: Any) -> dict[str, Any]:
    r = client.post("/v1/aliases", params={"user": user, **params})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _score(client: httpx.Client, sender: str, n: int, *rcpts: str) -> dict[str, Any]:
    raw = message(n, spammy=False).replace(
        f"From: sender{n}@example.org".encode(), f"From: {sender}".encode()
    )
    r = client.post(
        "/v1/score",
        params={"direction": "inbound", "mail_from": sender, "rcpt": list(rcpts)},
        content=raw,
        headers=MSG,
    )
    assert r.status_code == 200, r.text
    return {**r.json(), "raw": raw}


def _names(reasons: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in reasons]


def test_a_user_creates_a_random_address_of_their_own_on_their_domain(
    bob: httpx.Client,
) -> None:
    before = time.time()
    made = _create(bob, BOB, days=14, label="shop.example")
    assert ADDRESS.match(made["address"]), made["address"]
    assert (made["user"], made["label"], made["state"]) == (BOB, "shop.example", "live")
    assert made["created_by"] == "user"  # the token's name (its role, when unnamed)
    expires = datetime.fromisoformat(made["expires_at"]).timestamp()
    assert before + 14 * 86_400 <= expires <= time.time() + 14 * 86_400
    listed = bob.get("/v1/aliases", params={"user": BOB}).json()
    assert made["address"] in [a["address"] for a in listed["aliases"]]


def test_a_user_cannot_create_see_extend_or_delete_another_users_addresses(
    service: Service, bob: httpx.Client, carol: httpx.Client
) -> None:
    bobs = _create(bob, BOB)["address"]
    # Create for someone else, or list theirs: refused.
    assert carol.post("/v1/aliases", params={"user": BOB}).status_code == 403
    assert carol.get("/v1/aliases", params={"user": BOB}).status_code == 403
    assert carol.get("/v1/aliases").status_code == 403  # everyone's: admins only
    # Bob's address, asked by carol, is answered as if it did not exist.
    assert carol.get(f"/v1/aliases/{bobs}").status_code == 404
    assert carol.patch(f"/v1/aliases/{bobs}", params={"days": 1}).status_code == 404
    refused = carol.delete(f"/v1/aliases/{bobs}")
    assert refused.status_code == 404 and refused.json()["error"] == "not_found"
    absent = carol.delete(f"/v1/aliases/t-aaaaaaaaaa@{DOMAIN}")
    assert absent.json()["detail"] == refused.json()["detail"].replace(bobs, absent.url.path[12:])
    assert BOB not in refused.text
    # ...and it is untouched.
    mine = bob.get(f"/v1/aliases/{bobs}").json()
    assert mine["state"] == "live" and mine["deleted_at"] is None
    assert carol.get("/v1/aliases", params={"user": CAROL}).json()["count"] == 0
    # An administrator may do all of it for anyone.
    with service.client() as admin:
        made = _create(admin, CAROL)
        assert made["user"] == CAROL
        everyone = admin.get("/v1/aliases").json()["aliases"]
        assert {BOB, CAROL} <= {a["user"] for a in everyone}


def test_addresses_carry_fifty_random_bits_and_are_never_handed_out_again(
    service: Service,
) -> None:
    assert RANDOM_BITS >= 40
    with service.client() as admin:
        made = [_create(admin, f"u{i % 7}@{DOMAIN}")["address"] for i in range(240)]
        parts = [ADDRESS.match(a).group(1) for a in made]  # type: ignore[union-attr]
        assert len(set(made)) == len(made)
        # 10 base32 characters = 50 bits, each position drawn from all 32 symbols: with
        # 240 draws every position shows nearly all of them (a counter, a clock or a
        # few-bit generator would not).
        assert all(len(p) * 5 == RANDOM_BITS for p in parts)
        for position in range(10):
            assert len({p[position] for p in parts}) >= 28, position
        # A deleted address stays taken: refused, never re-issued.
        gone = made[0]
        deleted = admin.delete(f"/v1/aliases/{gone}").json()
        assert deleted["state"] == "deleted"
        again = [_create(admin, f"v{i}@{DOMAIN}")["address"] for i in range(50)]
        assert gone not in again and not set(again) & set(made)
        assert admin.get(f"/v1/aliases/{gone}").json()["state"] == "deleted"
        # Extending a deleted address does not bring it back.
        assert admin.patch(f"/v1/aliases/{gone}", params={"days": 5}).json()["state"] == "deleted"


def test_limits_per_user_and_lifetime(service: Service) -> None:
    with service.client() as admin:
        user = f"busy@{DOMAIN}"
        for _ in range(MAX_PER_USER):
            admin.post("/v1/aliases", params={"user": user})
        full = admin.post("/v1/aliases", params={"user": user})
        assert full.status_code == 409 and full.json()["error"] == "limit_reached"
        too_long = admin.post("/v1/aliases", params={"user": BOB, "days": 91})
        assert too_long.status_code == 400 and "MAILSIFT_ALIAS_MAX_DAYS" in too_long.text
        bad_label = admin.post("/v1/aliases", params={"user": BOB, "label": "a b"})
        assert bad_label.status_code == 400
        assert admin.post("/v1/aliases").status_code == 400  # whose?


def test_the_domain_is_the_owners_when_local_else_the_first_local_one(service: Service) -> None:
    with service.client() as admin:
        assert _create(admin, "x@other.example")["address"].endswith("@other.example")
        assert _create(admin, "x@remote.example")["address"].endswith(f"@{DOMAIN}")


def test_mail_to_a_live_address_answers_for_its_owner_and_learns_its_sender(
    service: Service, bob: httpx.Client
) -> None:
    alias = _create(bob, BOB)["address"]  # no label: the first mail names the sender
    with service.client() as gateway:
        first = _score(gateway, "orders@mail.shop.example", 1, alias, CAROL)
    (mine,) = [r for r in first["recipients"] if r["rcpt"] == alias]
    assert mine["alias"] == {"owner": BOB}
    assert all(r.get("alias") is None for r in first["recipients"] if r["rcpt"] == CAROL)
    names = _names(first["reasons"])
    assert ALIAS_RECIPIENT in names and ALIAS_FOREIGN_SENDER not in names
    # The owner's address appears in no reason's text.
    assert BOB not in str(first["reasons"])
    assert bob.get(f"/v1/aliases/{alias}").json()["label"] == "mail.shop.example"


def test_mail_from_an_unrelated_sender_is_weighed_and_shows_who_leaked_it(
    service: Service, bob: httpx.Client
) -> None:
    alias = _create(bob, BOB, label="shop.example")["address"]
    with service.client() as gateway:
        same_org = _score(gateway, "news@news.shop.example", 2, alias)
        leaked = _score(gateway, "promo@spammer.example", 3, alias)
        _score(gateway, "promo@spammer.example", 4, alias)
    assert ALIAS_FOREIGN_SENDER not in _names(same_org["reasons"])
    (reason,) = [r for r in leaked["reasons"] if r["name"] == ALIAS_FOREIGN_SENDER]
    assert reason["weight"] > 0
    assert leaked["score"] > same_org["score"]
    assert "shop.example" in reason["detail"] and "spammer.example" in reason["detail"]
    shown = bob.get(f"/v1/aliases/{alias}").json()
    assert [(s["domain"], s["messages"]) for s in shown["foreign_senders"]] == [
        ("spammer.example", 2)
    ]
    listed = bob.get("/v1/aliases", params={"user": BOB}).json()["aliases"]
    (row,) = [a for a in listed if a["address"] == alias]
    assert row["foreign_senders"][0]["domain"] == "spammer.example"


def test_the_audit_trail_shows_mail_to_a_temporary_address(
    service: Service, bob: httpx.Client
) -> None:
    alias = _create(bob, BOB, label="shop.example")["address"]
    with service.client() as gateway:
        raw = _score(gateway, "promo@elsewhere.example", 5, alias)["raw"]
    with service.client() as admin:

        def rows() -> list[dict[str, Any]]:
            found = admin.get("/v1/audit", params={"sender": "promo@elsewhere.example"})
            return found.json()["events"] if found.status_code == 200 else []

        assert wait_for(lambda: bool(rows()), 15)
        (row,) = rows()
    # The row names the address and whom it reached; the reasons say it was alias mail.
    assert row["recipients"] == [alias, BOB]
    assert {ALIAS_RECIPIENT, ALIAS_FOREIGN_SENDER} <= {r["name"] for r in row["reasons"]}
    # So the owner may report what reached them through the address.
    report = bob.post(
        "/v1/feedback", params={"label": "spam", "user": BOB}, content=raw, headers=MSG
    )
    assert report.status_code == 200, report.text


def test_gateways_learn_whether_a_recipient_is_a_live_address(
    service: Service, bob: httpx.Client
) -> None:
    live = _create(bob, BOB)["address"]
    deleted = _create(bob, BOB)["address"]
    expired = _create(bob, BOB)["address"]
    assert bob.delete(f"/v1/aliases/{deleted}").json()["state"] == "deleted"
    expire(service.data_dir, expired)
    token = gateway_token(service.data_dir, service.env)
    with service.client(token) as gateway:

        def state(address: str) -> object:
            r = gateway.get(f"/v1/recipients/{address}")
            assert r.status_code == 200, r.text
            if address != BOB:  # a gateway's answer does not name the owner
                assert BOB not in r.text
            return r.json()["alias"]

        assert state(live) == "live"
        assert state(deleted) == "deleted"
        assert state(expired) == "expired"
        assert state(BOB) is None
        assert state(f"t-aaaaaaaaaa@{DOMAIN}") is None
        # Scoring refuses the copy of a dead address to it alone.
        body = _score(gateway, "shop@shop.example", 6, expired, CAROL)
        own = {r["rcpt"]: r for r in body["recipients"]}
        assert own[expired]["action"] == "reject"
        assert ALIAS_EXPIRED in _names(own[expired]["reasons"])
        assert own[CAROL]["action"] == body["action"] != "reject"
        assert "alias" not in own[expired] or own[expired]["alias"] is None
    assert bob.get(f"/v1/recipients/{live}").status_code == 403  # a gateway's question


def expire(data_dir: Path, address: str) -> None:
    """Age an address past its expiry, as the clock would, in the service's own database."""
    with sqlite3.connect(data_dir / STATE_FILENAME) as db:
        db.execute(
            "UPDATE aliases SET expires_at = ? WHERE address = ?", (time.time() - 1, address)
        )


def test_administrators_manage_addresses_with_the_cli(service: Service, bob: httpx.Client) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "alias", *args],
            env=service.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = cli("create", "--user", BOB, "--days", "7", "--label", "cli.example")
    assert made.returncode == 0, made.stderr
    address = made.stdout.split()[0]
    assert ADDRESS.match(address) and " live " in made.stdout
    # The service sees it at once (one database), and so does its owner.
    assert bob.get(f"/v1/aliases/{address}").json()["label"] == "cli.example"
    listed = cli("list", "--user", BOB)
    assert listed.returncode == 0 and address in listed.stdout
    gone = cli("delete", address)
    assert gone.returncode == 0 and " deleted " in gone.stdout
    assert bob.get(f"/v1/aliases/{address}").json()["state"] == "deleted"
    missing = cli("delete", f"t-aaaaaaaaaa@{DOMAIN}")
    assert missing.returncode == 2 and "no temporary address" in missing.stderr
    too_long = cli("create", "--user", BOB, "--days", "1000")
    assert too_long.returncode == 2 and "MAILSIFT_ALIAS_MAX_DAYS" in too_long.stderr
