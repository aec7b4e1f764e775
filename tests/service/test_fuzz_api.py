"""Schemathesis over every operation in the running service's own OpenAPI schema.

The real ``mailsift serve`` (a subprocess, its own data dir) is driven over HTTP with
schema-conforming and schema-violating requests (schemathesis' coverage and fuzzing
phases, positive and negative). Every answer must come within :data:`RESPONSE_BUDGET`,
must not be a 5xx, and a 4xx must have the one JSON error shape. Raw-message bodies
(``message/rfc822``: a strategy and its serializer, registered together) come from the
hostile MIME strategy of ``test_hostile_mime``; a guard checks that every operation taking
a message got messages past its Content-Type check. A stateful run then follows the
document's links (a score's fingerprint into feedback, labels and forgetting; a list
entry into its reads and deletion) for a few short workflows.

Cases tried per operation are shown in pytest's terminal summary.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import max_response_time, not_a_server_error

from mailsift.service.app import create_app
from mailsift.service.http.limits import MAX_URL_BYTES
from mailsift.service.settings import Settings
from tests.service.server import Service
from tests.service.test_hostile_mime import Tally, hostile_messages

RESPONSE_BUDGET = 5.0
"""Seconds any answer may take (the parse budget is 1 s; the rest is headroom for CI)."""
MAX_EXAMPLES = 25
"""Fuzzed cases per operation, on top of schemathesis' coverage cases…"""
RAW_BODY_EXAMPLES = 80
"""…and per operation that takes a raw message, where hostile MIME meets the parser."""
RAW_BODY_PATHS = ["/v1/score", "/v1/dlp/scan", "/v1/feedback", "/v1/train"]
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

STATEFUL_EXAMPLES = 25
"""Stateful workflows, each of at most :data:`STATEFUL_STEPS` calls."""
STATEFUL_STEPS = 6

TALLY = Tally("schemathesis")
MESSAGES_ANSWERED: Counter[str] = Counter()
"""Cases per operation whose raw message got past the Content-Type check (not a 415)."""

schemathesis.openapi.media_type("message/rfc822", hostile_messages(max_bytes=50_000))

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
        "checks": {"max_response_time": RESPONSE_BUDGET},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": RESPONSE_BUDGET * 4,
        "operations": [
            {"include-path": RAW_BODY_PATHS, "generation": {"max-examples": RAW_BODY_EXAMPLES}}
        ],
    }
)


# The schema the service serves, built by the same app factory without starting it, so
# tests are known at collection; a guard test checks the running service serves it too.
SPEC = create_app(Settings(data_dir=Path("unused"))).openapi()
# Schemathesis is given copies: it adds the links it infers (``/v1/aliases`` ->
# ``/v1/aliases/{address}``) to the document it is given, which the service does not serve.
schema = schemathesis.openapi.from_dict(copy.deepcopy(SPEC), config=CONFIG)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Service]:
    TALLY.watch(request.config)
    base = tmp_path_factory.mktemp("fuzz")
    env = {"MAILSIFT_ADMIN_TOKEN": ADMIN_TOKEN, "MAILSIFT_DLP_INBOUND": "true"}
    with Service(base / "data", env=env) as svc:
        yield svc


def test_the_running_service_serves_the_fuzzed_schema(service: Service) -> None:
    r = httpx.get(f"{service.url}/openapi.json", timeout=RESPONSE_BUDGET)
    assert r.json() == SPEC


def test_the_fuzzer_gets_past_authentication(service: Service) -> None:
    """Guard: were the token refused, every fuzzed case would stop at a 401 and prove nothing."""
    r = httpx.get(f"{service.url}/v1/model", headers=AUTH, timeout=RESPONSE_BUDGET)
    assert r.status_code == 200, r.text


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_server_error_and_no_slow_answer(service: Service, case: schemathesis.Case[Any]) -> None:
    response = case.call(base_url=service.url, headers=AUTH)
    TALLY.add(case.operation.label, response.elapsed)
    if case.media_type == "message/rfc822" and response.status_code != 415:
        MESSAGES_ANSWERED[case.operation.path] += 1
    check_answer(case, response)


def check_answer(case: schemathesis.Case[Any], response: Any) -> None:
    case.validate_response(response, checks=[not_a_server_error, max_response_time])
    target = urlsplit(response.request.url or "")
    if len(target.path) + len(target.query) + 1 > MAX_URL_BYTES:
        # Refused while the request line is read, before the app sees it (a thousand long
        # rcpt= can do it): 431, with the same JSON body as every other error.
        assert response.status_code == 431
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error", "detail"}, response.text


def test_every_operation_taking_a_message_was_fuzzed_with_messages() -> None:
    """Guard (runs after the fuzzing above): without a serializer for message/rfc822 the
    raw-message operations would get no bodies and the hostile MIME would reach nothing."""
    message_paths = [p for p in RAW_BODY_PATHS if "message/rfc822" in _body_types(p)]
    assert set(message_paths) >= {"/v1/score", "/v1/feedback", "/v1/train"}
    for path in message_paths:
        assert MESSAGES_ANSWERED[path] >= 10, (path, MESSAGES_ANSWERED)


def _body_types(path: str) -> set[str]:
    body = SPEC["paths"][path]["post"].get("requestBody", {})
    return set(body.get("content", {}))


STATEFUL = schemathesis.openapi.from_dict(
    copy.deepcopy(SPEC),
    config=schemathesis.Config.from_dict(
        {"checks": {"max_response_time": RESPONSE_BUDGET}, "request-timeout": RESPONSE_BUDGET * 4}
    ),
)


class Workflow(STATEFUL.as_state_machine()):  # type: ignore[misc]
    """Schemathesis' state machine over the document's links, against :attr:`base_url`."""

    base_url = ""

    def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
        return {"base_url": self.base_url, "headers": AUTH}

    def validate_response(  # type: ignore[override]
        self, response: Any, case: schemathesis.Case[Any], **kwargs: Any
    ) -> None:
        TALLY.add(f"stateful {case.operation.label}", response.elapsed)
        check_answer(case, response)


def test_stateful_workflows_follow_the_links(service: Service) -> None:
    assert any(
        "links" in answer
        for op in SPEC["paths"]["/v1/score"].values()
        for answer in op["responses"].values()
    )  # guard: there is something to follow
    Workflow.base_url = service.url
    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_a_list_offset_beyond_any_sql_integer_is_a_400(service: Service) -> None:
    # Found by this fuzzer: offset=2**71 reached SQLite, which raised OverflowError (a 500).
    r = httpx.get(
        f"{service.url}/v1/lists/allow", params={"offset": 2**71}, headers=AUTH, timeout=5
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
