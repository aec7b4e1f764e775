"""End to end over real HTTP: the API contract, learning from an administrator, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsift.models.parse import TOO_DEEP
from mailsift.reasons import MODEL, MODEL_LEARNING, mime_reason
from tests.service.server import Service, message, score, train

RFC822 = {"content-type": "message/rfc822"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("api")
    with Service(base / "data", env={"MAILSIFT_MAX_MESSAGE_BYTES": "131072"}) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def test_score_response_has_the_contract_fields(client: httpx.Client) -> None:
    contract = {
        "score",
        "verdict",
        "action",
        "reasons",
        "tokens",
        "model",
        "fingerprint",
        "direction",
        "elapsed_ms",
    }
    assert set(score(client, message(1, spammy=True), "inbound")) == contract
    body = score(client, message(1, spammy=True), "outbound")
    assert set(body) == contract | {"dlp"}  # outbound mail is also checked for leaks
    assert 0.0 <= body["score"] <= 1.0
    assert body["direction"] == "outbound"
    assert body["verdict"] in ("ham", "suspect", "spam")
    assert body["action"] in ("accept", "tag", "quarantine", "reject", "defer")
    assert set(body["model"]) == {"version", "ham", "spam", "learning", "logit"}
    assert set(body["tokens"]) == {"spam", "ham"}
    names = [r["name"] for r in body["reasons"]]
    assert MODEL in names or MODEL_LEARNING in names


def test_train_moves_the_model_and_is_idempotent(client: httpx.Client) -> None:
    spam, ham = message(10, spammy=True), message(10, spammy=False)
    before = score(client, spam)["score"]
    first = train(client, spam, "spam")
    assert first["result"] == "learned" and first["scope"] == "shared"
    assert train(client, ham, "ham")["result"] == "learned"
    assert train(client, spam, "spam") == {**first, "result": "unchanged"}
    after = score(client, spam)
    assert after["score"] > before
    assert after["fingerprint"] == first["fingerprint"]
    spam_tokens = [t["token"] for t in after["tokens"]["spam"]]
    assert any("cheap" in t or "viagra" in t for t in spam_tokens)


def test_relabel_undoes_the_earlier_label(client: httpx.Client) -> None:
    msg = message(20, spammy=True)
    model0 = client.get("/v1/model").json()
    train(client, msg, "spam")
    model1 = client.get("/v1/model").json()
    assert (model1["spam"], model1["ham"]) == (model0["spam"] + 1, model0["ham"])
    relabel = train(client, msg, "ham")
    assert relabel["result"] == "relabelled"
    model2 = client.get("/v1/model").json()
    assert (model2["spam"], model2["ham"]) == (model0["spam"], model0["ham"] + 1)
    assert model2["log_position"] == relabel["log_position"]


def test_forget_takes_an_example_back(client: httpx.Client) -> None:
    msg = message(30, spammy=True)
    model0 = client.get("/v1/model").json()
    fp = train(client, msg, "spam")["fingerprint"]
    r = client.delete(f"/v1/examples/{fp}")
    assert r.status_code == 200 and r.json()["result"] == "forgotten"
    model1 = client.get("/v1/model").json()
    assert (model1["spam"], model1["ham"]) == (model0["spam"], model0["ham"])
    assert client.delete(f"/v1/examples/{fp}").json()["result"] == "unchanged"


def test_model_and_health_endpoints(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    model = client.get("/v1/model").json()
    for key in (
        "version",
        "ham",
        "spam",
        "learning",
        "log_position",
        "log_head",
        "snapshot_position",
        "updated_at",
    ):
        assert key in model
    assert model["log_position"] == model["log_head"]
    assert client.get("/openapi.json").json()["paths"]["/v1/score"]["post"]["summary"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "post",
            "/v1/score",
            {"content": b"Subject: x\r\n\r\nhi", "headers": RFC822},
            400,
            "bad_request",
        ),
        (
            "post",
            "/v1/score?direction=sideways",
            {"content": b"Subject: x\r\n\r\nhi", "headers": RFC822},
            400,
            "bad_request",
        ),
        (
            "post",
            "/v1/score?direction=inbound&client_ip=999.1.1.1",
            {"content": b"Subject: x\r\n\r\nhi", "headers": RFC822},
            400,
            "bad_request",
        ),
        (
            "post",
            "/v1/score?direction=inbound",
            {"content": b"Subject: x\r\n\r\nhi", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "post",
            "/v1/score?direction=inbound",
            {"content": b"Subject: x\r\n\r\nhi"},
            415,
            "unsupported_media_type",
        ),
        (
            "post",
            "/v1/score?direction=inbound",
            {"content": b"", "headers": RFC822},
            422,
            "unusable_message",
        ),
        (
            "post",
            "/v1/score?direction=inbound",
            {"content": b"x" * 140000, "headers": RFC822},
            413,
            "message_too_large",
        ),
        (
            "post",
            "/v1/feedback?label=spam",
            {"content": b"Subject: x\r\n\r\nhi", "headers": RFC822},
            400,
            "bad_request",
        ),
        (
            "post",
            "/v1/feedback?label=maybe&user=a@b.c",
            {"content": b"Subject: x\r\n\r\nhi", "headers": RFC822},
            400,
            "bad_request",
        ),
        ("delete", "/v1/examples/not-a-fingerprint", {}, 400, "bad_request"),
        ("get", "/v1/nothing-here", {}, 404, "not_found"),
        ("get", "/v1/score", {}, 405, "method_not_allowed"),
    ],
)
def test_errors_are_json_with_a_code_and_a_detail(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = client.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("", "direction"),
        ("direction=sideways", "direction"),
        ("direction=inbound&rcpt=" + "a" * 321 + "@x.test", "rcpt"),
        ("direction=inbound&helo=" + "h" * 256, "helo"),
        ("direction=inbound" + "&rcpt=a@x.test" * 1001, "rcpt"),
    ],
)
def test_a_bad_envelope_parameter_is_named_in_the_400(
    client: httpx.Client, query: str, named: str
) -> None:
    r = client.post(f"/v1/score?{query}", content=b"Subject: x\r\n\r\nhi", headers=RFC822)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert r.json()["detail"].split(":")[0].split(".")[0] == named, r.json()  # rcpt.0: …


def test_unknown_query_parameters_are_ignored(client: httpx.Client) -> None:
    r = client.post(
        "/v1/score?direction=inbound&future_flag=1", content=b"Subject: x\r\n\r\nhi", headers=RFC822
    )
    assert r.status_code == 200, r.text


def test_oversized_body_is_refused_while_streaming(client: httpx.Client) -> None:
    """No Content-Length (chunked): the limit must bite as bytes arrive."""

    def chunks() -> Iterator[bytes]:
        yield b"Subject: big\r\n\r\n"
        for _ in range(200):  # 200 KiB > 128 KiB
            yield b"y" * 1024

    r = client.post("/v1/score?direction=inbound", content=chunks(), headers=RFC822)
    assert r.status_code == 413 and r.json()["error"] == "message_too_large"


def test_hostile_messages_are_scored_not_crashed(client: httpx.Client) -> None:
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + b"".join(
        f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode()
        for i in range(1000)
    )
    junk_headers = b"Subject: \xff\xfe\x00bad =?x-unknown?Q?zz?=\r\nFrom: \x80\x81@\xff\r\n\r\nbody"
    broken_b64 = (
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Type: text/plain; charset=bogus\r\n\r\n!!!@@@###"
    )
    long_line = b"Subject: long\r\n\r\n" + b"a" * 60000
    for raw in (deep, junk_headers, broken_b64, long_line, b"\x00" * 1000):
        started = time.monotonic()
        body = score(client, raw)
        assert time.monotonic() - started < 10
        assert 0.0 <= body["score"] <= 1.0
    reasons = [r["name"] for r in score(client, deep)["reasons"]]
    assert mime_reason(TOO_DEEP) in reasons


def test_first_start_is_neutral_and_says_it_is_learning(tmp_path: Path) -> None:
    with (
        Service(tmp_path / "data", env={"MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10"}) as svc,
        svc.client() as c,
    ):
        body = score(c, message(1, spammy=True))
        assert body["score"] == 0.5
        assert body["model"]["learning"] is True
        assert (body["verdict"], body["action"]) == ("ham", "accept")
        assert [r["name"] for r in body["reasons"]] == [MODEL_LEARNING]
