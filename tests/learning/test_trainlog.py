"""Training log: semantics, durability and ordering, on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import random
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy

from mailsift.learning.sources import Source
from mailsift.learning.trainlog import (
    DAY,
    SCHEMA_VERSION,
    AppendResult,
    Label,
    LogEntry,
    ReportResult,
    SharedOutcome,
    TrainingLog,
    TrainingLogError,
    open_training_log,
)
from mailsift.models.stored import decode_features
from tests.conftest import PG_HOST, PG_PORT, pg_admin
from tests.learning.examples import VERSION, ex

WORKERS = 4
APPENDS_PER_WORKER = 50
SHARED_FINGERPRINTS = 12
DEADLINE_SECONDS = 120.0

# (fingerprint, label or None for forget, raw, result, position) as acknowledged to a writer.
Ack = tuple[str, Label | None, bytes, str, int]


@dataclass(frozen=True)
class Backend:
    """Where a test's log lives; picklable so child processes can open it too."""

    database_url: str | None
    data_dir: Path

    def open(self) -> TrainingLog:
        return open_training_log(self.database_url, self.data_dir)


def fp(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """An empty log location on each backend (SQLite through the default path)."""
    if request.param == "sqlite":
        return Backend(None, tmp_path / "data")
    user, name = request.getfixturevalue("pg_database")
    with pg_admin(user, name) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return Backend(f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}", tmp_path)


@pytest.fixture
def log(backend: Backend) -> Iterator[TrainingLog]:
    opened = backend.open()
    yield opened
    opened.close()


# --- semantics ---------------------------------------------------------------------------


def test_learn_unchanged_relabel_forget(log: TrainingLog) -> None:
    assert log.head() == 0
    admin, outbound = Source.ADMIN, Source.OUTBOUND
    assert log.append(fp(1), "spam", ex(b"a"), source=admin, actor="a") == AppendResult(
        "learned", 1, admin
    )
    assert log.append(fp(1), "spam", ex(b"a"), source=admin, actor="b") == AppendResult(
        "unchanged", 1, admin
    )
    assert log.append(fp(2), "ham", ex(b"b"), source=outbound, actor="mta") == AppendResult(
        "learned", 2, outbound
    )
    assert log.append(fp(1), "ham", ex(b"a"), source=admin, actor="a") == AppendResult(
        "relabelled", 3, admin
    )
    assert log.counts() == {"ham": 2, "spam": 0}
    assert log.forget(fp(1), actor="a") == AppendResult("forgotten", 4)
    # Nothing left: unchanged, at the position where it already was so (the forget's).
    assert log.forget(fp(1), actor="a") == AppendResult("unchanged", 4)
    assert log.forget(fp(9), actor="a") == AppendResult("unchanged", 0)  # never logged
    assert log.label_of(fp(1)) is None
    assert log.label_of(fp(2)) == "ham"
    assert log.counts() == {"ham": 1, "spam": 0}
    assert log.append(fp(1), "spam", ex(b"a"), source=admin, actor="a") == AppendResult(
        "learned", 5, admin
    )
    assert log.head() == 5

    ops = [(e.position, e.fingerprint, e.undo_label, e.label) for e in log.read(0)]
    assert ops == [
        (1, fp(1), None, "spam"),
        (2, fp(2), None, "ham"),
        (3, fp(1), "spam", "ham"),
        (4, fp(1), "ham", None),
        (5, fp(1), None, "spam"),
    ]


def test_undo_carries_the_bytes_that_were_learned(log: TrainingLog) -> None:
    """A relabel or forget must unlearn the copy that was learned, not the new copy."""
    log.append(fp(1), "spam", ex(b"copy seen by the gateway"), source=Source.ADMIN, actor="a")
    log.append(fp(1), "ham", ex(b"copy the user reported"), source=Source.ADMIN, actor="u@x")
    log.forget(fp(1), actor="u@x")
    first, relabel, forget = log.read(0)
    assert first.undo_raw == b""
    assert (relabel.raw, relabel.undo_raw) == (
        b"copy the user reported",
        b"copy seen by the gateway",
    )
    assert (forget.raw, forget.undo_raw) == (b"", b"copy the user reported")


def test_entry_fields_round_trip(log: TrainingLog) -> None:
    raw = b"Subject: hi\r\n\r\n" + bytes(range(256)) * 400
    before = time.time()
    example = ex(raw, "a@b.example")
    log.append(fp(7), "spam", example, source=Source.ADMIN, actor="token:ci")
    (entry,) = log.read(0)
    assert entry == LogEntry(
        1, fp(7), "spam", None, raw, b"", "admin", "token:ci", entry.created_at,
        sender="a@b.example", features=example.features,
        features_version=example.features_version,
    )  # fmt: skip
    assert decode_features(entry.features or b"").word_idx.size > 0
    assert before - 1 <= entry.created_at <= time.time() + 1


def test_read_pages_in_order(log: TrainingLog) -> None:
    for n in range(1, 8):
        log.append(
            fp(n), "ham" if n % 2 else "spam", ex(b"m%d" % n), source=Source.ADMIN, actor="a"
        )
    pages = [log.read(0, limit=3), log.read(3, limit=3), log.read(6, limit=3)]
    assert [[e.position for e in page] for page in pages] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [e.raw for e in log.read(4, limit=2)] == [b"m5", b"m6"]
    assert log.read(7) == []
    assert log.read(-5, limit=1)[0].position == 1


def test_a_follower_with_the_stored_features_reads_no_message_bytes(log: TrainingLog) -> None:
    """Bytes come only with entries whose stored features are of another version (a
    follower must compute those afresh); undone entries alike."""
    log.append(fp(1), "spam", ex(b"current"), source=Source.ADMIN, actor="a")
    older = dataclasses.replace(ex(b"older"), features_version="older-settings")
    log.append(fp(2), "spam", older, source=Source.ADMIN, actor="a")
    log.append(fp(1), "ham", ex(b"current"), source=Source.ADMIN, actor="a")
    log.append(fp(2), "ham", ex(b"older"), source=Source.ADMIN, actor="a")
    lean = log.read(0, features_version=VERSION)
    assert [(e.raw, e.undo_raw) for e in lean] == [
        (b"", b""),
        (b"older", b""),
        (b"", b""),
        (b"", b"older"),
    ]
    assert all(e.features is not None for e in lean)
    full = log.read(0)
    assert [(e.raw, e.undo_raw) for e in full] == [
        (b"current", b""),
        (b"older", b""),
        (b"current", b"current"),
        (b"older", b"older"),
    ]

    # Apart from the bytes, the entries are the same.
    def bare(entries: list[LogEntry]) -> list[LogEntry]:
        return [dataclasses.replace(e, raw=b"", undo_raw=b"") for e in entries]

    assert bare(full) == bare(lean)


def test_persists_across_reopen(backend: Backend) -> None:
    first = backend.open()
    first.append(fp(1), "spam", ex(b"one"), source=Source.ADMIN, actor="u")
    first.append(fp(2), "ham", ex(b"two"), source=Source.OUTBOUND, actor="mta")
    first.append(fp(1), "ham", ex(b"one"), source=Source.ADMIN, actor="u")
    written = first.read(0)
    first.close()

    second = backend.open()
    try:
        assert second.read(0) == written
        assert second.head() == 3
        assert second.label_of(fp(1)) == "ham"
        assert second.counts() == {"ham": 2, "spam": 0}
        assert (
            second.append(fp(2), "ham", ex(b"two"), source=Source.ADMIN, actor="a").result
            == "unchanged"
        )
        assert second.append(fp(3), "spam", ex(b"3"), source=Source.ADMIN, actor="a").position == 4
    finally:
        second.close()


def test_rejects_invalid_input(log: TrainingLog) -> None:
    with pytest.raises(ValueError):
        log.append("not-hex", "spam", ex(b""), source=Source.ADMIN, actor="a")
    with pytest.raises(ValueError):
        log.append(fp(1), "eggs", ex(b""), source=Source.ADMIN, actor="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        log.append(fp(1), "spam", ex(b""), source="s" * 33, actor="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="report"):
        log.append(fp(1), "spam", ex(b""), source=Source.USER, actor="u@x")
    with pytest.raises(ValueError):
        log.forget(fp(1), actor="a" * 321)
    with pytest.raises(ValueError):
        log.read(0, limit=0)
    assert log.head() == 0


def test_ping_and_close(log: TrainingLog) -> None:
    log.ping()
    log.append(fp(1), "spam", ex(b"x"), source=Source.ADMIN, actor="a")
    log.ping()
    assert log.head() == 1  # the probe's write was rolled back
    log.close()
    with pytest.raises(TrainingLogError, match="closed"):
        log.ping()
    with pytest.raises(TrainingLogError, match="closed"):
        log.append(fp(2), "spam", ex(b"x"), source=Source.ADMIN, actor="a")


# --- concurrency -------------------------------------------------------------------------


def _mixed_writer(backend: Backend, worker: int, barrier: Barrier, out: Queue[list[Ack]]) -> None:
    """Appends, relabels and forgets, half on fingerprints every worker also uses."""
    rng = random.Random(worker)
    log = backend.open()
    acks: list[Ack] = []
    barrier.wait(timeout=DEADLINE_SECONDS)
    for i in range(APPENDS_PER_WORKER):
        if rng.random() < 0.5:
            fingerprint = fp(rng.randrange(SHARED_FINGERPRINTS))
        else:
            fingerprint = fp(1_000_000 * (worker + 1) + rng.randrange(20))
        if rng.random() < 0.1:
            result = log.forget(fingerprint, actor=f"w{worker}")
            acks.append((fingerprint, None, b"", result.result, result.position))
        else:
            label: Label = rng.choice(["ham", "spam"])
            raw = f"worker {worker} op {i}".encode()
            result = log.append(
                fingerprint, label, ex(raw), source=Source.ADMIN, actor=f"w{worker}"
            )
            acks.append((fingerprint, label, raw, result.result, result.position))
    log.close()
    out.put(acks)


def _same_label_writer(
    backend: Backend, worker: int, barrier: Barrier, out: Queue[list[Ack]]
) -> None:
    """Every worker teaches the same fingerprints the same label at the same moment."""
    log = backend.open()
    barrier.wait(timeout=DEADLINE_SECONDS)
    acks: list[Ack] = []
    for n in range(25):
        result = log.append(fp(n), "spam", ex(b"same"), source=Source.ADMIN, actor=f"w{worker}")
        acks.append((fp(n), "spam", b"same", result.result, result.position))
    log.close()
    out.put(acks)


def _cold_start_writer(
    backend: Backend, worker: int, barrier: Barrier, out: Queue[list[Ack]]
) -> None:
    """Processes that open a log that does not exist yet, all at once."""
    barrier.wait(timeout=DEADLINE_SECONDS)
    log = backend.open()
    result = log.append(fp(worker), "ham", ex(b"cold"), source=Source.ADMIN, actor=f"w{worker}")
    log.close()
    out.put([(fp(worker), "ham", b"cold", result.result, result.position)])


Writer = Callable[[Backend, int, Barrier, "Queue[list[Ack]]"], None]


def _run_workers(
    backend: Backend, target: Writer, on_tick: Callable[[TrainingLog], None] | None = None
) -> tuple[list[Ack], TrainingLog]:
    """Run WORKERS processes released together, calling ``on_tick`` while they write.

    Returns every acknowledgement and an open log for checking.
    """
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like real workers
    barrier = ctx.Barrier(WORKERS + 1)
    out: Queue[list[Ack]] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(backend, w, barrier, out)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    reader = backend.open() if on_tick is not None else None
    acks: list[Ack] = []
    deadline = time.monotonic() + DEADLINE_SECONDS

    def check_writers() -> None:
        crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if crashed:
            barrier.abort()
        assert not crashed, f"writer processes failed with exit codes {crashed}"
        assert time.monotonic() < deadline, "writers did not finish in time"

    try:
        while barrier.n_waiting < WORKERS:  # fail fast if a writer dies while starting
            check_writers()
            time.sleep(0.005)
        barrier.wait(timeout=DEADLINE_SECONDS)
        for _ in range(WORKERS):
            while True:
                check_writers()
                if on_tick is not None and reader is not None:
                    on_tick(reader)
                try:
                    acks.extend(out.get(timeout=0.005))
                    break
                except queue.Empty:
                    continue
    finally:
        for proc in procs:
            proc.join(timeout=DEADLINE_SECONDS)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    return acks, reader if reader is not None else backend.open()


def _check_log_against_acks(log: TrainingLog, acks: list[Ack]) -> list[LogEntry]:
    entries = log.read(0, limit=10_000)
    written = [a for a in acks if a[3] != "unchanged"]
    assert [e.position for e in entries] == list(range(1, len(entries) + 1))
    assert len(entries) == len(written) == log.head()
    by_position = {e.position: e for e in entries}
    for fingerprint, label, raw, result, position in acks:
        if result == "unchanged" and label is None:
            # A forget with nothing left: the entry that took it back, or 0 for never.
            assert position == 0 or (
                by_position[position].fingerprint == fingerprint
                and by_position[position].label is None
            )
            continue
        entry = by_position[position]
        assert (entry.fingerprint, entry.label) == (fingerprint, label)
        if result != "unchanged":
            assert entry.raw == raw
            expected = {"learned": False, "relabelled": True, "forgotten": True}[result]
            assert (entry.undo_label is not None) is expected

    replayed: dict[str, Label | None] = {}
    for entry in entries:
        assert entry.undo_label == replayed.get(entry.fingerprint)
        replayed[entry.fingerprint] = entry.label
    for fingerprint, label in replayed.items():
        assert log.label_of(fingerprint) == label
    current = [label for label in replayed.values() if label is not None]
    assert log.counts() == {"ham": current.count("ham"), "spam": current.count("spam")}
    return entries


@pytest.mark.slow
def test_concurrent_processes_keep_a_gap_free_ordered_log(backend: Backend) -> None:
    seen: list[LogEntry] = []

    def poll(reader: TrainingLog) -> None:
        last = seen[-1].position if seen else 0
        batch = reader.read(after=last, limit=7)
        assert [e.position for e in batch] == list(range(last + 1, last + 1 + len(batch)))
        seen.extend(batch)

    acks, reader = _run_workers(backend, _mixed_writer, poll)
    try:
        assert len(acks) == WORKERS * APPENDS_PER_WORKER
        while True:  # drain what committed after the last poll
            before = len(seen)
            poll(reader)
            if len(seen) == before:
                break
        entries = _check_log_against_acks(reader, acks)
        assert seen == entries
        assert {a[3] for a in acks} >= {"learned", "unchanged", "relabelled", "forgotten"}
    finally:
        reader.close()


@pytest.mark.slow
def test_same_fingerprint_same_label_learned_once(backend: Backend) -> None:
    acks, log = _run_workers(backend, _same_label_writer)
    try:
        for n in range(25):
            results = sorted((a[3], a[4]) for a in acks if a[0] == fp(n))
            learned = [r for r in results if r[0] == "learned"]
            assert len(learned) == 1
            assert results == sorted(learned + [("unchanged", learned[0][1])] * (WORKERS - 1))
        assert log.head() == 25
        _check_log_against_acks(log, acks)
    finally:
        log.close()


@pytest.mark.slow
def test_processes_creating_the_log_together(backend: Backend) -> None:
    acks, log = _run_workers(backend, _cold_start_writer)
    try:
        assert sorted(a[4] for a in acks) == list(range(1, WORKERS + 1))
        _check_log_against_acks(log, acks)
    finally:
        log.close()


def test_threads_share_one_log(log: TrainingLog) -> None:
    acks: list[Ack] = []
    guard = threading.Lock()

    def work(worker: int) -> None:
        for i in range(20):
            fingerprint = fp(i % 10 + 1000 * (worker % 2))
            label: Label = "spam" if (i + worker) % 3 else "ham"
            raw = b"t%d-%d" % (worker, i)
            result = log.append(fingerprint, label, ex(raw), source=Source.ADMIN, actor="t")
            with guard:
                acks.append((fingerprint, label, raw, result.result, result.position))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(acks) == 120
    _check_log_against_acks(log, acks)


# --- opening -----------------------------------------------------------------------------


def test_default_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    for url in (None, ""):
        log = open_training_log(url, data_dir)
        log.append(fp(1), "spam", ex(b"x"), source=Source.ADMIN, actor="a")
        log.close()
    db = data_dir / "mailsift.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    explicit = open_training_log(f"sqlite:///{db}", tmp_path / "unused")
    try:
        assert explicit.head() == 1
    finally:
        explicit.close()
    assert not (tmp_path / "unused").exists()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    open_training_log(None, tmp_path).close()
    with sqlite3.connect(tmp_path / "mailsift.db") as conn:
        conn.execute("UPDATE trainlog_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(TrainingLogError, match="schema version 99"):
        open_training_log(None, tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://mailsift:hunter2secret@db/mail",
        "this is not a url hunter2secret",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_bad_url_is_a_clear_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(TrainingLogError) as caught:
        open_training_log(url, tmp_path)
    assert "hunter2secret" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("password", ["Sup3rS3cret-pw", "p@ss/w:rd%20Secret"])
def test_unreachable_postgres_hides_password(password: str, tmp_path: Path) -> None:
    url = f"postgresql://mailsift:{quote(password, safe='')}@127.0.0.1:1/mail"
    with pytest.raises(TrainingLogError, match=r"127\.0\.0\.1") as caught:
        open_training_log(url, tmp_path)
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for exc in chain:
        for text in (str(exc), repr(exc)):
            assert password not in text
            assert quote(password, safe="") not in text


# --- sources, personal reports and consensus ---------------------------------------------


def _report(
    log: TrainingLog, user: str, n: int, label: Label, *, needed: int = 3, per_day: int = 20
) -> ReportResult:
    return log.report(
        user,
        fp(n),
        label,
        ex(b"m%d" % n, "s@spam.test"),
        needed=needed,
        per_user_per_day=per_day,
    )


def _at(result: ReportResult) -> tuple[str, int]:
    """A report's answer as the API gives it: result and log position."""
    return result.personal.result, max(result.personal.position, result.shared.position)


def test_an_answer_that_changes_nothing_dates_from_the_entry_that_made_it_so(
    log: TrainingLog,
) -> None:
    assert _at(_report(log, "bob@x", 1, "spam")) == ("learned", 1)
    assert _at(_report(log, "bob@x", 1, "spam")) == ("unchanged", 1)
    _report(log, "carol@x", 1, "spam")  # 2
    third = _report(log, "dave@x", 1, "spam")  # 3, and the consensus example at 4
    assert (third.shared.result, third.shared.position) == ("learned", 4)
    # Bob's report stands since 1, the shared label it now also confirms since 4.
    again = _report(log, "bob@x", 1, "spam")
    assert (again.shared.result, _at(again)) == ("unchanged", ("unchanged", 4))
    withdrawn = log.withdraw("dave@x", fp(1), needed=3)  # 5, consensus withdrawn at 6
    assert (_at(withdrawn), withdrawn.shared.position) == (("forgotten", 6), 6)
    assert _at(log.withdraw("dave@x", fp(1), needed=3)) == ("unchanged", 6)
    assert log.forget(fp(1), actor="a") == AppendResult("forgotten", 8)  # bob's, carol's
    assert log.forget(fp(1), actor="a") == AppendResult("unchanged", 8)
    assert _at(log.withdraw("erin@x", fp(1), needed=3)) == ("unchanged", 6)
    assert _at(log.withdraw("erin@x", fp(2), needed=3)) == ("unchanged", 0)
    # An administrator's label, and a confirmation of what it already holds.
    admin = Source.ADMIN
    assert log.append(fp(3), "spam", ex(b"a"), source=admin, actor="a").position == 9
    _report(log, "bob@x", 3, "spam")  # 10
    assert log.append(fp(3), "spam", ex(b"a"), source=admin, actor="a").position == 9
    assert log.confirm(fp(3), "spam", actor="a") == AppendResult("unchanged", 9, admin)
    assert log.append(fp(3), "ham", ex(b"a"), source=Source.OUTBOUND, actor="o").position == 9
    assert _at(_report(log, "bob@x", 3, "spam")) == ("unchanged", 10)


def test_a_lower_source_never_relabels_a_higher_one(log: TrainingLog) -> None:
    log.append(fp(1), "spam", ex(b"a"), source=Source.ADMIN, actor="a")
    kept = log.append(fp(1), "ham", ex(b"a"), source=Source.OUTBOUND, actor="bob@x")
    assert kept == AppendResult("kept", 1, Source.ADMIN)
    # Users in consensus do not outrank an administrator either.
    for user in ("u1@x", "u2@x", "u3@x"):
        result = _report(log, user, 1, "ham")
    assert result.shared.result == "kept"
    assert log.holder_of(fp(1)) == ("spam", Source.ADMIN)
    # Outbound only ever adds: it does not relabel users' consensus either.
    for user in ("u1@x", "u2@x", "u3@x"):
        _report(log, user, 2, "spam")
    assert log.holder_of(fp(2)) == ("spam", Source.USER)
    assert log.append(fp(2), "ham", ex(b"m2"), source=Source.OUTBOUND, actor="o").result == "kept"
    # An administrator outranks everyone, and takes over a label they agree with.
    assert (
        log.append(fp(2), "spam", ex(b"m2"), source=Source.ADMIN, actor="a").result == "unchanged"
    )
    assert log.holder_of(fp(2)) == ("spam", Source.ADMIN)


def test_one_report_is_personal_until_enough_users_agree(log: TrainingLog) -> None:
    first = _report(log, "bob@x", 1, "spam")
    assert first.personal.result == "learned"
    assert first.shared == SharedOutcome("pending", 1, 3, True, 0)
    assert log.label_of(fp(1)) is None
    again = _report(log, "bob@x", 1, "spam")  # the same user twice is one voice
    assert again.personal.result == "unchanged"
    assert again.shared == SharedOutcome("pending", 1, 3, True, 0)
    assert _report(log, "carol@x", 1, "spam").shared.result == "pending"
    third = _report(log, "dave@x", 1, "spam")
    assert third.shared.result == "learned"
    assert log.holder_of(fp(1)) == ("spam", Source.USER)
    shared = [e for e in log.read(0) if e.layer == ""]
    assert [(e.label, e.source, e.raw) for e in shared] == [("spam", "user", b"m1")]
    personal = [e.layer for e in log.read(0) if e.layer]
    assert personal == ["bob@x", "carol@x", "dave@x"]
    # Users who change their mind withdraw the consensus example.
    assert log.report_of("dave@x", fp(1)) == "spam"
    withdrawn = log.withdraw("dave@x", fp(1), needed=3)
    assert withdrawn.personal.result == "forgotten"
    assert withdrawn.shared.result == "withdrawn"
    assert log.label_of(fp(1)) is None
    assert log.report_of("dave@x", fp(1)) is None
    assert log.withdraw("dave@x", fp(1), needed=3).personal.result == "unchanged"


def test_a_users_allowance_bounds_what_counts_towards_consensus(log: TrainingLog) -> None:
    now = time.time()
    for n in range(1, 4):
        result = log.report("bob@x", fp(n), "spam", ex(b"x"), needed=1, per_user_per_day=2, now=now)
        assert result.personal.result == "learned"  # every report acts for bob himself
    assert [log.label_of(fp(n)) for n in range(1, 4)] == ["spam", "spam", None]
    # The next day the allowance is back.
    later = log.report(
        "bob@x", fp(4), "spam", ex(b"x"), needed=1, per_user_per_day=2, now=now + DAY
    )
    assert later.shared.counted and later.shared.result == "learned"


def test_admin_forget_takes_back_the_example_and_every_report(log: TrainingLog) -> None:
    for user in ("u1@x", "u2@x", "u3@x"):
        _report(log, user, 1, "spam")
    assert log.forget(fp(1), actor="admin").result == "forgotten"
    assert log.label_of(fp(1)) is None
    assert [log.report_of(u, fp(1)) for u in ("u1@x", "u2@x", "u3@x")] == [None] * 3
    undone = [(e.layer, e.undo_label, e.label) for e in log.read(0)][-4:]
    assert undone == [("", "spam", None)] + [(u, "spam", None) for u in ("u1@x", "u2@x", "u3@x")]


def test_admin_confirms_a_report_with_the_reported_bytes(log: TrainingLog) -> None:
    assert log.confirm(fp(1), "spam", actor="admin") is None
    _report(log, "bob@x", 1, "spam")
    confirmed = log.confirm(fp(1), "spam", actor="admin")
    assert confirmed is not None and confirmed.result == "learned"
    assert log.holder_of(fp(1)) == ("spam", Source.ADMIN)
    assert log.read(confirmed.position - 1)[0].raw == b"m1"


def test_entries_metadata_is_read_without_bytes(log: TrainingLog) -> None:
    log.append(fp(1), "spam", ex(b"shared"), source=Source.ADMIN, actor="a")
    _report(log, "bob@x", 2, "spam")
    _report(log, "bob@x", 2, "ham")
    entries = log.read_meta(0, log.head())
    assert [(e.position, e.layer, e.sender, e.undo_label, e.label) for e in entries] == [
        (1, "", None, None, "spam"),
        (2, "bob@x", "s@spam.test", None, "spam"),
        (3, "bob@x", "s@spam.test", "spam", "ham"),
    ]
    assert all(e.raw == b"" for e in entries)
    assert log.read_meta(0, 2)[-1].position == 2
    counts = log.label_counts_since(0, source=Source.USER, personal=True)
    assert counts == {"ham": 1, "spam": 1}


def test_a_version_1_log_is_upgraded_in_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "mailsift.db")
    db.executescript(
        """
        CREATE TABLE trainlog_entries (position INTEGER PRIMARY KEY, fingerprint VARCHAR(128)
          NOT NULL, label VARCHAR(4), undo_label VARCHAR(4), undo_position INTEGER,
          raw BLOB NOT NULL, source VARCHAR(32) NOT NULL, actor VARCHAR(320) NOT NULL,
          created_at FLOAT NOT NULL);
        CREATE TABLE trainlog_labels (fingerprint VARCHAR(128) PRIMARY KEY, label VARCHAR(4)
          NOT NULL, position INTEGER NOT NULL);
        CREATE TABLE trainlog_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256) NOT NULL);
        INSERT INTO trainlog_meta VALUES ('schema_version', '1');
        """
    )
    packed = zlib.compress(b"old")
    db.executemany(
        "INSERT INTO trainlog_entries VALUES (?, ?, ?, NULL, NULL, ?, ?, 'a', 0)",
        [(1, fp(1), "spam", packed, "train"), (2, fp(2), "ham", packed, "feedback")],
    )
    db.executemany(
        "INSERT INTO trainlog_labels VALUES (?, ?, ?)", [(fp(1), "spam", 1), (fp(2), "ham", 2)]
    )
    db.commit()
    db.close()
    log = open_training_log(None, data)
    try:
        assert [(e.source, e.layer, e.raw) for e in log.read(0)] == [
            ("admin", "", b"old"),
            ("user", "", b"old"),
        ]
        assert log.holder_of(fp(1)) == ("spam", Source.ADMIN)
        assert log.holder_of(fp(2)) == ("ham", Source.USER)
        assert _report(log, "bob@x", 3, "spam").personal.position == 3
        assert log.forget(fp(1), actor="a") == AppendResult("forgotten", 4)
        assert log.forget(fp(1), actor="a") == AppendResult("unchanged", 4)
    finally:
        log.close()
    # An older log gets the index that finds a message's newest entry.
    with sqlite3.connect(data / "mailsift.db") as db:
        indexes = {row[1] for row in db.execute("PRAGMA index_list(trainlog_entries)")}
    assert "trainlog_entries_fingerprint" in indexes


def test_a_version_2_log_gains_the_report_channel(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = open_training_log(None, data)
    log.report("carol@x", fp(1), "spam", ex(b"r"), needed=3, per_user_per_day=20, via="imap")
    log.close()
    with sqlite3.connect(data / "mailsift.db") as db:  # back to how version 2 left it
        db.execute("ALTER TABLE trainlog_entries DROP COLUMN via")
        db.execute("UPDATE trainlog_meta SET value = '2' WHERE key = 'schema_version'")
    log = open_training_log(None, data)
    try:
        log.report("erin@x", fp(2), "spam", ex(b"r"), needed=3, per_user_per_day=20, via="imap")
        with log.engine.connect() as conn:
            vias = conn.execute(
                sqlalchemy.text("SELECT via FROM trainlog_entries ORDER BY position")
            )
            assert [v for (v,) in vias] == [None, "imap"]  # the older report has no channel
    finally:
        log.close()
    with sqlite3.connect(data / "mailsift.db") as db:
        (version,) = db.execute("SELECT value FROM trainlog_meta WHERE key = 'schema_version'")
    assert version == (SCHEMA_VERSION,) == ("3",)
