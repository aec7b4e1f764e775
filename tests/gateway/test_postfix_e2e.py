"""End to end through a real Postfix: SMTP (smtplib) -> Postfix -> milter and policy
server -> the running service, and what Postfix then does with the mail.

Run alone with ``pytest -m postfix``. Skipped where Postfix is not installed (``.ci/run``
installs it). One stack for the module: a service taught a little ham and spam, two
milters sharing it (one failing open, one failing closed, each behind its own Postfix
SMTP port), a policy server, and one private Postfix instance. 127.0.0.2 is the internal
network: a client connecting from there sends outbound mail, from 127.0.0.1 inbound.
Postfix's ``recipient_delimiter`` is ``+``, so the milter's Junk mark (``bob+junk@``)
reaches bob's Maildir.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailsift.gateway.client import ScoreAnswer
from mailsift.gateway.decisions import stricter
from mailsift.reasons import MODEL
from tests.gateway.postfix import DOMAIN, POSTQUEUE, POSTSUPER, Postfix, postfix_missing
from tests.gateway.processes import CannedService, GatewayProcess, gateway_token
from tests.service.server import Service, message, train, wait_for

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(postfix_missing() is not None, reason=str(postfix_missing())),
]

INTERNAL = "127.0.0.2"
LIMITED = "limited@corp.test"
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
        token_file = tmp / "gateway.token"
        token_file.write_text(gateway_token(data, service.env) + "\n")
        token_file.chmod(0o600)
        recipients = tmp / "recipients"
        recipients.write_text(f"alice@{DOMAIN}\nbob@{DOMAIN}\ncarol@{DOMAIN}\n")
        common = (
            "--service-url",
            service.url,
            "--token-file",
            str(token_file),
            "--internal-networks",
            f"{INTERNAL}/32",
        )
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
                internal_network=f"{INTERNAL}/32",
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


def smtp(port: int, *, internal: bool = False) -> smtplib.SMTP:
    source = (INTERNAL, 0) if internal else ("127.0.0.1", 0)
    return smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=source)


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


def test_the_21st_message_of_a_user_limited_to_20_is_deferred_at_rcpt(stack: Stack) -> None:
    with smtp(stack.open_port, internal=True) as s:  # one connection: 20 transactions
        for i in range(20):
            raw = _with_id(message(100 + i, spammy=False), f"limit-{i}@corp.test")
            s.sendmail(LIMITED, ["partner@partner.test"], raw)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail(LIMITED, ["partner@partner.test"], message(121, spammy=False))
    code, text = refused.value.recipients["partner@partner.test"]
    assert code == 450 and b"4.7.1" in text, (code, text)
    # The policy server's log has the refusal, with what Postfix's own NOQUEUE line has.
    (line,) = stack.log_lines(stack.policy, f"refused queue_id=- client={INTERNAL} user={LIMITED}")
    assert 'reason="over the limit: messages_per_hour (ok)"' in line
    assert "recipient=partner@partner.test" in line and 'answer="DEFER 4.7.1 ' in line
    noqueue = rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(INTERNAL)}\]: 450 4\.7\.1 "
    # postlogd writes the maillog a moment later.
    assert wait_for(lambda: re.search(noqueue, stack.postfix.maillog()) is not None, 10)


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
        r" action=quarantine \(dlp_card(, score)?\) user=dave@corp\.test via=network "
        rf"client={re.escape(INTERNAL)}$",
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
        reported = as_bob.post(
            "/v1/feedback",
            params={"label": "spam", "user": bob},
            content=as_received,
            headers={"content-type": "message/rfc822"},
        )
        assert reported.status_code == 200, reported.text

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


@pytest.mark.parametrize(
    ("internal", "direction"),
    [("127.0.0.0/8,::1/128,192.0.2.0/24", "outbound"), ("192.0.2.0/24", "inbound")],
)
def test_a_local_submission_is_outbound_when_loopback_is_internal(
    tmp_path: Path, internal: str, direction: str
) -> None:
    """README, "Which mail is outbound": Postfix hands mail of its own ``sendmail``
    command (``non_smtpd_milters``) to the milter as a client at 127.0.0.1, so it is
    outbound, counted against its envelope sender, only when ``--internal-networks``
    holds the loopback network (as Postfix's default ``mynetworks`` does)."""
    with (
        CannedService() as canned,
        GatewayProcess(
            "milter", tmp_path, "--service-url", canned.url, "--internal-networks", internal,
            "--no-junk-marking",
        ) as milter,
        Postfix(
            listeners={"in": {"smtpd_milters": f"inet:127.0.0.1:{milter.port}"}},
            policy_port=None,
            internal_network=f"{INTERNAL}/32",
            main={"non_smtpd_milters": f"inet:127.0.0.1:{milter.port}"},
        ) as postfix,
    ):  # fmt: skip
        canned.answer.update(score=0.01, verdict="ham", action="accept", reasons=[])
        postfix.submit("app@corp.test", f"alice@{DOMAIN}", b"Subject: nightly report\n\nok\n")
        assert wait_for(lambda: bool(canned.calls), 30), postfix.maillog()[-3000:]
        assert wait_for(lambda: " ham score=" in milter.log(), 10), milter.log()
        log = milter.log()
    (call,) = canned.calls
    assert call["direction"] == [direction] and call["client_ip"] == ["127.0.0.1"]
    if direction == "outbound":
        assert call["user"] == ["app@corp.test"]
        assert " outbound ham score=0.0100 action=accept user=app@corp.test via=network " in log
        assert log.rstrip().endswith("client=127.0.0.1")
    else:
        assert "user" not in call and " inbound ham score=0.0100 action=accept" in log


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
