"""End to end over HTTP: outbound protection — limits, a compromised account, leaks, lists."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mailsift.reasons import (
    ACCOUNT_SUSPENDED,
    ALLOWLIST_UNVERIFIED,
    ALLOWLISTED,
    GATEWAY_TRUNCATED,
    limit_reason,
)
from tests.service.server import Service, message, score, train, wait_for
from tests.service.webhook import Webhook

RFC822 = {"content-type": "message/rfc822"}


def outbound(
    client: httpx.Client,
    raw: bytes,
    user: str,
    rcpt: list[str] | None = None,
    *,
    truncated: bool = False,
) -> dict[str, Any]:
    r = client.post(
        "/v1/score",
        params={
            "direction": "outbound",
            "user": user,
            "mail_from": user,
            "rcpt": rcpt or ["bob@partner.example"],
            **({"truncated": "true"} if truncated else {}),
        },
        content=raw,
        headers=RFC822,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def settled(read: Callable[[], int], timeout: float, quiet: float = 1.0) -> int:
    """``read()`` once it has held still for ``quiet`` seconds (or at the timeout)."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def teach_basics(client: httpx.Client, n: int = 12) -> None:
    for i in range(n):
        train(client, message(1000 + i, spammy=False), "ham")
        train(client, message(1000 + i, spammy=True), "spam")


def test_sending_limit_defers_message_n_plus_one_across_processes_and_restarts(
    tmp_path: Path,
) -> None:
    env = {"MAILSIFT_LIMIT_MESSAGES_PER_HOUR": "5", "MAILSIFT_OUTBOUND_LEARNING": "false"}
    data = tmp_path / "data"
    with Service(data, workers=2, env=env) as svc, svc.client() as c:
        actions = [
            outbound(c, message(i, spammy=False), "carol@corp.example")["action"] for i in range(5)
        ]
        assert "defer" not in actions
        sixth = outbound(c, message(6, spammy=False), "carol@corp.example")
        assert sixth["action"] == "defer"
        assert limit_reason("messages_per_hour") in [r["name"] for r in sixth["reasons"]]
        # Another user is not affected.
        assert outbound(c, message(7, spammy=False), "dave@corp.example")["action"] != "defer"
    with Service(data, env=env) as again, again.client() as c:
        assert outbound(c, message(8, spammy=False), "carol@corp.example")["action"] == "defer"


def test_compromised_account_is_suspended_alerted_and_does_not_teach_ham(tmp_path: Path) -> None:
    with Webhook() as hook:
        env = {
            "MAILSIFT_ALERT_WEBHOOK_URL": hook.url,
            "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "5",
            "MAILSIFT_OUTBOUND_LEARN_MAX_SCORE": "0.5",
            "MAILSIFT_ACCOUNT_AUTH_FAILURES_SUSPEND": "10",
        }
        with Service(tmp_path / "data", env=env) as svc, svc.client() as c:
            teach_basics(c)
            user = "erin@corp.example"
            # Normal traffic: clean outbound mail is learned as ham.
            for i in range(3):
                outbound(c, message(2000 + i, spammy=False), user)
            assert wait_for(lambda: c.get("/v1/model").json()["ham"] >= 12 + 1, timeout=5)
            # Examples of the clean mail may still be on their way into the model.
            ham_before_burst = settled(lambda: c.get("/v1/model").json()["ham"], timeout=10)
            # The password is stolen: auth failures, then a burst of spam.
            for _ in range(12):
                r = c.post(
                    "/v1/events",
                    json={"type": "auth_failure", "user": user, "client_ip": "203.0.113.9"},
                )
                assert r.status_code in (200, 202), r.text
            verdicts = [
                outbound(c, message(3000 + i, spammy=True), user, [f"x{i}@victim{i}.example"])
                for i in range(15)
            ]
            state = c.get(f"/v1/accounts/{user}").json()
            assert state["state"] == "suspended"
            assert verdicts[-1]["action"] in ("defer", "quarantine")
            assert ACCOUNT_SUSPENDED in [r["name"] for r in verdicts[-1]["reasons"]]
            assert wait_for(
                lambda: any(a.get("user") == user for a in hook.of_kind("account_state")), timeout=5
            )
            # The burst taught the model nothing as ham.
            time.sleep(1)
            assert c.get("/v1/model").json()["ham"] == ham_before_burst
            # An administrator clears the account; mail flows again.
            assert c.post(f"/v1/accounts/{user}/clear").status_code == 200
            assert c.get(f"/v1/accounts/{user}").json()["state"] == "ok"
            assert outbound(c, message(4000, spammy=False), user)["action"] == "accept"


def test_outbound_mail_the_gateway_cut_short_is_scored_but_never_learned(tmp_path: Path) -> None:
    """A gateway that sends only the start of an oversize message (the milter's
    ``--oversize-outbound scan-start``) says so: the verdict names it, and the unscanned
    rest can never turn the message into a ham example. The same clean mail sent whole
    is learned, so the count below would be three higher if the flag were ignored."""
    env = {
        "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "5",
        "MAILSIFT_OUTBOUND_LEARN_MAX_SCORE": "0.5",
        "MAILSIFT_OUTBOUND_LEARN_PER_MINUTE": "6000",
    }
    with Service(tmp_path / "data", env=env) as svc, svc.client() as c:
        teach_basics(c)
        for i in range(3):
            cut = outbound(c, message(5000 + i, spammy=False), "fay@corp.example", truncated=True)
            assert cut["action"] == "accept"
            assert GATEWAY_TRUNCATED in [r["name"] for r in cut["reasons"]]
        for i in range(3):
            whole = outbound(c, message(6000 + i, spammy=False), "gus@corp.example")
            assert GATEWAY_TRUNCATED not in [r["name"] for r in whole["reasons"]]
        assert wait_for(lambda: c.get("/v1/model").json()["ham"] >= 12 + 3, timeout=10)
        assert settled(lambda: c.get("/v1/model").json()["ham"], timeout=10) == 12 + 3


def test_outbound_leak_is_reported_redacted_and_acted_on(tmp_path: Path) -> None:
    card = "4111 1111 1111 1111"
    raw = (
        "From: frank@corp.example\r\nTo: someone@outside.example\r\nSubject: as asked\r\n\r\n"
        f"Here is the company card: {card}, expiry 12/29, CVV on request.\r\n"
    ).encode()
    with Service(tmp_path / "data") as svc, svc.client() as c:
        body = outbound(c, raw, "frank@corp.example")
        findings = body["dlp"]["findings"]
        assert [f["type"] for f in findings] == ["card"]
        assert body["action"] in ("quarantine", "reject")
        assert card.replace(" ", "") not in str(body).replace(" ", "")
        assert findings[0]["samples"] and "1111" in findings[0]["samples"][0]


def test_allowlist_guard_and_unverified_allow_entries(tmp_path: Path) -> None:
    env = {"MAILSIFT_LOCAL_DOMAINS": "corp.example", "MAILSIFT_AUTHSERV_ID": "mx.corp.example"}
    with Service(tmp_path / "data", env=env) as svc, svc.client() as c:
        for refused in ("gmail.com", "outlook.com", "yahoo.com", "corp.example"):
            r = c.put(
                f"/v1/lists/allow/{refused}", params={"scope": "user", "user": "gina@corp.example"}
            )
            assert r.status_code == 422, (refused, r.text)
            assert r.json()["error"] == "list_guard_refused"
        ok = c.put(
            "/v1/lists/allow/partner.example", params={"scope": "user", "user": "gina@corp.example"}
        )
        assert ok.status_code in (200, 201), ok.text
        spoofed = (
            b"Authentication-Results: mx.corp.example; spf=fail smtp.mailfrom=partner.example;"
            b" dkim=fail header.d=partner.example\r\n"
            b"From: boss@partner.example\r\nTo: gina@corp.example\r\n"
            b"Subject: urgent wire\r\n\r\nPay now.\r\n"
        )
        r = c.post(
            "/v1/score",
            params={"direction": "inbound", "rcpt": "gina@corp.example"},
            content=spoofed,
            headers=RFC822,
        ).json()
        # gina's own entry counts in gina's own verdict, never the message's.
        assert not {ALLOWLISTED, ALLOWLIST_UNVERIFIED} & {x["name"] for x in r["reasons"]}
        (ginas,) = r["recipients"]
        names = {x["name"]: x["weight"] for x in ginas["reasons"]}
        assert ALLOWLIST_UNVERIFIED in names and names[ALLOWLIST_UNVERIFIED] == 0
        assert ALLOWLISTED not in names


def test_audit_trail_finds_a_message(tmp_path: Path) -> None:
    raw = (
        b"From: hal@corp.example\r\nTo: x@y.example\r\n"
        b"Message-ID: <track-me@corp.example>\r\nSubject: s\r\n\r\nbody\r\n"
    )
    with Service(tmp_path / "data") as svc, svc.client() as c:
        score(c, raw)

        def found() -> bool:
            rows = c.get("/v1/audit", params={"message_id": "<track-me@corp.example>"}).json()
            return rows["count"] == 1 and rows["events"][0]["verdict"] in ("ham", "suspect", "spam")

        assert wait_for(found, timeout=5)
