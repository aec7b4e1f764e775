"""SPF, DKIM and DMARC outcomes from the trusted ``Authentication-Results`` header (RFC 8601).

Only headers whose authserv-id equals ``settings.authserv_id`` count: anyone can write an
``Authentication-Results`` header, and only our own border MTA's is evidence. RFC 8601 §5
requires that MTA to delete incoming headers that claim its authserv-id; should one slip
through anyway, conflicting SPF or DMARC results resolve to the *worse* one, so a forged
header can hurt its sender but never vouch for it.

The parser is ours rather than PyPI's ``authres`` (1.2.0, last released 2019): that one
rejects a whole header for a trailing ``;`` or a UTF-8 domain and misreads an empty
``smtp.mailfrom=""``, where a gateway needs every result it can still read. This one
never raises: a malformed result is skipped, the rest of the header still counts.

>>> r = evaluate(
...     [("authentication-results",
...       "mx.example.net; spf=fail smtp.mailfrom=bounce.shop.example; "
...       "dkim=pass (good) header.d=mail.shop.example; dmarc=pass header.from=shop.example")],
...     "news@shop.example", "mx.example.net")
>>> (r.spf, r.dkim, r.dmarc, r.dkim_domains, r.aligned_pass)
('fail', 'pass', 'pass', ('mail.shop.example',), True)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import idna
from publicsuffixlist import PublicSuffixList

if TYPE_CHECKING:
    from mailsift.models.parse import ParsedMessage
    from mailsift.service.settings import Settings

__all__ = [
    "NO_AUTH",
    "AuthResults",
    "ResInfo",
    "ResultsHeader",
    "aligned",
    "ascii_domain",
    "auth_results",
    "evaluate",
    "is_public_suffix",
    "org_domain",
    "parse_header",
]

HEADER = "authentication-results"
MAX_RESULTS_PER_HEADER = 64
MAX_TRUSTED_HEADERS = 16

# Worst first; a result outside these is not one RFC 8601 registers, and is ignored.
_SPF_RANK = ("fail", "softfail", "permerror", "temperror", "neutral", "policy", "none", "pass")
_DKIM_RANK = ("fail", "permerror", "temperror", "policy", "neutral", "none", "pass")
_DMARC_RANK = ("fail", "permerror", "temperror", "none", "pass")
_ALIASES = {"hardfail": "fail"}  # RFC 5451's spelling, still emitted by old filters
_POLICIES = frozenset({"none", "quarantine", "reject"})
_COMMENT_POLICY = re.compile(r"(?i)(?:^|[\s;(])(?:p|policy)\s*=\s*([a-z]+)")


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One ``method=result`` with its reason, properties (``ptype.property``) and comments."""

    method: str
    result: str
    reason: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    comments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResultsHeader:
    authserv_id: str
    results: tuple[ResInfo, ...]


@dataclass(frozen=True, slots=True)
class AuthResults:
    """What the trusted headers say about the message's sender."""

    spf: str | None
    """Worst SPF result among trusted headers; None = nothing trusted says."""
    dkim: str | None
    """``pass`` if any signature passed, else the worst signature result."""
    dmarc: str | None
    spf_domain: str | None
    """The domain SPF checked: ``smtp.mailfrom``'s, or ``smtp.helo`` for a null sender."""
    dkim_domains: tuple[str, ...]
    """Signing domains (``header.d``) of the signatures that passed."""
    from_domain: str | None
    aligned_pass: bool
    """SPF or DKIM passed for a domain aligned (same organisational domain) with From,
    or the trusted MTA's own DMARC evaluation passed for this From domain."""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    dmarc_policy: str | None = None
    """The From domain's published DMARC policy as the MTA reported it (none/quarantine/reject)."""
    trusted_headers: int = 0


NO_AUTH = AuthResults(None, None, None, None, (), None, False)


def auth_results(message: ParsedMessage, settings: Settings) -> AuthResults:
    """The edge's entry point: what to put in ``CheckContext.auth`` for one message."""
    return evaluate(message.headers, message.from_addr, settings.authserv_id)


def evaluate(
    headers: Iterable[tuple[str, str]], from_addr: str | None, authserv_id: str | None
) -> AuthResults:
    """Combine every trusted header's results; with no ``authserv_id`` nothing is trusted."""
    from_domain = _domain_of(from_addr or "")
    trusted_id = _norm_id(authserv_id or "")
    if not trusted_id:
        return _empty(from_domain)
    results: list[ResInfo] = []
    trusted = 0
    for name, value in headers:
        if name != HEADER or trusted >= MAX_TRUSTED_HEADERS:
            continue
        parsed = parse_header(value)
        if parsed is not None and _norm_id(parsed.authserv_id) == trusted_id:
            trusted += 1
            results.extend(parsed.results)
    if not trusted:
        return _empty(from_domain)
    return _combine(results, from_domain, trusted)


def parse_header(value: str) -> ResultsHeader | None:
    """One header value; None when it has no authserv-id. Never raises."""
    try:
        segments = _lex(value)
    except Exception:  # pragma: no cover - the lexer has no failing path; belt and braces
        return None
    head = segments[0][0]
    if not head or head[0][0] not in ("w", "q") or any(kind == "=" for kind, _ in head):
        return None  # no authserv-id (Microsoft's headers omit it): cannot be ours
    authserv_id = head[0][1].strip()
    if not authserv_id:
        return None
    results = []
    for tokens, comments in segments[1 : MAX_RESULTS_PER_HEADER + 1]:
        info = _resinfo(tokens, comments)
        if info is not None:
            results.append(info)
    return ResultsHeader(authserv_id, tuple(results))


def org_domain(domain: str) -> str:
    """Organisational domain (public suffix + one label), the unit of relaxed alignment."""
    return _psl().privatesuffix(domain) or domain


def is_public_suffix(domain: str) -> bool:
    """``com``, ``co.uk``, ``github.io``: anyone can register a name directly under it."""
    return _psl().privatesuffix(domain) is None


def aligned(a: str | None, b: str | None) -> bool:
    """DMARC relaxed alignment: both domains share an organisational domain."""
    if not a or not b:
        return False
    return a == b or org_domain(a) == org_domain(b)


# --- combining ---------------------------------------------------------------------------


def _empty(from_domain: str | None) -> AuthResults:
    return AuthResults(None, None, None, None, (), from_domain, False)


def _combine(results: Sequence[ResInfo], from_domain: str | None, trusted: int) -> AuthResults:
    spf = _worst([r for r in results if r.method == "spf"], _SPF_RANK)
    dmarc = _worst([r for r in results if r.method == "dmarc"], _DMARC_RANK)
    dkims = [r for r in results if r.method == "dkim" and r.result in _DKIM_RANK]

    spf_domain = None
    if spf is not None:
        spf_domain = _domain_of(spf.props.get("smtp.mailfrom", "")) or _domain_of(
            spf.props.get("smtp.helo", "")
        )
    dkim_domains = tuple(
        dict.fromkeys(
            d
            for r in dkims
            if r.result == "pass"
            and (
                d := _domain_of(r.props.get("header.d", ""))
                or _domain_of(r.props.get("header.i", ""))
            )
        )
    )
    if any(r.result == "pass" for r in dkims):
        dkim: str | None = "pass"
    else:
        worst = _worst(dkims, _DKIM_RANK)
        dkim = worst.result if worst else None

    spf_aligned = spf is not None and spf.result == "pass" and aligned(spf_domain, from_domain)
    dkim_aligned = any(aligned(d, from_domain) for d in dkim_domains)
    dmarc_aligned = (
        dmarc is not None
        and dmarc.result == "pass"
        and from_domain is not None
        and _domain_of(dmarc.props.get("header.from", "")) == from_domain
    )
    return AuthResults(
        spf=spf.result if spf else None,
        dkim=dkim,
        dmarc=dmarc.result if dmarc else None,
        spf_domain=spf_domain,
        dkim_domains=dkim_domains,
        from_domain=from_domain,
        aligned_pass=spf_aligned or dkim_aligned or dmarc_aligned,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
        dmarc_policy=_dmarc_policy(dmarc) if dmarc else None,
        trusted_headers=trusted,
    )


def _worst(results: Sequence[ResInfo], rank: tuple[str, ...]) -> ResInfo | None:
    known = [r for r in results if r.result in rank]
    return min(known, key=lambda r: rank.index(r.result)) if known else None


def _dmarc_policy(info: ResInfo) -> str | None:
    # rspamd and others: policy.dmarc=reject; OpenDMARC and Gmail: a comment "(p=reject ...)".
    policy = info.props.get("policy.dmarc", "").lower()
    if policy in _POLICIES:
        return policy
    for comment in info.comments:
        found = _COMMENT_POLICY.search(comment)
        if found and found.group(1).lower() in _POLICIES:
            return found.group(1).lower()
    return None


def _domain_of(value: str) -> str | None:
    """The domain of an address, ``@domain`` or bare domain, lower-case ASCII; None if none."""
    value = value.strip().strip("<>").strip()
    domain = value.rpartition("@")[2].strip().rstrip(".")
    if not domain or any(c.isspace() for c in domain) or len(domain) > 255:
        return None
    return ascii_domain(domain)


@lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """Lower-case, IDNA (punycode) form, so ``bücher.de`` and ``xn--bcher-kva.de`` compare equal."""
    domain = domain.lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except Exception:
        return domain


def _norm_id(value: str) -> str:
    return value.strip().strip('"').strip().rstrip(".").lower()


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the packaged list; loads once (~30 ms), then thread-safe


# --- lexing and parsing ------------------------------------------------------------------

# A token is ("w", word), ("q", quoted string) or ("=", "=").
Token = tuple[str, str]
Segment = tuple[list[Token], list[str]]


def _lex(value: str) -> list[Segment]:
    """Split at ``;`` outside quotes and comments; keep comments apart (DMARC's ``p=``)."""
    segments: list[Segment] = [([], [])]
    word: list[str] = []
    n = len(value)
    i = 0

    def end_word() -> None:
        if word:
            segments[-1][0].append(("w", "".join(word)))
            word.clear()

    while i < n:
        c = value[i]
        if c == "(":
            end_word()
            depth, i, text = 1, i + 1, []
            while i < n and depth:
                ch = value[i]
                if ch == "\\" and i + 1 < n:
                    text.append(value[i + 1])
                    i += 2
                    continue
                depth += 1 if ch == "(" else -1 if ch == ")" else 0
                if depth:
                    text.append(ch)
                i += 1
            segments[-1][1].append("".join(text))
        elif c == '"':
            end_word()
            i, text = i + 1, []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                text.append(value[i])
                i += 1
            i += 1
            segments[-1][0].append(("q", "".join(text)))
        elif c == ";":
            end_word()
            segments.append(([], []))
            i += 1
        elif c == "=" and word and _is_padding(value, i, segments[-1][0]):
            word.append(c)  # base64 padding of an unquoted header.b=...==
            i += 1
        elif c == "=":
            end_word()
            segments[-1][0].append(("=", "="))
            i += 1
        elif c.isspace():
            end_word()
            i += 1
        else:
            word.append(c)
            i += 1
    end_word()
    return [(_join_dotted(tokens), comments) for tokens, comments in segments]


def _is_padding(value: str, i: int, tokens: list[Token]) -> bool:
    """An ``=`` that ends a value (``b=ab+c==``) rather than separating a key from its value."""
    in_value = bool(tokens) and tokens[-1][0] == "="
    following = value[i + 1 : i + 2]
    return in_value and (not following or following in '=;()"' or following.isspace())


def _join_dotted(tokens: list[Token]) -> list[Token]:
    """``smtp . mailfrom`` and ``dkim / 1``: CFWS may surround ``.`` and ``/``."""
    out: list[Token] = []
    for kind, text in tokens:
        if (
            kind == "w"
            and out
            and out[-1][0] == "w"
            and (out[-1][1].endswith((".", "/")) or text.startswith((".", "/")))
        ):
            out[-1] = ("w", out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def _resinfo(tokens: list[Token], comments: list[str]) -> ResInfo | None:
    pairs = _pairs(tokens)
    if not pairs:
        return None
    method, result = pairs[0]
    method = method.partition("/")[0].strip().lower()
    result = result.strip().lower()
    result = _ALIASES.get(result, result)
    if not method or not result or not _KEYWORD.fullmatch(method):
        return None
    reason = None
    props: dict[str, str] = {}
    for key, value in pairs[1:]:
        key = key.lower()
        if key == "reason" and reason is None:
            reason = value
        elif key not in props:
            props[key] = value  # ptype.property, or a vendor's bare key (Microsoft's action=)
    return ResInfo(method, result, reason, props, tuple(comments))


_KEYWORD = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _pairs(tokens: list[Token]) -> list[tuple[str, str]]:
    """``key=value`` pairs in order; a key directly followed by another key has value ``""``."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(tokens)
    while i < n:
        kind, text = tokens[i]
        if kind == "w" and i + 1 < n and tokens[i + 1][0] == "=":
            value = ""
            j = i + 2
            if j < n and tokens[j][0] in ("w", "q"):
                takes_next_key = tokens[j][0] == "w" and j + 1 < n and tokens[j + 1][0] == "="
                if not takes_next_key:
                    value = tokens[j][1]
                    j += 1
            pairs.append((text, value))
            i = j
        else:
            if not pairs:
                return []  # a resinfo must start with method=result
            i += 1  # a stray word between properties: skip it, keep the rest
    return pairs
