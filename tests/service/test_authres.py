"""Authentication-Results (RFC 8601): parsing real headers, trust, alignment, and the check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsift.models.ensemble import Score
from mailsift.models.parse import parse_message
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
from mailsift.service.authres import (
    NO_AUTH,
    AuthResults,
    auth_results,
    evaluate,
    parse_header,
)
from mailsift.service.checks.authres import REASONS, auth_reasons
from mailsift.service.checks.base import CheckContext, Direction, Envelope
from mailsift.service.settings import Settings

ME = "mx.example.net"

GMAIL = (
    "mx.google.com; dkim=pass header.i=@shop.example header.s=s1 header.b=Ab+C/d==; "
    "spf=pass (google.com: domain of bounce@mail.shop.example designates 192.0.2.1 as "
    "permitted sender) smtp.mailfrom=bounce@mail.shop.example; "
    "dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=shop.example"
)
MICROSOFT = (
    "spf=pass (sender IP is 192.0.2.7) smtp.mailfrom=contoso.example; dkim=pass (signature "
    "was verified) header.d=contoso.example;dmarc=pass action=none "
    "header.from=contoso.example;compauth=pass reason=100"
)
RSPAMD = (
    f'{ME}; dkim=pass header.d=shop.example header.s=dkim header.b="kc1/0dRx"; '
    "spf=pass (mx.example.net: domain of bounce@shop.example designates 192.0.2.1 as "
    "permitted sender) smtp.mailfrom=bounce@shop.example; dmarc=pass (policy=reject) "
    "header.from=shop.example"
)


def headers(*values: str) -> list[tuple[str, str]]:
    return [("authentication-results", v) for v in values]


# --- parsing --------------------------------------------------------------------------------


def test_gmail_header_parses_with_comments_and_base64() -> None:
    parsed = parse_header(GMAIL)
    assert parsed is not None
    assert parsed.authserv_id == "mx.google.com"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"),
        ("spf", "pass"),
        ("dmarc", "pass"),
    ]
    dkim, spf, dmarc = parsed.results
    assert dkim.props["header.b"] == "Ab+C/d=="
    assert dkim.props["header.i"] == "@shop.example"
    assert spf.props["smtp.mailfrom"] == "bounce@mail.shop.example"
    assert "designates 192.0.2.1" in spf.comments[0]
    assert dmarc.comments == ("p=REJECT sp=REJECT dis=NONE",)


def test_microsoft_header_without_authserv_id_is_nobodys() -> None:
    assert parse_header(MICROSOFT) is None
    assert evaluate(headers(MICROSOFT), "a@contoso.example", "spf=pass") == evaluate(
        [], "a@contoso.example", "spf=pass"
    )


def test_microsoft_results_with_an_authserv_id_keep_vendor_keys() -> None:
    parsed = parse_header(f"{ME}; {MICROSOFT}")
    assert parsed is not None
    methods = {r.method: r for r in parsed.results}
    assert methods["dmarc"].props == {"action": "none", "header.from": "contoso.example"}
    assert methods["compauth"].reason == "100"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{ME} 1; spf=pass smtp.mailfrom=a.example", [("spf", "pass")]),  # version number
        (f"{ME}; none", []),
        (f"{ME}; spf=pass smtp.mailfrom=a.example;", [("spf", "pass")]),  # trailing ;
        (f"{ME} (mx 3.1); spf = pass smtp . mailfrom = a.example", [("spf", "pass")]),  # CFWS
        (f"{ME}; dkim/1=pass header.d=a.example", [("dkim", "pass")]),  # method version
        (f"{ME}; SPF=HardFail smtp.mailfrom=a.example", [("spf", "fail")]),  # RFC 5451 spelling
        (f'"{ME}"; spf=pass smtp.mailfrom=a.example', [("spf", "pass")]),  # quoted id
        (f"{ME}; 12=; dkim=pass header.d=a.example", [("dkim", "pass")]),  # one bad resinfo
        (f"{ME}; (just a comment); spf=fail", [("spf", "fail")]),
    ],
)
def test_header_shapes(value: str, expected: list[tuple[str, str]]) -> None:
    parsed = parse_header(value)
    assert parsed is not None
    assert parsed.authserv_id.strip('"') == ME
    assert [(r.method, r.result) for r in parsed.results] == expected


def test_quoted_values_and_nested_comments() -> None:
    parsed = parse_header(
        f'{ME}; dkim=fail reason="body hash; did not verify" (outer (nested) \\) still) '
        'header.d=a.example; spf=none smtp.mailfrom="" smtp.helo=mail.a.example'
    )
    assert parsed is not None
    dkim, spf = parsed.results
    assert dkim.reason == "body hash; did not verify"
    assert dkim.comments == ("outer (nested) ) still",)
    assert dkim.props == {"header.d": "a.example"}
    assert spf.props == {"smtp.mailfrom": "", "smtp.helo": "mail.a.example"}


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        ";;;",
        "= = =",
        "(((((",
        '"unterminated',
        f"{ME}; spf=",
        f"{ME}; =pass",
        f"{ME}; spf=pass (unterminated comment",
        "\x00\x01\x02;\udcff=\ufffd",
        ";" * 10_000,
        f"{ME}; " + "dkim=pass header.d=a.example; " * 5_000,
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    parsed = parse_header(garbage)
    assert parsed is None or isinstance(parsed.authserv_id, str)
    result = evaluate(headers(garbage), "x@a.example", ME)
    assert isinstance(result, AuthResults)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(' ;=()"\\.@/-abcdpsfmx\t\r\n\u00fc')), max_size=80))
def test_random_headers_never_raise(value: str) -> None:
    evaluate(headers(f"{ME}; {value}", value), "x@a.example", ME)


# --- trust ----------------------------------------------------------------------------------


def test_only_the_configured_authserv_id_is_trusted() -> None:
    forged = "evil.example; spf=pass smtp.mailfrom=bank.example; dkim=pass header.d=bank.example"
    result = evaluate(headers(forged), "ceo@bank.example", ME)
    assert (result.spf, result.dkim, result.aligned_pass, result.trusted_headers) == (
        None,
        None,
        False,
        0,
    )
    assert evaluate(headers(forged), "ceo@bank.example", "EVIL.example").aligned_pass


def test_nothing_is_trusted_without_a_configured_authserv_id() -> None:
    trusted = f"{ME}; spf=pass smtp.mailfrom=bank.example"
    assert evaluate(headers(trusted), "ceo@bank.example", None) == AuthResults(
        None, None, None, None, (), "bank.example", False
    )
    message = parse_message(
        f"Authentication-Results: {trusted}\r\nFrom: ceo@bank.example\r\n\r\nhi".encode()
    )
    assert not auth_results(message, Settings()).aligned_pass
    assert auth_results(message, Settings(authserv_id=ME)).aligned_pass


def test_folded_header_from_a_real_message() -> None:
    raw = (
        b"Authentication-Results: mx.example.net;\r\n\tdkim=pass (2048-bit key)\r\n"
        b" header.d=news.shop.example header.s=k1;\r\n\tspf=softfail smtp.mailfrom=x.example\r\n"
        b"Authentication-Results: other.example; dkim=fail header.d=shop.example\r\n"
        b"From: Shop <offers@Shop.Example>\r\nSubject: s\r\n\r\nbody\r\n"
    )
    result = auth_results(parse_message(raw), Settings(authserv_id=ME))
    assert result.trusted_headers == 1
    assert (result.spf, result.dkim, result.dkim_domains) == (
        "softfail",
        "pass",
        ("news.shop.example",),
    )
    assert result.from_domain == "shop.example"
    assert result.dkim_aligned and not result.spf_aligned and result.aligned_pass


def test_conflicting_trusted_spf_resolves_to_the_worse() -> None:
    """A forged header that slipped past the MTA can hurt its sender, never vouch for it."""
    forged = f"{ME}; spf=pass smtp.mailfrom=bank.example"
    real = f"{ME}; spf=fail smtp.mailfrom=bank.example; dmarc=fail header.from=bank.example"
    result = evaluate(headers(real, forged), "ceo@bank.example", ME)
    assert result.trusted_headers == 2
    assert result.spf == "fail" and not result.aligned_pass
    assert evaluate(headers(forged, real), "ceo@bank.example", ME).spf == "fail"


# --- alignment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "from_addr", "aligned"),
    [
        (f"{ME}; spf=pass smtp.mailfrom=bounce@mail.shop.example", "a@shop.example", True),
        (f"{ME}; spf=pass smtp.mailfrom=shop.example", "a@news.shop.example", True),
        (f"{ME}; spf=pass smtp.mailfrom=esp.example", "a@shop.example", False),
        (f"{ME}; spf=fail smtp.mailfrom=shop.example", "a@shop.example", False),
        (f"{ME}; dkim=pass header.d=esp.example", "a@shop.example", False),
        (f"{ME}; dkim=pass header.d=shop.example", "a@shop.example", True),
        (f"{ME}; dkim=pass header.i=@mail.shop.example", "a@shop.example", True),
        (f"{ME}; dkim=fail header.d=shop.example", "a@shop.example", False),
        # the public suffix list, not "the last two labels": co.uk is nobody's
        (f"{ME}; spf=pass smtp.mailfrom=bounces.shop.co.uk", "a@shop.co.uk", True),
        (f"{ME}; spf=pass smtp.mailfrom=evil.co.uk", "a@shop.co.uk", False),
        (f"{ME}; dkim=pass header.d=evil.github.io", "a@shop.github.io", False),
        # IDN: UTF-8 and punycode spellings of one domain
        (f"{ME}; dkim=pass header.d=xn--bcher-kva.example", "a@bücher.example", True),
        # null sender: SPF checked the HELO name
        (f"{ME}; spf=pass smtp.mailfrom=<> smtp.helo=mx.shop.example", "a@shop.example", True),
        # the MTA's own DMARC evaluation for this From domain
        (f"{ME}; dmarc=pass header.from=shop.example", "a@shop.example", True),
        (f"{ME}; dmarc=pass header.from=other.example", "a@shop.example", False),
        (f"{ME}; spf=pass smtp.mailfrom=shop.example", "", False),
    ],
)
def test_alignment(value: str, from_addr: str, aligned: bool) -> None:
    assert evaluate(headers(value), from_addr, ME).aligned_pass is aligned


def test_several_signatures_one_aligned_pass() -> None:
    value = (
        f"{ME}; dkim=fail (bad body hash) header.d=shop.example; "
        "dkim=pass header.d=esp.example; dkim=pass header.d=shop.example"
    )
    result = evaluate(headers(value), "a@shop.example", ME)
    assert result.dkim == "pass"
    assert result.dkim_domains == ("esp.example", "shop.example")
    assert result.dkim_aligned and result.aligned_pass


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        (f"{ME}; dmarc=fail (p=REJECT sp=NONE dis=NONE) header.from=a.example", "reject"),
        (f"{ME}; dmarc=fail (p=quarantine dis=none) header.from=a.example", "quarantine"),
        (f"{ME}; dmarc=fail policy.dmarc=reject header.from=a.example", "reject"),
        (f"{ME}; dmarc=fail (policy=none) header.from=a.example", "none"),
        (f"{ME}; dmarc=fail header.from=a.example", None),
    ],
)
def test_dmarc_policy(value: str, policy: str | None) -> None:
    result = evaluate(headers(value), "x@a.example", ME)
    assert result.dmarc == "fail" and result.dmarc_policy == policy


# --- the check ------------------------------------------------------------------------------


def ctx(auth: AuthResults | None, direction: Direction = "inbound") -> CheckContext:
    score = Score(0.5, 0.0, {})
    msg = parse_message(b"\r\n")
    return CheckContext(msg, Envelope(direction), score, True, Settings(), auth=auth)


def reasons_for(value: str, from_addr: str = "a@shop.example") -> dict[str, float]:
    auth = evaluate(headers(value), from_addr, ME)
    return {r.name: r.weight for r in auth_reasons(ctx(auth))}


def test_spoof_of_a_reject_domain() -> None:
    found = reasons_for(
        f"{ME}; spf=fail smtp.mailfrom=shop.example; dkim=none; "
        "dmarc=fail (p=reject) header.from=shop.example"
    )
    assert found == {SPF_FAIL: 1.0, DMARC_REJECT_POLICY_FAIL: 4.0}


def test_forwarded_mail_spf_fail_is_excused_by_an_aligned_dkim_pass() -> None:
    found = reasons_for(
        f"{ME}; spf=fail smtp.mailfrom=shop.example; dkim=pass header.d=shop.example; "
        "dmarc=pass header.from=shop.example"
    )
    assert found == {DMARC_PASS: -0.5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{ME}; spf=softfail smtp.mailfrom=x.example", {SPF_SOFTFAIL: 0.5}),
        (f"{ME}; dkim=fail header.d=shop.example", {DKIM_FAIL: 0.7}),
        (
            f"{ME}; dkim=fail header.d=shop.example; spf=pass smtp.mailfrom=shop.example",
            {},
        ),
        (f"{ME}; dkim=pass header.d=shop.example", {DKIM_PASS_ALIGNED: -0.3}),
        (f"{ME}; dkim=pass header.d=esp.example", {}),
        (
            f"{ME}; dmarc=fail (p=quarantine) header.from=shop.example",
            {DMARC_QUARANTINE_POLICY_FAIL: 2.5},
        ),
        (f"{ME}; dmarc=fail (p=none) header.from=shop.example", {DMARC_FAIL: 1.0}),
        ("evil.example; spf=fail smtp.mailfrom=x.example", {}),
    ],
)
def test_check_reasons(value: str, expected: dict[str, float]) -> None:
    assert reasons_for(value) == expected


def test_check_is_silent_without_results_and_for_outbound() -> None:
    failing = evaluate(headers(f"{ME}; spf=fail smtp.mailfrom=x.example"), "a@x.example", ME)
    assert list(auth_reasons(ctx(None))) == []
    assert list(auth_reasons(ctx(NO_AUTH))) == []
    assert list(auth_reasons(ctx(failing, "outbound"))) == []
    assert [r.name for r in auth_reasons(ctx(failing))] == [SPF_FAIL]


def test_every_reason_is_documented_with_its_sign() -> None:
    for name, (weight, description) in REASONS.items():
        assert description
        assert (weight < 0) == name.endswith(("_pass", "_aligned")), name
