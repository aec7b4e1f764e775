"""The gateway side of the HTTP API: one keep-alive connection pool to the service.

Three kinds of failure, because the caller does something different for each:

* :class:`ServiceUnavailable`, an outage (refused, reset, timed out, a 5xx, a body that
  is not the expected JSON): fail open or closed, per the setting;
* :class:`GatewayMisconfigured`, the service refused this gateway (401 or 403: a wrong,
  revoked or non-gateway token; another 4xx the gateway's own calls never cause, such as
  404 from a wrong URL, or 413 from a service whose size limit is below the gateway's):
  always fail closed and log an error, since failing open would let every message out
  unscanned until someone reads the log;
* :class:`RequestRefused`, the service judged what the client sent unusable (400: an
  identity or address it refuses): the message is refused, never passed unscanned.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx

from mailsift.gateway.settings import GatewaySettings

__all__ = [
    "ALIAS_LIVE",
    "ALIAS_STATES",
    "Action",
    "Admission",
    "Direction",
    "GatewayMisconfigured",
    "RecipientVerdict",
    "RequestRefused",
    "ScoreAnswer",
    "ScoreRequest",
    "ServiceClient",
    "ServiceUnavailable",
    "check_token",
    "recipients_that_fit",
]

log = logging.getLogger("mailsift.gateway")

Direction = Literal["inbound", "outbound"]
Action = Literal["accept", "tag", "quarantine", "reject", "defer"]
_ACTIONS: tuple[Action, ...] = ("accept", "tag", "quarantine", "reject", "defer")
ALIAS_LIVE = "live"
ALIAS_STATES = (ALIAS_LIVE, "expired", "deleted")
"""What ``/v1/recipients/{address}`` says of a temporary address (``alias``)."""


# httpx refuses a URL over 64 KiB; the envelope is sent in the query. Leave room for the
# other parameters (each at most a few hundred characters).
_RCPT_QUERY_BUDGET = 60_000


def recipients_that_fit(rcpt: Sequence[str], budget: int = _RCPT_QUERY_BUDGET) -> list[str]:
    """The first recipients whose escaped ``rcpt=`` parameters fit in ``budget`` characters.

    An MTA admits 1,000 recipients by default (Postfix's smtpd_recipient_limit): of usual
    length they all fit; of the longest legal length only about 180 do, and the message
    is scored with those rather than not at all.
    """
    kept: list[str] = []
    used = 0
    for address in rcpt:
        used += len("&rcpt=") + len(quote(address, safe="@"))
        if used > budget:
            break
        kept.append(address)
    return kept


class ServiceUnavailable(Exception):
    """The service gave no usable answer in time; the message is the cause, never content."""


class GatewayMisconfigured(Exception):
    """The service refused this gateway's call (a bad token, a wrong URL): a configuration
    error, not an outage. The message says which and what to check, never the token."""


class RequestRefused(Exception):
    """The service refused what the client sent (400: an identity it cannot use); the
    message is the service's ``detail``, cut short."""


# Answers that are an outage: transient, so the fail mode applies. A 413 is not one: the
# gateway sends at most its own max_message_bytes, so the service's limit is set lower.
_OUTAGE_4XX = frozenset({408, 429})
_REQUEST_REFUSED = frozenset({400, 422})
_MAX_DETAIL = 200
_PROBE_USER = "mailsift-gateway-token-check"


def _refusal(response: httpx.Response) -> Exception:
    """The exception for a non-200 answer (see the module's docstring)."""
    status = response.status_code
    if status >= 500 or status in _OUTAGE_4XX:
        return ServiceUnavailable(f"HTTP {status}")
    if status in _REQUEST_REFUSED:
        try:
            detail = str(response.json().get("detail", ""))
        except (ValueError, AttributeError):
            detail = ""
        return RequestRefused(f"HTTP {status}: {detail[:_MAX_DETAIL]}".rstrip(": "))
    if status == 413:
        why = (
            "the service's MAILSIFT_MAX_MESSAGE_BYTES is below this gateway's "
            "max_message_bytes (MAILSIFT_GATEWAY_MAX_MESSAGE_BYTES): make them equal"
        )
    elif status == 401:
        why = "the token is missing, unknown or revoked (check --token-file)"
    elif status == 403:
        why = "the token may not call this (it needs the gateway role)"
    else:
        why = "check --service-url: it must be the service's gateway listener"
    return GatewayMisconfigured(f"HTTP {status} from {response.request.url.path}: {why}")


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One message and its envelope, as the MTA saw them."""

    raw: bytes
    direction: Direction
    mail_from: str | None = None
    rcpt: Sequence[str] = ()
    client_ip: str | None = None
    helo: str | None = None
    user: str | None = None
    queue_id: str | None = None
    truncated: bool = False
    """``raw`` is only the start of a message larger than the gateway's limit."""


def _action(value: Any) -> Action:
    if value not in _ACTIONS:
        raise ValueError(f"unknown action {value!r}")
    return cast(Action, value)


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    """One recipient's own verdict (``recipients`` in ``/v1/score``'s answer): the
    message's, made stricter or looser by that recipient's personal reasons."""

    rcpt: str  # as sent in the ``rcpt`` parameter, lower-cased
    verdict: str
    action: Action
    score: float
    reasons: tuple[str, ...] = ()
    owner: str | None = None
    """Set when the recipient is a live temporary address: whom it delivers to."""

    @classmethod
    def from_json(cls, item: Any) -> RecipientVerdict:
        """Raises KeyError, TypeError or ValueError on anything but the documented shape."""
        rcpt = item["rcpt"]
        if not isinstance(rcpt, str):
            raise TypeError(f"rcpt is {type(rcpt).__name__}")
        owner = (item.get("alias") or {}).get("owner")
        if owner is not None and not (isinstance(owner, str) and _plain_address(owner)):
            raise ValueError("alias owner is not an address")
        return cls(
            rcpt=rcpt.lower(),
            verdict=str(item["verdict"]),
            action=_action(item["action"]),
            score=float(item["score"]),
            reasons=tuple(str(r["name"]) for r in item.get("reasons") or ()),
            owner=owner,
        )


def _plain_address(value: str) -> bool:
    """An address the MTA can be given as a recipient: one ``@``, no spaces, brackets or
    control characters (it goes into a milter command as ``<value>``)."""
    return (
        0 < len(value) <= 320
        and value.count("@") == 1
        and not value.startswith("@")
        and all(c.isprintable() and not c.isspace() and c not in "<>" for c in value)
    )


def _recipients(value: Any) -> tuple[RecipientVerdict, ...]:
    """The well-formed entries of ``recipients``; an absent or malformed field is none.

    Per-recipient verdicts refine the message's: without them the message-level answer
    still applies to everyone, so a bad entry is skipped, never a reason to fail the message.
    """
    if not isinstance(value, list):
        return ()
    found: list[RecipientVerdict] = []
    for item in value:
        try:
            found.append(RecipientVerdict.from_json(item))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ScoreAnswer:
    """The part of ``/v1/score``'s answer a gateway acts on."""

    score: float
    verdict: str
    action: Action
    reasons: tuple[str, ...]
    recipients: tuple[RecipientVerdict, ...] = ()

    @classmethod
    def from_json(cls, body: Any) -> ScoreAnswer:
        try:
            return cls(
                score=float(body["score"]),
                verdict=str(body["verdict"]),
                action=_action(body["action"]),
                reasons=tuple(str(r["name"]) for r in body["reasons"]),
                recipients=_recipients(body.get("recipients")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ServiceUnavailable(f"unexpected score answer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Admission:
    """May a sender send one more message now (``/v1/admission/{user}``)."""

    user: str
    decision: Literal["allow", "defer"]
    state: str
    reason: str


class ServiceClient:
    """Async client of the service; one per process, shared by every connection."""

    def __init__(
        self, settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None
    ):
        token = settings.bearer()
        self.gateway = settings.name or None
        self.max_message_bytes = settings.max_message_bytes
        if transport is None:
            # Requests go out as separate small writes (headers, then body): without
            # TCP_NODELAY each waits for the last one's ACK (measured: +1.5 ms a call).
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
        self._http = httpx.AsyncClient(
            base_url=settings.service_url,
            headers={"authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(settings.timeout_seconds),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(self, request: ScoreRequest) -> ScoreAnswer:
        params: list[tuple[str, str]] = [("direction", request.direction)]
        for name in ("mail_from", "client_ip", "helo", "user", "queue_id"):
            value = getattr(request, name)
            if value:
                params.append((name, value))
        params += [("rcpt", r) for r in recipients_that_fit(request.rcpt)]
        if request.truncated:
            params.append(("truncated", "true"))
        if self.gateway:
            params.append(("gateway", self.gateway))
        body = await self._call(
            "POST",
            "/v1/score",
            params=params,
            content=request.raw,
            headers={"content-type": "message/rfc822"},
        )
        return ScoreAnswer.from_json(body)

    async def check_token(self) -> None:
        """At start: does the service take this gateway's token? Raises
        :class:`GatewayMisconfigured` when it does not, :class:`ServiceUnavailable` when
        the service cannot be asked now (the gateway starts anyway: an outage is what the
        fail mode is for). Asks ``/v1/admission`` about a name no user has: it counts
        nothing and needs the gateway role."""
        try:
            await self.admission(_PROBE_USER)
        except RequestRefused as exc:
            raise GatewayMisconfigured(f"the token check was refused: {exc}") from None

    async def admission(self, user: str) -> Admission:
        body = await self._call("GET", f"/v1/admission/{quote(user, safe='@')}")
        try:
            return Admission(
                user=str(body["user"]),
                decision=body["decision"],
                state=str(body["state"]),
                reason=str(body["reason"]),
            )
        except (KeyError, TypeError) as exc:
            raise ServiceUnavailable(f"unexpected admission answer: {exc}") from None

    async def alias_state(self, address: str) -> str | None:
        """Is ``address`` a temporary address (``live``, ``expired``, ``deleted``), or
        not one (None)? Asked by the policy server about a recipient it does not list."""
        body = await self._call("GET", f"/v1/recipients/{quote(address, safe='@')}")
        state = body.get("alias") if isinstance(body, dict) else None
        if state is not None and state not in ALIAS_STATES:
            raise ServiceUnavailable(f"unexpected recipient answer: {state!r}")
        return cast(str | None, state)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ServiceUnavailable("timed out") from None
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(type(exc).__name__) from None
        if response.status_code != 200:
            raise _refusal(response)
        try:
            return response.json()
        except ValueError:
            raise ServiceUnavailable("answer is not JSON") from None


async def check_token(client: ServiceClient, component: str) -> None:
    """Before serving: a token the service refuses raises :class:`GatewayMisconfigured`
    (the process must not start: every message would fail); a service that cannot be
    asked now is only logged, since outages are what the fail mode is for."""
    try:
        await client.check_token()
    except GatewayMisconfigured:
        await client.aclose()
        raise
    except ServiceUnavailable as exc:
        log.warning("%s: cannot check the gateway token now (service %s): starting", component, exc)
    else:
        log.info("%s: the service accepts the gateway token", component)
