"""``GET /v1/admission/{user}``: may a sender send one more message now, counting nothing.

Asked by the policy server at RCPT time; it must agree with ``/v1/score`` exactly (the
message that scoring would defer is the one admission defers), answer a gateway token
on the gateway listener, and never count the messages it is asked about.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.gateway.processes import gateway_token
from tests.service.server import Service, message

USER = "carol@corp.example"


def _outbound(client: httpx.Client, n: int) -> str:
    r = client.post(
        "/v1/score",
        params={"direction": "outbound", "user": USER, "rcpt": ["bob@partner.example"]},
        content=message(n, spammy=False),
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["action"])


def test_admission_defers_exactly_the_message_scoring_would_and_counts_nothing(
    tmp_path: Path,
) -> None:
    env = {"MAILSIFT_LIMIT_MESSAGES_PER_HOUR": "3", "MAILSIFT_OUTBOUND_LEARNING": "false"}
    with Service(tmp_path / "data", env=env, split_listeners=True) as svc:
        token = gateway_token(svc.data_dir, svc.env)
        with svc.client(token) as gw:  # the gateway listener, a gateway token
            for _ in range(5):  # asking counts nothing
                first = gw.get(f"/v1/admission/{USER}")
                assert first.status_code == 200, first.text
                assert first.json()["decision"] == "allow"
            assert first.json()["messages_hour"] == 0
            assert first.json()["limits"]["messages_per_hour"] == 3
            assert [_outbound(gw, i) for i in range(3)].count("defer") == 0
            full = gw.get(f"/v1/admission/{USER.upper()}").json()
            assert full["decision"] == "defer"
            assert full["exceeded"] == ["messages_per_hour"]
            assert full["messages_hour"] == 3 and full["user"] == USER
            assert "messages_per_hour" in full["reason"]
            assert _outbound(gw, 4) == "defer"  # scoring agrees
            other = gw.get("/v1/admission/dave@corp.example").json()
            assert other["decision"] == "allow"


def test_a_suspended_account_is_deferred(tmp_path: Path) -> None:
    env = {
        "MAILSIFT_ACCOUNT_AUTH_FAILURES_WATCH": "2",
        "MAILSIFT_ACCOUNT_AUTH_FAILURES_SUSPEND": "3",
    }
    with Service(tmp_path / "data", env=env) as svc, svc.client() as c:
        for i in range(3):
            r = c.post(
                "/v1/events",
                json={"type": "auth_failure", "user": USER, "client_ip": f"192.0.2.{i + 1}"},
            )
            assert r.status_code == 200, r.text
        assert r.json()["state"] == "suspended"
        body = c.get(f"/v1/admission/{USER}").json()
        assert (body["decision"], body["state"]) == ("defer", "suspended")
        assert body["reason"] == "account suspended"


def test_admission_needs_a_gateway_token(tmp_path: Path) -> None:
    with Service(tmp_path / "data") as svc:
        user = gateway_token(svc.data_dir, svc.env, "--role", "user", "--address", USER)
        with svc.client(None) as anonymous:
            assert anonymous.get(f"/v1/admission/{USER}").status_code == 401
        with svc.client(user) as mailbox_owner:
            assert mailbox_owner.get(f"/v1/admission/{USER}").status_code == 403
