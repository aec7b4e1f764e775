"""Diagnostics: the DNS audit against a DNS server on loopback, the service checks, the
report over HTTP and ``mailsift diagnose``'s exit codes; that diagnosing creates no
database, and that every command a remedy suggests is one the real ``mailsift`` has."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import dns.zone
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import sql
from rich.console import Console
from sqlalchemy import Engine, inspect

from mailsift.learning.learner import Learner
from mailsift.learning.published import PublishedModels
from mailsift.learning.sources import Source
from mailsift.learning.trainlog import TrainingLog, open_training_log
from mailsift.service.audit import AUDIT_TABLE, AuditRecord, AuditTrail
from mailsift.service.db import create_db_engine, open_state_engine, resolve_url
from mailsift.service.diagnostics import checks
from mailsift.service.diagnostics.checks import DiagResult, Status
from mailsift.service.diagnostics.cli import diagnose_command
from mailsift.service.diagnostics.dns_audit import dns_audit, parse_nameservers
from mailsift.service.diagnostics.report import DiagReport, run_diagnostics
from mailsift.service.errors import install_error_handlers
from mailsift.service.lists.store import ListEntry, ListStore
from mailsift.service.routers import diagnostics as diagnostics_router
from mailsift.service.settings import Settings
from tests.conftest import PG_HOST, PG_PORT, pg_admin
from tests.learning.examples import ex

# --- a small authoritative DNS server on loopback ------------------------------------------

SOA = "@ 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n@ 300 IN NS ns.test.\n"
ZONES = {
    "good.test.": SOA
    + """
@ 300 IN MX 10 mx.good.test.
@ 300 IN TXT "v=spf1 mx -all"
@ 300 IN TXT "google-site-verification=abc"
mx 300 IN A 192.0.2.25
mail 300 IN A 192.0.2.10
_dmarc 300 IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"
_mta-sts 300 IN TXT "v=STSv1; id=20250101T000000"
_smtp._tls 300 IN TXT "v=TLSRPTv1; rua=mailto:tls@good.test"
""",
    "bad.test.": SOA
    + """
@ 300 IN MX 10 mx.bad.test.
@ 300 IN TXT "v=spf1 +all"
mx 300 IN A 192.0.2.26
""",
    # One domain per flaw the table-driven test looks for.
    "variants.test.": SOA
    + """
softall 300 IN TXT "v=spf1 a ?all"
twospf 300 IN TXT "v=spf1 -all"
twospf 300 IN TXT "v=spf1 mx -all"
bareall 300 IN TXT "v=spf1 all"
noall 300 IN TXT "v=spf1 mx"
redirect 300 IN TXT "v=spf1 redirect=_spf.good.test"
_dmarc.none 300 IN TXT "v=DMARC1; p=none"
_dmarc.quarantine 300 IN TXT "v=DMARC1; p=quarantine; rua=mailto:d@variants.test"
_dmarc.pct 300 IN TXT "v=DMARC1; p=reject; pct=50; rua=mailto:d@variants.test"
_dmarc.nop 300 IN TXT "v=DMARC1; rua=mailto:d@variants.test"
_mta-sts.noid 300 IN TXT "v=STSv1;"
_smtp._tls.norua 300 IN TXT "v=TLSRPTv1;"
nomx 300 IN A 192.0.2.40
mxnoaddr 300 IN MX 10 ghost.variants.test.
nullmx 300 IN MX 0 .
""",
    "2.0.192.in-addr.arpa.": SOA
    + """
10 300 IN PTR mail.good.test.
30 300 IN PTR mx.good.test.
""",
}


class ZoneServer:
    """Answers UDP queries from the zones above: authoritative, NXDOMAIN for unknown names."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.zones = [dns.zone.from_text(t, origin=o, relativize=False) for o, t in zones.items()]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ZoneServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            self.sock.sendto(self.answer(query).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        zone = next(
            (z for z in self.zones if z.origin and question.name.is_subdomain(z.origin)), None
        )
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        node = zone.get_node(question.name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        found = node.get_rdataset(question.rdclass, question.rdtype)
        if found is not None:
            response.answer.append(dns.rrset.from_rdata_list(question.name, found.ttl, list(found)))
        return response


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with ZoneServer(ZONES) as server:
        yield f"127.0.0.1:{server.port}"


def by_name(results: list[DiagResult]) -> dict[str, DiagResult]:
    names = [r.name for r in results]
    assert len(names) == len(set(names)), names
    return {r.name: r for r in results}


# --- the DNS audit ---------------------------------------------------------------------------


def test_good_domain_passes_every_dns_item(nameserver: str) -> None:
    results = by_name(dns_audit(["good.test"], ["192.0.2.10"], nameserver))
    assert set(results) == {
        "mx:good.test",
        "spf:good.test",
        "dmarc:good.test",
        "mta_sts:good.test",
        "tls_rpt:good.test",
        "ptr:192.0.2.10",
    }
    assert {r.status for r in results.values()} == {"pass"}, results
    assert "mx.good.test. (192.0.2.25)" in results["mx:good.test"].detail
    assert results["spf:good.test"].detail == "v=spf1 mx -all"
    assert "p=reject" in results["dmarc:good.test"].detail
    assert "20250101T000000" in results["mta_sts:good.test"].detail
    assert "mailto:tls@good.test" in results["tls_rpt:good.test"].detail
    assert results["ptr:192.0.2.10"].detail == "192.0.2.10 -> mail.good.test. -> 192.0.2.10"


def test_bad_domain_fails_spf_and_dmarc_with_remedies(nameserver: str) -> None:
    results = by_name(dns_audit(["bad.test"], [], nameserver))
    spf, dmarc = results["spf:bad.test"], results["dmarc:bad.test"]
    assert spf.status == "fail" and "+all" in spf.detail and "-all" in spf.remedy
    assert dmarc.status == "fail" and "no DMARC record" in dmarc.detail
    assert "_dmarc.bad.test" in dmarc.remedy and "p=" in dmarc.remedy
    assert results["mta_sts:bad.test"].status == "warn"
    assert "_mta-sts.bad.test" in results["mta_sts:bad.test"].remedy
    assert results["tls_rpt:bad.test"].status == "warn"
    assert results["mx:bad.test"].status == "pass"
    # No IPs given: said so, with what to set.
    assert results["ptr"].status == "warn" and "MAILSIFT_OUTBOUND_IPS" in results["ptr"].remedy


def test_ip_without_ptr_fails_with_remedy(nameserver: str) -> None:
    (result,) = dns_audit([], ["192.0.2.20"], nameserver)[1:]
    assert result.name == "ptr:192.0.2.20" and result.status == "fail"
    assert "no PTR record" in result.detail and "PTR" in result.remedy


def test_ptr_that_does_not_resolve_back_fails(nameserver: str) -> None:
    (result,) = dns_audit([], ["192.0.2.30"], nameserver)[1:]
    assert result.status == "fail"
    assert "mx.good.test." in result.detail and "192.0.2.25" in result.detail
    assert "192.0.2.30" in result.remedy


@pytest.mark.parametrize(
    ("domain", "item", "status", "fragment"),
    [
        ("softall.variants.test", "spf", "warn", "?all"),
        ("twospf.variants.test", "spf", "fail", "2 SPF records"),
        ("bareall.variants.test", "spf", "fail", "+all"),
        ("noall.variants.test", "spf", "warn", "no 'all' term"),
        ("redirect.variants.test", "spf", "pass", "redirect"),
        ("none.variants.test", "dmarc", "warn", "p=none"),
        ("quarantine.variants.test", "dmarc", "pass", "p=quarantine"),
        ("pct.variants.test", "dmarc", "warn", "only 50%"),
        ("nop.variants.test", "dmarc", "fail", "no valid p="),
        ("noid.variants.test", "mta_sts", "warn", "no valid id"),
        ("norua.variants.test", "tls_rpt", "warn", "no rua"),
        ("nomx.variants.test", "mx", "fail", "no MX records"),
        ("mxnoaddr.variants.test", "mx", "fail", "ghost.variants.test."),
        ("nullmx.variants.test", "mx", "fail", "null MX"),
        ("missing.variants.test", "mx", "fail", "NXDOMAIN"),
    ],
)
def test_dns_findings(nameserver: str, domain: str, item: str, status: str, fragment: str) -> None:
    result = by_name(dns_audit([domain], ["192.0.2.10"], nameserver))[f"{item}:{domain}"]
    assert result.status == status, result
    assert fragment in result.detail
    assert bool(result.remedy) == (status != "pass")


def test_unreachable_resolver_is_a_warning_naming_the_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        results = dns_audit(
            ["good.test"], ["192.0.2.10"], f"127.0.0.1:{port}", timeout=0.1, lifetime=0.3
        )
    assert len(results) == 6
    for result in results:
        assert result.status == "warn", result
        assert "timed out" in result.detail and "MAILSIFT_DNS_NAMESERVERS" in result.remedy


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", []),
        ("192.0.2.53", [("192.0.2.53", 53)]),
        (" 192.0.2.53:5353 , 2001:db8::1", [("192.0.2.53", 5353), ("2001:db8::1", 53)]),
        ("[2001:db8::1]:5300", [("2001:db8::1", 5300)]),
    ],
)
def test_parse_nameservers(spec: str, expected: list[tuple[str, int]]) -> None:
    assert parse_nameservers(spec) == expected


@pytest.mark.parametrize("spec", ["dns.example", "192.0.2.1:0", "192.0.2.1:x", "[::1]:70000"])
def test_bad_nameserver_setting_is_a_failure_not_an_exception(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_nameservers(spec)
    results = by_name(dns_audit(["good.test"], [], spec))
    assert results["dns_resolver"].status == "fail"
    assert "MAILSIFT_DNS_NAMESERVERS" in results["dns_resolver"].remedy


def test_nothing_configured_says_what_to_set() -> None:
    results = by_name(dns_audit([], []))
    assert set(results) == {"dns_domains", "ptr"}
    assert "MAILSIFT_LOCAL_DOMAINS" in results["dns_domains"].remedy


# --- service checks (pure, table-driven) -----------------------------------------------------

NOW = 1_750_000_000.0
BASE = Settings(data_dir=Path("/nonexistent"), local_domains="ourco.example")


def allow(entry: str, scope: str = "global", user: str | None = None) -> ListEntry:
    return ListEntry("allow", scope, user, entry, NOW, "test")  # type: ignore[arg-type]


PG = "postgresql+psycopg://u:***@db/m"


def stores(
    log_exists: bool, state_exists: bool, log: str = "/d/mailsift.db", state: str = "/d/state.db"
) -> DiagResult:
    return checks.check_stores(log, state, log_exists=log_exists, state_exists=state_exists)


CASES: list[tuple[str, Callable[[], DiagResult], str, str]] = [
    ("classes ok", lambda: checks.check_model_classes(300, 250, want=200, ready=10), "pass", ""),
    (
        "classes few",
        lambda: checks.check_model_classes(300, 50, want=200, ready=10),
        "warn",
        "spam",
    ),
    ("classes none", lambda: checks.check_model_classes(3, 0, want=200, ready=10), "fail", "ham"),
    (
        "fp quiet",
        lambda: checks.check_false_positives(4, 0),
        "pass",
        '4 "not spam" reports from users in the last 30 days, 0 inbound messages scored: '
        "too few to judge",
    ),
    (
        "fp one of one",  # the line issue #13 quoted: "100.00% of 1 inbound messages"
        lambda: checks.check_false_positives(1, 1),
        "pass",
        '1 "not spam" report from users in the last 30 days, 1 inbound message scored: '
        "too few to judge (warns from 5 reports above 0.1% of inbound)",
    ),
    (
        "fp rare",
        lambda: checks.check_false_positives(9, 10_000),
        "pass",
        "10,000 inbound messages scored: 0.09% of inbound (warns above 0.1%)",
    ),
    (
        "fp many",
        lambda: checks.check_false_positives(11, 10_000),
        "warn",
        "0.11% of inbound, above 0.1%",
    ),
    (
        "fp nothing inbound",
        lambda: checks.check_false_positives(6, 0),
        "warn",
        "nothing inbound to weigh them against",
    ),
    (
        "fp short audit window",
        lambda: checks.check_false_positives(2, 50, days=7),
        "pass",
        "in the last 7 days",
    ),
    ("fn rare", lambda: checks.check_false_negatives(90, 10_000), "pass", '90 "spam" reports'),
    ("fn many", lambda: checks.check_false_negatives(101, 10_000), "warn", "1.0% of inbound"),
    ("stores there", lambda: stores(True, True), "pass", "read /d/mailsift.db and /d/state.db"),
    (
        "no data yet",
        lambda: stores(False, False),
        "fail",
        "no data yet: no training log at /d/mailsift.db (nor /d/state.db); nothing was created",
    ),
    (
        "no state yet",
        lambda: stores(True, False),
        "warn",
        "no state yet: no state database at /d/state.db",
    ),
    ("one database", lambda: stores(True, True, PG, PG), "pass", f"read {PG}"),
    (
        "snapshot fresh",
        lambda: checks.check_snapshot(NOW - 7200, 90, 100, max_age_hours=24, now=NOW),
        "pass",
        "2.0 h old, 10 log entries behind",
    ),
    (
        "snapshot old, log quiet",
        lambda: checks.check_snapshot(NOW - 90 * 3600, 100, 100, max_age_hours=24, now=NOW),
        "pass",
        "0 log entries behind",
    ),
    (
        "snapshot stale",
        lambda: checks.check_snapshot(NOW - 30 * 3600, 90, 100, max_age_hours=24, now=NOW),
        "fail",
        "30.0 h old",
    ),
    (
        "no snapshot",
        lambda: checks.check_snapshot(None, 0, 40, max_age_hours=24, now=NOW),
        "warn",
        "replays all 40",
    ),
    (
        "nothing learned",
        lambda: checks.check_snapshot(None, 0, 0, max_age_hours=24, now=NOW),
        "warn",
        "empty training log",
    ),
    (
        "allow ok",
        lambda: checks.check_allow_entries([allow("partner.example")], BASE),
        "pass",
        "1 allow entries",
    ),
    (
        "allow freemail and local",
        lambda: checks.check_allow_entries(
            [allow("partner.example"), allow("gmail.com"), allow("boss@ourco.example")], BASE
        ),
        "fail",
        "2 of 3 allow entries vouch for senders anyone can forge or register: gmail.com, "
        "boss@ourco.example",
    ),
    (
        "allow own domain",
        lambda: checks.check_allow_entries(
            [allow("bob@theirs.example", "user", "alice@theirs.example")], BASE
        ),
        "fail",
        "bob@theirs.example (alice@theirs.example)",
    ),
    ("limits on", lambda: checks.check_sending_limits(BASE), "pass", "messages_per_hour=200"),
    (
        "one limit off",
        lambda: checks.check_sending_limits(BASE.model_copy(update={"limit_messages_per_day": 0})),
        "warn",
        "MAILSIFT_LIMIT_MESSAGES_PER_DAY",
    ),
    (
        "limits off",
        lambda: checks.check_sending_limits(
            BASE.model_copy(
                update={
                    "limit_messages_per_hour": 0,
                    "limit_messages_per_day": 0,
                    "limit_recipients_per_hour": 0,
                }
            )
        ),
        "fail",
        "MAILSIFT_LIMIT_RECIPIENTS_PER_HOUR",
    ),
    ("tls on", lambda: checks.check_tls("/etc/cert.pem", exists=True), "pass", "TLS 1.2"),
    ("tls off", lambda: checks.check_tls(None), "warn", "plain HTTP, loopback only"),
    ("tls file gone", lambda: checks.check_tls("/x.pem", exists=False), "fail", "not found"),
    ("admin loopback", lambda: checks.check_admin_listener("127.0.0.1"), "pass", "loopback"),
    ("admin localhost", lambda: checks.check_admin_listener("localhost"), "pass", "loopback"),
    ("admin ::1", lambda: checks.check_admin_listener("[::1]"), "pass", "loopback"),
    ("admin all", lambda: checks.check_admin_listener("0.0.0.0"), "fail", "every interface"),
    ("admin all v6", lambda: checks.check_admin_listener("::"), "fail", "every interface"),
    ("admin lan", lambda: checks.check_admin_listener("10.1.2.3"), "warn", "local network"),
    ("admin public", lambda: checks.check_admin_listener("8.8.8.8"), "fail", "public"),
    ("admin name", lambda: checks.check_admin_listener("admin.corp"), "warn", "cannot tell"),
    (
        "gateways seen",
        lambda: checks.check_gateways(
            ["mx1", "mx2"],
            {"mx1": NOW - 60, "mx2": NOW - 300},
            silence_minutes=10,
            now=NOW,
            lookback_hours=24,
        ),
        "pass",
        "all 2 gateways",
    ),
    (
        "gateway silent",
        lambda: checks.check_gateways(
            ["mx1", "mx2", "mx3"],
            {"mx1": NOW - 60, "mx2": NOW - 1800},
            silence_minutes=10,
            now=NOW,
            lookback_hours=24,
        ),
        "fail",
        "2 of 3 gateways silent over 10 min: mx2 (30 min ago), mx3 (not in 24 h)",
    ),
    (
        "no gateways",
        lambda: checks.check_gateways([], {}, silence_minutes=10, now=NOW, lookback_hours=24),
        "warn",
        "no gateways configured",
    ),
    (
        "disk ok",
        lambda: checks.check_disk_space("/d", 5000 * 1024 * 1024, min_free_mb=1024),
        "pass",
        "5000 MiB free",
    ),
    (
        "disk low",
        lambda: checks.check_disk_space("/d", 1500 * 1024 * 1024, min_free_mb=1024),
        "warn",
        "twice",
    ),
    (
        "disk full",
        lambda: checks.check_disk_space("/d", 100 * 1024 * 1024, min_free_mb=1024),
        "fail",
        "100 MiB free",
    ),
    (
        "disk unreadable",
        lambda: checks.check_disk_space("/d", None, min_free_mb=1024, error="ENOENT"),
        "fail",
        "ENOENT",
    ),
]


@pytest.mark.parametrize(
    ("check", "status", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_service_check(check: Callable[[], DiagResult], status: str, fragment: str) -> None:
    result = check()
    assert result.status == status, result
    assert fragment in result.detail
    if status == "pass":
        assert result.remedy == ""
    else:
        assert result.remedy and "\n" not in result.remedy


def test_every_warning_needs_a_remedy() -> None:
    with pytest.raises(ValueError, match="remedy"):
        DiagResult("x", "warn", "something")
    with pytest.raises(ValueError, match="status"):
        DiagResult("x", "bad", "something", "fix")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "status", "code"),
    [
        ((), "pass", 0),
        (("pass", "pass"), "pass", 0),
        (("pass", "warn"), "warn", 1),
        (("warn", "fail", "pass"), "fail", 2),
    ],
)
def test_report_status_and_exit_code(statuses: tuple[Status, ...], status: str, code: int) -> None:
    results = (
        DiagResult(f"c{i}", s, "d", "" if s == "pass" else "r") for i, s in enumerate(statuses)
    )
    report = DiagReport(tuple(results), NOW)
    assert report.status == status and report.exit_code == code
    body = report.as_dict()
    assert body["status"] == status and sum(body["summary"].values()) == len(statuses)
    assert body["generated_at"].startswith("2025-06-15T")


# --- the store reads the report uses, on both backends ---------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


def test_label_counts_since(
    database_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_training_log(database_url, tmp_path)
    clock = [2_000_000_000.0 + (0 if database_url is None else 1e6)]
    monkeypatch.setattr("mailsift.learning.log_rows.time", SimpleNamespace(time=lambda: clock[0]))
    start = clock[0]
    try:
        before = log.label_counts_since(start, source=Source.USER, personal=True)
        plan = [  # (fingerprint, label or None = taken back, source), one second apart
            (1, "ham", Source.USER),
            (2, "spam", Source.USER),
            (3, "spam", Source.ADMIN),
            (4, "ham", Source.USER),
            (5, "spam", Source.USER),
            (1, "spam", Source.USER),  # relabelled: a spam report now
            (6, "ham", Source.OUTBOUND),
            (4, None, Source.USER),  # taken back: not a report
        ]
        for i, (n, label, source) in enumerate(plan):
            clock[0] = start + i
            fingerprint = f"{start:.0f}{n:08x}"
            if label is None:
                log.withdraw("u@x", fingerprint, needed=3)
            elif source is Source.USER:
                log.report(
                    "u@x", fingerprint, label, ex(b"m%d" % n), needed=3,
                    per_user_per_day=20, now=clock[0],
                )  # fmt: skip
            else:
                log.append(fingerprint, label, ex(b"m%d" % n), source=source, actor="u")  # type: ignore[arg-type]
        counts = log.label_counts_since(start, source=Source.USER, personal=True)
        assert {k: counts[k] - before[k] for k in counts} == {"ham": 2, "spam": 3}
        reports_since = log.label_counts_since(start + 3, source=Source.USER, personal=True)
        assert reports_since == {"ham": 1, "spam": 2}
        none = log.label_counts_since(start + 100, source=Source.USER, personal=True)
        assert none == {"ham": 0, "spam": 0}
        assert log.label_counts_since(start, source=Source.ADMIN)["spam"] >= 1
        assert log.label_counts_since(start, source=Source.USER) == {"ham": 0, "spam": 0}
    finally:
        log.close()


def test_audit_gateways_last_seen_and_count(database_url: str | None, tmp_path: Path) -> None:
    engine = open_state_engine(database_url, tmp_path)
    trail = AuditTrail(engine, BASE)
    t0 = 1_900_000_000.0 + (0 if database_url is None else 1e6)
    try:
        for at, gateway, direction in [
            (t0, "mx1", "inbound"),
            (t0 + 60, "mx1", "inbound"),
            (t0 + 30, "mx2", "outbound"),
            (t0 - 5000, "mx3", "inbound"),
            (t0 + 90, None, "inbound"),
        ]:
            trail.record(
                AuditRecord(
                    time=at,
                    direction=direction,
                    score=0.1,
                    verdict="ham",
                    action="accept",
                    gateway=gateway,
                )
            )
        trail.flush()
        seen = trail.gateways_last_seen(["mx1", "mx2", "mx3", "mx4", " "], since=t0 - 100)
        assert seen == {"mx1": t0 + 60, "mx2": t0 + 30}
        assert trail.count_since(t0, direction="inbound") == 3
        assert trail.count_since(t0) == 4
        assert trail.count_since(t0 + 1000) == 0
    finally:
        engine.dispose()


# --- the whole report, over HTTP and from the command line -----------------------------------


@dataclass
class Stores:
    settings: Settings
    trainlog: TrainingLog
    learner: Learner
    lists: ListStore
    audit: AuditTrail
    engine: Engine

    def close(self) -> None:
        self.trainlog.close()
        self.engine.dispose()


HAM = b"From: a@partner.example\r\nSubject: minutes\r\n\r\nthe meeting notes are attached\r\n"
SPAM = b"From: x@spam.example\r\nSubject: WIN\r\n\r\ncheap pills casino winner click\r\n"
ADMIN_TOKEN = "diagnostics-admin-token-0123"


def site_settings(tmp_path: Path, nameserver: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "local_domains": "good.test",
        "outbound_ips": "192.0.2.10",
        "dns_nameservers": nameserver,
        "diagnose_min_examples": 2,
        "min_examples_per_class": 1,
        "gateways": "mx1",
        "disk_min_free_mb": 0,
        "admin_token": ADMIN_TOKEN,
    }
    values.update(extra)
    return Settings(**values)


def prepare_site(settings: Settings, *, feedback: int = 0) -> None:
    """A site that has learned both classes, written a snapshot and heard from mx1 now."""
    log = open_training_log(settings.database_url, settings.data_dir)
    try:
        for i in range(2):
            log.append(
                f"{i + 1:032x}", "ham", ex(HAM + b"%d" % i), source=Source.ADMIN, actor="admin"
            )
            log.append(
                f"{i + 11:032x}", "spam", ex(SPAM + b"%d" % i), source=Source.ADMIN, actor="admin"
            )
        for i in range(feedback):
            log.report(
                "u@x", f"{i + 101:032x}", "ham", ex(HAM + b"fp%d" % i), needed=3,
                per_user_per_day=20,
            )  # fmt: skip
        learner = Learner(
            log, PublishedModels(log.engine), settings.snapshot_path, settings.parse_limits
        )

        async def snapshot() -> None:
            await learner.catch_up()
            assert await learner.write_snapshot() is not None

        asyncio.run(snapshot())
    finally:
        log.close()
    engine = open_state_engine(settings.database_url, settings.data_dir)
    try:
        trail = AuditTrail(engine, settings)
        trail.record(
            AuditRecord(
                time=time.time(),
                direction="inbound",
                score=0.1,
                verdict="ham",
                action="accept",
                gateway="mx1",
            )
        )
        trail.flush()
    finally:
        engine.dispose()


def open_stores(settings: Settings) -> Stores:
    log = open_training_log(settings.database_url, settings.data_dir)
    engine = open_state_engine(settings.database_url, settings.data_dir)
    learner = Learner(
        log, PublishedModels(log.engine), settings.snapshot_path, settings.parse_limits
    )
    learner.load_initial()
    asyncio.run(learner.catch_up())
    return Stores(
        settings, log, learner, ListStore(engine, settings), AuditTrail(engine, settings), engine
    )


def test_report_reads_the_stores(tmp_path: Path, nameserver: str) -> None:
    # An allow entry made before partner.example became one of our own domains.
    before = site_settings(tmp_path, nameserver)
    prepare_site(before, feedback=6)
    stores = open_stores(before)
    stores.lists.put("allow", "partner.example", "global", None, "admin")
    stores.close()

    settings = site_settings(
        tmp_path, nameserver, local_domains="good.test,partner.example", gateways="mx1,mx9"
    )
    stores = open_stores(settings)
    try:
        report = asyncio.run(run_diagnostics(stores, admin_host="0.0.0.0"))
    finally:
        stores.close()
    results = by_name(list(report.results))
    assert results["model_classes"].status == "pass"
    # One user's six reports act for that user alone: the shared model has the admin's four.
    assert "learned 2 ham and 2 spam" in results["model_classes"].detail
    fp = results["false_positives"]
    assert fp.status == "warn" and '6 "not spam" reports from users' in fp.detail
    assert "1 inbound message scored: 600% of inbound, above 0.1%" in fp.detail
    assert results["false_negatives"].status == "pass"
    assert results["snapshot_fresh"].status == "pass"
    assert results["allow_entries"].status == "fail"
    assert "partner.example" in results["allow_entries"].detail
    assert results["admin_listener"].status == "fail"
    assert results["gateways_seen"].status == "fail"
    assert "mx9 (not in 24 h)" in results["gateways_seen"].detail
    assert results["tls"].status == "warn"
    assert results["disk_space"].status == "pass"
    assert results["spf:good.test"].status == "pass"
    # Outside the test server's zones: REFUSED, a lookup error, so a warning that names it.
    partner = results["mx:partner.example"]
    assert partner.status == "warn" and "REFUSED" in partner.detail
    assert report.status == "fail" and report.exit_code == 2


class Broken:
    """A store whose database is down."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*args: object, **kwargs: object) -> Any:
            raise RuntimeError("database down")

        return fail


def test_store_failures_are_results_not_exceptions(tmp_path: Path, nameserver: str) -> None:
    settings = site_settings(tmp_path, nameserver)
    prepare_site(settings)
    stores = open_stores(settings)
    stores.close()  # the training log refuses every read now
    stores.audit = stores.lists = Broken()  # type: ignore[assignment]
    report = asyncio.run(run_diagnostics(stores))
    results = by_name(list(report.results))
    for name in (
        "false_positives",
        "false_negatives",
        "snapshot_fresh",
        "allow_entries",
        "gateways_seen",
    ):
        assert results[name].status == "fail" and "cannot read" in results[name].detail
        assert results[name].remedy
    assert "database down" in results["gateways_seen"].detail
    assert results["ptr:192.0.2.10"].status == "pass"


def test_http_report(tmp_path: Path, nameserver: str) -> None:
    settings = site_settings(tmp_path, nameserver)
    prepare_site(settings)
    stores = open_stores(settings)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(diagnostics_router.router)
    app.state.mailsift = stores
    try:
        with TestClient(app) as client:
            assert client.get("/v1/admin/diagnostics").status_code == 401
            response = client.get(
                "/v1/admin/diagnostics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
    finally:
        stores.close()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "warn"  # only TLS: no certificate in this test
    assert body["summary"] == {"pass": 15, "warn": 1, "fail": 0}
    tls = next(r for r in body["results"] if r["name"] == "tls")
    assert tls["status"] == "warn" and "MAILSIFT_TLS_CERTFILE" in tls["remedy"]
    assert set(body["results"][0]) == {"name", "status", "detail", "remedy"}


def run_cli(settings: Settings, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = diagnose_command(settings, console=Console(file=out, width=400), **kwargs)
    return code, out.getvalue()


def test_cli_exit_codes_and_remedies(tmp_path: Path, nameserver: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("key")
    tls = {"tls_certfile": cert, "tls_keyfile": key}
    good = site_settings(tmp_path, nameserver, **tls)
    prepare_site(good)

    code, out = run_cli(good)
    assert code == 0, out
    # The API's 16 results, led by the databases the command read.
    data = good.data_dir.absolute()
    assert f"read {data / 'mailsift.db'} and {data / 'state.db'}" in out
    assert "overall: PASS (17 pass, 0 warn, 0 fail)" in out

    code, out = run_cli(site_settings(tmp_path, nameserver))  # no certificate
    assert code == 1, out
    assert "Set MAILSIFT_TLS_CERTFILE" in out and "overall: WARN" in out

    bad = site_settings(
        tmp_path,
        nameserver,
        local_domains="good.test,bad.test",
        outbound_ips="192.0.2.10,192.0.2.20",
        **tls,
    )
    code, out = run_cli(bad)
    assert code == 2, out
    for remedy in (
        "Replace +all with -all",
        "Publish TXT _dmarc.bad.test: v=DMARC1; p=quarantine",
        "Ask whoever holds 192.0.2.20's range",
    ):
        assert remedy in out
    assert "overall: FAIL" in out

    code, out = run_cli(bad, as_json=True)
    assert code == 2
    body = json.loads(out)
    results = {r["name"]: r for r in body["results"]}
    assert body["status"] == "fail"
    assert results["spf:bad.test"]["status"] == "fail"
    assert results["dmarc:bad.test"]["status"] == "fail"
    assert results["ptr:192.0.2.20"]["status"] == "fail"
    assert results["ptr:192.0.2.20"]["remedy"]


def test_cli_without_usable_stores_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out = run_cli(Settings(data_dir=blocker / "data"))
    assert code == 2 and "no data yet" in out
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "mailsift.db").write_bytes(b"not a SQLite database" * 100)
    code, out = run_cli(Settings(data_dir=damaged))
    assert code == 2 and "cannot open" in out


# --- diagnosing creates nothing; the commands it suggests exist ----------------------------

MAILSIFT = Path(sys.executable).with_name("mailsift")


def mailsift(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed command, with only ``env``'s MAILSIFT_* settings, output unwrapped."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    return subprocess.run(
        [str(MAILSIFT), *args],
        cwd=cwd,
        env={**clean, "COLUMNS": "1000", "NO_COLOR": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_diagnosing_a_fresh_data_dir_creates_nothing(tmp_path: Path) -> None:
    # The default data dir (./data) of a directory that is not the service's.
    done = mailsift("diagnose", cwd=tmp_path, env={})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"no data yet: no training log at {tmp_path / 'data' / 'mailsift.db'}" in done.stdout
    assert "disk_space" in done.stdout and "tls" in done.stdout  # what needs no database
    assert tree(tmp_path) == set()
    # An empty data dir, named by the setting; JSON output.
    empty = tmp_path / "empty"
    empty.mkdir()
    done = mailsift("diagnose", "--json", cwd=tmp_path, env={"MAILSIFT_DATA_DIR": str(empty)})
    assert done.returncode == 2, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["results"][0]["name"] == "data" and body["results"][0]["status"] == "fail"
    assert "model_classes" not in {r["name"] for r in body["results"]}
    assert tree(tmp_path) == {"empty"}


def test_a_training_log_without_state_is_read_and_no_state_is_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = open_training_log(None, data)  # what `mailsift train` leaves before any serve
    log.close()
    before = tree(data)
    done = mailsift("diagnose", "--json", cwd=tmp_path, env={"MAILSIFT_DATA_DIR": str(data)})
    body = json.loads(done.stdout)
    results = {r["name"]: r for r in body["results"]}
    assert results["data"]["status"] == "warn"
    assert f"no state database at {data / 'state.db'}" in results["data"]["detail"]
    assert results["model_classes"]["status"] == "fail"  # read from the log: nothing learned
    assert not {"false_positives", "allow_entries", "gateways_seen"} & set(results)
    assert tree(data) == before and "state.db" not in before


def _pg_tables(url: str) -> set[str]:
    engine = create_db_engine(resolve_url(url, Path("unused")))
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def empty_pg_url(pg_database: tuple[str, str]) -> Iterator[str]:
    """A database of its own: the module's is shared with tests that fill it."""
    user, _ = pg_database
    name = f"mailsift_empty_{secrets.token_hex(6)}"
    with pg_admin(user, "test") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with pg_admin(user, "test") as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_diagnosing_an_empty_postgresql_database_creates_no_table(
    tmp_path: Path, empty_pg_url: str
) -> None:
    pg_url = empty_pg_url
    env = {"MAILSIFT_DATABASE_URL": pg_url, "MAILSIFT_DATA_DIR": str(tmp_path / "data")}
    done = mailsift("diagnose", "--json", cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    data = json.loads(done.stdout)["results"][0]
    assert (data["name"], data["status"]) == ("data", "fail")
    assert "no data yet: no training log at postgresql" in data["detail"]
    assert _pg_tables(pg_url) == set()
    assert tree(tmp_path) == set()
    # Once the log exists (what `mailsift train` leaves), it is read; no state is made.
    open_training_log(pg_url, tmp_path / "data").close()
    made = _pg_tables(pg_url)
    done = mailsift("diagnose", "--json", cwd=tmp_path, env=env)
    results = {r["name"]: r for r in json.loads(done.stdout)["results"]}
    assert results["data"]["status"] == "warn", results["data"]
    assert results["model_classes"]["status"] == "fail"
    # No state table; reading published models makes their (empty) table, which a
    # `mailsift train` that rebuilds would have made anyway.
    assert _pg_tables(pg_url) - made <= {"trainlog_models"}
    assert AUDIT_TABLE not in _pg_tables(pg_url)


_SUGGESTED = re.compile(r"`(mailsift [^`]+)`")


def _strings(path: Path) -> list[str]:
    """The string literals of a module (implicit concatenations whole), docstrings left out."""
    module = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(module)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(module)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip


def _help(*words: str) -> subprocess.CompletedProcess[str]:
    return mailsift(*words, "--help", cwd=Path.cwd(), env={})


def _commands() -> set[str]:
    """The subcommands ``mailsift --help`` lists."""
    listing = _help().stdout
    found = set(re.findall(r"^[│|]?\s+([a-z][a-z_-]*)\s{2,}\S", listing, re.M))
    assert {"serve", "diagnose", "train", "token"} <= found, listing
    return found


def _check_command(command: str, commands: set[str]) -> None:
    """``command`` (``mailsift train spam:PATH``) names a real subcommand, each option is
    one its ``--help`` lists, and it passes arguments only to a command that takes some."""
    words = command.split()
    assert words[0] == "mailsift" and words[1] in commands, f"{command}: no such command"
    path, rest = [words[1]], words[2:]
    shown = _help(*path)
    if re.search(r"^\s*Usage:.* COMMAND", shown.stdout, re.M):  # a group: the next word
        assert rest, f"{command}: {words[1]} needs a subcommand"
        path.append(rest.pop(0))
        shown = _help(*path)
    assert shown.returncode == 0, f"{command}: {shown.stderr}"
    usage = next(line for line in shown.stdout.splitlines() if "Usage:" in line)
    options = [w.split("=")[0] for w in rest if w.startswith("-")]
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", shown.stdout), (
            f"{command}: `mailsift {' '.join(path)} --help` lists no {option}"
        )
    arguments = rest[: next((i for i, w in enumerate(rest) if w.startswith("-")), len(rest))]
    if arguments:  # "Usage: mailsift train [OPTIONS] SOURCES..." names what it takes
        assert usage.partition("[OPTIONS]")[2].strip(), (
            f"{command}: `mailsift {' '.join(path)}` takes no arguments"
        )


def test_every_command_the_diagnostics_suggest_works() -> None:
    sources = sorted(Path(checks.__file__).parent.glob("*.py"))
    literals = [s for path in sources for s in _strings(path)]
    suggested = {c for s in literals for c in _SUGGESTED.findall(s)}
    commands = _commands()
    # Every mention of a command is a whole literal command, never assembled at run time
    # (which this test could not see).
    mention = re.compile(rf"\bmailsift (?:{'|'.join(sorted(commands))})\b")
    for literal in literals:
        assert not mention.search(_SUGGESTED.sub("", literal)), (
            f"a command outside backticks, or built at run time: {literal!r}"
        )
    # The remedies the checks actually give (every case above) are among them.
    given = {c for _, check, _, _ in CASES for c in _SUGGESTED.findall(check().remedy)}
    assert given <= suggested and "mailsift train spam:PATH ham:PATH" in given
    for command in sorted(suggested):
        _check_command(command, commands)


def test_the_train_commands_the_diagnostics_suggest_run(tmp_path: Path) -> None:
    """Beyond matching ``--help``: with PATH a message file, each one trains."""
    sources = sorted(Path(checks.__file__).parent.glob("*.py"))
    trains = sorted(
        c for path in sources for s in _strings(path) for c in _SUGGESTED.findall(s)
        if c.startswith("mailsift train ")
    )  # fmt: skip
    assert trains
    (tmp_path / "ham.eml").write_bytes(HAM)
    (tmp_path / "spam.eml").write_bytes(SPAM)
    for i, command in enumerate(trains):
        args = [w.replace(":PATH", f":{tmp_path / w.split(':')[0]}.eml") for w in command.split()]
        data = {"MAILSIFT_DATA_DIR": str(tmp_path / f"data{i}")}
        done = mailsift(*args[1:], cwd=tmp_path, env=data)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        assert "appended" in done.stdout and "published model" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "command",
    ["mailsift train --ham … --spam …", "mailsift trian spam:PATH", "mailsift rebuild x"],
)
def test_a_command_that_does_not_work_is_caught(command: str) -> None:
    with pytest.raises(AssertionError):
        _check_command(command, _commands())
