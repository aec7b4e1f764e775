"""The training log's row-level steps, each inside a caller's write transaction.

:class:`~mailsift.learning.trainlog.TrainingLog` composes them into appends, reports,
forgets and confirmations; every decision (precedence, consensus) is taken here, under
the log's write lock, so every replica replays the same outcome.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, func, insert, select, update

from mailsift.learning import log_schema as schema
from mailsift.learning.consensus import Tally, agreed_label
from mailsift.learning.records import (
    NOTHING,
    AppendResult,
    Label,
    SharedOutcome,
    SharedResult,
    Stored,
    TrainingLogError,
)
from mailsift.learning.sources import SHARED, Source, Via, outranks

DAY = 86_400.0


def insert_entry(
    conn: Connection,
    fingerprint: str,
    label: Label | None,
    undo_label: Label | None,
    undo_position: int | None,
    stored: Stored,
    source: Source,
    actor: str,
    *,
    layer: str = SHARED,
    via: Via | None = None,
) -> int:
    # Numbered under the write lock, so head + 1 is gap-free and commits in order.
    position = head(conn) + 1
    conn.execute(
        insert(schema.entries).values(
            position=position,
            fingerprint=fingerprint,
            label=label,
            undo_label=undo_label,
            undo_position=undo_position,
            raw=stored.raw,
            source=source.value,
            actor=actor[: schema.MAX_ACTOR],
            created_at=time.time(),
            layer=layer,
            sender=stored.sender,
            features=stored.features,
            features_version=stored.features_version,
            via=via,
        )
    )
    return position


def first_at_or_after(conn: Connection, since: float) -> int:
    """The first position created at or after ``since`` (head + 1 if none): positions and
    creation times grow together (appends run one at a time), so a bisection on the
    primary key finds it without reading the log."""
    lo, hi = 1, head(conn) + 1  # the position lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        at = conn.execute(
            select(schema.entries.c.created_at).where(schema.entries.c.position == mid)
        ).scalar()
        if at is not None and at >= since:
            hi = mid
        else:
            lo = mid + 1
    return lo


def set_meta(conn: Connection, key: str, value: str) -> None:
    if (
        conn.execute(
            update(schema.meta).where(schema.meta.c.key == key).values(value=value)
        ).rowcount
        == 0
    ):
        conn.execute(insert(schema.meta).values(key=key, value=value))


def head(conn: Connection) -> int:
    return int(
        conn.execute(select(func.coalesce(func.max(schema.entries.c.position), 0))).scalar_one()
    )


def newest_entry(conn: Connection, fingerprint: str, layer: str | None = None) -> int:
    """The position of the newest entry about ``fingerprint`` on ``layer`` (None: on any
    layer); 0 when there is none. The state an answer that changes nothing confirms
    became true there (an index on fingerprint and layer finds it)."""
    e = schema.entries.c
    query = select(func.coalesce(func.max(e.position), 0)).where(e.fingerprint == fingerprint)
    if layer is not None:
        query = query.where(e.layer == layer)
    return int(conn.execute(query).scalar_one())


def shared_position(
    conn: Connection, fingerprint: str, held: tuple[Label, int, Source] | None
) -> int:
    """The newest shared entry about ``fingerprint``: the one that set the label it
    ``held`` (every shared entry sets or removes that row), else the one that took it
    back, else 0."""
    return held[1] if held is not None else newest_entry(conn, fingerprint, SHARED)


def shared(conn: Connection, fingerprint: str) -> tuple[Label, int, Source] | None:
    query = select(schema.labels.c.label, schema.labels.c.position, schema.labels.c.source).where(
        schema.labels.c.fingerprint == fingerprint
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    return held_label(row.label), int(row.position), as_source(row.source)


def append(
    conn: Connection,
    fingerprint: str,
    label: Label,
    stored: Stored,
    source: Source,
    actor: str,
) -> AppendResult:
    held = shared(conn, fingerprint)
    if held is not None:
        held_label, held_position, holder = held
        if held_label == label:
            if holder is not source and outranks(source, holder):
                set_holder(conn, fingerprint, source)
            return AppendResult("unchanged", held_position, holder)
        if source is Source.OUTBOUND or not outranks(source, holder):
            return AppendResult("kept", held_position, holder)
    return set_shared(conn, fingerprint, label, stored, source, actor, held)


def set_holder(conn: Connection, fingerprint: str, source: Source) -> None:
    conn.execute(
        update(schema.labels)
        .where(schema.labels.c.fingerprint == fingerprint)
        .values(source=source.value)
    )


def set_shared(
    conn: Connection,
    fingerprint: str,
    label: Label,
    stored: Stored,
    source: Source,
    actor: str,
    held: tuple[Label, int, Source] | None,
) -> AppendResult:
    undo, undo_position = (None, None) if held is None else (held[0], held[1])
    position = insert_entry(conn, fingerprint, label, undo, undo_position, stored, source, actor)
    values = {"label": label, "position": position, "source": source.value}
    if held is None:
        conn.execute(insert(schema.labels).values(fingerprint=fingerprint, **values))
        return AppendResult("learned", position, source)
    conn.execute(
        update(schema.labels).where(schema.labels.c.fingerprint == fingerprint).values(**values)
    )
    return AppendResult("relabelled", position, source)


def undo_shared(
    conn: Connection,
    fingerprint: str,
    held: tuple[Label, int, Source],
    source: Source,
    actor: str,
) -> int:
    position = insert_entry(conn, fingerprint, None, held[0], held[1], NOTHING, source, actor)
    conn.execute(delete(schema.labels).where(schema.labels.c.fingerprint == fingerprint))
    return position


def stored_at(conn: Connection, position: int) -> Stored:
    """The example an entry holds, to teach the shared layer what a user reported."""
    e = schema.entries.c
    row = conn.execute(
        select(e.raw, e.features, e.features_version, e.sender).where(e.position == position)
    ).one()
    return Stored(row.raw, row.features, row.features_version, row.sender)


def report_of(conn: Connection, user: str, fingerprint: str) -> tuple[Label, int, bool] | None:
    """A user's current report of a message: (label, position, counts towards consensus)."""
    query = select(
        schema.reports.c.label, schema.reports.c.position, schema.reports.c.counted
    ).where(schema.reports.c.user == user, schema.reports.c.fingerprint == fingerprint)
    row = conn.execute(query).first()
    if row is None:
        return None
    return held_label(row.label), int(row.position), bool(row.counted)


def within_allowance(
    conn: Connection, user: str, fingerprint: str, per_day: int, now: float
) -> bool:
    """Whether one more of ``user``'s reports may count towards consensus today."""
    if per_day <= 0:
        return False
    used = conn.execute(
        select(func.count())
        .select_from(schema.reports)
        .where(
            schema.reports.c.user == user,
            schema.reports.c.fingerprint != fingerprint,
            schema.reports.c.counted == 1,
            schema.reports.c.created_at > now - DAY,
        )
    ).scalar_one()
    return int(used) < per_day


def tally(conn: Connection, fingerprint: str) -> Tally:
    query = (
        select(schema.reports.c.label, func.count())
        .where(schema.reports.c.fingerprint == fingerprint, schema.reports.c.counted == 1)
        .group_by(schema.reports.c.label)
    )
    found = {str(label): int(n) for label, n in conn.execute(query).all()}
    return Tally(spam=found.get("spam", 0), ham=found.get("ham", 0))


def settle(
    conn: Connection, fingerprint: str, reported: Label, needed: int, counted: bool
) -> SharedOutcome:
    """Bring the shared label in line with what users agree on, unless an admin's holds."""
    counts = tally(conn, fingerprint)
    agreed = agreed_label(counts, needed)
    held = shared(conn, fingerprint)

    def outcome(result: SharedResult, position: int | None = None) -> SharedOutcome:
        # Nothing written: the shared state the answer reports dates from its newest entry.
        at = shared_position(conn, fingerprint, held) if position is None else position
        return SharedOutcome(result, counts.of(reported), needed, counted, at)

    def standing() -> SharedOutcome:
        if held is None:
            return outcome("pending")
        return outcome("unchanged" if held[0] == reported else "kept")

    if held is not None and held[2] is Source.ADMIN:
        return standing()
    if agreed is None:
        if held is not None and held[2] is Source.USER:
            withdrawn = undo_shared(conn, fingerprint, held, Source.USER, "consensus withdrawn")
            return outcome("withdrawn", withdrawn)
        return outcome("pending") if held is None or held[0] != reported else standing()
    if held is not None and held[0] == agreed:
        if held[2] is Source.OUTBOUND:
            set_holder(conn, fingerprint, Source.USER)
        return standing()
    newest = conn.execute(
        select(func.max(schema.reports.c.position)).where(
            schema.reports.c.fingerprint == fingerprint,
            schema.reports.c.label == agreed,
            schema.reports.c.counted == 1,
        )
    ).scalar_one()
    actor = f"consensus of {counts.of(agreed)} users"
    stored = stored_at(conn, newest)
    done = set_shared(conn, fingerprint, agreed, stored, Source.USER, actor, held)
    return outcome("learned" if held is None else "relabelled", done.position)


def as_source(value: str) -> Source:
    try:
        return Source(value)
    except ValueError:
        raise TrainingLogError(f"training log holds an unknown source {value!r}") from None


def as_label(value: str | None) -> Label | None:
    if value is None:
        return None
    if value == "ham":
        return "ham"
    if value == "spam":
        return "spam"
    raise TrainingLogError(f"training log holds an unknown label {value!r}")


def held_label(value: str) -> Label:
    """A label from a column that always holds one (NOT NULL)."""
    label = as_label(value)
    if label is None:
        raise TrainingLogError("training log holds an empty label")
    return label
