"""The operator console in a real browser against a real ``mailsift serve`` (SQLite).

Each test leaves a screenshot in ``tests/artifacts/console/`` (see :mod:`.browser`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.service.console.browser import PHONE, chromium, screenshot_path, skip_without_browser
from tests.service.server import ADMIN_TOKEN, Service, message, score, train, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.slow

PROBE_SENDER = "probe.sender@offers.example.biz"
PROBE = (
    f"From: Offers <{PROBE_SENDER}>\r\nTo: carol@example.org\r\n"
    "Subject: Cheap pills offer today\r\nMessage-ID: <probe-1@offers.example.biz>\r\n\r\n"
    "Buy cheap viagra now, limited offer! Click here to win money, cheap pills.\r\n"
).encode()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Split listeners; a model taught a few examples; inbound and outbound mail scored."""
    skip_without_browser()
    root = tmp_path_factory.mktemp("console")
    with Service(root / "data", split_listeners=True) as svc, svc.client(admin=True) as admin:
        for n in range(6):
            train(admin, message(n, True), "spam")
            train(admin, message(100 + n, False), "ham")
        with svc.client() as gateway:
            for n in range(12):
                score(gateway, message(200 + n, n % 3 == 0), rcpt=("alice@example.org",))
            for n in range(5):
                score(gateway, message(300 + n, False), direction="outbound", rcpt=("x@y.org",))
            score(gateway, PROBE, rcpt=("carol@example.org",))
        assert wait_for(lambda: _audit(admin, PROBE_SENDER), timeout=10)
        yield svc


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    browser.clear_cookies()
    tab = browser.new_page()
    try:
        yield tab
    finally:
        tab.close()


def _audit(admin: httpx.Client, sender: str) -> list[dict[str, Any]]:
    r = admin.get("/v1/audit", params={"sender": sender})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def sign_in(page: Page, svc: Service) -> None:
    page.goto(f"{svc.admin_url}/console/")
    assert page.url.endswith("/console/login")  # not signed in yet: sent to sign in
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/$"))


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(
    service: Service, page: Page, browser: BrowserContext
) -> None:
    page.goto(f"{service.admin_url}/console/login")
    page.get_by_label("Admin token").fill("not-a-token-of-this-service")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("That is not an admin token")
    sign_in(page, service)
    (cookie,) = browser.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "mailsift_console",
        True,
        "Strict",
        "/console",
    )
    assert page.evaluate("document.cookie") == ""  # no script can read it
    page.screenshot(path=screenshot_path("signed-in"))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/console/login$"))
    assert browser.cookies() == []
    page.goto(f"{service.admin_url}/console/tokens")
    assert page.url.endswith("/console/login")


def test_overview_charts_the_scored_messages(service: Service, page: Page) -> None:
    sign_in(page, service)
    charts = page.locator("svg.chart")
    assert charts.count() == 2  # inbound, outbound
    inbound = charts.nth(0)
    assert "Inbound messages per minute" in (inbound.get_attribute("aria-label") or "")
    assert inbound.locator("rect.bar").count() > 0
    assert charts.nth(1).locator("rect.bar").count() > 0  # the outbound mail
    # The text alternative adds the verdicts up: 12 + 1 inbound messages this hour.
    label = inbound.get_attribute("aria-label") or ""
    rates = [float(x) for x in re.findall(r"(?:ham|suspect|spam) ([0-9.]+)", label)]
    assert sum(rates) == pytest.approx(13)
    assert page.get_by_text("Latency p50").is_visible()
    page.screenshot(path=screenshot_path("overview"), full_page=True)
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.reload()
    assert page.locator("svg.chart").first.is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than a phone's screen
    page.screenshot(path=screenshot_path("overview-phone"), full_page=True)


def test_history_finds_a_message_by_sender_opens_its_reasons_and_labels_it(
    service: Service, page: Page
) -> None:
    sign_in(page, service)
    page.get_by_role("link", name="History").click()
    page.get_by_label("Sender").fill(PROBE_SENDER)
    page.keyboard.press("Enter")  # the form submits from the keyboard
    rows = page.locator("table.rows tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1
    assert PROBE_SENDER in rows.first.inner_text()
    page.screenshot(path=screenshot_path("history-search"), full_page=True)
    rows.first.get_by_role("link").click()
    reasons = page.locator("table.reasons")
    assert "model" in reasons.inner_text()
    assert page.get_by_role("heading", name="Towards spam").is_visible()

    with service.client(admin=True) as admin:
        before = admin.get("/v1/model").json()
        with service.client() as gateway:
            scored_before = score(gateway, PROBE)["score"]
        page.get_by_role("button", name="Label ham").click()
        assert "Learned as ham: learned" in page.get_by_role("status").first.inner_text()
        after = admin.get("/v1/model").json()
        with service.client() as gateway:
            scored_after = score(gateway, PROBE)
    assert after["ham"] == before["ham"] + 1
    assert after["version"] != before["version"]
    assert after["log_position"] > before["log_position"]
    assert scored_after["score"] < scored_before
    assert (
        any(r["name"] == "labelled_ham" for r in scored_after["reasons"])
        or scored_after["verdict"] == "ham"
    )
    assert "ham (by admin)" in page.locator("dl").first.inner_text()
    page.screenshot(path=screenshot_path("history-labelled"), full_page=True)


def test_a_token_made_in_the_page_works_until_revoked_in_the_page(
    service: Service, page: Page
) -> None:
    sign_in(page, service)
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name", exact=True).fill("browser-gateway")
    page.get_by_label("Role", exact=True).select_option("gateway")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("Secret (shown once)").input_value()
    assert secret.startswith("msk_")
    token_id = secret.split("_")[1]

    def scores_with_it() -> int:
        with service.client(secret) as gateway:
            return gateway.post(
                "/v1/score",
                params={"direction": "inbound"},
                content=message(900, False),
                headers={"content-type": "message/rfc822"},
            ).status_code

    assert scores_with_it() == 200
    page.screenshot(path=screenshot_path("token-created"), full_page=True)
    page.get_by_role("button", name=f"Revoke token {token_id} (browser-gateway)").click()
    assert f"Token {token_id} revoked." in page.get_by_role("status").first.inner_text()
    assert scores_with_it() == 401
    page.goto(f"{service.admin_url}/console/tokens")  # the secret was shown once only
    assert secret not in page.content()
    page.screenshot(path=screenshot_path("token-revoked"), full_page=True)


def test_a_change_without_the_csrf_token_is_refused(service: Service, page: Page) -> None:
    sign_in(page, service)
    page.goto(f"{service.admin_url}/console/tokens")
    # The page's own form, its CSRF field removed: the browser sends the session cookie.
    page.get_by_label("Name", exact=True).fill("forged-token")
    page.evaluate(
        "document.querySelector('form[aria-label=\"Create a token\"] input[name=csrf]').remove()"
    )
    with page.expect_response(re.compile(r"/console/tokens$")) as answer:
        page.get_by_role("button", name="Create token").click()
    assert answer.value.status == 403
    assert "CSRF" in page.get_by_role("alert").inner_text()
    page.screenshot(path=screenshot_path("csrf-refused"), full_page=True)
    # A wrong token is refused as well, and neither made a token.
    forged = page.request.post(
        f"{service.admin_url}/console/tokens",
        form={"csrf": "0" * 64, "name": "forged-token", "role": "admin"},
    )
    assert forged.status == 403
    page.goto(f"{service.admin_url}/console/tokens")
    assert "forged-token" not in page.content()


def test_the_console_is_not_on_the_gateway_listener(service: Service, page: Page) -> None:
    for path in ("/console/", "/console/login", "/console/static/console.css"):
        answer = page.goto(f"{service.url}{path}")
        assert answer is not None and answer.status == 404, path
    page.screenshot(path=screenshot_path("gateway-404"))
    answer = page.goto(f"{service.admin_url}/console/login")
    assert answer is not None and answer.status == 200
