"""Users' reports over real HTTP: personal first, shared by consensus, per-recipient verdicts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsift.reasons import LABELLED_SPAM, PERSONAL_REPORT, PERSONAL_SENDER
from tests.service.server import Service, message, score, train

RFC822 = {"content-type": "message/rfc822"}
DOMAIN = "corp.example"
USERS = ("bob", "carol", "dave", "erin", "frank")


def create_token(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "token", "create", *args],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


def addr(user: str) -> str:
    return f"{user}@{DOMAIN}"


class Site:
    """A running service with a trained shared model and a user token per person."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.admin = svc.client()
        self.users = {
            u: svc.client(create_token(svc.data_dir, "--role", "user", "--address", addr(u)))
            for u in USERS
        }

    def score(self, raw: bytes, *users: str) -> dict[str, Any]:
        return score(self.admin, raw, "inbound", tuple(addr(u) for u in users))

    def report(self, user: str, raw: bytes, label: str = "spam") -> httpx.Response:
        return self.users[user].post(
            "/v1/feedback", params={"label": label, "user": addr(user)}, content=raw, headers=RFC822
        )

    def close(self) -> None:
        self.admin.close()
        for c in self.users.values():
            c.close()


def per_rcpt(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rcpt"].split("@")[0]: r for r in answer["recipients"]}


def newsletter(n: int, sender: str = "news@shop.example") -> bytes:
    return (
        f"From: Shop <{sender}>\r\nTo: list@{DOMAIN}\r\nSubject: Our autumn catalogue {n}\r\n"
        f"Message-ID: <nl{n}@shop.example>\r\n\r\nDear customer, the quarterly review of our "
        f"catalogue {n} is out; the agenda for the shop meeting is attached.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("feedback")
    env = {"MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "1000"}
    with Service(base / "data", env=env) as svc:
        s = Site(svc)
        for n in range(8):
            train(s.admin, message(200 + n, spammy=False), "ham")
            train(s.admin, message(200 + n, spammy=True), "spam")
        yield s
        s.close()


def test_a_user_reports_only_their_own_mail(site: Site) -> None:
    never_scored = newsletter(1)
    r = site.report("bob", never_scored)
    assert r.status_code == 403 and r.json()["error"] == "not_scored_for_user"
    site.score(never_scored, "carol")
    assert site.report("bob", never_scored).status_code == 403  # carol's mail, not bob's
    as_carol = site.users["bob"].post(
        "/v1/feedback",
        params={"label": "spam", "user": addr("carol")},
        content=never_scored,
        headers=RFC822,
    )
    assert as_carol.status_code == 403 and as_carol.json()["error"] == "forbidden"
    assert site.report("carol", never_scored).status_code == 200


def test_a_report_acts_for_the_reporter_alone(site: Site) -> None:
    first, second = newsletter(10, "offers@mall.example"), newsletter(11, "offers@mall.example")
    before = site.score(first, "bob", "carol")
    before_second = site.score(second, "bob", "carol")
    assert before["verdict"] == "ham"
    assert {r["verdict"] for r in before["recipients"]} == {"ham"}
    model_before = site.admin.get("/v1/model").json()

    r = site.report("bob", first)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "personal" and body["result"] == "learned"
    assert body["shared"] == {"result": "pending", "reports": 1, "needed": 3, "counted": True}
    model_after = site.admin.get("/v1/model").json()
    assert (model_after["ham"], model_after["spam"]) == (model_before["ham"], model_before["spam"])

    after = site.score(first, "bob", "carol")
    assert after["score"] == before["score"] and after["verdict"] == before["verdict"]
    mine, carols = per_rcpt(after)["bob"], per_rcpt(after)["carol"]
    assert mine["verdict"] == "spam" and [x["name"] for x in mine["reasons"]] == [PERSONAL_REPORT]
    assert carols == per_rcpt(before)["carol"]

    # The sender's next message is no longer ham for bob, and only for him.
    later = site.score(second, "bob", "carol")
    assert later["score"] == before_second["score"]
    assert per_rcpt(later)["bob"]["verdict"] != "ham"
    assert [x["name"] for x in per_rcpt(later)["bob"]["reasons"]] == [PERSONAL_SENDER]
    assert per_rcpt(later)["carol"] == per_rcpt(before_second)["carol"]
    # A stricter personal verdict never refuses the message to the others.
    assert per_rcpt(later)["bob"]["action"] not in ("reject", "defer")

    # Bob takes his report back: his verdicts are the shared ones again.
    fp = body["fingerprint"]
    undone = site.users["bob"].delete(f"/v1/feedback/{fp}", params={"user": addr("bob")})
    assert undone.status_code == 200 and undone.json()["result"] == "forgotten"
    assert per_rcpt(site.score(second, "bob"))["bob"]["reasons"] == []


def test_three_users_who_received_it_make_it_spam_for_everyone(site: Site) -> None:
    msg = newsletter(20, "promo@bulk.example")
    site.score(msg, "carol", "dave", "erin")
    model0 = site.admin.get("/v1/model").json()
    results = [site.report(u, msg).json()["shared"] for u in ("carol", "dave", "erin")]
    assert [(r["result"], r["reports"]) for r in results] == [
        ("pending", 1),
        ("pending", 2),
        ("learned", 3),
    ]
    model1 = site.admin.get("/v1/model").json()
    assert model1["spam"] == model0["spam"] + 1
    for_frank = site.score(msg, "frank")
    assert for_frank["verdict"] == "spam"
    assert LABELLED_SPAM in [r["name"] for r in for_frank["reasons"]]
    # An administrator's word outranks users: a ham label stays against their reports.
    fp = for_frank["fingerprint"]
    assert train(site.admin, msg, "ham")["result"] == "relabelled"
    site.score(msg, "frank")
    again = site.report("frank", msg).json()
    assert again["shared"]["result"] == "kept"
    assert site.score(msg, "bob")["verdict"] != "spam"
    assert site.admin.delete(f"/v1/examples/{fp}").json()["result"] == "forgotten"
    assert site.score(msg, "frank")["recipients"][0]["reasons"] == []


def test_an_administrator_confirms_a_single_report(site: Site) -> None:
    msg = newsletter(30, "deals@bulk.example")
    site.score(msg, "bob")
    fp = site.report("bob", msg).json()["fingerprint"]
    missing = site.admin.post(f"/v1/examples/{fp}/confirm", params={"label": "ham"})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    confirmed = site.admin.post(f"/v1/examples/{fp}/confirm", params={"label": "spam"})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json() | {"log_position": 0} == {
        "result": "learned",
        "log_position": 0,
        "fingerprint": fp,
        "scope": "shared",
        "held_by": "admin",
    }
    assert site.score(msg, "carol")["verdict"] == "spam"
    denied = site.users["bob"].post(f"/v1/examples/{fp}/confirm", params={"label": "spam"})
    assert denied.status_code == 403


def test_an_answer_that_changes_nothing_gives_the_position_it_confirms(site: Site) -> None:
    """One rule on every learning endpoint: ``log_position`` is the newest log entry about
    the message; when nothing was written, the one that had already made it so. A repeat
    answers what the first request did, and the worker has applied it."""
    msg = newsletter(60, "digest@lists.example")
    fp = site.score(msg, "bob", "carol")["fingerprint"]
    admin, bob = site.admin, site.users["bob"]

    def answer(r: httpx.Response) -> tuple[str, int]:
        assert r.status_code == 200, r.text
        body = r.json()
        applied = site.admin.get("/v1/model").json()["log_position"]
        assert applied >= body["log_position"]  # the answering worker reflects it
        return body["result"], body["log_position"]

    def twice(send: Callable[[], httpx.Response], first: str) -> int:
        result, position = answer(send())
        assert result == first
        assert answer(send()) == ("unchanged", position)
        return position

    def teach() -> httpx.Response:
        return admin.post("/v1/train", params={"label": "spam"}, content=msg, headers=RFC822)

    trained = twice(teach, "learned")
    labelled = admin.post(f"/v1/history/{fp}/label", params={"label": "spam"})
    assert answer(labelled) == ("unchanged", trained)
    reported = twice(lambda: site.report("bob", msg), "learned")
    assert reported > trained
    confirmed = admin.post(f"/v1/examples/{fp}/confirm", params={"label": "spam"})
    assert answer(confirmed) == ("unchanged", trained)  # the administrator's label holds
    withdrawn = twice(
        lambda: bob.delete(f"/v1/feedback/{fp}", params={"user": addr("bob")}), "forgotten"
    )
    assert withdrawn > reported
    # The forget takes back the shared example; asked again it answers the same position,
    # not 0: the state it confirms (nothing of the message left) dates from it.
    forgotten = twice(lambda: admin.delete(f"/v1/examples/{fp}"), "forgotten")
    assert forgotten > withdrawn
    assert answer(admin.delete(f"/v1/examples/{'0' * 32}")) == ("unchanged", 0)  # never logged


def test_sites_that_import_old_mail_may_report_it_unscored(tmp_path: Path) -> None:
    env = {"MAILSIFT_FEEDBACK_REQUIRE_SCORED": "false"}
    with Service(tmp_path / "data", env=env) as svc:
        token = create_token(svc.data_dir, "--role", "user", "--address", addr("bob"))
        with svc.client(token) as bob:
            r = bob.post(
                "/v1/feedback",
                params={"label": "spam", "user": addr("bob")},
                content=newsletter(40),
                headers=RFC822,
            )
        assert r.status_code == 200, r.text
        assert r.json()["shared"]["result"] == "pending"
