"""Leak detection: validators, redaction, severity, the labelled set, config, check, router."""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mailsift.models.ensemble import Score
from mailsift.models.parse import parse_message
from mailsift.reasons import dlp_reason
from mailsift.service.checks.base import CheckContext, Envelope
from mailsift.service.checks.dlp import WEIGHTS, dlp_reasons
from mailsift.service.dlp import (
    DlpConfig,
    DlpConfigError,
    DlpReport,
    load_dlp_config,
    scan_message,
    scan_text,
)
from mailsift.service.dlp.redact import (
    redact_card,
    redact_iban,
    redact_password,
    redact_prefix,
    redact_ssn,
    redact_tail,
    safe_name,
)
from mailsift.service.dlp.scan import severity_for
from mailsift.service.dlp.validate import card_brand, iban_valid, luhn_valid, ssn_valid
from mailsift.service.errors import install_error_handlers
from mailsift.service.routers import dlp as dlp_router
from mailsift.service.settings import Settings
from mailsift.training.corpus import read_trec
from tests.corpora import SPAMASSASSIN, require
from tests.service.dlp_cases import Case, Gen, build_cases, grouped, mime, spaced_iban

ALL_KINDS = {
    "card", "iban", "ssn", "private_key", "aws_access_key", "aws_secret_key", "github_token",
    "slack_token", "stripe_key", "google_api_key", "jwt", "password", "label",
}  # fmt: skip


@pytest.fixture(scope="module")
def config() -> DlpConfig:
    return load_dlp_config(Settings())


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return build_cases()


def types(report: DlpReport) -> set[str]:
    return {f.type for f in report.findings}


def run_case(case: Case, config: DlpConfig) -> DlpReport:
    if case.message:
        return scan_message(parse_message(case.message), config)
    return scan_text(case.text, config)


def assert_no_secret(output: str, secrets: tuple[str, ...] | list[str]) -> None:
    """No planted value appears, written as planted or with its separators removed."""
    squeezed = output.replace(" ", "").replace("-", "").replace("\\n", "")
    for secret in secrets:
        assert secret not in output, "a planted value leaked into the output"
        bare = secret.replace(" ", "").replace("-", "")
        assert bare not in squeezed, "a planted value leaked into the output"


# --- validators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4111111111111111", "visa"),
        ("4222222222222", "visa"),
        ("5555555555554444", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2720990000000007", "mastercard"),
        ("378282246310005", "amex"),
        ("371449635398431", "amex"),
        ("6011111111111117", "discover"),
        ("3530111333300000", "jcb"),
        ("30569309025904", "diners"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_card_brands_of_well_known_test_numbers(number: str, brand: str) -> None:
    assert card_brand(number) == brand


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111112",  # Luhn fails
        "2220990000000008",  # just below the Mastercard 2-series, Luhn valid
        "2721000000000004",  # just above it
        "378282246310005" + "0",  # Amex prefix, wrong length
        "1234567812345670",  # Luhn valid, no issuer starts with 1
        "490154203237518",  # an IMEI: Luhn valid, but a Visa is never 15 digits
    ],
)
def test_numbers_that_are_not_cards(number: str) -> None:
    assert card_brand(number) is None


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68539007547034",
        "NO9386011117947",
        "CH9300762011623852957",
    ],
)
def test_valid_ibans(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013001",  # check digits wrong
        "DE8937040044053201300",  # too short for Germany
        "GB82WEST1234569876543",  # too short for the UK
        "XX89370400440532013000",  # no such country
        "NO9386011117948",
    ],
)
def test_invalid_ibans(iban: str) -> None:
    assert not iban_valid(iban)


@pytest.mark.parametrize(
    ("ssn", "valid"),
    [
        ("219-44-6789", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("900-12-3456", False),
        ("999-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("078-05-1120", False),  # the wallet-insert number
        ("123-45-6789", False),  # the textbook example
    ],
)
def test_ssn_structure(ssn: str, valid: bool) -> None:
    area, group, serial = ssn.split("-")
    assert ssn_valid(area, group, serial) is valid


# --- redaction -----------------------------------------------------------------------------------


def test_redacted_forms() -> None:
    assert redact_card("4111111111111111") == "•••• •••• •••• 1111"
    assert redact_card("378282246310005") == "•••• •••• ••• 0005"
    assert redact_iban("DE89370400440532013000") == "DE•• •••• •••• •••• ••30 00"
    assert redact_ssn("6789") == "•••-••-6789"
    assert redact_prefix("ghp_") == "ghp_•••"
    assert redact_password() == "••••••••"
    assert redact_tail("EMP-123456", 2) == "••••••••56"
    assert redact_tail("AB12", 4) == "••••••••2"  # never more than a third
    assert redact_tail("EMP-123456", 0) == "••••••••"
    assert safe_name("statement 4111111111111111.csv") == "statement ••••••••••••••••.csv"


def test_findings_carry_redacted_samples(config: DlpConfig) -> None:
    text = (
        "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 219-44-6789,\n"
        "password: Tr0ub4dor&3\n"
    )
    samples = {f.type: f.samples for f in scan_text(text, config).findings}
    assert samples == {
        "card": ("•••• •••• •••• 1111",),
        "iban": ("DE•• •••• •••• •••• ••30 00",),
        "ssn": ("•••-••-6789",),
        "password": ("••••••••",),
    }


# --- detectors -----------------------------------------------------------------------------------


def test_card_grouping_and_boundaries(config: DlpConfig) -> None:
    assert types(scan_text("card 4111-1111-1111-1111", config)) == {"card"}
    assert types(scan_text("card 3782 822463 10005", config)) == {"card"}
    # A card followed by its expiry date in the same run of digits.
    report = scan_text("card 4111 1111 1111 1111 12/27", config)
    assert [f.samples for f in report.findings] == [("•••• •••• •••• 1111",)]
    # Mixed separators, odd grouping, part of a longer number, a decimal, a URL path.
    for text in [
        "card 4111 1111-1111 1111",
        "card 41 11 11 11 11 11 11 11",
        "card 41111111111111110",
        "card 0.4111111111111111",
        "card https://shop.example/item?id=4111111111111111",
    ]:
        assert "card" not in types(scan_text(text, config)), text


def test_context_raises_confidence_and_other_numbers_lower_it(config: DlpConfig) -> None:
    bare = scan_text("ref 4111111111111111", config)
    plain = scan_text("the number 4111111111111111", config)
    with_context = scan_text("visa card 4111111111111111 exp 01/27", config)
    assert types(bare) == set()  # "ref" marks some other kind of number
    assert plain.findings[0].confidence < with_context.findings[0].confidence


def test_ssn_needs_context_unless_there_are_several(config: DlpConfig) -> None:
    assert types(scan_text("Lot 219-44-6789 passed", config)) == set()
    assert types(scan_text("SSN: 219-44-6789", config)) == {"ssn"}
    assert types(scan_text("social security number 219446789", config)) == {"ssn"}
    listing = "\n".join(f"{a}-44-6789" for a in ("219", "301", "412"))
    assert types(scan_text(listing, config)) == {"ssn"}


def test_iban_taken_at_its_country_length(config: DlpConfig) -> None:
    report = scan_text("IBAN DE89 3704 0044 0532 0130 00 EUR ACCOUNT", config)
    assert types(report) == {"iban"}
    # The IBAN's own digits are not also reported as a card number or an SSN.
    assert types(scan_text("IBAN NO93 8601 1117 947", config)) == {"iban"}


def test_private_key_needs_a_body(config: DlpConfig) -> None:
    key = Gen(1).pem()
    assert types(scan_text(key, config)) == {"private_key"}
    stub = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----"
    assert types(scan_text(stub, config)) == set()
    assert scan_text(key, config).findings[0].severity == "high"


def test_jwt_header_must_be_json_with_alg(config: DlpConfig) -> None:
    token = Gen(2).jwt()
    report = scan_text(f"Bearer {token}", config)
    assert types(report) == {"jwt"}
    assert report.findings[0].samples[0].startswith("eyJ•••")
    _, payload, sig = token.split(".")
    no_alg = "eyJ0eXAiOiJKV1QifQ"  # {"typ":"JWT"}
    assert types(scan_text(f"Bearer {no_alg}.{payload}.{sig}", config)) == set()


def test_aws_secret_needs_its_label(config: DlpConfig) -> None:
    secret = Gen(3).aws_secret()
    assert types(scan_text(f"aws_secret_access_key={secret}", config)) == {"aws_secret_key"}
    assert types(scan_text(f"checksum {secret}", config)) == set()


@pytest.mark.parametrize(
    "text",
    [
        "password: hunter2x",
        "PWD=s3cr3t!",
        "Passwort: Sommer2024",
        "Mot de passe : azerty123",
        '"password": "correct horse"',
        "my password is blue42sky",
    ],
)
def test_passwords_found(text: str, config: DlpConfig) -> None:
    assert types(scan_text(text, config)) == {"password"}


def test_labels_are_upper_case_words_or_in_the_subject(config: DlpConfig) -> None:
    assert types(scan_text("CONFIDENTIAL: board minutes", config)) == {"label"}
    assert types(scan_text("this is confidential", config)) == set()
    assert types(scan_text("UNCONFIDENTIAL", config)) == set()
    msg = parse_message(mime("Confidential - Q3 numbers", "see attached"))
    report = scan_message(msg, config)
    assert types(report) == {"label"}
    assert report.findings[0].where == ("subject",)
    assert report.findings[0].severity == "low"


# --- severity, counting, where -------------------------------------------------------------------


def test_severity_scheme() -> None:
    assert severity_for("medium", 1) == "medium"
    assert severity_for("medium", 4) == "medium"
    assert severity_for("medium", 5) == "high"
    assert severity_for("low", 1) == "low"
    assert severity_for("low", 5) == "medium"
    assert severity_for("low", 50) == "high"
    assert severity_for("high", 1) == "high"


def test_one_card_is_medium_a_list_is_high(config: DlpConfig) -> None:
    g = Gen(4)
    one = scan_text(f"card {g.card()}", config)
    assert [(f.type, f.count, f.severity) for f in one.findings] == [("card", 1, "medium")]
    four = scan_text("\n".join(f"card {g.card()}" for _ in range(4)), config)
    assert [(f.count, f.severity) for f in four.findings] == [(4, "medium")]
    five = scan_text("\n".join(f"card {g.card()}" for _ in range(5)), config)
    assert [(f.count, f.severity) for f in five.findings] == [(5, "high")]
    same = scan_text("\n".join("card 4111 1111 1111 1111" for _ in range(9)), config)
    assert [(f.count, f.severity) for f in same.findings] == [(1, "medium")]
    assert len(five.findings[0].samples) == 3


@pytest.mark.parametrize(
    ("make", "kind", "severity"),
    [
        (lambda g: g.pem(), "private_key", "high"),
        (lambda g: f"aws_secret_access_key = {g.aws_secret()}", "aws_secret_key", "high"),
        (lambda g: g.github(), "github_token", "high"),
        (lambda g: g.slack(), "slack_token", "high"),
        (lambda g: g.stripe(), "stripe_key", "high"),
        (lambda g: g.google(), "google_api_key", "medium"),
        (lambda g: g.jwt(), "jwt", "medium"),
        (lambda g: g.aws_key_id(), "aws_access_key", "medium"),
    ],
)
def test_one_credential_alone(
    make: Callable[[Gen], str], kind: str, severity: str, config: DlpConfig
) -> None:
    [finding] = scan_text(f"here you go: {make(Gen(10))}", config).findings
    assert (finding.type, finding.count, finding.severity) == (kind, 1, severity)


def test_overlapping_hits_count_once(config: DlpConfig) -> None:
    token = Gen(11).github()
    assert types(scan_text(f"pwd={token}", config)) == {"github_token"}
    secret = Gen(12).aws_secret()
    assert types(scan_text(f"AWS secret, password={secret}", config)) == {"aws_secret_key"}


def test_ibans_need_many_to_matter(config: DlpConfig) -> None:
    g = Gen(5)
    for n, severity in ((1, "low"), (5, "medium"), (50, "high")):
        text = "\n".join(f"IBAN {g.iban()}" for _ in range(n))
        assert [(f.count, f.severity) for f in scan_text(text, config).findings] == [(n, severity)]


def test_action_is_the_strictest_configured(config: DlpConfig) -> None:
    assert scan_text("nothing here", config).action is None
    assert scan_text("IBAN DE89 3704 0044 0532 0130 00", config).action == "flag"
    assert scan_text("card 4111 1111 1111 1111", config).action == "quarantine"
    assert scan_text(Gen(6).pem(), config).action == "reject"
    strict = load_dlp_config(Settings(dlp_action_low="reject"))
    assert scan_text("IBAN DE89 3704 0044 0532 0130 00", strict).action == "reject"


def test_where_covers_subject_text_html_and_attachments(config: DlpConfig) -> None:
    g = Gen(7)
    card = g.card()
    msg = mime(
        f"card {grouped(card)}",
        f"visa {card}",
        html=f"<p>Card: <b>{grouped(card)}</b></p>",
        attachments=(("orders 12345678.csv", f"card_number\n{card}\n"),),
    )
    report = scan_message(parse_message(msg), config)
    [finding] = report.findings
    assert finding.count == 1  # the same number everywhere counts once
    assert finding.where == ("subject", "body", "html", "attachment:orders ••••••••.csv")


def test_scan_is_bounded(config: DlpConfig) -> None:
    small = load_dlp_config(Settings(dlp_max_scan_chars=1000))
    text = "x" * 995 + " card 4111 1111 1111 1111"
    assert types(scan_text(text, config)) == {"card"}
    report = scan_text(text, small)
    assert report.findings == () and report.truncated and report.scanned_chars == 1000


# --- the labelled set ----------------------------------------------------------------------------


def test_labelled_set_precision_and_recall(cases: list[Case], config: DlpConfig) -> None:
    positives = [c for c in cases if c.expected]
    negatives = [c for c in cases if not c.expected]
    planted = sum(max(len(c.secrets), 1) for c in positives)
    assert len(positives) >= 200 and planted >= 200 and len(negatives) >= 100
    assert set().union(*(c.expected for c in positives)) == ALL_KINDS
    tp = fp = fn = 0
    misses = []
    for case in cases:
        got = types(run_case(case, config))
        tp += len(got & case.expected)
        fp += len(got - case.expected)
        fn += len(case.expected - got)
        if got != case.expected:
            misses.append(f"{case.name}: expected {sorted(case.expected)}, got {sorted(got)}")
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(
        f"\nDLP labelled set: {len(positives)} positive cases ({planted} planted values), "
        f"{len(negatives)} hard negatives; precision {precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= 0.95, misses
    assert recall >= 0.95, misses


def test_no_planted_value_in_findings_or_reasons(cases: list[Case], config: DlpConfig) -> None:
    settings = Settings()
    for case in cases:
        report = run_case(case, config)
        ctx = _context(settings, report)
        reasons = [(r.name, r.weight, r.detail, r.action) for r in dlp_reasons(ctx)]
        output = json.dumps([report.as_dict(), reasons], ensure_ascii=False)
        assert_no_secret(output, case.secrets)


# --- the check -----------------------------------------------------------------------------------


def _context(settings: Settings, report: DlpReport | None) -> CheckContext:
    msg = parse_message(b"Subject: x\r\n\r\nbody")
    score = Score(probability=0.5, logit=0.0, members={})
    return CheckContext(msg, Envelope("outbound"), score, True, settings, dlp=report)


def test_check_says_nothing_without_a_report() -> None:
    assert list(dlp_reasons(_context(Settings(), None))) == []
    assert list(dlp_reasons(_context(Settings(), DlpReport()))) == []


def test_check_reasons_per_type_with_configured_actions(config: DlpConfig) -> None:
    g = Gen(8)
    text = "\n".join([f"IBAN {g.iban()}", f"card {grouped(g.card())}", g.pem(), "CONFIDENTIAL"])
    report = scan_text(text, config)
    settings = Settings(
        dlp_action_low="flag", dlp_action_medium="quarantine", dlp_action_high="reject"
    )
    reasons = {r.name: r for r in dlp_reasons(_context(settings, report))}
    assert set(reasons) == {
        dlp_reason("private_key"),
        dlp_reason("card"),
        dlp_reason("iban"),
        dlp_reason("label"),
    }
    assert reasons[dlp_reason("private_key")].action == "reject"
    assert reasons[dlp_reason("card")].action == "quarantine"
    assert reasons[dlp_reason("iban")].action is None
    assert reasons[dlp_reason("card")].weight == WEIGHTS["medium"]
    assert "•••• •••• •••• " in reasons[dlp_reason("card")].detail
    assert "1 payment card number (medium" in reasons[dlp_reason("card")].detail
    lenient = Settings(dlp_action_high="flag", dlp_action_medium="flag")
    assert all(r.action is None for r in dlp_reasons(_context(lenient, report)))


# --- the TOML configuration ----------------------------------------------------------------------


def _with_file(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "dlp.toml"
    path.write_text(text, encoding="utf-8")
    return Settings(dlp_config_file=path)


def test_toml_dictionaries_and_patterns(tmp_path: Path) -> None:
    settings = _with_file(
        tmp_path,
        """
min_confidence = 0.6

[[dictionary]]
name = "codenames"
words = ["Bluebird", "Project  Falcon"]
severity = "high"

[[dictionary]]
name = "exact_words"
words = ["SECRET SAUCE"]
severity = "low"
case_sensitive = true

[[pattern]]
name = "employee_id"
regex = 'EMP-\\d{6}'
severity = "medium"
keep_last = 2
""",
    )
    config = load_dlp_config(settings)
    assert config.min_confidence == 0.6
    text = "Re project falcon: BLUEBIRD ships; EMP-123456 and EMP-654321; secret sauce"
    found = {f.type: f for f in scan_text(text, config).findings}
    assert set(found) == {"codenames", "employee_id"}
    assert found["codenames"].severity == "high" and found["codenames"].count == 2
    assert set(found["codenames"].samples) == {"Bluebird", "Project Falcon"}
    assert found["employee_id"].samples == ("••••••••56", "••••••••21")
    assert "EMP-123456" not in json.dumps(scan_text(text, config).as_dict())
    assert types(scan_text("the SECRET SAUCE", config)) == {"exact_words"}
    assert types(scan_text("Bluebirds and falconry", config)) == set()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[pattern]\nname = 'x'", "not valid TOML"),
        ("[[pattern]]\nname = 'ids'\nregex = 'EMP-(\\d{6}'", "[[pattern]] 'ids': bad regex"),
        ("[[pattern]]\nname = 'ids'\nregex = '\\d*'", "matches the empty string"),
        ("[[pattern]]\nname = 'ids'\nregex = 'x'\nseverity = 'urgent'", "severity must be"),
        ("[[pattern]]\nname = 'ids'\nregexp = 'x'", "unknown key(s) regexp"),
        ("[[dictionary]]\nname = 'Bad Name'\nwords = ['x']", "'name' must be"),
        ("[[dictionary]]\nname = 'card'\nwords = ['x']", "built-in finding type"),
        ("[[dictionary]]\nname = 'a'\nwords = []", "non-empty list"),
        (
            "[[dictionary]]\nname = 'a'\nwords = ['x']\n[[pattern]]\nname = 'a'\nregex = 'y'",
            "used twice",
        ),
        ("min_confidence = 2", "min_confidence"),
        ("labels = ['X']", "unknown key(s) labels"),
    ],
)
def test_bad_toml_is_refused_at_start_up(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DlpConfigError) as info:
        load_dlp_config(_with_file(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "dlp.toml") in str(info.value)


def test_missing_toml_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DlpConfigError, match="cannot read"):
        load_dlp_config(Settings(dlp_config_file=tmp_path / "nope.toml"))


def test_labels_come_from_settings() -> None:
    config = load_dlp_config(Settings(dlp_labels="TOP SECRET, EYES ONLY"))
    assert types(scan_text("TOP SECRET: plans", config)) == {"label"}
    assert types(scan_text("CONFIDENTIAL plans", config)) == set()
    none = load_dlp_config(Settings(dlp_labels=""))
    assert types(scan_text("CONFIDENTIAL plans", none)) == set()


# --- the router ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = Settings(max_message_bytes=4096)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(dlp_router.router)
    app.state.mailsift = SimpleNamespace(settings=settings, dlp=load_dlp_config(settings))
    return TestClient(app)


def test_router_scans_a_message(client: TestClient) -> None:
    g = Gen(9)
    card, iban = g.card(), g.iban()
    raw = mime("payment", f"visa {grouped(card)}\nIBAN {spaced_iban(iban)}")
    for ctype in ("message/rfc822", "application/octet-stream"):
        resp = client.post("/v1/dlp/scan", content=raw, headers={"content-type": ctype})
        assert resp.status_code == 200
        body = resp.json()
        assert set(body) == {"findings", "action", "truncated"}
        assert {f["type"] for f in body["findings"]} == {"card", "iban"}
        assert body["action"] == "quarantine"
        assert set(body["findings"][0]) == {
            "type", "count", "severity", "confidence", "where", "samples"
        }  # fmt: skip
        assert_no_secret(resp.text, [card, iban])


def test_router_scans_plain_text(client: TestClient) -> None:
    text = "Passwort: Sommer2024!\n".encode("latin-1")
    resp = client.post(
        "/v1/dlp/scan", content=text, headers={"content-type": "text/plain; charset=latin-1"}
    )
    assert resp.status_code == 200
    assert resp.json()["findings"][0]["type"] == "password"
    assert resp.json()["findings"][0]["where"] == ["body"]
    clean = client.post("/v1/dlp/scan", content=b"hello", headers={"content-type": "text/plain"})
    assert clean.json() == {"findings": [], "action": None, "truncated": False}


@pytest.mark.parametrize(
    ("content", "ctype", "status", "error"),
    [
        (b"{}", "application/json", 415, "unsupported_media_type"),
        (b"x" * 5000, "text/plain", 413, "message_too_large"),
        (b"   ", "text/plain", 422, "unusable_message"),
        (b"", "message/rfc822", 422, "unusable_message"),
    ],
)
def test_router_errors(
    client: TestClient, content: bytes, ctype: str, status: int, error: str
) -> None:
    resp = client.post("/v1/dlp/scan", content=content, headers={"content-type": ctype})
    assert resp.status_code == status
    assert resp.json()["error"] == error


def test_nothing_planted_reaches_responses_or_logs(
    client: TestClient, cases: list[Case], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    for case in cases:
        if case.message:
            resp = client.post(
                "/v1/dlp/scan", content=case.message, headers={"content-type": "message/rfc822"}
            )
        elif len(case.text.encode()) <= 4096:
            resp = client.post(
                "/v1/dlp/scan", content=case.text.encode(), headers={"content-type": "text/plain"}
            )
        else:
            continue
        assert resp.status_code == 200, case.name
        bodies.append((resp.text, case.secrets))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "dlp scan:" in logged
    every_secret = [s for case in cases for s in case.secrets]
    assert_no_secret(logged, every_secret)
    for text, secrets in bodies:
        assert_no_secret(text, secrets)


# --- the public corpus ---------------------------------------------------------------------------


@pytest.mark.corpus
def test_ham_corpus_has_no_high_findings(config: DlpConfig) -> None:
    require(SPAMASSASSIN)
    ham = medium = 0
    high: list[str] = []
    elapsed: list[float] = []
    for item in read_trec(SPAMASSASSIN):
        if item.label != "ham":
            continue
        ham += 1
        msg = parse_message(item.raw)
        started = time.perf_counter()
        report = scan_message(msg, config)
        elapsed.append(time.perf_counter() - started)
        severities = report.severities
        high += [f"{item.source}: {f.type}" for f in report.findings if f.severity == "high"]
        medium += "medium" in severities
    print(
        f"\nDLP over {ham} ham messages: {len(high)} with a high finding, {medium} with a "
        f"medium one; median scan {statistics.median(elapsed) * 1e6:.0f} µs"
    )
    assert ham == 4150
    assert high == []
