"""Private keys and cloud and API credentials, found by their fixed prefixes and shapes."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

from mailsift.service.dlp.detectors.base import (
    CONTEXT_RADIUS,
    Hit,
    Segment,
    clamp,
    near,
    words,
)
from mailsift.service.dlp.redact import (
    redact_password,
    redact_prefix,
)
from mailsift.service.dlp.validate import (
    jwt_header_alg,
    looks_random,
)

__all__ = [
    "find_aws_access_keys",
    "find_aws_secret_keys",
    "find_github_tokens",
    "find_google_api_keys",
    "find_jwts",
    "find_private_keys",
    "find_slack_tokens",
    "find_stripe_keys",
]


# --- PEM private keys ----------------------------------------------------------------------

_PEM = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,2}PRIVATE KEY(?: BLOCK)?)-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}-----")
_PEM_MAX_BODY = 16000
_B64 = re.compile(r"[A-Za-z0-9+/=]+")


def find_private_keys(seg: Segment) -> Iterator[Hit]:
    """PEM/PGP private key blocks with a real base64 body (not a ``...`` placeholder).

    A body ends at the next ``-----`` (its END line, or the next block's BEGIN), so every
    character is examined once however many headers a hostile text repeats.
    """
    text = seg.text
    if "PRIVATE KEY" not in text:
        return
    for m in _PEM.finditer(text):
        stop = text.find("-----", m.end(), m.end() + _PEM_MAX_BODY)
        if stop < 0:
            stop = min(len(text), m.end() + _PEM_MAX_BODY)
        lines = [ln.strip() for ln in text[m.end() : stop].splitlines()]
        body = "".join(ln for ln in lines if ln and ":" not in ln)  # skip Proc-Type: etc.
        b64 = "".join(_B64.findall(body))
        if len(b64) < 64 or len(b64) < 0.95 * len(body.replace(" ", "")):
            continue
        end_m = _PEM_END.match(text, stop)
        end = end_m.end() if end_m else stop
        yield Hit(b64[:64], redact_prefix(f"-----BEGIN {m.group(1)}----- "), 0.97, m.start(), end)


# --- cloud and API credentials -------------------------------------------------------------

_AWS_KEY_ID = re.compile(r"(?<![A-Za-z0-9])(AKIA|ASIA)([A-Z0-9]{16})(?![A-Za-z0-9])")
_AWS_WORDS = words(
    "aws", "amazon", "access key", "access_key", "access_key_id", "aws_access_key_id", "key id",
    "iam", "s3", "credentials", "secret", "secret_access_key", "aws_secret_access_key",
)  # fmt: skip


def find_aws_access_keys(seg: Segment) -> Iterator[Hit]:
    """AWS access key ids: ``AKIA`` (long-term) or ``ASIA`` (temporary) and 16 characters."""
    text = seg.text
    if "AKIA" not in text and "ASIA" not in text:
        return
    for m in _AWS_KEY_ID.finditer(text):
        if not looks_random(m.group(2)):
            continue
        conf = 0.85 + (0.1 if near(seg, m.start(), m.end(), _AWS_WORDS) else 0.0)
        yield Hit(m.group(), redact_prefix(m.group(1)), clamp(conf), m.start(), m.end())


_AWS_SECRET = re.compile(
    r"[A-Za-z0-9/+](?<![A-Za-z0-9/+][A-Za-z0-9/+])[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_WORDS = words("aws", "secret", "secret_access_key", "secretaccesskey", "secret key")


_B64_CHARS = frozenset(string.ascii_letters + string.digits + "/+=")
_AWS_SECRET_REACH = CONTEXT_RADIUS + 50


def _aws_secret_candidates(seg: Segment) -> Iterator[re.Match[str]]:
    """40-character candidates, searched only around the words that must be near them."""
    text, low = seg.text, seg.lower
    if len(low) != len(text):
        yield from _AWS_SECRET.finditer(text)
        return
    windows: list[list[int]] = []
    for word in ("aws", "secret"):
        i = low.find(word)
        while i >= 0:
            windows.append([max(0, i - _AWS_SECRET_REACH), i + _AWS_SECRET_REACH])
            i = low.find(word, i + 1)
    windows.sort()
    merged: list[list[int]] = []
    for window in windows:
        if merged and window[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], window[1])
        else:
            merged.append(window)
    for lo, hi in merged:
        for m in _AWS_SECRET.finditer(text, lo, hi):
            # The window's end is not the token's: check the real next character.
            if m.end() == len(text) or text[m.end()] not in _B64_CHARS:
                yield m


def find_aws_secret_keys(seg: Segment) -> Iterator[Hit]:
    """AWS secret keys: 40 base64 characters, mixed, only next to an AWS/secret label.

    Forty such characters alone could be anything (a hash, a base64 line), so the label
    nearby is required, not just a bonus.
    """
    for m in _aws_secret_candidates(seg):
        value = m.group()
        if not (
            any(c.isupper() for c in value)
            and any(c.islower() for c in value)
            and any(c.isdigit() for c in value)
            and looks_random(value)
        ):
            continue
        if not near(seg, m.start(), m.end(), _AWS_SECRET_WORDS):
            continue
        yield Hit(value, redact_password(), 0.9, m.start(), m.end())


_GITHUB = re.compile(
    r"(?<![A-Za-z0-9_])(?:(gh[pousr]_)([A-Za-z0-9]{36})|(github_pat_)([A-Za-z0-9]{22}_[A-Za-z0-9]{59}))"
    r"(?![A-Za-z0-9_])"
)


_GITHUB_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")


def find_github_tokens(seg: Segment) -> Iterator[Hit]:
    """GitHub tokens: ``ghp_ gho_ ghu_ ghs_ ghr_`` + 36, or fine-grained ``github_pat_``."""
    text = seg.text
    if not any(prefix in text for prefix in _GITHUB_PREFIXES):
        return
    for m in _GITHUB.finditer(text):
        prefix = m.group(1) or m.group(3)
        body = m.group(2) or m.group(4)
        if looks_random(body):
            yield Hit(m.group(), redact_prefix(prefix), 0.97, m.start(), m.end())


_SLACK = re.compile(r"(?<![A-Za-z0-9_-])(xox[baprs]-)((?:\d+-){1,4}[A-Za-z0-9]{16,64})(?![\w-])")


def find_slack_tokens(seg: Segment) -> Iterator[Hit]:
    """Slack tokens: ``xoxb- xoxp- xoxa- xoxr- xoxs-``, numeric ids, a random tail."""
    text = seg.text
    if "xox" not in text:
        return
    for m in _SLACK.finditer(text):
        if looks_random(m.group(2).rpartition("-")[2]):
            yield Hit(m.group(), redact_prefix(m.group(1)), 0.95, m.start(), m.end())


_STRIPE = re.compile(r"(?<![A-Za-z0-9_])((?:sk|rk)_live_)([0-9A-Za-z]{24,247})(?![A-Za-z0-9_])")


def find_stripe_keys(seg: Segment) -> Iterator[Hit]:
    """Stripe live secret and restricted keys (test keys move no money and are ignored)."""
    text = seg.text
    if "_live_" not in text:
        return
    for m in _STRIPE.finditer(text):
        if looks_random(m.group(2)):
            yield Hit(m.group(), redact_prefix(m.group(1)), 0.97, m.start(), m.end())


_GOOGLE = re.compile(r"(?<![A-Za-z0-9_-])AIza([0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])")
_GOOGLE_WORDS = words("google", "api key", "api_key", "apikey", "key", "maps", "firebase", "gcp")


def find_google_api_keys(seg: Segment) -> Iterator[Hit]:
    """Google API keys: ``AIza`` and 35 URL-safe characters."""
    text = seg.text
    if "AIza" not in text:
        return
    for m in _GOOGLE.finditer(text):
        if looks_random(m.group(1)):
            conf = 0.85 + (0.1 if near(seg, m.start(), m.end(), _GOOGLE_WORDS) else 0.0)
            yield Hit(m.group(), redact_prefix("AIza"), clamp(conf), m.start(), m.end())


_JWT = re.compile(
    r"(?<![A-Za-z0-9_.-])(eyJ[A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{16,})"
    r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
)
# Signatures of the tokens printed in JWT documentation (jwt.io, RFC 7519 examples).
_JWT_EXAMPLE_SIGNATURES = frozenset(
    {
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "KMUFsIDTnFmyG3nMiGM6H9FNFUROf3wh7SmqJp-QV30",
    }
)
_ALG_SAFE = re.compile(r"[A-Za-z0-9]{1,10}")


def find_jwts(seg: Segment) -> Iterator[Hit]:
    """JSON web tokens: three base64url parts; header and payload decode to JSON, with ``alg``."""
    text = seg.text
    if "eyJ" not in text:
        return
    for m in _JWT.finditer(text):
        header, payload, signature = m.groups()
        if signature in _JWT_EXAMPLE_SIGNATURES:
            continue
        alg = jwt_header_alg(header, payload)
        if alg is None:
            continue
        shown = f" ({alg})" if _ALG_SAFE.fullmatch(alg) else ""
        yield Hit(m.group(), redact_prefix("eyJ") + shown, 0.9, m.start(), m.end())
