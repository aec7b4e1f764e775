"""A user's own list entry acts on that user's copy only, over HTTP against a real
service: bob's block of ``partner.example`` refuses the message to bob (his own verdict
is ``reject``, which the milter applies by removing him) and leaves the message's
verdict, and carol's, as if bob had no list; bob's allow entry lowers nobody's verdict
but his own. Global entries still decide the message for everyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mailsift.reasons import ALLOWLIST_UNVERIFIED, BLOCKLISTED
from tests.service.server import Service, message

BOB, CAROL, DAVE = "bob@example.org", "carol@example.org", "dave@example.org"
SENDER = "news@partner.example"
MSG = {"content-type": "message/rfc822"}


def _from(sender: str, n: int) -> bytes:
    return message(n, spammy=False).replace(
        f"From: sender{n}@example.org".encode(), f"From: {sender}".encode()
    )


def _score(client: httpx.Client, sender: str, n: int, *rcpts: str) -> dict[str, Any]:
    r = client.post(
        "/v1/score",
        params={"direction": "inbound", "mail_from": sender, "rcpt": list(rcpts)},
        content=_from(sender, n),
        headers=MSG,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _own(body: dict[str, Any], rcpt: str) -> dict[str, Any]:
    (mine,) = [r for r in body["recipients"] if r["rcpt"] == rcpt]
    return mine


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("personal-lists")
    # A model still learning: the verdict is ham unless a reason forces one, so what the
    # lists do is all there is to see. A spam verdict rejects, as a trained model would.
    env = {"MAILSIFT_SPAM_ACTION": "reject", "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10"}
    with Service(tmp / "data", env=env) as svc:
        yield svc


def _put(client: httpx.Client, kind: str, entry: str, **params: str) -> None:
    r = client.put(f"/v1/lists/{kind}/{entry}", params=params)
    assert r.status_code in (200, 201), r.text


def test_a_personal_block_refuses_its_owners_copy_and_nobody_elses(service: Service) -> None:
    with service.client() as admin:
        before = _score(admin, SENDER, 1, BOB, CAROL)
        _put(admin, "block", "partner.example", scope="user", user=BOB)
        after = _score(admin, SENDER, 1, BOB, CAROL)
    # The message's verdict, everyone's, is what it was without bob's list...
    assert (after["verdict"], after["action"]) == (before["verdict"], before["action"])
    assert (after["verdict"], after["action"]) == ("ham", "accept")
    assert BLOCKLISTED not in [r["name"] for r in after["reasons"]]
    # ...carol's own is the message's...
    carols = _own(after, CAROL)
    assert (carols["verdict"], carols["action"], carols["reasons"]) == ("ham", "accept", [])
    # ...and bob's own refuses it, naming his list.
    bobs = _own(after, BOB)
    assert (bobs["verdict"], bobs["action"]) == ("spam", "reject")
    (reason,) = bobs["reasons"]
    assert reason["name"] == BLOCKLISTED and BOB in reason["detail"]


def test_a_personal_allow_lowers_only_its_owners_verdict(service: Service) -> None:
    """A global block makes the message spam for everyone; dave's own allow entry of the
    same sender (more specific) does not let it through for carol."""
    sender = "promo@bulk.example"
    with service.client() as admin:
        _put(admin, "block", "bulk.example", scope="global")
        _put(admin, "allow", sender, scope="user", user=DAVE)
        body = _score(admin, sender, 2, DAVE, CAROL)
    assert (body["verdict"], body["action"]) == ("spam", "reject")
    assert BLOCKLISTED in [r["name"] for r in body["reasons"]]
    assert _own(body, CAROL)["action"] == "reject" and _own(body, CAROL)["reasons"] == []
    assert [r["name"] for r in _own(body, DAVE)["reasons"]] == [ALLOWLIST_UNVERIFIED]


def test_a_sender_nobody_listed_is_the_same_for_everyone(service: Service) -> None:
    """Bob's list holds partner.example only: other senders' mail to him is untouched."""
    with service.client() as admin:
        body = _score(admin, "someone@elsewhere.example", 3, BOB, CAROL)
    assert _own(body, BOB)["action"] == body["action"] == "accept"
