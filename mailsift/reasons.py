"""Reason names, defined once: the checks emit them, the verdict, the audit trail, the
metrics and the gateways act on them, and the tests look for them.

Fixed names are constants; families whose member is data (a leak type, a sending
limit, a parser defect) have a prefix and a function that builds the name. No imports:
the gateway daemons use this module too.
"""

from __future__ import annotations

__all__ = [
    "ACCOUNT_PREFIX",
    "ACCOUNT_SUSPENDED",
    "ACCOUNT_WATCH",
    "ALIAS_EXPIRED",
    "ALIAS_FOREIGN_SENDER",
    "ALIAS_RECIPIENT",
    "ALLOWLISTED",
    "ALLOWLIST_UNVERIFIED",
    "BLOCKLISTED",
    "DKIM_FAIL",
    "DKIM_PASS_ALIGNED",
    "DLP_PREFIX",
    "DMARC_FAIL",
    "DMARC_PASS",
    "DMARC_QUARANTINE_POLICY_FAIL",
    "DMARC_REJECT_POLICY_FAIL",
    "GATEWAY_TRUNCATED",
    "LABELLED_HAM",
    "LABELLED_SPAM",
    "LIMITS_UNAVAILABLE",
    "LIMIT_PREFIX",
    "MIME_PREFIX",
    "MODEL",
    "MODEL_LEARNING",
    "PERSONAL_NOT_SPAM",
    "PERSONAL_REPORT",
    "PERSONAL_SENDER",
    "PERSONAL_SENDER_TRUSTED",
    "SPF_FAIL",
    "SPF_SOFTFAIL",
    "dlp_reason",
    "limit_reason",
    "mime_reason",
]

# -- the model -----------------------------------------------------------------------------
MODEL = "model"
"""The model's opinion (its log-odds are the reason's weight)."""
MODEL_LEARNING = "model_learning"
"""The model has not learned enough yet; its opinion does not count."""

# -- what the gateway sent ----------------------------------------------------------------
GATEWAY_TRUNCATED = "gateway_truncated"
"""The gateway sent only the start of a message larger than its limit: the rest was not
scanned, so the message is never learned from."""

# -- labels of this very message -----------------------------------------------------------
LABELLED_SPAM = "labelled_spam"
LABELLED_HAM = "labelled_ham"

# -- allow and block lists -----------------------------------------------------------------
BLOCKLISTED = "blocklisted"
ALLOWLISTED = "allowlisted"
ALLOWLIST_UNVERIFIED = "allowlist_unverified"

# -- temporary addresses (aliases) --------------------------------------------------------
ALIAS_RECIPIENT = "alias_recipient"
"""A recipient is a live temporary address (its traffic shows in the audit trail)."""
ALIAS_FOREIGN_SENDER = "alias_foreign_sender"
"""A temporary address got mail from a sender unrelated to the one it was made for."""
ALIAS_EXPIRED = "alias_expired"
"""A recipient is a temporary address that expired or was deleted: refused to it."""

# -- the sender's account ------------------------------------------------------------------
ACCOUNT_PREFIX = "account_"
ACCOUNT_SUSPENDED = "account_suspended"
ACCOUNT_WATCH = "account_watch"

# -- a recipient's own reports -------------------------------------------------------------
PERSONAL_REPORT = "personal_report"
PERSONAL_NOT_SPAM = "personal_not_spam"
PERSONAL_SENDER = "personal_sender"
PERSONAL_SENDER_TRUSTED = "personal_sender_trusted"

# -- authentication results ----------------------------------------------------------------
SPF_FAIL = "spf_fail"
SPF_SOFTFAIL = "spf_softfail"
DKIM_FAIL = "dkim_fail"
DMARC_FAIL = "dmarc_fail"
DMARC_QUARANTINE_POLICY_FAIL = "dmarc_quarantine_policy_fail"
DMARC_REJECT_POLICY_FAIL = "dmarc_reject_policy_fail"
DMARC_PASS = "dmarc_pass"
DKIM_PASS_ALIGNED = "dkim_pass_aligned"

# -- sending limits ------------------------------------------------------------------------
LIMITS_UNAVAILABLE = "limit_unavailable"
"""Outbound: the sender's limits could not be checked (the state database is away), so
the message is deferred: the gateway retries it, and nothing leaves uncounted."""

# -- families ------------------------------------------------------------------------------
DLP_PREFIX = "dlp_"
LIMIT_PREFIX = "limit_"
MIME_PREFIX = "mime_"


def dlp_reason(finding_type: str) -> str:
    """A leak of one type: ``dlp_card``, ``dlp_iban`` …"""
    return DLP_PREFIX + finding_type


def limit_reason(limit: str) -> str:
    """A sending limit reached: ``limit_messages_per_hour`` …"""
    return LIMIT_PREFIX + limit


def mime_reason(defect: str) -> str:
    """A structure defect the parser noted: ``mime_too_deep`` (``mime_defects`` as is)."""
    return defect if defect.startswith(MIME_PREFIX) else MIME_PREFIX + defect
