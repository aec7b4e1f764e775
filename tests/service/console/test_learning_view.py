"""The Learning page's counts, from a real training log on both backends."""

from __future__ import annotations

from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLog
from mailsift.service.console.learning import learning_view, source_counts
from tests.learning.examples import ex
from tests.learning.test_trainlog import backend, fp, log  # noqa: F401  (fixtures)


def test_a_reports_channel_is_kept_and_the_console_counts_it_apart(
    log: TrainingLog,  # noqa: F811
) -> None:
    log.append(fp(1), "spam", ex(b"a"), source=Source.ADMIN, actor="admin")
    log.append(fp(2), "ham", ex(b"o"), source=Source.OUTBOUND, actor="bob@x")
    log.report("carol@x", fp(3), "spam", ex(b"r"), needed=3, per_user_per_day=20, via="imap")
    log.report("dave@x", fp(4), "ham", ex(b"r"), needed=3, per_user_per_day=20)  # api
    log.report("dave@x", fp(5), "spam", ex(b"r"), needed=3, per_user_per_day=20, via="api")
    counts = source_counts(log.engine, 0.0)
    assert counts == {
        "admin": {"ham": 0, "spam": 1},
        "user": {"ham": 1, "spam": 1},
        "imap": {"ham": 0, "spam": 1},
        "outbound": {"ham": 1, "spam": 0},
    }


def test_reports_wait_for_consensus_until_enough_users_agree(
    log: TrainingLog,  # noqa: F811
) -> None:
    for user in ("carol@x", "dave@x"):
        log.report(user, fp(7), "spam", ex(b"r"), needed=3, per_user_per_day=20)
    view = learning_view(log.engine)
    assert [(w["fingerprint"], w["label"], w["users"]) for w in view.waiting] == [
        (fp(7), "spam", 2)
    ]
    assert {r["user"]: (r["reports"], r["spam"]) for r in view.reporters} == {
        "carol@x": (1, 1),
        "dave@x": (1, 1),
    }
    log.report("erin@x", fp(7), "spam", ex(b"r"), needed=3, per_user_per_day=20)
    assert learning_view(log.engine).waiting == []  # three agree: the shared label is set
    assert [e["column"] for e in learning_view(log.engine).recent][:3] == ["user"] * 3
