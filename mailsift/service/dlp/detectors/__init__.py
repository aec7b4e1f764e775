"""One detector per kind of sensitive value: a regex finds candidates, code validates them.

Every detector first asks a question that costs next to nothing (enough digits? the
literal prefix present?) so that the common message, which holds none of these values,
costs a few substring scans. Candidates that pass their validator get a confidence:
a base for how strong the validation is, raised by context words within
:data:`CONTEXT_RADIUS` characters (``card``, ``IBAN``, ``SSN`` …) and lowered by words that
mark other numbers (``order``, ``tracking``, ``phone`` …). The scan drops hits below the
configured minimum confidence.
"""

from __future__ import annotations

from mailsift.service.dlp.detectors.base import CONTEXT_RADIUS, Detector, Hit, Segment, Severity
from mailsift.service.dlp.detectors.credentials import (
    find_aws_access_keys,
    find_aws_secret_keys,
    find_github_tokens,
    find_google_api_keys,
    find_jwts,
    find_private_keys,
    find_slack_tokens,
    find_stripe_keys,
)
from mailsift.service.dlp.detectors.numbers import find_cards, find_ibans, find_ssns
from mailsift.service.dlp.detectors.passwords import find_passwords
from mailsift.service.dlp.detectors.rules import (
    dictionary_detector,
    label_detector,
    pattern_detector,
)

__all__ = [
    "BUILTIN_DETECTORS",
    "BUILTIN_TYPES",
    "CONTEXT_RADIUS",
    "Detector",
    "Hit",
    "Segment",
    "Severity",
    "dictionary_detector",
    "label_detector",
    "pattern_detector",
]

# Priority order: where two hits overlap, the earlier detector's wins (a key inside a
# PEM block is that block; an IBAN's digits are not also a card number).
BUILTIN_DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", "high", "private key", find_private_keys),
    Detector("jwt", "medium", "JSON web token", find_jwts),
    Detector("github_token", "high", "GitHub token", find_github_tokens),
    Detector("slack_token", "high", "Slack token", find_slack_tokens),
    Detector("stripe_key", "high", "Stripe live key", find_stripe_keys),
    Detector("google_api_key", "medium", "Google API key", find_google_api_keys),
    Detector("aws_access_key", "medium", "AWS access key id", find_aws_access_keys),
    Detector("aws_secret_key", "high", "AWS secret key", find_aws_secret_keys),
    Detector("iban", "low", "IBAN", find_ibans),
    Detector("card", "medium", "payment card number", find_cards),
    Detector("ssn", "medium", "US social security number", find_ssns),
    Detector("password", "medium", "clear-text password", find_passwords),
)
BUILTIN_TYPES = frozenset(d.type for d in BUILTIN_DETECTORS) | {"label"}
