"""The diagnostic report: gather the facts, run every check, add up the verdict.

The API (``GET /v1/admin/diagnostics``) and ``mailsift diagnose`` both call
:func:`run_diagnostics`. Reading the stores, the disk and DNS happens in threads, the
checks themselves are pure (``checks.py``, ``dns_audit.py``). A fact that cannot be
read is a ``fail`` naming the error, so the report always comes back whole.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mailsift.learning.learner import Learner, ModelStatus
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLog
from mailsift.service.audit import AuditTrail
from mailsift.service.diagnostics.checks import (
    FEEDBACK_DAYS,
    DiagResult,
    Status,
    check_admin_listener,
    check_allow_entries,
    check_disk_space,
    check_false_negatives,
    check_false_positives,
    check_gateways,
    check_model_classes,
    check_sending_limits,
    check_snapshot,
    check_tls,
    failed,
    worst,
)
from mailsift.service.diagnostics.dns_audit import LIFETIME, TIMEOUT, dns_audit
from mailsift.service.lists.store import MAX_LIST, ListEntry, ListStore
from mailsift.service.settings import Settings

__all__ = ["DiagReport", "DiagnosticsState", "run_diagnostics", "run_settings_diagnostics"]

DAY = 86_400.0
GATEWAY_LOOKBACK_HOURS = 24.0
"""How far back the audit trail is searched for a gateway's last call."""
EXIT_CODES: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}
_STORE_REMEDY = "Check the state database (MAILSIFT_DATABASE_URL or the data dir) is reachable"


class DiagnosticsState(Protocol):
    """What the report reads; the service's ``ServiceState`` fits, and so does the CLI's.

    ``lists`` and ``audit`` are None where there is no state database yet (the CLI never
    creates one): the checks that read them are left out.
    """

    @property
    def settings(self) -> Settings: ...
    @property
    def trainlog(self) -> TrainingLog: ...
    @property
    def learner(self) -> Learner: ...
    @property
    def lists(self) -> ListStore | None: ...
    @property
    def audit(self) -> AuditTrail | None: ...


@dataclass(frozen=True, slots=True)
class DiagReport:
    """Every result, in a stable order, and the worst status among them."""

    results: tuple[DiagResult, ...]
    generated_at: float

    @property
    def counts(self) -> dict[Status, int]:
        counts: dict[Status, int] = {"pass": 0, "warn": 0, "fail": 0}
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 all pass, 1 some warn, 2 some fail: for scripts and monitoring."""
        return EXIT_CODES[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "summary": dict(self.counts),
            "generated_at": datetime.fromtimestamp(self.generated_at, UTC).isoformat(),
            "results": [r.as_dict() for r in self.results],
        }


async def run_diagnostics(
    state: DiagnosticsState,
    *,
    admin_host: str | None = None,
    now: float | None = None,
    dns_timeout: float = TIMEOUT,
    dns_lifetime: float = LIFETIME,
    data: DiagResult | None = None,
) -> DiagReport:
    """Run every diagnostic; the DNS audit runs in a thread beside the store reads.

    ``admin_host`` is the admin listener's bind address; unset, a setting ``admin_host``
    is used when there is one, else ``127.0.0.1`` (the default of ``mailsift serve``).
    ``data``, when given, leads the report: which databases were read (the CLI's).
    """
    settings = state.settings
    now = time.time() if now is None else now
    host = _admin_host(settings, admin_host)
    model = state.learner.status()  # read on the event loop, where the model changes
    service = asyncio.to_thread(_service_results, state, model, host, now)
    service_results, dns_results = await asyncio.gather(
        service, _dns(settings, dns_timeout, dns_lifetime)
    )
    first = () if data is None else (data,)
    return DiagReport((*first, *service_results, *dns_results), now)


async def run_settings_diagnostics(
    settings: Settings,
    data: DiagResult,
    *,
    admin_host: str | None = None,
    now: float | None = None,
    dns_timeout: float = TIMEOUT,
    dns_lifetime: float = LIFETIME,
) -> DiagReport:
    """Without a database to read: ``data`` (why not), then what needs none (sending
    limits, TLS, the admin listener, disk space) and the DNS audit."""
    now = time.time() if now is None else now
    results = _settings_results(settings, _admin_host(settings, admin_host))
    results.append(_disk(settings.data_dir, settings.disk_min_free_mb))
    dns_results = await _dns(settings, dns_timeout, dns_lifetime)
    return DiagReport((data, *results, *dns_results), now)


def _admin_host(settings: Settings, given: str | None) -> str:
    return given or str(getattr(settings, "admin_host", None) or "127.0.0.1")


async def _dns(settings: Settings, timeout: float, lifetime: float) -> list[DiagResult]:
    return await asyncio.to_thread(
        dns_audit,
        sorted(settings.local_domain_set),
        settings.outbound_ip_list,
        settings.dns_nameservers,
        timeout=timeout,
        lifetime=lifetime,
    )


def _settings_results(settings: Settings, admin_host: str) -> list[DiagResult]:
    """The checks of settings alone, in report order."""
    certfile = settings.tls_certfile
    return [
        check_sending_limits(settings),
        check_tls(certfile, exists=None if certfile is None else certfile.is_file()),
        check_admin_listener(admin_host),
    ]


def _feedback_results(
    trainlog: TrainingLog, audit: AuditTrail, settings: Settings, now: float
) -> list[DiagResult]:
    """Users' reports against the inbound mail scored, over one window for both: the last
    :data:`FEEDBACK_DAYS` days, or fewer when the audit trail keeps fewer."""
    days = min(FEEDBACK_DAYS, settings.audit_retention_days)
    since = now - days * DAY
    try:
        reports = trainlog.label_counts_since(since, source=Source.USER, personal=True)
        inbound = audit.count_since(since, direction="inbound")
    except Exception as exc:
        remedy = "Check the training log and state database are reachable"
        return [
            failed("false_positives", "user reports", exc, remedy),
            failed("false_negatives", "user reports", exc, remedy),
        ]
    return [
        check_false_positives(reports["ham"], inbound, days=days),
        check_false_negatives(reports["spam"], inbound, days=days),
    ]


def _service_results(
    state: DiagnosticsState, model: ModelStatus, admin_host: str, now: float
) -> list[DiagResult]:
    """Blocking: reads the training log, the lists, the audit trail and the disk."""
    settings = state.settings
    lists, audit = state.lists, state.audit
    results = [
        check_model_classes(
            model.ham,
            model.spam,
            want=settings.diagnose_min_examples,
            ready=settings.min_examples_per_class,
        )
    ]
    if audit is not None:
        results += _feedback_results(state.trainlog, audit, settings, now)
    results.append(
        _guarded(
            "snapshot_fresh",
            "the training log head",
            "Check the training log (MAILSIFT_DATABASE_URL or the data dir) is reachable",
            lambda: check_snapshot(
                model.snapshot_created_at,
                model.snapshot_position,
                state.trainlog.head(),
                max_age_hours=settings.snapshot_max_age_hours,
                now=now,
            ),
        )
    )
    if lists is not None:
        results.append(
            _guarded(
                "allow_entries",
                "the allow list",
                _STORE_REMEDY,
                lambda: check_allow_entries(_all_allow_entries(lists), settings),
            )
        )
    results += _settings_results(settings, admin_host)
    if audit is not None:
        results.append(
            _guarded(
                "gateways_seen",
                "the audit trail",
                _STORE_REMEDY,
                lambda: check_gateways(
                    settings.gateway_set,
                    audit.gateways_last_seen(
                        settings.gateway_set, since=now - GATEWAY_LOOKBACK_HOURS * 3600
                    ),
                    silence_minutes=settings.gateway_silence_minutes,
                    now=now,
                    lookback_hours=GATEWAY_LOOKBACK_HOURS,
                ),
            )
        )
    results.append(_disk(settings.data_dir, settings.disk_min_free_mb))
    return results


def _guarded(name: str, what: str, remedy: str, check: Callable[[], DiagResult]) -> DiagResult:
    try:
        return check()
    except Exception as exc:
        return failed(name, what, exc, remedy)


def _all_allow_entries(lists: ListStore) -> list[ListEntry]:
    entries: list[ListEntry] = []
    while True:
        page = lists.list_entries("allow", limit=MAX_LIST, offset=len(entries))
        entries += page
        if len(page) < MAX_LIST:
            return entries


def _disk(data_dir: Path, min_free_mb: int) -> DiagResult:
    """Free space where the data dir is, or will be: a data dir not made yet is measured
    on its nearest existing parent (nothing is created to measure it)."""
    probe = data_dir.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return check_disk_space(
            data_dir, None, min_free_mb=min_free_mb, error=f"{type(exc).__name__}: {exc}"
        )
    return check_disk_space(data_dir, free, min_free_mb=min_free_mb)
