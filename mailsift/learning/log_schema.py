"""The training log's tables, and the upgrade from older versions of them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    text,
    update,
)

from mailsift.learning.records import MAX_ADDRESS, MAX_VERSION
from mailsift.learning.sources import Source

__all__ = [
    "SCHEMA_VERSION",
    "entries",
    "labels",
    "meta",
    "metadata",
    "reports",
    "upgrade_from_1",
    "upgrade_from_2",
]

SCHEMA_VERSION = "3"
MAX_SOURCE = 32
MAX_ACTOR = 320
MAX_VIA = 8

metadata = MetaData()
position_type = BigInteger().with_variant(Integer, "sqlite")  # SQLite: alias the rowid

entries = Table(
    "trainlog_entries",
    metadata,
    Column("position", position_type, primary_key=True, autoincrement=False),
    Column("fingerprint", String(128), nullable=False),
    Column("label", String(4)),
    Column("undo_label", String(4)),
    Column("undo_position", position_type),  # the entry whose example undo_label takes back
    Column("raw", LargeBinary, nullable=False),
    Column("source", String(MAX_SOURCE), nullable=False),
    Column("actor", String(MAX_ACTOR), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("layer", String(MAX_ADDRESS), nullable=False, server_default=""),
    Column("sender", String(MAX_ADDRESS)),
    Column("features", LargeBinary),  # None: an undo, or an entry from schema version 1
    Column("features_version", String(MAX_VERSION)),
    # The channel of a user's report (api, imap); None for every other entry.
    Column("via", String(MAX_VIA)),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_entries_label"),
    CheckConstraint("undo_label IN ('ham', 'spam')", name="trainlog_entries_undo_label"),
    CheckConstraint("label IS NOT NULL OR undo_label IS NOT NULL", name="trainlog_entries_op"),
    # The newest entry about a message, for an answer that changes nothing (a repeated
    # forget or withdrawal): the position at which what it confirms became true.
    Index("trainlog_entries_fingerprint", "fingerprint", "layer"),
)

# The label each fingerprint holds now, and the entry that gave it: lets an append
# decide learned / unchanged / relabelled without scanning the log.
labels = Table(
    "trainlog_labels",
    metadata,
    Column("fingerprint", String(128), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("position", position_type, nullable=False),
    Column("source", String(MAX_SOURCE), nullable=False, server_default=Source.ADMIN.value),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_labels_label"),
)

# Each user's current report per message (their personal layer's labels), and whether it
# counts towards consensus: the consensus tally is a count over this table.
reports = Table(
    "trainlog_reports",
    metadata,
    Column("user", String(MAX_ADDRESS), primary_key=True),
    Column("fingerprint", String(128), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("position", position_type, nullable=False),
    Column("counted", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    CheckConstraint("label IN ('ham', 'spam')", name="trainlog_reports_label"),
    Index("trainlog_reports_fingerprint", "fingerprint", "label"),
)

meta = Table(
    "trainlog_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


def upgrade_from_1(conn: Connection) -> None:
    """Version 1 had one layer and free-form sources: every entry is shared; ``train``
    was an administrator, ``feedback`` a user whose report the shared model took. Its
    entries have no stored features: learners compute them from the raw bytes."""
    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    for statement in (
        "ALTER TABLE trainlog_entries ADD COLUMN layer VARCHAR(320) NOT NULL DEFAULT ''",
        "ALTER TABLE trainlog_entries ADD COLUMN sender VARCHAR(320)",
        f"ALTER TABLE trainlog_entries ADD COLUMN features {blob}",
        "ALTER TABLE trainlog_entries ADD COLUMN features_version VARCHAR(32)",
        "ALTER TABLE trainlog_labels ADD COLUMN source VARCHAR(32) NOT NULL DEFAULT 'admin'",
        "UPDATE trainlog_entries SET source = CASE source WHEN 'outbound' THEN 'outbound' "
        "WHEN 'feedback' THEN 'user' ELSE 'admin' END",
        "UPDATE trainlog_labels SET source = (SELECT e.source FROM trainlog_entries e "
        "WHERE e.position = trainlog_labels.position)",
    ):
        conn.execute(text(statement))
    upgrade_from_2(conn)


def upgrade_from_2(conn: Connection) -> None:
    """Version 2 did not record a report's channel: its reports stay without one."""
    conn.execute(text(f"ALTER TABLE trainlog_entries ADD COLUMN via VARCHAR({MAX_VIA})"))
    conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=SCHEMA_VERSION))
