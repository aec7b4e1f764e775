"""What one user's reports can and cannot do, on a model trained on a real corpus.

The shared model is trained on the first 80 % of a developer corpus; the held-out hams
are probes, each scored once for bob (so it was delivered to him) and for carol. Bob's
reports must change bob's verdicts and nobody else's; three users who received the same
message make it spam for everyone. Skipped when the corpus is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.learning.rebuild import publish, rebuild_model
from mailsift.learning.trainlog import open_training_log
from mailsift.models.fingerprint import fingerprint
from mailsift.models.parse import DEFAULT_LIMITS, parse_message
from mailsift.training.corpus import LabelledMessage, open_source
from mailsift.training.train import train_log
from tests.corpora import CORPORA, require
from tests.service.server import Service

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

RFC822 = {"content-type": "message/rfc822"}
BOB, CAROL = "bob@corp.example", "carol@corp.example"
REPORTERS = ("dave@corp.example", "erin@corp.example", "frank@corp.example")
OTHERS = (CAROL, "gina@corp.example")


def create_token(data_dir: Path, address: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailsift.cli",
            "token",
            "create",
            "--role",
            "user",
            "--address",
            address,
        ],
        env={**os.environ, "MAILSIFT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


class Trained:
    def __init__(self, svc: Service, probes: list[bytes]) -> None:
        self.svc = svc
        self.probes = probes
        self.admin = svc.client()
        self.clients = {a: svc.client(create_token(svc.data_dir, a)) for a in (BOB, *REPORTERS)}

    def score_all(self, rcpt: tuple[str, ...]) -> list[dict[str, dict[str, Any]]]:
        """Each probe's per-recipient answers, keyed by recipient."""
        out = []
        for raw in self.probes:
            r = self.admin.post(
                "/v1/score", params={"direction": "inbound", "rcpt": list(rcpt)}, content=raw,
                headers=RFC822,
            )  # fmt: skip
            assert r.status_code == 200, r.text
            out.append({x["rcpt"]: x for x in r.json()["recipients"]})
        return out

    def report(self, user: str, raw: bytes) -> dict[str, Any]:
        r = self.clients[user].post(
            "/v1/feedback", params={"label": "spam", "user": user}, content=raw, headers=RFC822
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["spamassassin", "trec07p_dev"])
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trained]:
    corpus = require(CORPORA / request.param)
    messages: list[LabelledMessage] = list(open_source(str(corpus)))
    cut = int(len(messages) * 0.8)
    data = tmp_path_factory.mktemp(f"trained-{request.param}") / "data"
    # As an administrator trains a site: the corpus onto the log, then a published rebuild.
    log = open_training_log(None, data)
    try:
        train_log(messages[:cut], log, actor="test", limits=DEFAULT_LIMITS)
        publish(log, rebuild_model(log, DEFAULT_LIMITS))
    finally:
        log.close()
    # Held out for real: a probe whose content was trained (a corpus repeats some mail)
    # is already labelled by the administrator, whose label a report cannot override.
    trained = {_fingerprint(m.raw) for m in messages[:cut]}
    probes = [
        m.raw for m in messages[cut:] if m.label == "ham" and _fingerprint(m.raw) not in trained
    ]
    env = {
        "MAILSIFT_FEEDBACK_PER_TOKEN_PER_MINUTE": "1000",
        "MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10",
    }
    with Service(data, env=env) as svc:
        t = Trained(svc, probes)
        yield t
        t.admin.close()
        for c in t.clients.values():
            c.close()


def _fingerprint(raw: bytes) -> str:
    return fingerprint(parse_message(raw, DEFAULT_LIMITS))


def _moved(
    before: list[dict[str, dict[str, Any]]], after: list[dict[str, dict[str, Any]]], who: str
) -> tuple[int, float]:
    """Probes whose verdict for ``who`` changed, and the largest score change."""
    flips = sum(b[who]["verdict"] != a[who]["verdict"] for b, a in zip(before, after, strict=True))
    delta = max(abs(b[who]["score"] - a[who]["score"]) for b, a in zip(before, after, strict=True))
    return flips, delta


def test_one_users_reports_move_only_that_users_verdicts(trained: Trained) -> None:
    before = trained.score_all((BOB, *OTHERS))  # every probe delivered to bob
    assert len(before) >= 150
    hams = [i for i, p in enumerate(before) if p[BOB]["verdict"] == "ham"]
    assert len(hams) >= 41

    # (a) One report: bob's verdict on it is no longer ham; nobody else's moves at all.
    first = hams[0]
    assert trained.report(BOB, trained.probes[first])["shared"]["result"] == "pending"
    after_one = trained.score_all((BOB, *OTHERS))
    assert after_one[first][BOB]["verdict"] != "ham"
    for other in OTHERS:
        assert _moved(before, after_one, other) == (0, 0.0)

    # (b) Forty reports from bob alone: still no other recipient's verdict moves.
    for i in hams[1:41]:
        trained.report(BOB, trained.probes[i])
    after_forty = trained.score_all((BOB, *OTHERS))
    assert all(after_forty[i][BOB]["verdict"] != "ham" for i in hams[:41])
    for other in OTHERS:
        assert _moved(before, after_forty, other) == (0, 0.0)
    one, forty = _moved(before, after_one, CAROL), _moved(before, after_forty, CAROL)
    print(
        f"\n{len(before)} probes; after bob's 1 and 41 reports, carol's verdict changes: "
        f"{one[0]} and {forty[0]} (largest score change {forty[1]})"
    )


def test_three_users_who_received_a_message_make_it_spam_for_everyone(trained: Trained) -> None:
    target = trained.probes[-1]
    delivered = trained.admin.post(
        "/v1/score", params={"direction": "inbound", "rcpt": list(REPORTERS)}, content=target,
        headers=RFC822,
    )  # fmt: skip
    assert delivered.json()["verdict"] == "ham"
    shared = [trained.report(user, target)["shared"]["result"] for user in REPORTERS]
    assert shared == ["pending", "pending", "learned"]
    after = trained.admin.post(
        "/v1/score", params={"direction": "inbound", "rcpt": list(OTHERS)}, content=target,
        headers=RFC822,
    ).json()  # fmt: skip
    assert after["verdict"] != "ham"
    assert all(r["verdict"] != "ham" for r in after["recipients"])
