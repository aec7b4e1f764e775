"""Temporary addresses end to end through a real Postfix: SMTP (smtplib) -> Postfix ->
policy server (RCPT) and milter (end of message) -> the running service, and what lands
in the owner's Maildir.

The alias domain is the test domain, a ``virtual_mailbox_domains`` domain of the private
Postfix (see ``tests/gateway/postfix.py``) whose mailboxes are alice, bob and carol; the
policy server's recipient list names only those, so a temporary address is a recipient
it does not list and asks the service about. Run alone with ``pytest -m postfix``.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from mailsift.gateway.decisions import ALIAS_HEADER
from mailsift.reasons import ALIAS_FOREIGN_SENDER, ALIAS_RECIPIENT
from tests.gateway.postfix import DOMAIN, Postfix, postfix_missing
from tests.gateway.processes import GatewayProcess, gateway_options, gateway_token
from tests.service.server import Service, message, wait_for
from tests.service.test_aliases import expire

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(postfix_missing() is not None, reason=str(postfix_missing())),
]

BOB = f"bob@{DOMAIN}"
NETWORK = "127.0.0.2/32"  # no test here sends outbound mail


@dataclass
class Stack:
    service: Service
    postfix: Postfix
    port: int
    bare_port: int  # no policy server
    milter: GatewayProcess
    policy: GatewayProcess
    bob: httpx.Client  # bob's own user token

    def create(self, **params: Any) -> str:
        r = self.bob.post("/v1/aliases", params={"user": BOB, **params})
        assert r.status_code == 201, r.text
        return str(r.json()["address"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("alias-gateway")
    env = {
        "MAILSIFT_LOCAL_DOMAINS": DOMAIN,
        # A model still learning: mail is delivered unless a reason forces otherwise,
        # so what the temporary addresses do is all there is to see.
        "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10",
    }
    data = tmp / "data"
    service = Service(data, env=env).start()
    try:
        recipients = tmp / "recipients"
        recipients.write_text(f"alice@{DOMAIN}\n{BOB}\ncarol@{DOMAIN}\n")
        common = gateway_options(data, service.env, service.url, NETWORK)
        user_token = gateway_token(data, service.env, "--role", "user", "--address", BOB)
        with (
            GatewayProcess("milter", tmp, *common, "--fail-mode", "open") as milter,
            GatewayProcess("policy", tmp, *common, "--recipients-file", str(recipients)) as policy,
            Postfix(
                listeners={
                    "mx": {
                        "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
                        "milter_default_action": "tempfail",
                    },
                    # The same without the policy server: the milter alone decides.
                    "bare": {
                        "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
                        "milter_default_action": "tempfail",
                        "smtpd_recipient_restrictions": "",
                    },
                },
                policy_port=policy.port,
                internal_network=NETWORK,
            ) as postfix,
            service.client(user_token) as bob,
        ):
            try:
                ports = postfix.ports
                yield Stack(service, postfix, ports["mx"], ports["bare"], milter, policy, bob)
            finally:
                print(postfix.maillog()[-5000:])
                print(milter.log(), policy.log())
    finally:
        service.kill()


def _mail(sender: str, to: str, message_id: str, n: int) -> bytes:
    raw = message(n, spammy=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    keep = [
        h
        for h in head.split(b"\r\n")
        if not h.lower().startswith((b"message-id:", b"from:", b"to:", b"x-mailsift-alias:"))
    ]
    extra = [
        f"From: {sender}".encode(),
        f"To: {to}".encode(),
        f"Message-ID: <{message_id}>".encode(),
        f"{ALIAS_HEADER}: forged@{DOMAIN}".encode(),  # a sender's own: must not survive
    ]
    return b"\r\n".join([*keep, *extra]) + b"\r\n\r\n" + body


def _delivered(postfix: Postfix, mailbox: str, message_id: str) -> EmailMessage | None:
    for raw in postfix.delivered(mailbox):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if message_id in str(msg.get("Message-ID", "")):
            assert isinstance(msg, EmailMessage)
            return msg
    return None


def _send(port: int, sender: str, rcpt: str, raw: bytes) -> list[tuple[int, bytes]]:
    """One SMTP transaction step by step; every reply the sender saw."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        replies = [s.ehlo("client.remote.test"), s.mail(sender), s.rcpt(rcpt)]
        if replies[-1][0] == 250:
            replies.append(s.data(raw))
        return replies


def test_mail_to_a_live_address_reaches_its_owner_with_the_alias_header(stack: Stack) -> None:
    alias = stack.create(label="shop.example")
    raw = _mail("orders@shop.example", alias, "live-1@shop.example", 1)
    replies = _send(stack.port, "orders@shop.example", alias, raw)
    assert [code for code, _ in replies[1:]] == [250, 250, 250], replies
    # Nothing the sender is told names the owner.
    assert not any(BOB.encode() in text for _, text in replies)
    assert wait_for(lambda: _delivered(stack.postfix, "bob", "live-1@") is not None, 30)
    msg = _delivered(stack.postfix, "bob", "live-1@")
    assert msg is not None
    assert msg.get_all(ALIAS_HEADER) == [alias]  # ours only: the forged one is gone
    assert msg["To"] == alias  # the message itself is untouched
    reasons = msg["X-Mailsift-Reasons"]
    assert ALIAS_RECIPIENT in reasons and ALIAS_FOREIGN_SENDER not in reasons
    assert not (stack.postfix.mail / DOMAIN / alias.partition("@")[0]).exists()
    # The milter's log names the temporary address, not whom it delivers to.
    (line,) = [ln for ln in stack.milter.log().splitlines() if "temporary address" in ln]
    assert alias in line and BOB not in line


def test_a_deleted_address_is_refused_at_rcpt_with_550(stack: Stack) -> None:
    alias = stack.create()
    assert stack.bob.delete(f"/v1/aliases/{alias}").status_code == 200
    raw = _mail("orders@shop.example", alias, "deleted-1@shop.example", 2)
    replies = _send(stack.port, "orders@shop.example", alias, raw)
    code, text = replies[-1]
    assert code == 550 and b"5.1.1" in text, replies
    assert BOB.encode() not in text
    (line,) = [ln for ln in stack.policy.log().splitlines() if f"recipient={alias} " in ln]
    assert 'reason="deleted temporary address"' in line


def test_an_expired_address_is_refused_at_rcpt_with_550(stack: Stack) -> None:
    alias = stack.create(days=1)
    raw = _mail("orders@shop.example", alias, "expired-1@shop.example", 3)
    before = _send(stack.port, "orders@shop.example", alias, raw)
    assert before[-1][0] == 250, before  # live: taken
    expire(stack.service.data_dir, alias)
    after = _send(stack.port, "orders@shop.example", alias, raw)
    code, text = after[-1]
    assert code == 550 and b"5.1.1" in text, after
    assert len(after) == 3  # refused at RCPT: no DATA was sent


def test_mail_from_a_foreign_sender_carries_the_reason_and_names_who_leaked_it(
    stack: Stack,
) -> None:
    alias = stack.create(label="shop.example")
    raw = _mail("deals@spammer.example", alias, "leak-1@spammer.example", 4)
    replies = _send(stack.port, "deals@spammer.example", alias, raw)
    assert replies[-1][0] == 250, replies
    assert wait_for(lambda: _delivered(stack.postfix, "bob", "leak-1@") is not None, 30)
    msg = _delivered(stack.postfix, "bob", "leak-1@")
    assert msg is not None
    assert ALIAS_FOREIGN_SENDER in msg["X-Mailsift-Reasons"]
    assert msg[ALIAS_HEADER] == alias
    shown = stack.bob.get(f"/v1/aliases/{alias}").json()
    assert [s["domain"] for s in shown["foreign_senders"]] == ["spammer.example"]


def test_an_unlisted_address_that_is_no_alias_is_still_refused(stack: Stack) -> None:
    raw = _mail("orders@shop.example", f"t-nobody@{DOMAIN}", "none-1@shop.example", 5)
    replies = _send(stack.port, "orders@shop.example", f"t-nobody@{DOMAIN}", raw)
    code, text = replies[-1]
    assert code == 550 and b"5.1.1" in text, replies


def test_a_failed_delivery_to_the_owner_sends_the_sender_no_bounce(stack: Stack) -> None:
    """The owner is added with NOTIFY=NEVER: when their mailbox refuses the copy (dave
    has none here), Postfix sends no bounce, which would name dave to the sender."""
    with stack.service.client() as admin:
        r = admin.post("/v1/aliases", params={"user": f"dave@{DOMAIN}"})
        assert r.status_code == 201, r.text
        alias = r.json()["address"]
    raw = _mail("orders@shop.example", alias, "nobox-1@shop.example", 6)
    replies = _send(stack.port, "orders@shop.example", alias, raw)
    assert replies[-1][0] == 250, replies
    bounced = re.compile(rf"(\w+): to=<dave@{re.escape(DOMAIN)}>.*status=bounced")
    assert wait_for(lambda: bounced.search(stack.postfix.maillog()) is not None, 30)
    match = bounced.search(stack.postfix.maillog())
    assert match is not None
    time.sleep(2)  # a notification would be logged right after the bounce
    log = stack.postfix.maillog()
    assert f"{match.group(1)}: sender non-delivery notification" not in log
    assert "sender non-delivery notification" not in log


def test_without_the_policy_server_the_milter_refuses_a_dead_address_to_it_alone(
    stack: Stack,
) -> None:
    alias = stack.create()
    assert stack.bob.delete(f"/v1/aliases/{alias}").status_code == 200
    carol = f"carol@{DOMAIN}"
    raw = _mail("orders@shop.example", alias, "bare-1@shop.example", 7)
    with smtplib.SMTP("127.0.0.1", stack.bare_port, timeout=30) as s:
        # Accepted at RCPT (no policy server here): nothing refused.
        assert s.sendmail("orders@shop.example", [alias, carol], raw) == {}
    assert wait_for(lambda: _delivered(stack.postfix, "carol", "bare-1@") is not None, 30)
    assert _delivered(stack.postfix, "bob", "bare-1@") is None
    # Only the dead address: nobody left to deliver to, so the message is refused.
    alone = _mail("orders@shop.example", alias, "bare-2@shop.example", 8)
    with (
        smtplib.SMTP("127.0.0.1", stack.bare_port, timeout=30) as s,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        s.sendmail("orders@shop.example", [alias], alone)
    assert refused.value.smtp_code == 550 and BOB.encode() not in refused.value.smtp_error
