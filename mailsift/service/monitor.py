"""The health watch: conditions that need an administrator, alerted once per incident.

:func:`assess` is pure: facts in, incidents out. :class:`HealthWatch` gathers the facts
(in a thread: database reads, ``statvfs``), raises every active incident through the
:class:`~mailsift.service.alerts.Alerter` and resolves the ones that cleared. The
Alerter's incident table is shared, so every worker may watch: whichever notices first
fires, the others' raises are no-ops, and a raise each round keeps an incident that
lasts for days from counting as quiet and firing again.

Incident keys say who shares the condition, so that all who raise one see the same
facts: a silent gateway and the auth-failure rate (``all``) come from the shared
database; disk space, the model's age and the snapshot from the host's data dir (with
PostgreSQL, replicas keep their own snapshots); the log lag from the worker itself.

Gateway calls are noted in memory per message (:func:`note_gateway`, free on the hot
path) and written to the small ``gateway_seen`` table at most every few seconds per
worker, so that every worker and replica sees every gateway.

Suspected compromised accounts alert from the account flow, not from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import smtplib
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    case,
    column,
    delete,
    func,
    select,
    table,
)
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool

from mailsift.service import metrics
from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.metrics import ModelFacts, ModelHost, read_model_facts
from mailsift.service.settings import Settings

if TYPE_CHECKING:
    from mailsift.service.alerts import Alerter

__all__ = [
    "ALERT_AUTH_FAILURE_RATE",
    "ALERT_DISK_LOW",
    "ALERT_GATEWAY_SILENT",
    "ALERT_LOG_BEHIND",
    "ALERT_MODEL_STALE",
    "ALERT_SNAPSHOT_STALE",
    "KINDS",
    "Facts",
    "GatewaySeen",
    "HealthWatch",
    "Incident",
    "MonitorHost",
    "assess",
    "auth_failures_per_minute",
    "judged",
    "mail_alert",
    "note_gateway",
    "send_alert_mail",
    "watch",
]

log = logging.getLogger("mailsift.monitor")

ALERT_GATEWAY_SILENT = "gateway_silent"
ALERT_DISK_LOW = "disk_low"
ALERT_MODEL_STALE = "model_stale"
ALERT_SNAPSHOT_STALE = "snapshot_stale"
ALERT_LOG_BEHIND = "log_behind"
# Not the account flow's per-user ``auth_failure_burst``: this one counts all users.
ALERT_AUTH_FAILURE_RATE = "auth_failure_rate"
KINDS = (
    ALERT_GATEWAY_SILENT,
    ALERT_DISK_LOW,
    ALERT_MODEL_STALE,
    ALERT_SNAPSHOT_STALE,
    ALERT_LOG_BEHIND,
    ALERT_AUTH_FAILURE_RATE,
)
AUTH_KEY = "all"
MiB = 1024 * 1024
# An incident clears only when its value is this far back on the good side …
DISK_CLEAR_FACTOR = 1.05
LAG_CLEAR_FACTOR = 0.5
# … and has been clear for this many rounds in a row: long enough for every worker to
# share the view (a snapshot another worker wrote is picked up within seconds), so that
# no worker raises again what another has just resolved.
CLEAR_ROUNDS = 2


# -- assessing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incident:
    kind: str
    key: str
    summary: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Facts:
    """One round's view of the installation; None = could not be measured this round
    (nothing is judged on it: an unreadable database is not a silent gateway)."""

    host: str
    worker: str
    """``host:pid``: this worker, for the incidents only it can see (its log lag)."""
    watching_since: float
    """A configured gateway never seen counts as silent from here."""
    gateway_last_seen: Mapping[str, float] | None
    data_dir: str
    disk_free_bytes: int | None
    model: ModelFacts
    auth_failures_per_minute: int | None


def assess(facts: Facts, settings: Settings, now: float) -> list[Incident]:
    """Every incident active in ``facts``, in a stable order."""
    found: list[Incident] = []
    if facts.gateway_last_seen is not None:
        silence = settings.gateway_silence_minutes * 60
        for gateway in sorted(settings.gateway_set):
            seen = facts.gateway_last_seen.get(gateway)
            quiet = now - (facts.watching_since if seen is None else seen)
            if quiet > silence:
                found.append(
                    Incident(
                        ALERT_GATEWAY_SILENT,
                        gateway,
                        f"gateway {gateway} has not called for {quiet / 60:.0f} minutes; "
                        "mail it accepts bypasses the filter",
                        {
                            "gateway": gateway,
                            "last_seen": _iso(seen),
                            "silent_minutes": round(quiet / 60, 1),
                        },
                    )
                )
    free = facts.disk_free_bytes
    if free is not None and free < settings.disk_min_free_mb * MiB:
        found.append(
            Incident(
                ALERT_DISK_LOW,
                f"{facts.host}:{facts.data_dir}",
                f"{free // MiB} MB free in the data dir on {facts.host} "
                f"(minimum {settings.disk_min_free_mb} MB)",
                {
                    "host": facts.host,
                    "data_dir": facts.data_dir,
                    "free_mb": free // MiB,
                    "min_free_mb": settings.disk_min_free_mb,
                },
            )
        )
    model = facts.model
    learned = model.last_learned_at
    known = model.head is not None  # else the newest entry is unknown, not absent
    if known and learned is not None and now - learned > settings.model_max_age_hours * 3600:
        hours = (now - learned) / 3600
        found.append(
            Incident(
                ALERT_MODEL_STALE,
                facts.host,
                f"the model on {facts.host} has learned nothing for {hours:.0f} hours",
                {"host": facts.host, "last_learned": _iso(learned), "hours": round(hours, 1)},
            )
        )
    behind = model.unsnapshotted_since
    if behind is not None and now - behind > settings.snapshot_max_age_hours * 3600:
        hours = (now - behind) / 3600
        found.append(
            Incident(
                ALERT_SNAPSHOT_STALE,
                facts.host,
                f"log entries from {hours:.0f} hours ago are in no snapshot on {facts.host}; "
                "a restart replays them all",
                {
                    "host": facts.host,
                    "snapshot_position": model.snapshot_position,
                    "snapshot_created": _iso(model.snapshot_created_at),
                    "log_head": model.head,
                    "hours": round(hours, 1),
                },
            )
        )
    lag = model.lag
    if lag is not None and lag > settings.log_lag_alert_entries:
        found.append(
            Incident(
                ALERT_LOG_BEHIND,
                facts.worker,
                f"worker {facts.worker} is {lag} training-log entries behind",
                {
                    "worker": facts.worker,
                    "lag": lag,
                    "position": model.position,
                    "log_head": model.head,
                },
            )
        )
    rate = facts.auth_failures_per_minute
    if rate is not None and rate >= settings.auth_failure_burst_per_minute:
        found.append(
            Incident(
                ALERT_AUTH_FAILURE_RATE,
                AUTH_KEY,
                f"{rate} authentication failures in a minute, all users together",
                {"per_minute": rate, "threshold": settings.auth_failure_burst_per_minute},
            )
        )
    return found


def judged(facts: Facts, settings: Settings) -> set[tuple[str, str]]:
    """The incidents ``facts`` decide either way: those absent from :func:`assess` are
    clear. A value in the margin just past a threshold (a disk hovering at its minimum)
    decides neither, so that it cannot raise and clear an incident on alternate rounds.
    """
    keys: set[tuple[str, str]] = set()
    if facts.gateway_last_seen is not None:
        keys.update((ALERT_GATEWAY_SILENT, g) for g in settings.gateway_set)
    free, minimum = facts.disk_free_bytes, settings.disk_min_free_mb * MiB
    if free is not None and (free < minimum or free >= minimum * DISK_CLEAR_FACTOR):
        keys.add((ALERT_DISK_LOW, f"{facts.host}:{facts.data_dir}"))
    if facts.model.head is not None:
        # (A model that never learned anything is not stale: it has not started.)
        keys.add((ALERT_MODEL_STALE, facts.host))
        keys.add((ALERT_SNAPSHOT_STALE, facts.host))
        lag, limit = facts.model.lag or 0, settings.log_lag_alert_entries
        if lag > limit or lag <= limit * LAG_CLEAR_FACTOR:
            keys.add((ALERT_LOG_BEHIND, facts.worker))
    if facts.auth_failures_per_minute is not None:
        keys.add((ALERT_AUTH_FAILURE_RATE, AUTH_KEY))
    return keys


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


# -- gateway calls ----------------------------------------------------------------------

MAX_GATEWAY = 255
GATEWAY_RETENTION_SECONDS = 30 * 86400.0

_metadata = MetaData()
_gateways = Table(
    "gateway_seen",
    _metadata,
    Column("gateway", String(MAX_GATEWAY), primary_key=True),
    Column("last_seen", Float, nullable=False),
)


class GatewaySeen:
    """When each gateway last called, shared by every worker and replica.

    :meth:`note` costs a dict store per message; the calls reach the table in batches,
    at most every ``flush_seconds`` per worker. Names are whatever gateways send, so
    at most ``max_pending`` distinct ones are held between flushes and rows unseen for
    30 days are dropped.
    """

    def __init__(
        self, engine: Engine, *, flush_seconds: float = 5.0, max_pending: int = 256
    ) -> None:
        self.engine = engine
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_flush = 0.0
        self._flushing = False
        self._tasks: set[asyncio.Future[None]] = set()
        with write_transaction(engine, lock_key=lock_key_for("gateway_seen:schema")) as conn:
            _metadata.create_all(conn)

    def note(self, gateway: str, now: float) -> bool:
        """Remember one call; True when a flush is due (the caller starts it)."""
        name = gateway.strip()[:MAX_GATEWAY]
        if not name:
            return False
        with self._lock:
            if name in self._pending or len(self._pending) < self.max_pending:
                self._pending[name] = now
            if self._flushing or now < self._next_flush:
                return False
            self._flushing = True
            self._next_flush = now + self.flush_seconds
            return True

    def flush(self) -> None:
        """Write the calls noted since the last flush (blocking)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        try:
            if batch:
                self._write(batch)
        except BaseException:
            with self._lock:  # keep them for the next flush
                for name, at in batch.items():
                    self._pending[name] = max(at, self._pending.get(name, at))
            raise
        finally:
            with self._lock:
                self._flushing = False

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # the next one retries; a message must never fail
            log.error("gateway calls not recorded: %s", type(exc).__name__)

    def _write(self, batch: dict[str, float]) -> None:
        c = _gateways.c
        with write_transaction(self.engine, lock_key=lock_key_for("gateway_seen")) as conn:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            ins = insert(_gateways).values(
                [{"gateway": g, "last_seen": at} for g, at in sorted(batch.items())]
            )
            newest = case(
                (ins.excluded.last_seen > c.last_seen, ins.excluded.last_seen), else_=c.last_seen
            )
            conn.execute(
                ins.on_conflict_do_update(index_elements=[c.gateway], set_={"last_seen": newest})
            )
            horizon = max(batch.values()) - GATEWAY_RETENTION_SECONDS
            conn.execute(delete(_gateways).where(c.last_seen < horizon))

    def last_seen(self) -> dict[str, float]:
        """Every gateway's last call, this worker's unflushed ones included (blocking)."""
        c = _gateways.c
        with self.engine.connect() as conn:
            seen = {str(g): float(t) for g, t in conn.execute(select(c.gateway, c.last_seen))}
        with self._lock:
            for name, at in self._pending.items():
                seen[name] = max(at, seen.get(name, at))
        return seen

    def start_flush(self) -> None:
        """Flush in a thread without waiting (from the event loop)."""
        task = asyncio.ensure_future(run_in_threadpool(self.flush_quietly))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Wait for flushes in flight, then write what is left (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await run_in_threadpool(self.flush_quietly)


class _GatewayHost(Protocol):
    @property
    def gateway_seen(self) -> GatewaySeen: ...


def note_gateway(state: _GatewayHost, gateway: str | None) -> None:
    """Note that ``gateway`` called just now (from the score handler, per message)."""
    if gateway and state.gateway_seen.note(gateway, time.time()):
        state.gateway_seen.start_flush()


# -- auth failures ----------------------------------------------------------------------

# The account store's auth-failure buckets (accounts/schema.py), read only.
_auth_buckets = table(
    "account_auth_failures", column("minute", Integer), column("failures", Integer)
)


def auth_failures_per_minute(engine: Engine, now: float) -> int:
    """Failed logins of all users in the current minute or the one before, whichever
    has more: a burst is seen while it happens, and for a full minute after."""
    minute = int(now // 60)
    t = _auth_buckets.c
    query = (
        select(func.coalesce(func.sum(t.failures), 0))
        .where(t.minute >= minute - 1, t.minute <= minute)
        .group_by(t.minute)
    )
    with engine.connect() as conn:
        return max((int(n) for n in conn.execute(query).scalars()), default=0)


# -- watching ---------------------------------------------------------------------------


class MonitorHost(ModelHost, Protocol):
    """The part of the service state the health watch uses."""

    @property
    def settings(self) -> Settings: ...
    @property
    def state_engine(self) -> Engine: ...
    @property
    def alerts(self) -> Alerter: ...
    @property
    def gateway_seen(self) -> GatewaySeen: ...


class HealthWatch:
    """One worker's watch; :meth:`round` is one look (the loop is :func:`watch`)."""

    def __init__(self, state: MonitorHost, *, started_at: float | None = None) -> None:
        self.state = state
        self.started_at = time.time() if started_at is None else started_at
        self.host = socket.gethostname()
        self.worker = f"{self.host}:{os.getpid()}"
        # Incidents that may be open, with how many rounds in a row each was clear.
        # None until the first round, which adopts everything it can judge: incidents
        # left open by a worker that has since exited get resolved too.
        self._open: dict[tuple[str, str], int] | None = None

    def gather(self, now: float) -> Facts:
        """Measure everything :func:`assess` judges (blocking; run it in a thread)."""
        state = self.state
        settings = state.settings
        seen: dict[str, float] | None
        try:
            state.gateway_seen.flush()
            seen = state.gateway_seen.last_seen()
        except Exception as exc:
            log.error("gateway calls unreadable: %s", type(exc).__name__)
            seen = None
        try:
            free: int | None = shutil.disk_usage(settings.data_dir).free
        except OSError as exc:
            log.error("free space of the data dir unknown: %s", type(exc).__name__)
            free = None
        try:
            rate: int | None = auth_failures_per_minute(state.state_engine, now)
        except Exception as exc:
            log.error("auth failures unreadable: %s", type(exc).__name__)
            rate = None
        return Facts(
            host=self.host,
            worker=self.worker,
            watching_since=self.started_at,
            gateway_last_seen=seen,
            data_dir=str(settings.data_dir),
            disk_free_bytes=free,
            model=read_model_facts(state.learner, state.trainlog),
            auth_failures_per_minute=rate,
        )

    async def round(self, now: float | None = None) -> list[Incident]:
        """Look once: raise what is active, resolve what has cleared; the active ones."""
        now = time.time() if now is None else now
        settings = self.state.settings
        facts = await run_in_threadpool(self.gather, now)
        seen = facts.gateway_last_seen or {}
        metrics.observe_health(
            {g: seen.get(g) for g in sorted(settings.gateway_set)}, facts.disk_free_bytes
        )
        incidents = assess(facts, settings, now)
        active = {(i.kind, i.key) for i in incidents}
        decided = judged(facts, settings)
        alerts = self.state.alerts
        for incident in incidents:
            payload = {"summary": incident.summary, **incident.payload}
            await alerts.alert(incident.kind, incident.key, payload, now=now)
        if self._open is None:
            self._open = dict.fromkeys(decided, 0)
        for key in active:
            self._open[key] = 0
        for key in sorted((self._open.keys() & decided) - active):
            self._open[key] += 1
            if self._open[key] >= CLEAR_ROUNDS:
                del self._open[key]
                if await alerts.resolve(*key):
                    log.info("alert %s for %s resolved", *key)
        return incidents


async def watch(state: MonitorHost) -> None:
    """Run the health watch every ``settings.monitor_seconds`` until cancelled."""
    health = HealthWatch(state)
    while True:
        try:
            await health.round()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep watching; the next round may succeed
            log.error("health watch: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(state.settings.monitor_seconds)


# -- alert mail -------------------------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


def send_alert_mail(settings: Settings, body: Mapping[str, Any]) -> None:
    """Send one alert as a short plain-text mail through ``alert_smtp_host`` (blocking).

    ``body`` is the webhook's JSON body (``alert``, ``key``, ``at``, ``summary`` …).
    """
    host = settings.alert_smtp_host
    recipients = [r.strip() for r in settings.alert_smtp_to.split(",") if r.strip()]
    if not host or not recipients:
        raise ValueError("alert mail needs alert_smtp_host and alert_smtp_to")
    sender = settings.alert_smtp_from or f"mailsift@{socket.getfqdn()}"
    kind, key = str(body.get("alert", "alert")), str(body.get("key", ""))
    subject = _UNPRINTABLE.sub(" ", f"[mailsift] {kind}: {key}")[:200]
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    summary = str(body.get("summary", f"{kind} for {key}"))
    details = json.dumps(dict(body), indent=2, sort_keys=True, default=str)
    msg.set_content(f"{summary}\n\n{details}\n")
    with smtplib.SMTP(host, settings.alert_smtp_port, timeout=10) as smtp:
        smtp.send_message(msg, from_addr=sender, to_addrs=recipients)


async def mail_alert(settings: Settings, body: Mapping[str, Any]) -> bool:
    """:func:`send_alert_mail` in a thread; False (logged) when it failed. Never raises."""
    try:
        await run_in_threadpool(send_alert_mail, settings, body)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        log.error("alert %s mail not sent: %s", body.get("alert"), type(exc).__name__)
        return False
    log.info("alert %s mailed", body.get("alert"))
    return True
