"""DNS audit of the organisation's mail domains and sending addresses (dnspython).

For each domain: MX hosts that resolve, one SPF record not ending in ``+all``, a DMARC
policy and its strength, MTA-STS and TLS-RPT records; for each outbound IP a PTR whose
name resolves back to it (forward-confirmed reverse DNS, which many receivers demand).

Lookups are blocking with short timeouts; call :func:`dns_audit` from a thread. It never
raises: a lookup that fails is a ``warn`` naming the error (the record may be fine, we
could not tell), a record that is missing or wrong is a ``warn`` or ``fail`` with its remedy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailsift.service.diagnostics.checks import DiagResult

__all__ = ["audit_domain", "audit_ptr", "dns_audit", "make_resolver", "parse_nameservers"]

TIMEOUT = 2.0
"""Seconds one nameserver gets per query."""
LIFETIME = 4.0
"""Seconds one lookup may take in all, retries included."""
MAX_THREADS = 8

_SPF = re.compile(r"^v=spf1(\s|$)", re.IGNORECASE)
_DMARC = re.compile(r"^v=DMARC1\s*(;|$)", re.IGNORECASE)
_STS = re.compile(r"^v=STSv1\s*(;|$)")
_TLSRPT = re.compile(r"^v=TLSRPTv1\s*(;|$)")
_ALL = re.compile(r"^([+?~-]?)all$", re.IGNORECASE)
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_RESOLVER_REMEDY = (
    "Check that the resolver (MAILSIFT_DNS_NAMESERVERS, else the system's) and the "
    "domain's nameservers answer, then run the audit again"
)


def parse_nameservers(spec: str) -> list[tuple[str, int]]:
    """``"192.0.2.53, 192.0.2.54:5353, [2001:db8::53]:53, 2001:db8::1"`` to (address, port).

    Raises ValueError naming the entry that is not an IP address with an optional port.
    """
    servers: list[tuple[str, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") or "53"
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        try:
            address = str(ipaddress.ip_address(host))
            number = int(port)
        except ValueError:
            raise ValueError(f"nameserver {item!r} is not ip or ip:port") from None
        if not 0 < number < 65536:
            raise ValueError(f"nameserver {item!r} has no valid port")
        servers.append((address, number))
    return servers


def make_resolver(
    nameservers: str = "", *, timeout: float = TIMEOUT, lifetime: float = LIFETIME
) -> dns.resolver.Resolver:
    """A resolver on the given servers, or the system's when ``nameservers`` is empty.

    Raises ValueError for a bad spec and dns.resolver.NoResolverConfiguration when the
    system has none.
    """
    servers = parse_nameservers(nameservers)
    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    resolver.cache = None  # a second run must see records fixed since the first
    return resolver


@dataclass(frozen=True, slots=True)
class _Answer:
    records: list[Any] = field(default_factory=list)
    nxdomain: bool = False
    error: str | None = None
    """Why the lookup gave no answer at all (timeout, SERVFAIL …); None when it did."""


def _ask(resolver: dns.resolver.Resolver, name: str | dns.name.Name, rdtype: str) -> _Answer:
    try:
        answer = resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return _Answer(nxdomain=True)
    except dns.resolver.NoAnswer:
        return _Answer()
    except dns.resolver.LifetimeTimeout:
        return _Answer(error=f"{rdtype} lookup of {name} timed out after {resolver.lifetime:g} s")
    except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every server
        return _Answer(error=f"{rdtype} lookup of {name} failed: {exc}")
    except dns.exception.DNSException as exc:
        return _Answer(error=f"{rdtype} lookup of {name} failed: {type(exc).__name__}: {exc}")
    return _Answer(list(answer.rrset) if answer.rrset is not None else [])


def _texts(answer: _Answer) -> list[str]:
    return [b"".join(r.strings).decode("utf-8", "replace").strip() for r in answer.records]


def _tags(record: str) -> dict[str, str]:
    """``k=v; k=v`` tag lists (DMARC, MTA-STS, TLS-RPT), names lower-cased."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def _lookup_failed(name: str, error: str) -> DiagResult:
    return DiagResult(name, "warn", error, _RESOLVER_REMEDY)


# --- per-domain checks -------------------------------------------------------------------


def _mx(resolver: dns.resolver.Resolver, domain: str) -> DiagResult:
    name = f"mx:{domain}"
    answer = _ask(resolver, domain, "MX")
    if answer.error:
        return _lookup_failed(name, answer.error)
    if answer.nxdomain:
        return DiagResult(
            name,
            "fail",
            f"{domain} does not exist in DNS (NXDOMAIN)",
            "Check the name in MAILSIFT_LOCAL_DOMAINS and the domain's delegation",
        )
    records = sorted(answer.records, key=lambda r: (r.preference, r.exchange.to_text()))
    if not records:
        return DiagResult(
            name,
            "fail",
            f"{domain} has no MX records",
            f"Publish MX records for {domain} that point at your mail gateways",
        )
    if len(records) == 1 and records[0].exchange == dns.name.root:
        return DiagResult(
            name,
            "fail",
            f"{domain} has a null MX: it accepts no mail",
            f"Publish real MX records if {domain} receives mail; else drop it from the audit",
        )
    shown: list[str] = []
    missing: list[str] = []
    errors: list[str] = []
    for record in records:
        host = record.exchange.to_text()
        addresses: list[str] = []
        failures: list[str] = []
        for rdtype in ("A", "AAAA"):
            found = _ask(resolver, record.exchange, rdtype)
            if found.error:
                failures.append(found.error)
            addresses += [r.address for r in found.records]
        if addresses:
            shown.append(f"{record.preference} {host} ({', '.join(addresses)})")
        elif failures:
            errors += failures
        else:
            missing.append(host)
    if missing:
        return DiagResult(
            name,
            "fail",
            f"MX host{'s' if len(missing) > 1 else ''} without an address: {', '.join(missing)}",
            "Give every MX host an A or AAAA record, or remove it from the MX set",
        )
    if errors:
        return _lookup_failed(name, errors[0])
    return DiagResult(name, "pass", "; ".join(shown))


def _spf(resolver: dns.resolver.Resolver, domain: str) -> DiagResult:
    name = f"spf:{domain}"
    answer = _ask(resolver, domain, "TXT")
    if answer.error:
        return _lookup_failed(name, answer.error)
    records = [t for t in _texts(answer) if _SPF.match(t)]
    if not records:
        return DiagResult(
            name,
            "fail",
            f"{domain} has no SPF record",
            f"Publish one TXT record at {domain}: v=spf1 mx -all (listing every host that sends)",
        )
    if len(records) > 1:
        return DiagResult(
            name,
            "fail",
            f"{domain} has {len(records)} SPF records: receivers treat that as an error",
            "Merge them into a single v=spf1 TXT record",
        )
    record = records[0]
    terms = record.split()[1:]
    qualifier = next((m.group(1) for t in terms if (m := _ALL.match(t))), None)
    if qualifier is None:
        if any(t.lower().startswith("redirect=") for t in terms):
            return DiagResult(name, "pass", f"{record} (policy delegated by redirect)")
        return DiagResult(
            name,
            "warn",
            f"{record}: no 'all' term, so unlisted hosts get a neutral result",
            "End the record with -all (or ~all while you collect the senders)",
        )
    if qualifier in ("", "+"):
        return DiagResult(
            name,
            "fail",
            f"{record}: +all lets any host on the internet send as {domain}",
            "Replace +all with -all (or ~all while you collect the senders)",
        )
    if qualifier == "?":
        return DiagResult(
            name,
            "warn",
            f"{record}: ?all makes unlisted hosts neutral, not suspect",
            "End the record with ~all or -all",
        )
    return DiagResult(name, "pass", record)


def _dmarc(resolver: dns.resolver.Resolver, domain: str) -> DiagResult:
    name = f"dmarc:{domain}"
    where = f"_dmarc.{domain}"
    answer = _ask(resolver, where, "TXT")
    if answer.error:
        return _lookup_failed(name, answer.error)
    publish = (
        f"Publish TXT {where}: v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain} "
        "and move to p=reject once reports show your own mail aligns"
    )
    records = [t for t in _texts(answer) if _DMARC.match(t)]
    if not records:
        return DiagResult(name, "fail", f"no DMARC record at {where}", publish)
    if len(records) > 1:
        return DiagResult(
            name,
            "fail",
            f"{len(records)} DMARC records at {where}: receivers ignore them all",
            "Keep exactly one v=DMARC1 record",
        )
    tags = _tags(records[0])
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return DiagResult(
            name,
            "fail",
            f"{records[0]}: no valid p= policy",
            "Give the record p=quarantine or p=reject",
        )
    detail = f"p={policy}"
    if "sp" in tags:
        detail += f", sp={tags['sp'].lower()}"
    pct_text = tags.get("pct", "100")
    detail += f", pct={pct_text}" + ("" if "rua" in tags else ", no rua (no aggregate reports)")
    if policy == "none":
        return DiagResult(
            name,
            "warn",
            f"{detail}: monitoring only, forged mail from {domain} is still delivered",
            "Move to p=quarantine, then p=reject, once reports show your own mail aligns",
        )
    try:
        pct = int(pct_text)
    except ValueError:
        pct = -1
    if not 0 <= pct <= 100:
        return DiagResult(
            name, "warn", f"{detail}: pct is not 0-100", "Set pct=100 or drop the tag"
        )
    if pct < 100:
        return DiagResult(
            name,
            "warn",
            f"{detail}: the policy applies to only {pct}% of failing mail",
            "Raise pct to 100 (or drop the tag)",
        )
    return DiagResult(name, "pass", detail)


def _mta_sts(resolver: dns.resolver.Resolver, domain: str) -> DiagResult:
    name = f"mta_sts:{domain}"
    where = f"_mta-sts.{domain}"
    answer = _ask(resolver, where, "TXT")
    if answer.error:
        return _lookup_failed(name, answer.error)
    remedy = (
        f"Publish TXT {where}: v=STSv1; id=<date-or-serial> and the policy file at "
        f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    )
    records = [t for t in _texts(answer) if _STS.match(t)]
    if not records:
        return DiagResult(
            name, "warn", f"no MTA-STS record at {where}: senders may skip TLS to you", remedy
        )
    if len(records) > 1:
        return DiagResult(
            name,
            "warn",
            f"{len(records)} MTA-STS records at {where}: senders ignore the policy",
            "Keep exactly one v=STSv1 record",
        )
    policy_id = _tags(records[0]).get("id", "")
    if not _STS_ID.match(policy_id):
        return DiagResult(
            name,
            "warn",
            f"{records[0]}: no valid id (1-32 letters or digits)",
            "Give the record an id, and change it whenever the policy file changes",
        )
    return DiagResult(name, "pass", f"MTA-STS policy id {policy_id}")


def _tls_rpt(resolver: dns.resolver.Resolver, domain: str) -> DiagResult:
    name = f"tls_rpt:{domain}"
    where = f"_smtp._tls.{domain}"
    answer = _ask(resolver, where, "TXT")
    if answer.error:
        return _lookup_failed(name, answer.error)
    remedy = f"Publish TXT {where}: v=TLSRPTv1; rua=mailto:tls-reports@{domain}"
    records = [t for t in _texts(answer) if _TLSRPT.match(t)]
    if not records:
        return DiagResult(
            name, "warn", f"no TLS-RPT record at {where}: TLS failures go unreported", remedy
        )
    if len(records) > 1:
        return DiagResult(
            name,
            "warn",
            f"{len(records)} TLS-RPT records at {where}: senders ignore them",
            "Keep exactly one v=TLSRPTv1 record",
        )
    rua = _tags(records[0]).get("rua", "")
    if not rua:
        return DiagResult(name, "warn", f"{records[0]}: no rua= destination", remedy)
    return DiagResult(name, "pass", f"TLS reports to {rua}")


def audit_domain(resolver: dns.resolver.Resolver, domain: str) -> list[DiagResult]:
    """MX, SPF, DMARC, MTA-STS and TLS-RPT of one mail domain; never raises."""
    domain = domain.strip().lower().rstrip(".")
    results: list[DiagResult] = []
    for check in (_mx, _spf, _dmarc, _mta_sts, _tls_rpt):
        try:
            results.append(check(resolver, domain))
        except Exception as exc:  # a malformed answer must not sink the report
            kind = check.__name__.lstrip("_")
            results.append(
                DiagResult(
                    f"{kind}:{domain}",
                    "warn",
                    f"audit failed: {type(exc).__name__}: {exc}",
                    _RESOLVER_REMEDY,
                )
            )
    return results


def audit_ptr(resolver: dns.resolver.Resolver, ip: str) -> DiagResult:
    """Forward-confirmed reverse DNS of one outbound IP; never raises."""
    name = f"ptr:{ip}"
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return DiagResult(name, "fail", f"{ip!r} is not an IP address", "Fix MAILSIFT_OUTBOUND_IPS")
    try:
        return _ptr(resolver, name, address)
    except Exception as exc:
        return DiagResult(
            name, "warn", f"audit failed: {type(exc).__name__}: {exc}", _RESOLVER_REMEDY
        )


def _ptr(
    resolver: dns.resolver.Resolver,
    name: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> DiagResult:
    ip = str(address)
    answer = _ask(resolver, dns.reversename.from_address(ip), "PTR")
    if answer.error:
        return _lookup_failed(name, answer.error)
    hosts = sorted(r.target.to_text() for r in answer.records)
    if not hosts:
        return DiagResult(
            name,
            "fail",
            f"{ip} has no PTR record: many receivers refuse or penalise its mail",
            f"Ask whoever holds {ip}'s range (ISP or hosting) for a PTR to your mail host's "
            "name, and give that name an address record pointing back at it",
        )
    rdtype = "A" if address.version == 4 else "AAAA"
    seen: list[str] = []
    for host in hosts:
        forward = _ask(resolver, host, rdtype)
        if forward.error:
            return _lookup_failed(name, forward.error)
        found = [str(ipaddress.ip_address(r.address)) for r in forward.records]
        if ip in found:
            return DiagResult(name, "pass", f"{ip} -> {host} -> {ip}")
        seen.append(f"{host} -> {', '.join(found) or 'no address'}")
    return DiagResult(
        name,
        "fail",
        f"{ip}'s PTR does not resolve back to it ({'; '.join(seen)})",
        f"Add a {rdtype} record for {hosts[0]} pointing at {ip}, or change the PTR "
        "to a name that does",
    )


# --- the whole audit ---------------------------------------------------------------------


def dns_audit(
    domains: Sequence[str],
    ips: Sequence[str],
    nameservers: str = "",
    *,
    timeout: float = TIMEOUT,
    lifetime: float = LIFETIME,
) -> list[DiagResult]:
    """Audit every domain and outbound IP, a few at a time; results in input order."""
    results: list[DiagResult] = []
    if not domains:
        results.append(
            DiagResult(
                "dns_domains",
                "warn",
                "no mail domains configured: DNS audit skipped",
                "List your mail domains in MAILSIFT_LOCAL_DOMAINS",
            )
        )
    if not ips:
        results.append(
            DiagResult(
                "ptr",
                "warn",
                "no outbound IPs configured: reverse DNS not audited",
                "List the addresses your mail leaves from in MAILSIFT_OUTBOUND_IPS",
            )
        )
    if not domains and not ips:
        return results
    try:
        make_resolver(nameservers, timeout=timeout, lifetime=lifetime)
    except ValueError as exc:
        return [
            *results,
            DiagResult("dns_resolver", "fail", str(exc), "Fix MAILSIFT_DNS_NAMESERVERS"),
        ]
    except Exception as exc:  # NoResolverConfiguration and friends
        return [
            *results,
            DiagResult(
                "dns_resolver",
                "warn",
                f"no resolver: {type(exc).__name__}: {exc}",
                "Set MAILSIFT_DNS_NAMESERVERS to a resolver this host can reach",
            ),
        ]

    def domain_job(domain: str) -> list[DiagResult]:
        return audit_domain(make_resolver(nameservers, timeout=timeout, lifetime=lifetime), domain)

    def ptr_job(ip: str) -> list[DiagResult]:
        return [audit_ptr(make_resolver(nameservers, timeout=timeout, lifetime=lifetime), ip)]

    jobs = [(domain_job, d) for d in domains] + [(ptr_job, ip) for ip in ips]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(jobs))) as pool:
        futures = [pool.submit(job, arg) for job, arg in jobs]
        for future in futures:
            results.extend(future.result())
    return results
