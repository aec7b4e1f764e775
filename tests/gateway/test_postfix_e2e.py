"""End to end through a real Postfix: SMTP (smtplib) -> Postfix -> milter and policy
server -> the running service, and what Postfix then does with the mail.

Run alone with ``pytest -m postfix``. Skipped where Postfix is not installed (``.ci/run``
installs it). One stack for the module: a service taught a little ham and spam, two
milters sharing it (one failing open, one failing closed, each behind its own Postfix
SMTP port), a policy server, and one private Postfix instance. 127.0.0.2/31 is the
internal network: a client connecting from 127.0.0.2 or .3 sends outbound mail, from
127.0.0.1 inbound; mail of Postfix's own ``sendmail`` command goes through the
fail-open milter too (``non_smtpd_milters``), as outbound mail.
Postfix's ``recipient_delimiter`` is ``+``, so the milter's Junk mark (``bob+junk@``)
reaches bob's Maildir.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailsift.gateway.client import ScoreAnswer
from mailsift.gateway.decisions import stricter
from mailsift.reasons import MODEL
from tests.gateway.postfix import DOMAIN, POSTQUEUE, POSTSUPER, Postfix, postfix_missing
from tests.gateway.processes import CannedService, GatewayProcess, gateway_options, gateway_token
from tests.service.server import Service, feedback, message, train, wait_for

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(postfix_missing() is not None, reason=str(postfix_missing())),
]

INTERNAL = "127.0.0.2"
NETWORK = "127.0.0.2/31"  # INTERNAL and ROTATOR
ROTATOR = "127.0.0.3"  # an internal host without a login, limited to 20 an hour
LIMITED = f"client:{ROTATOR}"  # its identity: its address, whatever MAIL FROM it uses
AWS_KEY = "AKIAIOSFODNN7QWERTY1"
CARD = "4111 1111 1111 1111"


@dataclass
class Stack:
    service: Service
    postfix: Postfix
    open_port: int
    closed_port: int
    data: Path
    milter: GatewayProcess  # behind open_port
    policy: GatewayProcess

    def log_lines(self, process: GatewayProcess, fragment: str) -> list[str]:
        """The lines of a gateway process's whole log that hold ``fragment``."""
        text = process.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if fragment in line]


def _teach(client: httpx.Client, n: int = 12) -> None:
    for i in range(n):
        train(client, message(1000 + i, spammy=False), "ham")
        train(client, message(1000 + i, spammy=True), "spam")

    def learned() -> bool:
        model = client.get("/v1/model").json()
        return bool(model["ham"] >= n and model["spam"] >= n)

    assert wait_for(learned, 30), "the service did not learn the examples"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    env = {
        "MAILSIFT_LIMIT_OVERRIDES": f'{{"{LIMITED}": {{"messages_per_hour": 20}}}}',
        "MAILSIFT_INBOUND_REJECT_THRESHOLD": "0.9",
        "MAILSIFT_DLP_ACTION_HIGH": "quarantine",
        "MAILSIFT_DLP_ACTION_MEDIUM": "quarantine",
        "MAILSIFT_OUTBOUND_LEARNING": "false",
        "MAILSIFT_LOCAL_DOMAINS": DOMAIN,
    }
    data = tmp / "data"
    service = Service(data, env=env).start()
    try:
        with service.client() as admin:
            _teach(admin)
        recipients = tmp / "recipients"
        recipients.write_text(f"alice@{DOMAIN}\nbob@{DOMAIN}\ncarol@{DOMAIN}\n")
        common = gateway_options(data, service.env, service.url, NETWORK)
        postfix_env = _postconf_env(tmp)
        with (
            GatewayProcess(
                "milter", tmp, *common, "--fail-mode", "open", env=postfix_env
            ) as fail_open,
            GatewayProcess(
                "milter", tmp, *common, "--fail-mode", "closed", env=postfix_env
            ) as fail_closed,
            GatewayProcess("policy", tmp, *common, "--recipients-file", str(recipients)) as policy,
            Postfix(
                listeners={
                    "open": {
                        "smtpd_milters": f"inet:127.0.0.1:{fail_open.port}",
                        "milter_default_action": "accept",
                    },
                    "closed": {
                        "smtpd_milters": f"inet:127.0.0.1:{fail_closed.port}",
                        "milter_default_action": "tempfail",
                    },
                },
                policy_port=policy.port,
                internal_network=NETWORK,
                main={"non_smtpd_milters": f"inet:127.0.0.1:{fail_open.port}"},
            ) as postfix,
        ):
            try:
                ports = postfix.ports
                yield Stack(
                    service, postfix, ports["open"], ports["closed"], data, fail_open, policy
                )
            finally:
                print(postfix.maillog()[-5000:])
                print(fail_open.log(), fail_closed.log(), policy.log())
    finally:
        service.kill()


def smtp(port: int, *, internal: bool = False, source: str | None = None) -> smtplib.SMTP:
    address = source or (INTERNAL if internal else "127.0.0.1")
    return smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(address, 0))


def _with_id(raw: bytes, message_id: str) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"message-id:")]
    return b"\r\n".join([*lines, f"Message-ID: <{message_id}>".encode()]) + b"\r\n\r\n" + body


def _delivered_raw(postfix: Postfix, mailbox: str, message_id: str) -> bytes | None:
    """The copy in ``mailbox`` whose Message-ID holds ``message_id``, as delivered."""
    for raw in postfix.delivered(mailbox):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if message_id in str(msg.get("Message-ID", "")):
            return raw
    return None


def _delivered(postfix: Postfix, mailbox: str, message_id: str) -> email.message.Message | None:
    raw = _delivered_raw(postfix, mailbox, message_id)
    return None if raw is None else email.message_from_bytes(raw, policy=email.policy.default)


def test_inbound_ham_is_delivered_with_the_mailsift_headers(stack: Stack) -> None:
    raw = _with_id(message(1, spammy=False), "ham-1@remote.test")
    with smtp(stack.open_port) as s:
        s.sendmail("news@remote.test", [f"alice@{DOMAIN}"], raw)
    assert wait_for(lambda: _delivered(stack.postfix, "alice", "ham-1@") is not None, 30)
    msg = _delivered(stack.postfix, "alice", "ham-1@")
    assert msg is not None
    assert msg["X-Mailsift-Verdict"] == "ham"
    assert 0.0 <= float(msg["X-Mailsift-Score"]) < 0.3
    assert msg["X-Mailsift-Reasons"]


def test_the_same_message_scores_the_same_through_postfix_and_through_the_api(
    stack: Stack,
) -> None:
    """Postfix hands the milter the message under its own ``Received`` header; that
    header says only that this MTA received it, and must not move the score."""
    raw = _with_id(
        b"From: Quarterly <figures@remote.test>\r\nTo: alice@" + DOMAIN.encode() + b"\r\n"
        b"Subject: the figures you asked for\r\nDate: Sun, 6 Dec 2026 09:00:00 +0000\r\n"
        b"\r\nHere are the numbers for the quarter.\r\n",
        "same-51@remote.test",
    )
    try:
        with smtp(stack.open_port) as s:
            s.sendmail("figures@remote.test", [f"alice@{DOMAIN}"], raw)
    except smtplib.SMTPResponseException:
        pass  # refused or not, it was scored
    with stack.service.client() as admin:

        def scored() -> list[dict[str, object]]:
            answer = admin.get("/v1/audit", params={"message_id": "<same-51@remote.test>"})
            events: list[dict[str, object]] = answer.json()["events"]
            return events

        assert wait_for(lambda: len(scored()) == 1, 30), stack.milter.log()
        (through_postfix,) = scored()
        direct = admin.post(
            "/v1/score",
            params={
                "direction": "inbound",
                "mail_from": "figures@remote.test",
                "rcpt": f"alice@{DOMAIN}",
                "client_ip": "127.0.0.1",
            },
            content=raw,
            headers={"content-type": "message/rfc822"},
        ).json()
    # The model's own log-odds (four decimals in the audit trail) show what a probability
    # near 0 or 1 would hide.
    model = {r["name"]: r["weight"] for r in through_postfix["reasons"]}[MODEL]  # type: ignore[index]
    assert model == round({r["name"]: r["weight"] for r in direct["reasons"]}[MODEL], 4)
    assert through_postfix["score"] == direct["score"]


def test_inbound_spam_is_rejected_with_5xx(stack: Stack) -> None:
    raw = _with_id(message(2, spammy=True), "spam-2@remote.test")
    with smtp(stack.open_port) as s, pytest.raises(smtplib.SMTPDataError) as refused:
        s.sendmail("offers@remote.test", [f"alice@{DOMAIN}"], raw)
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert _delivered(stack.postfix, "alice", "spam-2@") is None


def test_outbound_card_number_is_held_in_the_hold_queue(stack: Stack) -> None:
    raw = (
        b"From: carol@corp.test\r\nTo: partner@partner.test\r\nSubject: payment\r\n"
        b"Message-ID: <card-3@corp.test>\r\n\r\n"
        + f"Here is the company card: {CARD}, expiry 12/29.\r\n".encode()
    )
    with smtp(stack.open_port, internal=True) as s:
        s.sendmail("carol@corp.test", ["partner@partner.test"], raw)

    def held() -> bool:
        return any(e.get("queue_name") == "hold" for e in stack.postfix.queue_entries())

    assert wait_for(held, 30), stack.postfix.queue_entries()


def test_an_internal_host_rotating_mail_from_hits_its_own_limit_at_rcpt(stack: Stack) -> None:
    """Without a login, outbound mail counts against the client's address: a host that
    uses a new MAIL FROM for every message still has one limit (20 an hour here), and
    the 21st message is deferred at RCPT by the policy server."""
    with smtp(stack.open_port, source=ROTATOR) as s:  # one connection: 20 transactions
        for i in range(20):
            raw = _with_id(message(100 + i, spammy=False), f"limit-{i}@corp.test")
            s.sendmail(f"sender{i}@corp.test", ["partner@partner.test"], raw)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail("fresh-sender@corp.test", ["partner@partner.test"], message(121, False))
    code, text = refused.value.recipients["partner@partner.test"]
    assert code == 450 and b"4.7.1" in text, (code, text)
    # The policy server's log has the refusal, with what Postfix's own NOQUEUE line has.
    (line,) = stack.log_lines(stack.policy, f"refused queue_id=- client={ROTATOR} user={LIMITED}")
    assert 'reason="over the limit: messages_per_hour (ok)"' in line
    assert "sender=fresh-sender@corp.test" in line
    assert "recipient=partner@partner.test" in line and 'answer="DEFER 4.7.1 ' in line
    noqueue = rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ROTATOR)}\]: 450 4\.7\.1 "
    # postlogd writes the maillog a moment later.
    assert wait_for(lambda: re.search(noqueue, stack.postfix.maillog()) is not None, 10)
    # The milter counted every one of them against the host, never against a sender.
    counted = stack.log_lines(stack.milter, f" user={LIMITED} via=network client={ROTATOR}")
    assert len(counted) == 20, counted


def test_a_nonexistent_local_recipient_is_rejected_at_rcpt(stack: Stack) -> None:
    with smtp(stack.open_port) as s, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        s.sendmail("someone@remote.test", [f"nobody@{DOMAIN}"], message(4, spammy=False))
    code, text = refused.value.recipients[f"nobody@{DOMAIN}"]
    assert code == 550 and b"5.1.1" in text, (code, text)
    (line,) = stack.log_lines(stack.policy, f"recipient=nobody@{DOMAIN} ")
    assert line.endswith('reason="unknown recipient" answer="550 5.1.1 no such user here"')
    assert "sender=someone@remote.test" in line and "client=127.0.0.1" in line


def test_a_held_message_is_released_and_delivered_at_once(stack: Stack) -> None:
    """README, "Release from quarantine": ``postsuper -H`` moves a held message to the
    deferred queue (where the queue manager looks every ``queue_run_delay``, 300 s);
    ``postqueue -i`` delivers it now. The milter's log names why it was held."""
    raw = (
        b"From: dave@corp.test\r\nTo: alice@example.test\r\nSubject: refund\r\n"
        b"Message-ID: <release-7@corp.test>\r\n\r\n"
        + f"The card to refund: {CARD}, expiry 12/29.\r\n".encode()
    )
    with smtp(stack.open_port, internal=True) as s:
        s.sendmail("dave@corp.test", [f"alice@{DOMAIN}"], raw)

    def queued() -> dict[str, str]:
        return {
            str(e["queue_id"]): str(e["queue_name"])
            for e in stack.postfix.queue_entries()
            if e.get("sender") == "dave@corp.test"
        }

    assert wait_for(lambda: "hold" in queued().values(), 30), queued()
    (queue_id,) = queued()
    (line,) = stack.log_lines(stack.milter, f"{queue_id}: outbound ")
    assert re.search(
        rf" action=quarantine \(dlp_card(, score)?\) user=client:{re.escape(INTERNAL)} "
        rf"via=network client={re.escape(INTERNAL)}$",
        line,
    ), line
    hold = f"{queue_id}: milter-hold: END-OF-MESSAGE"
    assert wait_for(lambda: hold in stack.postfix.maillog(), 10), stack.postfix.maillog()[-2000:]

    stack.postfix.admin(POSTSUPER, "-H", queue_id)
    assert queued() == {queue_id: "deferred"}
    assert _delivered(stack.postfix, "alice", "release-7@") is None
    stack.postfix.admin(POSTQUEUE, "-i", queue_id)
    assert wait_for(lambda: _delivered(stack.postfix, "alice", "release-7@") is not None, 30)
    assert wait_for(lambda: queued() == {}, 10), queued()  # removed once delivered


def _from(sender: str, n: int, message_id: str) -> bytes:
    """An ordinary (hammy) message from ``sender``: the model alone lets it through."""
    return _with_id(message(n, spammy=False), message_id).replace(
        f"From: sender{n}@example.org".encode(), f"From: {sender}".encode()
    )


def test_a_report_files_that_users_copy_into_junk_and_nobody_elses(stack: Stack) -> None:
    """Bob reports a sender as spam; its next message to bob and carol: carol's copy is
    delivered unmarked, bob's carries the Junk mark (``Delivered-To: bob+junk@…``)."""
    sender, bob, carol = "promo@sender.test", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
    with smtp(stack.open_port) as s:
        s.sendmail(sender, [bob], _from(sender, 31, "first-31@sender.test"))
    assert wait_for(lambda: _delivered(stack.postfix, "bob", "first-31@") is not None, 30)
    first = _delivered(stack.postfix, "bob", "first-31@")
    assert first is not None and first["X-Mailsift-Verdict"] == "ham"
    assert first["Delivered-To"] == bob  # unmarked before his report
    as_received = _delivered_raw(stack.postfix, "bob", "first-31@")

    bobs_token = gateway_token(stack.data, stack.service.env, "--role", "user", "--address", bob)
    with stack.service.client(bobs_token) as as_bob:
        feedback(as_bob, as_received, "spam", bob)

    probe = _from(sender, 33, "probe-33@sender.test")
    answers: list[object] = []

    def bob_is_stricter() -> bool:  # once the report has reached bob's personal layer
        with stack.service.client() as admin:
            body = admin.post(
                "/v1/score",
                params={"direction": "inbound", "mail_from": sender, "rcpt": [bob, carol]},
                content=probe,
                headers={"content-type": "message/rfc822"},
            ).json()
        answers.append(body)
        answer = ScoreAnswer.from_json(body)
        return any(r.rcpt == bob and stricter(r, answer) for r in answer.recipients)

    assert wait_for(bob_is_stricter, 30, interval=0.5), f"no stricter verdict: {answers[-1]}"

    with smtp(stack.open_port) as s:
        s.sendmail(sender, [bob, carol], _from(sender, 32, "second-32@sender.test"))

    def both() -> bool:
        return all(_delivered(stack.postfix, box, "second-32@") for box in ("bob", "carol"))

    assert wait_for(both, 30), stack.postfix.maillog()[-3000:]
    carols = _delivered(stack.postfix, "carol", "second-32@")
    bobs = _delivered(stack.postfix, "bob", "second-32@")
    assert carols is not None and bobs is not None
    assert carols["Delivered-To"] == carol and carols["X-Original-To"] == carol
    assert "junk" not in carols.as_string().lower()  # nothing tells carol what bob did
    assert bobs["Delivered-To"] == f"bob+junk@{DOMAIN}"
    assert carols["X-Mailsift-Verdict"] == bobs["X-Mailsift-Verdict"] == "ham"  # shared


def _postconf_env(tmp: Path) -> dict[str, str]:
    """What ``postconf`` reads for the milter: the private instance's delimiter, never
    the host's own main.cf (the milter checks it before marking copies)."""
    conf = tmp / "postconf"
    conf.mkdir(exist_ok=True)
    (conf / "main.cf").write_text("recipient_delimiter = +\n")
    (conf / "master.cf").write_text("")
    return {"MAIL_CONFIG": str(conf)}


def _personal(rcpt: str, action: str, verdict: str) -> dict[str, object]:
    return {"rcpt": rcpt, "verdict": verdict, "action": action, "score": 0.9, "reasons": []}


def test_postfix_delivers_the_marked_copy_into_the_users_maildir(tmp_path: Path) -> None:
    """The Postfix half of the Junk mark, with a stand-in service whose answer names
    stricter verdicts for bob and for Alice+Lists (spelled so by the client): Postfix
    deletes each as the client spelled it and delivers the marked address into the same
    Maildir with ``Delivered-To`` naming it; carol's copy stays as it was."""
    alice, bob, carol = f"Alice+Lists@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
    with (
        CannedService() as canned,
        GatewayProcess(
            "milter", tmp_path, "--service-url", canned.url, env=_postconf_env(tmp_path)
        ) as milter,
        Postfix(
            listeners={"in": {"smtpd_milters": f"inet:127.0.0.1:{milter.port}"}},
            policy_port=None,
            internal_network=f"{INTERNAL}/32",
        ) as postfix,
    ):
        canned.answer.update(
            score=0.3,
            verdict="suspect",
            action="tag",
            reasons=[{"name": MODEL}],
            recipients=[
                _personal(alice.lower(), "quarantine", "suspect"),
                _personal(bob, "tag", "spam"),
                _personal(carol, "accept", "ham"),  # looser: changes nothing
            ],
        )
        raw = _with_id(message(41, spammy=False), "canned-41@sender.test")
        with smtp(postfix.ports["in"]) as s:
            s.sendmail("promo@sender.test", [alice, bob, carol], raw)

        def delivered() -> bool:
            boxes = ("alice", "bob", "carol")
            return all(_delivered(postfix, box, "canned-41@") for box in boxes)

        assert wait_for(delivered, 30), postfix.maillog()[-3000:] + milter.log()
        copies = {box: _delivered(postfix, box, "canned-41@") for box in ("alice", "bob", "carol")}
    assert copies["carol"] is not None and copies["carol"]["Delivered-To"] == carol
    assert copies["bob"] is not None and copies["bob"]["Delivered-To"] == f"bob+junk@{DOMAIN}"
    assert copies["alice"] is not None
    assert copies["alice"]["Delivered-To"] == f"Alice+junk@{DOMAIN}"
    for copy in copies.values():  # the shared outcome, in every copy
        assert copy is not None and copy["Subject"].startswith("[SPAM?] ")


@pytest.mark.parametrize("internal", [None, "127.0.0.0/8,::1/128,192.0.2.0/24", "192.0.2.0/24"])
def test_a_local_submission_is_outbound_whatever_the_internal_networks(
    tmp_path: Path, internal: str | None
) -> None:
    """README, "Which mail is outbound": Postfix hands mail of its own ``sendmail``
    command (``non_smtpd_milters``) to the milter as a client at 127.0.0.1 with port 0;
    the milter knows it by that and scores it outbound, counted against the host
    (``client:local``), also when ``--internal-networks`` leaves loopback out."""
    networks = ("--internal-networks", internal) if internal else ()
    with (
        CannedService() as canned,
        GatewayProcess(
            "milter", tmp_path, "--service-url", canned.url, *networks, "--no-junk-marking"
        ) as milter,
        Postfix(
            listeners={"in": {"smtpd_milters": f"inet:127.0.0.1:{milter.port}"}},
            policy_port=None,
            internal_network=f"{INTERNAL}/32",
            main={"non_smtpd_milters": f"inet:127.0.0.1:{milter.port}"},
        ) as postfix,
    ):
        canned.answer.update(score=0.01, verdict="ham", action="accept", reasons=[])
        postfix.submit("app@corp.test", f"alice@{DOMAIN}", b"Subject: nightly report\n\nok\n")
        assert wait_for(lambda: bool(canned.calls), 30), postfix.maillog()[-3000:]
        assert wait_for(lambda: " ham score=" in milter.log(), 10), milter.log()
        log = milter.log()
    (call,) = canned.calls
    assert call["direction"] == ["outbound"] and call["client_ip"] == ["127.0.0.1"]
    assert call["user"] == ["client:local"] and call["mail_from"] == ["app@corp.test"]
    assert " outbound ham score=0.0100 action=accept user=client:local via=local" in log


def test_a_leak_submitted_with_sendmail_is_held(stack: Stack) -> None:
    """The hostile test's find: with the README's settings, an AWS key submitted with
    ``sendmail`` was scored inbound (no leak check) and delivered. The stack's milter
    leaves loopback out of ``--internal-networks``; the key is found and held."""
    raw = (
        b"From: app@corp.test\nTo: partner@partner.test\nSubject: deploy\n"
        b"Message-ID: <local-aws-9@corp.test>\n\n" + f"aws_access_key_id = {AWS_KEY}\n".encode()
    )
    stack.postfix.submit("app@corp.test", "partner@partner.test", raw)

    def held() -> list[dict[str, object]]:
        return [
            e
            for e in stack.postfix.queue_entries()
            if e.get("sender") == "app@corp.test" and e.get("queue_name") == "hold"
        ]

    assert wait_for(lambda: bool(held()), 30), stack.postfix.queue_entries()
    queue_id = str(held()[0]["queue_id"])
    (line,) = stack.log_lines(stack.milter, f"{queue_id}: outbound ")
    assert "(dlp_aws_access_key" in line and line.endswith("user=client:local via=local")


def test_a_personal_block_refuses_only_its_owners_copy(stack: Stack) -> None:
    """Bob blocks partner.example for himself; a message from there to bob and carol:
    carol's copy is delivered, bob gets none (the milter removed him)."""
    bob, carol = f"bob@{DOMAIN}", f"carol@{DOMAIN}"
    with stack.service.client() as admin:
        put = admin.put("/v1/lists/block/partner.example", params={"scope": "user", "user": bob})
        assert put.status_code in (200, 201), put.text
    sender = "news@partner.example"
    with smtp(stack.open_port) as s:
        s.sendmail(sender, [bob, carol], _from(sender, 51, "blocked-51@partner.example"))
    assert wait_for(lambda: _delivered(stack.postfix, "carol", "blocked-51@") is not None, 30)
    carols = _delivered(stack.postfix, "carol", "blocked-51@")
    assert carols is not None and carols["X-Mailsift-Verdict"] == "ham"
    assert carols["Delivered-To"] == carol
    assert stack.log_lines(stack.milter, f"refused for {bob} (their own block list)")
    for box in ("bob",):  # not even marked for Junk: his copy is gone
        assert all(b"blocked-51@" not in raw for raw in stack.postfix.delivered(box))
    assert not (stack.postfix.mail / DOMAIN / "bob" / "new").exists() or not any(
        b"blocked-51@" in p.read_bytes()
        for p in (stack.postfix.mail / DOMAIN / "bob").rglob("*")
        if p.is_file()
    )


def test_a_revoked_gateway_token_tempfails_through_postfix_even_failing_open(
    stack: Stack, tmp_path: Path
) -> None:
    """A token revoked while the milter runs: the service answers 401, which is no
    outage. The milter fails closed (Postfix answers 451) though ``--fail-mode open``,
    and logs an ERROR; before, the AWS key went out unscanned."""
    name = "mx-revoked"
    token = tmp_path / "revoked.token"
    token.write_text(
        gateway_token(stack.data, stack.service.env, "--role", "gateway", "--name", name)
    )
    args = ("--service-url", stack.service.url, "--token-file", str(token))
    args += ("--internal-networks", NETWORK, "--fail-mode", "open")
    with (
        GatewayProcess("milter", tmp_path, *args, env=_postconf_env(tmp_path)) as milter,
        Postfix(
            listeners={
                "in": {
                    "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
                    "milter_default_action": "accept",
                }
            },
            policy_port=None,
            internal_network=NETWORK,
        ) as postfix,
    ):
        assert "the service accepts the gateway token" in milter.log()
        _revoke(stack, name)
        raw = (
            b"From: dave@corp.test\r\nTo: partner@partner.test\r\nSubject: keys\r\n\r\n"
            + f"aws_access_key_id = {AWS_KEY}\r\n".encode()
        )
        with (
            smtp(postfix.ports["in"], internal=True) as s,
            pytest.raises(smtplib.SMTPDataError) as refused,
        ):
            s.sendmail("dave@corp.test", ["partner@partner.test"], raw)
        log = milter.log()
    assert refused.value.smtp_code == 451 and b"4.3.0" in refused.value.smtp_error
    (error,) = [line for line in log.splitlines() if " ERROR " in line]
    assert "HTTP 401" in error and "failing closed whatever the fail mode" in error


def _revoke(stack: Stack, name: str) -> None:
    """``mailsift token revoke`` of the active token called ``name``."""
    env = {**stack.service.env, "MAILSIFT_DATA_DIR": str(stack.data)}

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "token", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    ids = [f[0] for f in map(str.split, cli("list").splitlines()) if len(f) >= 4 and f[3] == name]
    assert ids, cli("list")
    for token_id in ids:
        cli("revoke", token_id)


def test_with_the_service_stopped_fail_open_delivers_and_fail_closed_tempfails(
    stack: Stack,
) -> None:
    """Last in the module: it stops the service the other tests use."""
    stack.service.kill()
    raw = _with_id(message(5, spammy=False), "down-5@remote.test")
    with smtp(stack.open_port) as s:
        s.sendmail("news@remote.test", [f"bob@{DOMAIN}"], raw)
    assert wait_for(lambda: _delivered(stack.postfix, "bob", "down-5@") is not None, 30)
    msg = _delivered(stack.postfix, "bob", "down-5@")
    assert msg is not None and msg["X-Mailsift-Verdict"] is None  # passed unscanned

    with smtp(stack.closed_port) as s, pytest.raises(smtplib.SMTPDataError) as refused:
        s.sendmail("news@remote.test", [f"bob@{DOMAIN}"], message(6, spammy=False))
    assert refused.value.smtp_code == 451
    assert b"4.3.0" in refused.value.smtp_error
