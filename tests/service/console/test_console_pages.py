"""Console pages that act, over plain HTTP against a real service: clearing a suspended
account from Outbound, and the list guard's refusal shown in words on Lists."""

from __future__ import annotations

import html
from pathlib import Path

from tests.service.console.test_console_session import _csrf, _signed_in
from tests.service.server import ADMIN_TOKEN, Service, wait_for


def test_outbound_shows_a_suspended_account_with_its_reason_and_clears_it(
    tmp_path: Path,
) -> None:
    env = {
        "MAILSIFT_ACCOUNT_AUTH_FAILURES_WATCH": "2",
        "MAILSIFT_ACCOUNT_AUTH_FAILURES_SUSPEND": "3",
    }
    user = "erin@corp.example"
    with Service(tmp_path / "data", env=env) as svc, svc.client() as api:
        for _ in range(4):
            event = {"type": "auth_failure", "user": user, "client_ip": "203.0.113.9"}
            assert api.post("/v1/events", json=event).status_code in (200, 202)
        assert wait_for(
            lambda: api.get(f"/v1/accounts/{user}").json()["state"] == "suspended", timeout=10
        )
        reason = api.get(f"/v1/accounts/{user}").json()["reason"]
        with _signed_in(svc, ADMIN_TOKEN) as console:
            page = console.get("/console/outbound")
            assert page.status_code == 200
            assert user in page.text and "suspended" in page.text
            assert reason and html.escape(reason) in page.text
            r = console.post(
                "/console/outbound/clear",
                data={"csrf": _csrf(console, "/console/outbound"), "user": user},
            )
            assert r.status_code == 200
            assert f"{user} cleared (was suspended)." in r.text
        assert api.get(f"/v1/accounts/{user}").json()["state"] == "ok"


def test_lists_add_and_remove_and_show_the_guards_refusal_in_words(tmp_path: Path) -> None:
    with Service(tmp_path / "data") as svc, svc.client() as api:
        with _signed_in(svc, ADMIN_TOKEN) as console:
            add = {"kind": "allow", "scope": "global", "entry": "gmail.com"}
            refused = console.post(
                "/console/lists/add", data={**add, "csrf": _csrf(console, "/console/lists")}
            )
            assert refused.status_code == 400
            assert "Refused:" in refused.text and "gmail.com" in refused.text
            assert api.get("/v1/lists/allow").json()["count"] == 0

            block = {"kind": "block", "scope": "global", "entry": "spammer.example"}
            added = console.post(
                "/console/lists/add", data={**block, "csrf": _csrf(console, "/console/lists")}
            )
            assert added.status_code == 200 and "spammer.example added." in added.text
            entries = api.get("/v1/lists/block").json()["entries"]
            assert [e["entry"] for e in entries] == ["spammer.example"]
            removed = console.post(
                "/console/lists/remove",
                data={**block, "csrf": _csrf(console, "/console/lists")},
            )
            assert removed.status_code == 200 and "spammer.example removed." in removed.text
        assert api.get("/v1/lists/block").json()["count"] == 0
