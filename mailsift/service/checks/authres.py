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

from mailsift.service.checks.base import CheckContext, Reason

# Log-odds per reason (name -> weight, description); documented, tested, tuned here only.
REASONS: dict[str, tuple[float, str]] = {
    "spf_fail": (1.0, "SPF fail for the envelope sender, and nothing aligned passed"),
    "spf_softfail": (0.5, "SPF softfail for the envelope sender, and nothing aligned passed"),
    "dkim_fail": (0.7, "a DKIM signature failed, none passed, and nothing aligned passed"),
    "dmarc_fail": (1.0, "DMARC fail; the From domain publishes no enforcing policy"),
    "dmarc_quarantine_policy_fail": (
        2.5,
        "DMARC fail; the From domain asks that such mail be quarantined",
    ),
    "dmarc_reject_policy_fail": (
        4.0,
        "DMARC fail; the From domain asks that such mail be rejected",
    ),
    "dmarc_pass": (-0.5, "DMARC pass for the From domain"),
    "dkim_pass_aligned": (-0.3, "DKIM pass for a domain aligned with From (no DMARC result)"),
}


def auth_reasons(ctx: CheckContext) -> Iterator[Reason]:
    auth = ctx.auth
    if auth is None or ctx.envelope.direction != "inbound":
        return
    if not auth.aligned_pass:
        if auth.spf == "fail":
            yield _reason("spf_fail", f"spf=fail for {auth.spf_domain or 'the null sender'}")
        elif auth.spf == "softfail":
            yield _reason(
                "spf_softfail", f"spf=softfail for {auth.spf_domain or 'the null sender'}"
            )
        if auth.dkim == "fail":
            yield _reason("dkim_fail", "dkim=fail")
    if auth.dmarc == "fail":
        policy = auth.dmarc_policy
        name = {"reject": "dmarc_reject_policy_fail", "quarantine": "dmarc_quarantine_policy_fail"}
        yield _reason(
            name.get(policy or "", "dmarc_fail"),
            f"dmarc=fail for {auth.from_domain or 'the From domain'} (p={policy or 'unknown'})",
        )
    elif auth.dmarc == "pass":
        yield _reason("dmarc_pass", f"dmarc=pass for {auth.from_domain or 'the From domain'}")
    elif auth.dkim_aligned:
        yield _reason(
            "dkim_pass_aligned", f"dkim=pass aligned with {auth.from_domain or 'the From domain'}"
        )


def _reason(name: str, detail: str) -> Reason:
    return Reason(name, REASONS[name][0], detail)
