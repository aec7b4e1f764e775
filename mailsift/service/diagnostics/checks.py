"""The service's own diagnostics: small pure functions over facts the caller gathered.

Each returns a :class:`DiagResult`; every ``warn`` and ``fail`` carries a one-line
remedy, so the report says what to do, not only what is wrong. No I/O here: the report
(``report.py``) reads the stores, the disk and the clock and hands the facts in.

Thresholds for user reports (the last :data:`FEEDBACK_DAYS` days):

- false positives (feedback labelled ham): warn at :data:`FP_MIN_REPORTS` reports or more
  when they also exceed :data:`FP_WARN_RATE` of the inbound messages scored in the window;
- false negatives (feedback labelled spam): warn at :data:`FN_MIN_REPORTS` or more above
  :data:`FN_WARN_RATE`.

A handful of reports is noise at any volume, so the minimums keep a quiet site from
warning over two clicks; the rates keep a large site from warning over its normal share.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mailsift.service.lists.guard import InvalidListEntry, ListGuardRefused, check_allow_entry
from mailsift.service.lists.store import ListEntry
from mailsift.service.settings import Settings

__all__ = [
    "FEEDBACK_DAYS",
    "FN_MIN_REPORTS",
    "FN_WARN_RATE",
    "FP_MIN_REPORTS",
    "FP_WARN_RATE",
    "DiagResult",
    "Status",
    "check_admin_listener",
    "check_allow_entries",
    "check_disk_space",
    "check_false_negatives",
    "check_false_positives",
    "check_gateways",
    "check_model_classes",
    "check_sending_limits",
    "check_snapshot",
    "check_stores",
    "check_tls",
    "failed",
    "worst",
]

Status = Literal["pass", "warn", "fail"]
_RANK: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}

FEEDBACK_DAYS = 30
FP_WARN_RATE = 0.001
FP_MIN_REPORTS = 5
FN_WARN_RATE = 0.01
FN_MIN_REPORTS = 20
MAX_LISTED = 5
"""Offending items named in one detail line; the rest are counted."""
HOUR = 3600.0
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DiagResult:
    """One diagnostic: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    remedy: str = ""

    def __post_init__(self) -> None:
        if self.status not in _RANK:
            raise ValueError(f"status must be pass, warn or fail, not {self.status!r}")
        if self.status != "pass" and not self.remedy:
            raise ValueError(f"{self.name}: a {self.status} needs a remedy")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "remedy": self.remedy,
        }


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status, ``pass`` for none."""
    result: Status = "pass"
    for status in statuses:
        if _RANK[status] > _RANK[result]:
            result = status
    return result


def failed(name: str, what: str, exc: BaseException, remedy: str) -> DiagResult:
    """The result for a fact that could not be gathered: the error is named, never raised."""
    return DiagResult(name, "fail", f"cannot read {what}: {type(exc).__name__}: {exc}", remedy)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _hours(seconds: float) -> str:
    return f"{seconds / HOUR:.1f} h"


def check_model_classes(n_ham: int, n_spam: int, *, want: int, ready: int) -> DiagResult:
    """Both classes learned enough: ``ready`` is when the model counts at all, ``want`` the goal."""
    detail = f"model has learned {n_ham} ham and {n_spam} spam (want {want} of each)"
    fewest = min(n_ham, n_spam)
    # Commands are whole literals, so the test that runs each against `--help` finds them.
    train = {
        (True, True): "spam and ham: `mailsift train spam:PATH ham:PATH`",
        (True, False): "spam: `mailsift train spam:PATH`",
        (False, True): "ham: `mailsift train ham:PATH`",
    }.get((n_spam < want, n_ham < want), "")
    remedy = f"Train more {train} (PATH: an mbox, Maildir or folder), or let users report messages"
    if fewest < ready:
        return DiagResult(
            "model_classes",
            "fail",
            detail + f"; below {ready} the model's opinion does not count",
            remedy,
        )
    if fewest < want:
        return DiagResult("model_classes", "warn", detail, remedy)
    return DiagResult("model_classes", "pass", detail)


def _count(n: int, noun: str) -> str:
    """``1 report``, ``2 reports``, ``10,000 reports``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _percent(share: float) -> str:
    """A share with the digits that matter: ``0.09%``, ``0.1%``, ``1.5%``, ``12%``."""
    pct = share * 100
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 1:
        return f"{pct:.1f}%"
    if pct >= 0.01:
        return f"{pct:.2g}%"
    return "<0.01%" if pct > 0 else "0%"


def _judge_reports(
    name: str,
    label: str,
    reports: int,
    inbound: int,
    *,
    days: int,
    min_reports: int,
    warn_rate: float,
    remedy: str,
) -> DiagResult:
    """Users' reports of one label against the inbound mail scored in the same window.

    Reports are counted per user (three users reporting one message are three reports),
    messages once each, so the share is reports per inbound message, not a share of
    messages; a handful of reports is too few to judge at any volume.
    """
    detail = (
        f"{_count(reports, f'{label} report')} from users in the last {days} days, "
        f"{_count(inbound, 'inbound message')} scored"
    )
    limit = f"{_percent(warn_rate)} of inbound"
    if reports < min_reports:
        return DiagResult(
            name,
            "pass",
            f"{detail}: too few to judge (warns from {min_reports} reports above {limit})",
        )
    if not inbound:
        return DiagResult(name, "warn", f"{detail}: nothing inbound to weigh them against", remedy)
    detail += f": {_percent(reports / inbound)} of inbound"
    if reports > warn_rate * inbound:
        return DiagResult(name, "warn", f"{detail}, above {_percent(warn_rate)}", remedy)
    return DiagResult(name, "pass", f"{detail} (warns above {_percent(warn_rate)})")


def check_false_positives(reports: int, inbound: int, *, days: int = FEEDBACK_DAYS) -> DiagResult:
    """Users' "not spam" reports, against the inbound mail scored in the last ``days`` days."""
    return _judge_reports(
        "false_positives",
        '"not spam"',
        reports,
        inbound,
        days=days,
        min_reports=FP_MIN_REPORTS,
        warn_rate=FP_WARN_RATE,
        remedy="See what users marked not spam (the service logs `report … label=ham` for "
        "each); raise MAILSIFT_INBOUND_SPAM_THRESHOLD (README: Choosing thresholds), or "
        "train ham from real mail: `mailsift train ham:PATH`",
    )


def check_false_negatives(reports: int, inbound: int, *, days: int = FEEDBACK_DAYS) -> DiagResult:
    """Users' "spam" reports (spam that got through), against the inbound mail scored."""
    return _judge_reports(
        "false_negatives",
        '"spam"',
        reports,
        inbound,
        days=days,
        min_reports=FN_MIN_REPORTS,
        warn_rate=FN_WARN_RATE,
        remedy="Train recent spam: `mailsift train spam:PATH`, or lower "
        "MAILSIFT_INBOUND_SPAM_THRESHOLD (README: Choosing thresholds)",
    )


def check_snapshot(
    created_at: float | None,
    snapshot_position: int,
    log_head: int,
    *,
    max_age_hours: float,
    now: float,
) -> DiagResult:
    """A snapshot exists and is not both old and behind the log (a long replay at start)."""
    behind = max(0, log_head - snapshot_position)
    if created_at is None:
        if log_head == 0:
            return DiagResult(
                "snapshot_fresh",
                "warn",
                "no snapshot and an empty training log: nothing learned yet",
                "Train a first model from an mbox, Maildir or folder of each: "
                "`mailsift train spam:PATH ham:PATH`",
            )
        return DiagResult(
            "snapshot_fresh",
            "warn",
            f"no snapshot: every start replays all {behind} log entries",
            "Make sure the service can write its data dir; workers snapshot as they learn",
        )
    age = max(0.0, now - created_at)
    detail = f"snapshot is {_hours(age)} old, {behind} log entries behind"
    if behind and age > max_age_hours * HOUR:
        return DiagResult(
            "snapshot_fresh",
            "fail",
            detail + f" (limit {max_age_hours:g} h)",
            "Check the service is running and can write its data dir (model.snapshot); "
            "its log shows why snapshots fail",
        )
    return DiagResult("snapshot_fresh", "pass", detail)


def check_allow_entries(entries: Iterable[ListEntry], settings: Settings) -> DiagResult:
    """No allow entry the list guard would refuse today (freemail, own or local domain …).

    Entries can predate a guard rule or a change of ``local_domains``, so the stored ones
    are checked again with the same function that guards new entries.
    """
    refused: list[str] = []
    total = 0
    for entry in entries:
        total += 1
        try:
            check_allow_entry(entry.entry, entry.scope, entry.user, settings)
        except (ListGuardRefused, InvalidListEntry):
            refused.append(
                entry.entry if entry.scope == "global" else f"{entry.entry} ({entry.user})"
            )
    if refused:
        return DiagResult(
            "allow_entries",
            "fail",
            f"{len(refused)} of {total} allow entries vouch for senders anyone can forge or "
            f"register: {_listed(refused)}",
            "Delete them: DELETE /v1/lists/allow/{entry} (with scope and user for user entries)",
        )
    return DiagResult("allow_entries", "pass", f"{total} allow entries, none refused by the guard")


def check_sending_limits(settings: Settings) -> DiagResult:
    """All three outbound limits are on: they cap what a hijacked account can send."""
    limits = {
        "MAILSIFT_LIMIT_MESSAGES_PER_HOUR": settings.limit_messages_per_hour,
        "MAILSIFT_LIMIT_MESSAGES_PER_DAY": settings.limit_messages_per_day,
        "MAILSIFT_LIMIT_RECIPIENTS_PER_HOUR": settings.limit_recipients_per_hour,
    }
    off = [name for name, value in limits.items() if value <= 0]
    detail = ", ".join(
        f"{name.removeprefix('MAILSIFT_LIMIT_').lower()}={v}" for name, v in limits.items()
    )
    if off:
        return DiagResult(
            "sending_limits",
            "fail" if len(off) == len(limits) else "warn",
            f"outbound limits off (0): {', '.join(off)}",
            f"Set {' and '.join(off)} above 0 to cap a compromised account",
        )
    return DiagResult("sending_limits", "pass", detail)


def check_stores(
    training_log: str, state: str, *, log_exists: bool, state_exists: bool
) -> DiagResult:
    """The databases ``mailsift diagnose`` was pointed at exist (it never creates them).

    ``training_log`` and ``state`` name them (a path, or a URL without its password; the
    same name when one database holds both). Run in a directory that is not the
    service's data dir, diagnose would otherwise make an empty database and judge that.
    """
    remedy = (
        "Run diagnose with the service's MAILSIFT_DATA_DIR (or MAILSIFT_DATABASE_URL); "
        "a new install has data once `mailsift serve` has run"
    )
    if not log_exists:
        also = "" if state == training_log or state_exists else f" (nor {state})"
        return DiagResult(
            "data",
            "fail",
            f"no data yet: no training log at {training_log}{also}; nothing was created",
            remedy,
        )
    if not state_exists:
        return DiagResult(
            "data",
            "warn",
            f"no state yet: no state database at {state} (nothing scored with this data dir); "
            "user reports, allow entries and gateways not checked",
            remedy,
        )
    where = training_log if state == training_log else f"{training_log} and {state}"
    return DiagResult("data", "pass", f"read {where}")


def check_tls(certfile: str | Path | None, *, exists: bool | None = None) -> DiagResult:
    """A certificate means HTTPS with TLS 1.2 as the floor (the server enforces it)."""
    if not certfile:
        return DiagResult(
            "tls",
            "warn",
            "no certificate: plain HTTP, loopback only",
            "Set MAILSIFT_TLS_CERTFILE and MAILSIFT_TLS_KEYFILE before gateways call "
            "from other hosts",
        )
    if exists is False:
        return DiagResult(
            "tls",
            "fail",
            f"certificate file {certfile} not found",
            "Point MAILSIFT_TLS_CERTFILE at a readable PEM certificate",
        )
    return DiagResult("tls", "pass", "HTTPS with TLS 1.2 minimum (1.0 and 1.1 refused)")


def check_admin_listener(host: str) -> DiagResult:
    """The admin API binds loopback; a local-network address warns, public or wildcard fails."""
    remedy = "Bind the admin listener to 127.0.0.1 and reach it through SSH or a VPN"
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return DiagResult("admin_listener", "pass", f"admin listener on {host} (loopback)")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return DiagResult(
            "admin_listener",
            "warn",
            f"admin listener on host name {host!r}: cannot tell who can reach it",
            remedy,
        )
    if address.is_loopback:
        return DiagResult("admin_listener", "pass", f"admin listener on {host} (loopback)")
    if address.is_unspecified:
        return DiagResult(
            "admin_listener", "fail", f"admin listener on {host}: every interface", remedy
        )
    if address.is_global:
        return DiagResult(
            "admin_listener", "fail", f"admin listener on public address {host}", remedy
        )
    return DiagResult(
        "admin_listener",
        "warn",
        f"admin listener on {host}: reachable from the local network",
        remedy,
    )


def check_gateways(
    configured: Iterable[str],
    last_seen: Mapping[str, float],
    *,
    silence_minutes: float,
    now: float,
    lookback_hours: float,
) -> DiagResult:
    """Every configured gateway called recently: an MX host that bypasses the filter is a hole.

    ``last_seen`` holds the latest verdict per gateway within ``lookback_hours``.
    """
    names = sorted(set(configured))
    if not names:
        return DiagResult(
            "gateways_seen",
            "warn",
            "no gateways configured: a mail host that bypasses mailsift would go unnoticed",
            "List every MX and submission host in MAILSIFT_GATEWAYS (their `gateway` parameter)",
        )
    silent: list[str] = []
    for name in names:
        at = last_seen.get(name)
        if at is None:
            silent.append(f"{name} (not in {lookback_hours:g} h)")
        elif now - at > silence_minutes * 60:
            silent.append(f"{name} ({(now - at) / 60:.0f} min ago)")
    if silent:
        return DiagResult(
            "gateways_seen",
            "fail",
            f"{len(silent)} of {len(names)} gateways silent over {silence_minutes:g} min: "
            f"{_listed(silent)}",
            "Check those hosts still pass every message to mailsift (milter or policy "
            "config, network path, token)",
        )
    return DiagResult(
        "gateways_seen",
        "pass",
        f"all {len(names)} gateways called within {silence_minutes:g} min",
    )


def check_disk_space(
    path: str | Path, free_bytes: int | None, *, min_free_mb: int, error: str | None = None
) -> DiagResult:
    """Free space in the data dir: fail below the alert floor, warn below twice that."""
    remedy = f"Free space on the volume holding {path}, or move MAILSIFT_DATA_DIR to a larger one"
    if free_bytes is None:
        return DiagResult(
            "disk_space", "fail", f"cannot read free space of {path}: {error or 'unknown'}", remedy
        )
    free_mb = free_bytes // MiB
    detail = f"{free_mb} MiB free in {path} (floor {min_free_mb} MiB)"
    if free_mb < min_free_mb:
        return DiagResult("disk_space", "fail", detail, remedy)
    if free_mb < 2 * min_free_mb:
        return DiagResult("disk_space", "warn", detail + ", less than twice the floor", remedy)
    return DiagResult("disk_space", "pass", detail)
