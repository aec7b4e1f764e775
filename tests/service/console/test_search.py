"""The History page's search and the Overview's traffic, on a real trail (both backends)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event

from mailsift.service.audit import AuditRecord, AuditTrail
from mailsift.service.console.search import HistoryQuery, search
from mailsift.service.console.traffic import SETTLE_SECONDS, traffic
from mailsift.service.settings import Settings

NOW = 1_800_000_000.0
HOUR = 3600.0


@pytest.fixture
def trail(state_engine: Engine) -> AuditTrail:
    return AuditTrail(state_engine, Settings(data_dir=Path("unused")))


def _row(at: float, **given: object) -> AuditRecord:
    values: dict[str, object] = {
        "time": at,
        "direction": "inbound",
        "score": 0.1,
        "verdict": "ham",
        "action": "accept",
        "mail_from": "a@x.example",
        "recipients": ("u1@corp.example",),
        "reasons": (("model", -2.0),),
        **given,
    }
    return AuditRecord(**values)  # type: ignore[arg-type]


def _found(engine: Engine, **given: str) -> list[str | None]:
    found = search(engine, HistoryQuery.of(given), now=NOW)
    return [row["queue_id"] for row in found.rows]


def test_each_filter_matches_whole_values_only(trail: AuditTrail, state_engine: Engine) -> None:
    trail.record(_row(NOW - 60, queue_id="plain"))
    trail.record(
        _row(
            NOW - 50,
            queue_id="other",
            recipients=("u11@corp.example", "bob@corp.example"),
            reasons=(("model", 3.0), ("dlp_iban", 4.0)),
            verdict="spam",
            action="reject",
            direction="outbound",
            mail_from="B@Y.example",
            fingerprint="ab" * 16,
        )
    )
    trail.flush()
    assert _found(state_engine) == ["other", "plain"]
    assert _found(state_engine, recipient="u1@corp.example") == ["plain"]  # not u11@
    assert _found(state_engine, recipient="U11@corp.example") == ["other"]
    assert _found(state_engine, reason="dlp_iban") == ["other"]
    assert _found(state_engine, reason="dlp") == []  # a whole reason name
    assert _found(state_engine, sender="b@y.example") == ["other"]
    assert _found(state_engine, fingerprint="AB" * 16) == ["other"]
    assert _found(state_engine, verdict="spam", action="reject", direction="outbound") == ["other"]
    assert _found(state_engine, direction="inbound") == ["plain"]


def test_a_search_out_of_time_says_how_far_back_it_looked_and_goes_on_from_there(
    trail: AuditTrail, state_engine: Engine
) -> None:
    trail.record(_row(NOW - 5 * HOUR, queue_id="older", recipients=("rare@corp.example",)))
    trail.record(_row(NOW - 60, queue_id="recent"))
    trail.flush()
    query = HistoryQuery.of({"recipient": "rare@corp.example"})
    first = search(state_engine, query, now=NOW, budget=0.0)  # one slice: the last hour
    assert (first.rows, first.searched_from, first.complete) == ([], NOW - HOUR, False)
    more = HistoryQuery.of({"recipient": "rare@corp.example", "until": str(first.searched_from)})
    found = search(state_engine, more, now=NOW)
    assert [r["queue_id"] for r in found.rows] == ["older"]
    assert found.complete and found.searched_from == NOW - 86_400
    # Outside the chosen window it is not found; in a week's it is, at once.
    assert _found(state_engine, recipient="rare@corp.example", window="hour") == []
    assert _found(state_engine, recipient="rare@corp.example", window="week") == ["older"]


def test_traffic_counts_messages_per_minute_by_direction_and_verdict(
    trail: AuditTrail, state_engine: Engine
) -> None:
    for n in range(3):
        trail.record(_row(NOW - 90 - n, verdict="spam"))
    trail.record(_row(NOW - 30, direction="outbound"))
    trail.record(_row(NOW - 2 * HOUR))  # outside the hour
    trail.flush()
    found = traffic(state_engine, "hour", NOW)
    assert found.total == 4 and len(found.labels) == 60
    assert sum(found.per_minute[("inbound", "spam")]) == 3
    assert sum(found.per_minute[("outbound", "ham")]) == 1
    assert sum(found.per_minute[("inbound", "ham")]) == 0
    week = traffic(state_engine, "week", NOW)  # hourly buckets: 5 in an hour = 5/60 a minute
    assert sum(sum(v) for v in week.per_minute.values()) == pytest.approx(5 / 60)


def test_a_redrawn_chart_reads_only_what_is_not_yet_settled(
    trail: AuditTrail, state_engine: Engine
) -> None:
    """Settled buckets are kept per process: the week's chart drawn again reads the rows
    of its last buckets only, and counts what arrived since (a million rows took 0.7 s
    to group each time)."""
    for hours in (100, 50, 3):
        trail.record(_row(NOW - hours * HOUR, verdict="spam"))
    trail.flush()
    first = traffic(state_engine, "week", NOW)
    reads: list[float] = []

    @event.listens_for(state_engine, "before_cursor_execute")
    def _seen(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        if "GROUP BY" in statement:
            values = params.values() if isinstance(params, dict) else params
            reads.extend(float(v) for v in values if isinstance(v, float | int) and v > NOW / 2)

    try:
        trail.record(_row(NOW + 30, direction="outbound"))
        trail.flush()
        again = traffic(state_engine, "week", NOW + 60)
    finally:
        event.remove(state_engine, "before_cursor_execute", _seen)
    assert reads and min(reads) >= NOW - HOUR - SETTLE_SECONDS - HOUR  # its last buckets
    assert again.total == first.total + 1 == 4
    assert again.per_minute[("inbound", "spam")] == first.per_minute[("inbound", "spam")]
    alone = create_engine(state_engine.url)  # nothing kept
    fresh = traffic(alone, "week", NOW + 60)
    alone.dispose()
    assert fresh.per_minute == again.per_minute


def test_charts_drawn_at_once_in_several_threads_agree(
    trail: AuditTrail, state_engine: Engine
) -> None:
    """Pages are drawn in worker threads: the kept buckets are shared, and two draws at
    once, at moments an hour apart, must neither fail nor see each other's pruning."""
    for hours in range(0, 160, 7):
        trail.record(_row(NOW - hours * HOUR))
    trail.flush()
    moments = [NOW + k * HOUR for k in range(6)]
    expected = {}
    for at in moments:  # each counted afresh, by an engine with nothing kept
        alone = create_engine(state_engine.url)
        expected[at] = traffic(alone, "week", at).total
        alone.dispose()

    def draw(at: float) -> tuple[float, int]:
        return at, traffic(state_engine, "week", at).total

    with ThreadPoolExecutor(max_workers=6) as pool:
        drawn = list(pool.map(draw, moments * 5))
    assert all(total == expected[at] for at, total in drawn), drawn
