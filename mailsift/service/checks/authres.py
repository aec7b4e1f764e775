"""SPF, DKIM and DMARC outcomes from the trusted Authentication-Results header, as reasons.

Reads ``ctx.auth`` (an :class:`~mailsift.service.authres.AuthResults`; absent =
nothing to say). Inbound only: those results describe how a message reached us from
outside, while outbound mail is vouched for by SMTP AUTH, and a header left in a message a
user redirects would describe somebody else's delivery.

Failures weigh more than passes: spammers authenticate their own domains as diligently as
anyone, so a pass says little, while a failure for a domain that publishes a policy is
strong evidence of forgery. Forwarding breaks SPF, so an SPF or DKIM failure is not
counted when another aligned mechanism passed.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import (
    DKIM_FAIL,
    DKIM_PASS_ALIGNED,
    DMARC_FAIL,
    DMARC_PASS,
    DMARC_QUARANTINE_POLICY_FAIL,
    DMARC_REJECT_POLICY_FAIL,
    SPF_FAIL,
    SPF_SOFTFAIL,
)
from mailsift.service.checks.base import CheckContext, Reason

# Log-odds per reason (name -> weight, description); documented, tested, tuned here only.
REASONS: dict[str, tuple[float, str]] = {
    SPF_FAIL: (1.0, "SPF fail for the envelope sender, and nothing aligned passed"),
    SPF_SOFTFAIL: (0.5, "SPF softfail for the envelope sender, and nothing aligned passed"),
    DKIM_FAIL: (0.7, "a DKIM signature failed, none passed, and nothing aligned passed"),
    DMARC_FAIL: (1.0, "DMARC fail; the From domain publishes no enforcing policy"),
    DMARC_QUARANTINE_POLICY_FAIL: (
        2.5,
        "DMARC fail; the From domain asks that such mail be quarantined",
    ),
    DMARC_REJECT_POLICY_FAIL: (
        4.0,
        "DMARC fail; the From domain asks that such mail be rejected",
    ),
    DMARC_PASS: (-0.5, "DMARC pass for the From domain"),
    DKIM_PASS_ALIGNED: (-0.3, "DKIM pass for a domain aligned with From (no DMARC result)"),
}


def auth_reasons(ctx: CheckContext) -> Iterator[Reason]:
    auth = ctx.auth
    if auth is None or ctx.envelope.direction != "inbound":
        return
    if not auth.aligned_pass:
        if auth.spf == "fail":
            yield _reason(SPF_FAIL, f"spf=fail for {auth.spf_domain or 'the null sender'}")
        elif auth.spf == "softfail":
            yield _reason(SPF_SOFTFAIL, f"spf=softfail for {auth.spf_domain or 'the null sender'}")
        if auth.dkim == "fail":
            yield _reason(DKIM_FAIL, "dkim=fail")
    if auth.dmarc == "fail":
        policy = auth.dmarc_policy
        name = {"reject": DMARC_REJECT_POLICY_FAIL, "quarantine": DMARC_QUARANTINE_POLICY_FAIL}
        yield _reason(
            name.get(policy or "", DMARC_FAIL),
            f"dmarc=fail for {auth.from_domain or 'the From domain'} (p={policy or 'unknown'})",
        )
    elif auth.dmarc == "pass":
        yield _reason(DMARC_PASS, f"dmarc=pass for {auth.from_domain or 'the From domain'}")
    elif auth.dkim_aligned:
        yield _reason(
            DKIM_PASS_ALIGNED, f"dkim=pass aligned with {auth.from_domain or 'the From domain'}"
        )


def _reason(name: str, detail: str) -> Reason:
    return Reason(name, REASONS[name][0], detail)
