"""Allow and block lists: the guard, the shared store, the check, the HTTP resource."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine

from mailsift.models.ensemble import Score
from mailsift.models.parse import parse_message
from mailsift.reasons import ALLOWLIST_UNVERIFIED, ALLOWLISTED, BLOCKLISTED, MODEL, MODEL_LEARNING
from mailsift.service.authres import AuthResults, auth_results, evaluate
from mailsift.service.checks.base import CheckContext, Envelope, Reason
from mailsift.service.checks.lists import REASONS, list_reasons
from mailsift.service.db import open_state_engine
from mailsift.service.errors import ApiError, install_error_handlers
from mailsift.service.lists import (
    NO_MATCH,
    InvalidListEntry,
    ListGuardRefused,
    ListMatch,
    ListStore,
    check_allow_entry,
    normalize_entry,
)
from mailsift.service.routers import lists as lists_router
from mailsift.service.settings import Settings
from mailsift.service.verdict import decide
from tests.conftest import pg_admin

ME = "mx.example.net"
SETTINGS = Settings(
    local_domains="example.org, mail.corp-example.com",
    freemail_extra_domains="isp-mail.example, webmail.bigisp.example",
    authserv_id=ME,
)
OWNER = "alice@ownco.example"
ADMIN = "admin-token-for-list-tests"


# --- the guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "scope", "user", "why"),
    [
        ("gmail.com", "global", None, "freemail"),
        ("outlook.com", "global", None, "freemail"),
        ("yahoo.com", "global", None, "freemail"),
        ("Yahoo.COM.", "user", OWNER, "freemail"),
        ("someone@gmail.com", "user", OWNER, "freemail"),
        ("@hotmail.com", "global", None, "freemail"),
        ("mail.gmail.com", "global", None, "freemail"),  # under a freemail domain
        ("guerrillamail.com", "global", None, "disposable"),
        ("x@10minutemail.com", "global", None, "disposable"),
        ("isp-mail.example", "global", None, "MAILSIFT_FREEMAIL_EXTRA_DOMAINS"),
        ("bigisp.example", "global", None, "covers webmail.bigisp.example"),
        ("ownco.example", "user", OWNER, "own domain"),
        ("bob@ownco.example", "user", OWNER, "own domain"),
        ("sales.ownco.example", "user", OWNER, "own domain"),
        ("example.org", "global", None, "local domain"),
        ("example.org", "user", OWNER, "local domain"),
        ("ceo@example.org", "global", None, "local domain"),
        ("eu.example.org", "global", None, "local domain"),
        ("corp-example.com", "global", None, "covers"),  # above local mail.corp-example.com
        ("co.uk", "global", None, "public suffix"),
        ("github.io", "global", None, "public suffix"),
    ],
)
def test_guard_refuses(entry: str, scope: Any, user: str | None, why: str) -> None:
    with pytest.raises(ListGuardRefused) as refused:
        check_allow_entry(entry, scope, user, SETTINGS)
    assert why in refused.value.detail
    assert isinstance(refused.value, ApiError)
    assert (refused.value.status, refused.value.code) == (422, "list_guard_refused")


@pytest.mark.parametrize(
    ("entry", "scope", "user"),
    [
        ("acme-industries.com", "global", None),
        ("billing@acme-industries.com", "global", None),
        ("acme-industries.com", "user", OWNER),
        ("mail.partner.co.uk", "user", "bob"),  # a plain login name has no own domain
        ("ownco.example", "global", None),  # only alice's own domain, for alice
        ("shop.github.io", "global", None),  # a registrant under a private suffix
    ],
)
def test_guard_accepts_ordinary_business_senders(entry: str, scope: Any, user: str | None) -> None:
    check_allow_entry(entry, scope, user, SETTINGS)


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "   ",
        "@",
        "not a domain",
        "a@b@c.example",
        "x@-bad.example",
        "no-dot",
        "x@[192.0.2.1]",
        '"quoted"@acme.example',
        "x@localhost",
        "x" * 400 + ".example",
    ],
)
def test_syntax_errors_are_400_not_422(entry: str) -> None:
    with pytest.raises(InvalidListEntry) as bad:
        check_allow_entry(entry, "global", None, SETTINGS)
    assert (bad.value.status, bad.value.code) == (400, "bad_request")


@pytest.mark.parametrize(
    ("scope", "user"), [("user", None), ("global", OWNER), ("everyone", None), ("user", "a b")]
)
def test_scope_and_user_are_checked(scope: Any, user: str | None) -> None:
    with pytest.raises(InvalidListEntry):
        check_allow_entry("acme-industries.com", scope, user, SETTINGS)


def test_entries_are_normalised() -> None:
    assert normalize_entry("Bob@Acme.EXAMPLE").value == "bob@acme.example"
    assert normalize_entry("@Acme.Example.").value == "acme.example"
    assert normalize_entry("bücher.example").value == "xn--bcher-kva.example"
    assert normalize_entry("x@bücher.example").domain == "xn--bcher-kva.example"


# --- the store, on both backends ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    """Two engines on one fresh state database: two processes' worth."""
    if request.param == "sqlite":
        url = None
    else:
        user, name = request.getfixturevalue("pg_database")
        with pg_admin(user, name) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        url = request.getfixturevalue("pg_url")
    opened = [open_state_engine(url, tmp_path), open_state_engine(url, tmp_path)]
    yield opened
    for engine in opened:
        engine.dispose()


@pytest.fixture
def store(engines: list[Engine]) -> ListStore:
    return ListStore(engines[0], SETTINGS)


def test_put_get_list_delete(store: ListStore) -> None:
    entry, created = store.put("allow", "Billing@Acme-Industries.COM", created_by="admin")
    assert created and entry.entry == "billing@acme-industries.com"
    again, created = store.put("allow", "billing@acme-industries.com")
    assert not created and again == entry
    store.put("allow", "partner.example", "user", OWNER, created_by=OWNER)
    store.put("block", "spammer.example")

    assert store.get("allow", "BILLING@acme-industries.com") == entry
    assert store.get("block", "billing@acme-industries.com") is None
    assert store.get("allow", "partner.example") is None  # that one is alice's
    assert [e.entry for e in store.list_entries("allow")] == [
        "billing@acme-industries.com",
        "partner.example",
    ]
    assert [e.entry for e in store.list_entries("allow", "user")] == ["partner.example"]
    assert [e.entry for e in store.list_entries("allow", user="Alice@OwnCo.example")] == [
        "partner.example"
    ]
    assert store.list_entries("allow", "user")[0].as_dict()["user"] == OWNER

    assert store.delete("allow", "billing@acme-industries.com")
    assert not store.delete("allow", "billing@acme-industries.com")
    assert store.get("allow", "billing@acme-industries.com") is None


def test_the_store_enforces_the_guard(store: ListStore) -> None:
    with pytest.raises(ListGuardRefused):
        store.put("allow", "gmail.com")
    with pytest.raises(InvalidListEntry):
        store.put("block", "not a domain")
    blocked, _ = store.put("block", "gmail.com")  # blocking a freemail domain is fine
    assert blocked.kind == "block"
    assert store.list_entries("allow") == []


def test_match_precedence(store: ListStore) -> None:
    store.put("block", "spammy.example")
    store.put("allow", "ceo@spammy.example")
    store.put("allow", "partner.example")
    store.put("block", "promo@partner.example")
    store.put("block", "mixed.example")
    store.put("allow", "mixed.example")

    assert store.match("x@spammy.example").kind == "block"
    assert store.match("x@news.spammy.example") == ListMatch("block", "spammy.example", "global")
    assert store.match("CEO@Spammy.Example").kind == "allow"  # address beats domain
    assert store.match("promo@partner.example").kind == "block"
    assert store.match("sales@eu.partner.example").entry == "partner.example"
    assert store.match("x@mixed.example").kind == "block"  # a tie goes to block
    assert store.match("x@notpartner.example") == NO_MATCH
    assert store.match("x@example") == NO_MATCH
    assert store.match("") == NO_MATCH
    assert store.match(None) == NO_MATCH
    assert store.match("no-at-sign") == NO_MATCH


def test_per_user_entries_apply_only_to_that_users_mail(store: ListStore) -> None:
    store.put("allow", "partner.example", "user", OWNER)
    store.put("block", "newsletter.example", "user", "bob@ownco.example")
    store.put("block", "spam.example")

    assert store.match("a@partner.example", [OWNER]) == ListMatch(
        "allow", "partner.example", "user", OWNER
    )
    assert store.match("a@partner.example", ["Alice@OwnCo.Example"]).kind == "allow"
    assert store.match("a@partner.example", ["bob@ownco.example"]) == NO_MATCH
    assert store.match("a@partner.example") == NO_MATCH
    assert store.match("a@spam.example", [OWNER]).kind == "block"  # global applies to all
    # one recipient's block makes the message spam for all: a verdict is per message
    assert store.match("n@newsletter.example", [OWNER, "bob@ownco.example"]).kind == "block"
    assert store.match("n@newsletter.example", [OWNER]) == NO_MATCH


def test_user_allow_of_an_address_beats_a_global_domain_block(store: ListStore) -> None:
    store.put("block", "bulk.example")
    store.put("allow", "ceo@bulk.example", "user", OWNER)
    assert store.match("ceo@bulk.example", [OWNER]).kind == "allow"
    assert store.match("ceo@bulk.example", [OWNER, "carol@ownco.example"]).kind == "block"


def test_other_processes_see_changes_within_the_refresh_interval(engines: list[Engine]) -> None:
    clock = Clock()
    writer = ListStore(engines[0], SETTINGS)
    reader = ListStore(engines[1], SETTINGS, refresh_seconds=5.0, clock=clock)
    assert reader.match("x@spam.example") == NO_MATCH

    writer.put("block", "spam.example")
    assert writer.match("x@spam.example").kind == "block"  # the writer at once
    clock.now += 4.9
    assert reader.match("x@spam.example") == NO_MATCH  # the cached copy, no query
    clock.now += 0.1
    assert reader.match("x@spam.example").kind == "block"

    writer.delete("block", "spam.example")
    assert writer.match("x@spam.example") == NO_MATCH
    clock.now += 5.0
    assert reader.match("x@spam.example") == NO_MATCH


def test_a_change_between_own_writes_is_picked_up(engines: list[Engine]) -> None:
    mine = ListStore(engines[0], SETTINGS, clock=Clock())
    other = ListStore(engines[1], SETTINGS)
    other.put("block", "from-elsewhere.example")
    mine.put("block", "mine.example")  # the version jumped by two: a full reload
    assert mine.match("a@from-elsewhere.example").kind == "block"
    assert mine.match("a@mine.example").kind == "block"


def test_matching_goes_on_with_the_last_copy_when_the_database_is_down(
    engines: list[Engine], tmp_path: Path
) -> None:
    clock = Clock()
    store = ListStore(engines[0], SETTINGS, clock=clock)
    store.put("block", "spam.example")
    store._engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/state.db")
    clock.now += 60
    assert store.match("x@spam.example").kind == "block"
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        store.refresh()


# --- the check ------------------------------------------------------------------------------


def context(match: ListMatch | None, auth: AuthResults | None) -> CheckContext:
    return CheckContext(
        parse_message(b"\r\n"),
        Envelope("inbound"),
        Score(0.5, 0.0, {}),
        True,
        SETTINGS,
        auth=auth,
        lists=match,
    )


def auth(value: str, from_addr: str = "ceo@partner.example") -> AuthResults:
    return evaluate([("authentication-results", value)], from_addr, ME)


ALLOWED = ListMatch("allow", "partner.example", "global")


@pytest.mark.parametrize(
    ("header", "name", "weight"),
    [
        (
            f"{ME}; spf=fail smtp.mailfrom=partner.example; dkim=fail header.d=partner.example",
            ALLOWLIST_UNVERIFIED,
            0.0,
        ),
        (f"{ME}; dkim=pass header.d=partner.example", ALLOWLISTED, REASONS[ALLOWLISTED][0]),
        (f"{ME}; spf=pass smtp.mailfrom=bounce.partner.example", ALLOWLISTED, -6.0),
        (f"{ME}; dkim=pass header.d=esp.example", ALLOWLIST_UNVERIFIED, 0.0),  # not aligned
        ("mx.elsewhere.example; dkim=pass header.d=partner.example", ALLOWLIST_UNVERIFIED, 0.0),
        (f"{ME}; none", ALLOWLIST_UNVERIFIED, 0.0),
    ],
)
def test_allow_counts_only_with_aligned_authentication(
    header: str, name: str, weight: float
) -> None:
    reasons = list(list_reasons(context(ALLOWED, auth(header))))
    assert [(r.name, r.weight) for r in reasons] == [(name, weight)]
    assert reasons[0].action is None
    assert weight < 0 or "score stands" in REASONS[name][1]


def test_allow_without_any_auth_results_is_unverified() -> None:
    assert [r.name for r in list_reasons(context(ALLOWED, None))] == [ALLOWLIST_UNVERIFIED]


def test_allow_entry_must_name_the_authenticated_domain() -> None:
    """An allow match on one address and a pass for another domain do not add up."""
    passed = auth(f"{ME}; dkim=pass header.d=other.example", "x@other.example")
    assert passed.aligned_pass
    assert [r.name for r in list_reasons(context(ALLOWED, passed))] == [ALLOWLIST_UNVERIFIED]
    address = ListMatch("allow", "ceo@partner.example", "user", OWNER)
    good = auth(f"{ME}; dkim=pass header.d=partner.example")
    assert [r.name for r in list_reasons(context(address, good))] == [ALLOWLISTED]


def test_block_makes_the_message_spam() -> None:
    match = ListMatch("block", "spam.example", "global")
    passed = auth(f"{ME}; dkim=pass header.d=spam.example", "a@spam.example")
    reasons = list(list_reasons(context(match, passed)))
    assert [(r.name, r.weight, r.action) for r in reasons] == [
        (BLOCKLISTED, 20.0, SETTINGS.spam_action)
    ]
    hammy_model = Reason(MODEL, -12.0, "a very hammy message")
    assert decide([hammy_model, *reasons], "inbound", SETTINGS).verdict == "spam"
    learning = decide([Reason(MODEL_LEARNING, 0.0, ""), *reasons], "inbound", SETTINGS)
    assert learning.action == SETTINGS.spam_action  # even while the model is learning


def test_no_match_says_nothing() -> None:
    assert list(list_reasons(context(None, None))) == []
    assert list(list_reasons(context(NO_MATCH, auth(f"{ME}; spf=pass")))) == []


def test_allowlisted_sender_with_failing_spf_and_dkim_is_not_let_through(
    store: ListStore,
) -> None:
    """The acceptance case, from raw message to reasons."""
    store.put("allow", "partner.example")
    raw = (
        f"Authentication-Results: {ME}; spf=fail smtp.mailfrom=partner.example;\r\n"
        " dkim=fail header.d=partner.example; dmarc=fail (p=reject) header.from=partner.example\r\n"
        "Authentication-Results: mx.forger.example; spf=pass smtp.mailfrom=partner.example;\r\n"
        " dkim=pass header.d=partner.example\r\n"
        "From: CEO <ceo@partner.example>\r\nSubject: invoice\r\n\r\npay now\r\n"
    ).encode()
    message = parse_message(raw)
    ctx = CheckContext(
        message,
        Envelope("inbound", "ceo@partner.example", (OWNER,)),
        Score(0.5, 0.0, {}),
        True,
        SETTINGS,
        lists=store.match(message.from_addr, [OWNER]),
        auth=auth_results(message, SETTINGS),
    )
    reasons = {r.name: r.weight for r in list_reasons(ctx)}
    assert reasons == {ALLOWLIST_UNVERIFIED: 0.0}


# --- the HTTP resource ----------------------------------------------------------------------


@pytest.fixture
def client(store: ListStore) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(lists_router.router)
    settings = SETTINGS.model_copy(update={"admin_token": SecretStr(ADMIN)})
    app.state.mailsift = SimpleNamespace(settings=settings, lists=store)
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def test_http_refusal_is_422_with_the_reason(client: TestClient) -> None:
    response = client.put("/v1/lists/allow/gmail.com")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "list_guard_refused"
    assert "gmail.com" in body["detail"] and "freemail" in body["detail"]
    own = client.put("/v1/lists/allow/ownco.example", params={"scope": "user", "user": OWNER})
    assert own.status_code == 422 and "own domain" in own.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/lists/allow/not%20a%20domain", {}),
        ("/v1/lists/allow/acme.example", {"scope": "user"}),
        ("/v1/lists/allow/acme.example", {"scope": "global", "user": OWNER}),
        ("/v1/lists/allow/acme.example", {"scope": "nobody"}),
        ("/v1/lists/grey/acme.example", {}),
    ],
)
def test_http_bad_requests_are_400(client: TestClient, path: str, params: dict[str, str]) -> None:
    response = client.put(path, params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_http_put_get_list_delete(client: TestClient) -> None:
    created = client.put(
        "/v1/lists/allow/Billing@Acme-Industries.com",
        params={"scope": "user", "user": OWNER},
    )
    assert created.status_code == 201
    assert created.json() == {
        **created.json(),
        "kind": "allow",
        "scope": "user",
        "user": OWNER,
        "entry": "billing@acme-industries.com",
        "type": "address",
        "created_by": OWNER,
    }
    again = client.put(
        "/v1/lists/allow/billing@acme-industries.com", params={"scope": "user", "user": OWNER}
    )
    assert again.status_code == 200
    assert client.put("/v1/lists/block/spam.example", params={"actor": "ops"}).status_code == 201

    got = client.get(
        "/v1/lists/allow/billing@acme-industries.com", params={"scope": "user", "user": OWNER}
    )
    assert got.status_code == 200 and got.json()["entry"] == "billing@acme-industries.com"
    assert client.get("/v1/lists/allow/billing@acme-industries.com").status_code == 404

    listed = client.get("/v1/lists/block").json()
    assert listed["count"] == 1 and listed["entries"][0]["created_by"] == "ops"
    assert client.get("/v1/lists/allow", params={"scope": "global"}).json()["count"] == 0
    assert client.get("/v1/lists/allow", params={"user": OWNER}).json()["count"] == 1

    deleted = client.delete("/v1/lists/block/spam.example")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    missing = client.delete("/v1/lists/block/spam.example")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
