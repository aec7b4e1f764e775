"""``mailsift report`` and the reporter role, against the real service over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.reasons import PERSONAL_NOT_SPAM, PERSONAL_REPORT
from tests.service.server import Service, free_port, score, train
from tests.service.test_feedback_e2e import create_token

DOMAIN = "corp.example"
RFC822 = {"content-type": "message/rfc822"}


def letter(n: int) -> bytes:
    return (
        f"From: Garden Club <club{n}@garden.example>\r\nTo: members@{DOMAIN}\r\n"
        f"Subject: Tulip bulbs swap number {n}\r\nMessage-ID: <tulip{n}@garden.example>\r\n\r\n"
        f"Bring your spare tulip bulbs to the hall on Saturday; swap list {n} attached.\r\n"
    ).encode()


def report(
    raw: bytes, label: str, user: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "report", label, "--user", user, *args],
        input=raw.decode(),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


class Site:
    def __init__(self, svc: Service, tmp: Path) -> None:
        self.svc = svc
        self.admin = svc.client()
        self.token_file = tmp / "reporter.token"
        self.token_file.write_text(
            create_token(svc.data_dir, "--role", "reporter", "--address", f"@{DOMAIN}") + "\n"
        )
        self.args = ("--url", svc.url, "--token-file", str(self.token_file))

    def verdict_for(self, raw: bytes, user: str) -> dict[str, object]:
        answer = score(self.admin, raw, "inbound", (user,))
        mine: dict[str, object] = answer["recipients"][0]
        return mine


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("report")
    env = {"MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "3"}
    with Service(base / "data", env=env) as svc:
        s = Site(svc, base)
        for n in range(6):
            train(s.admin, letter(100 + n), "ham")
        yield s
        s.admin.close()


def reason_names(verdict: dict[str, object]) -> list[str]:
    reasons = verdict["reasons"]
    assert isinstance(reasons, list)
    return [r["name"] for r in reasons]


def test_a_site_token_reports_for_a_user_and_the_user_alone_sees_it(site: Site) -> None:
    bob, carol = f"bob@{DOMAIN}", f"carol@{DOMAIN}"
    raw = letter(1)
    assert site.verdict_for(raw, bob)["verdict"] == "ham"

    done = report(raw, "spam", bob, *site.args, "--via", "imap")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"reported spam for {bob}: learned")
    assert site.verdict_for(raw, bob)["verdict"] != "ham"
    assert reason_names(site.verdict_for(raw, bob)) == [PERSONAL_REPORT]
    assert reason_names(site.verdict_for(raw, carol)) == []

    # Moved back out of Junk: the same user's report is now "not spam".
    back = report(raw, "ham", bob, *site.args, "--via", "imap")
    assert back.returncode == 0, back.stderr
    assert "relabelled" in back.stdout
    assert reason_names(site.verdict_for(raw, bob)) == [PERSONAL_NOT_SPAM]

    # One line per report in the service's log: who, which, what, how; no content.
    log = site.svc.log_path.read_text()
    lines = [line for line in log.splitlines() if "report user=" in line and bob in line]
    assert len(lines) == 2, lines
    assert "label=spam source=imap result=learned" in lines[0]
    assert "label=ham source=imap result=relabelled" in lines[1]
    assert "tulip" not in log.lower()


def test_a_site_token_speaks_only_for_its_domains_and_only_reports(site: Site) -> None:
    raw = letter(2)
    outsider = "eve@elsewhere.example"
    score(site.admin, raw, "inbound", (outsider,))
    refused = report(raw, "spam", outsider, *site.args)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "403 forbidden" in refused.stderr and outsider in refused.stderr

    token = site.token_file.read_text().strip()
    with site.svc.client(token) as reporter:
        lists = reporter.get("/v1/lists/allow", params={"user": f"bob@{DOMAIN}"})
        assert lists.status_code == 403
        scored = reporter.post("/v1/score", content=raw, headers=RFC822)
        assert scored.status_code == 403


def test_a_user_that_is_no_address_is_refused_before_anything_is_logged(site: Site) -> None:
    token = site.token_file.read_text().strip()
    with site.svc.client(token) as reporter:
        for user in (f"x\nreport user=bob@{DOMAIN}", f"bob @{DOMAIN}", f"bob\x00@{DOMAIN}"):
            r = reporter.post(
                "/v1/feedback",
                params={"label": "spam", "user": user},
                content=letter(5),
                headers=RFC822,
            )
            assert r.status_code == 400, (user, r.text)
            assert "no spaces or control characters" in r.json()["detail"]


def test_mail_the_user_never_received_is_refused_with_the_reason(site: Site) -> None:
    done = report(letter(3), "spam", f"dave@{DOMAIN}", *site.args)
    assert done.returncode == 1
    assert "not_scored_for_user" in done.stderr


def test_the_rate_limit_of_a_site_token_counts_each_user_apart(site: Site) -> None:
    frank, gina = f"frank@{DOMAIN}", f"gina@{DOMAIN}"
    messages = [letter(10 + n) for n in range(4)]
    for raw in messages:
        score(site.admin, raw, "inbound", (frank, gina))
    codes = [report(raw, "spam", frank, *site.args).returncode for raw in messages]
    assert codes == [0, 0, 0, 75]  # 3 a minute for frank: the 4th may be tried later
    assert report(messages[3], "spam", gina, *site.args).returncode == 0


def test_each_failure_is_one_line_and_its_own_exit_status(tmp_path: Path) -> None:
    raw = letter(4)
    env = {"MAILSIFT_TOKEN_FILE": ""}
    no_token = report(raw, "spam", "bob@x.example", env=env)
    assert (no_token.returncode, no_token.stderr.count("\n")) == (2, 1)
    assert "no token" in no_token.stderr

    token = tmp_path / "t"
    token.write_text("msk_000000000000_" + "a" * 30)
    nothing = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "report", "spam", "--user", "b@x.example"],
        input="",
        env={**os.environ, "MAILSIFT_TOKEN_FILE": str(token)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nothing.returncode == 2 and "no message" in nothing.stderr

    down = report(raw, "spam", "b@x.example", "--url", f"http://127.0.0.1:{free_port()}",
                  "--token-file", str(token))  # fmt: skip
    assert down.returncode == 75 and down.stderr.count("\n") == 1
    assert "did not answer" in down.stderr and "Traceback" not in down.stderr

    bad = report(raw, "maybe", "b@x.example", "--token-file", str(token))
    assert bad.returncode == 2

    for content in ("msk_a b", "msk_\u00e9t\u00e9", "two\nlines"):
        token.write_text(content)
        garbled = report(raw, "spam", "b@x.example", "--token-file", str(token))
        assert (garbled.returncode, garbled.stderr.count("\n")) == (2, 1), garbled.stderr
        assert "does not hold one token" in garbled.stderr
