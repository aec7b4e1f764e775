"""``mailsift policy``: a Postfix policy delegation server (``check_policy_service``).

Postfix asks it at ``RCPT`` time, once per recipient, before it has taken any message
(protocol: ``name=value`` lines ending in an empty line, answered by ``action=...``; see
Postfix's SMTPD_POLICY_README). Two questions are answered here, while the client is
still connected, so refused mail is refused in the SMTP dialogue and never bounced later:

* does the recipient exist? (when a recipient list is configured: a recipient in one of
  its domains that it does not list gets ``550 5.1.1``, unless the service says it is a
  live temporary address; an expired or deleted one gets the same ``550 5.1.1``);
* may the sender send another message now? Outbound senders (SASL-authenticated, or a
  client in an internal network) are asked about at the service, which holds the hourly
  limits and the account states every gateway shares; over a limit or suspended is
  ``DEFER`` (a 4xx: the client keeps the message and retries later).

Everything else is ``DUNNO``: Postfix's other restrictions decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailsift.gateway.client import (
    ALIAS_LIVE,
    GatewayMisconfigured,
    RequestRefused,
    ServiceClient,
    ServiceUnavailable,
    check_token,
)
from mailsift.gateway.decisions import client_identity, direction_of
from mailsift.gateway.metrics import DECISIONS, SERVICE_FAILURES
from mailsift.gateway.settings import FailMode, GatewaySettings, IdentitySource, Network

__all__ = [
    "DUNNO",
    "MAX_LOGGED",
    "PolicyServer",
    "RecipientList",
    "decide_recipient",
    "log_value",
    "outbound_sender",
    "parse_request",
    "refusal_line",
    "serve_policy",
]

log = logging.getLogger("mailsift.gateway.policy")

MAX_LOGGED = 320
"""Characters of one value a log line keeps (an address is at most 320)."""
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})  # controls, bidi overrides, line breaks

DUNNO = "DUNNO"
MAX_ATTRIBUTES = 200
"""A request with more lines is not from Postfix: the connection is dropped."""
MAX_LINE = 8192


class BadRequest(Exception):
    """Not a policy delegation request."""


def parse_request(lines: Iterable[str]) -> dict[str, str]:
    """``name=value`` lines (without the terminating empty line) -> attributes.

    Values may contain ``=``; names are lower-case in the protocol and kept as sent.
    A repeated name keeps its last value, as Postfix's own policy servers do.
    """
    attributes: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if not sep or not name:
            raise BadRequest("a line that is not name=value")
        attributes[name.strip()] = value.strip()
    return attributes


@dataclass(frozen=True, slots=True)
class RecipientList:
    """Valid local recipients; their domains (and ``extra_domains``) are the ones judged."""

    addresses: frozenset[str]
    domains: frozenset[str]

    @classmethod
    def load(cls, path: Path | None, extra_domains: Iterable[str] = ()) -> RecipientList:
        addresses: set[str] = set()
        if path is not None:
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip().lower()
                if line:
                    addresses.add(line)
        domains = {a.rpartition("@")[2] for a in addresses if "@" in a}
        domains |= {d.lower().rstrip(".") for d in extra_domains}
        return cls(frozenset(addresses), frozenset(domains))

    def exists(self, recipient: str) -> bool | None:
        """True/False for a recipient of a judged domain; None for anyone else's."""
        address = recipient.strip().lower()
        domain = address.rpartition("@")[2].rstrip(".")
        if domain not in self.domains:
            return None
        return address in self.addresses


def decide_recipient(recipients: RecipientList, recipient: str) -> str | None:
    """The refusal (an access(5) action) for a recipient that does not exist, else None."""
    if recipients.exists(recipient) is False:
        # Postfix puts "<rcpt>: Recipient address rejected:" before the text itself.
        return "550 5.1.1 no such user here"
    return None


def log_value(value: str | None) -> str:
    """``value`` as one ``name=value`` field of a log line, whatever a client sent.

    Control and format characters (a newline that would forge a second line, an escape
    sequence, a bidi override) become ``\\xNN``/``\\uNNNN``, a backslash or quote is
    escaped, a value with a space or ``=`` is quoted, a long one is cut at
    :data:`MAX_LOGGED` characters (``…``), and an empty one is ``-``.
    """
    if not value:
        return "-"
    out: list[str] = []
    for ch in value[:MAX_LOGGED]:
        code = ord(ch)
        if ch in '\\"':
            out.append("\\" + ch)
        elif unicodedata.category(ch) in _UNPRINTABLE:
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                else f"\\U{code:08x}"
            )  # fmt: skip
        else:
            out.append(ch)
    text = "".join(out) + ("…" if len(value) > MAX_LOGGED else "")
    if any(ch.isspace() or ch in '="' for ch in text):
        return f'"{text}"'
    return text


def refusal_line(attributes: dict[str, str], user: str | None, answer: str, reason: str) -> str:
    """The log line of one refused recipient: who, to whom, why; never message content.

    ``queue_id`` is ``-`` until Postfix has assigned one (after the first recipient it
    accepts), so the client and the sender are there to match its own NOQUEUE line.
    """
    fields = {
        "queue_id": attributes.get("queue_id"),
        "client": attributes.get("client_address"),
        "user": user or attributes.get("sasl_username"),
        "sender": attributes.get("sender"),
        "recipient": attributes.get("recipient"),
        "reason": reason,
        "answer": answer,
    }
    return "refused " + " ".join(f"{name}={log_value(v)}" for name, v in fields.items())


def outbound_sender(
    attributes: dict[str, str], networks: Iterable[Network], source: IdentitySource = "sasl"
) -> str | None:
    """The identity whose limits apply, as the milter names it: the SASL login, else the
    address of a client in an internal network (``client:10.0.0.5``, never the envelope
    sender it chose); None for inbound mail (nobody's limit), and with
    ``identity_source=header`` for a client without a login (the header is in the
    message, which Postfix has not received at RCPT: its limits apply at end of
    message)."""
    user = attributes.get("sasl_username") or None
    client = attributes.get("client_address") or None
    try:
        address = ipaddress.ip_address(client) if client else None
    except ValueError:
        address = None
    if address is None and not user:
        return None  # no client address: not a request about SMTP mail we can judge
    if direction_of(address, user, networks) != "outbound":
        return None
    if user:
        return user
    return None if source == "header" else client_identity(address)


# The recipient file's modification time while it cannot be read: warned about once.
_UNREADABLE = -1.0


class PolicyServer:
    """Answers policy requests; one instance serves every Postfix connection."""

    def __init__(self, client: ServiceClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings
        self._recipients_path = settings.recipients_file
        self._recipients_mtime: float | None = None
        self.recipients = RecipientList.load(None, settings.local_domain_set)
        self._reload_recipients()

    def _reload_recipients(self) -> None:
        """Re-read the recipient list when its file changed (a stat per request). A file
        that cannot be read (removed while being replaced, not UTF-8) keeps the list last
        loaded, with one WARNING, rather than failing the request."""
        path = self._recipients_path
        if path is None:
            return
        try:
            mtime = os.stat(path).st_mtime
            if mtime != self._recipients_mtime:
                self.recipients = RecipientList.load(path, self.settings.local_domain_set)
                self._recipients_mtime = mtime
                log.info("recipient list loaded: %d addresses", len(self.recipients.addresses))
        except (OSError, UnicodeDecodeError) as exc:
            if self._recipients_mtime != _UNREADABLE:
                self._recipients_mtime = _UNREADABLE
                log.warning(
                    "recipient list %s unreadable (%s): keeping the %d addresses loaded",
                    path,
                    getattr(exc, "strerror", None) or type(exc).__name__,
                    len(self.recipients.addresses),
                )

    async def answer(self, attributes: dict[str, str]) -> str:
        """The action for one request (``DUNNO`` when this server has no objection)."""
        if attributes.get("request") != "smtpd_access_policy":
            return DUNNO
        if attributes.get("protocol_state", "").upper() != "RCPT":
            return DUNNO
        self._reload_recipients()
        recipient = attributes.get("recipient", "")
        refusal = decide_recipient(self.recipients, recipient) if recipient else None
        if refusal is not None:
            alias = ""
            if recipient.lower().startswith(self.settings.alias_prefix.lower()):
                alias = await self._alias_state(attributes, recipient)
            if alias.startswith("DEFER"):
                return alias
            if alias != ALIAS_LIVE:
                why = f"{alias} temporary address" if alias else "unknown recipient"
                DECISIONS.labels("policy", "unknown_recipient").inc()
                log.info("%s", refusal_line(attributes, None, refusal, why))
                return refusal
        settings = self.settings
        user = outbound_sender(attributes, settings.networks, settings.identity_source)
        if user is None:
            return DUNNO
        try:
            admission = await self.client.admission(user)
        except ServiceUnavailable as exc:
            return self._unavailable(attributes, user, str(exc), settings.fail_mode)
        except GatewayMisconfigured as exc:
            # A configuration error, not an outage: closed whatever the fail mode.
            SERVICE_FAILURES.labels("policy", "closed").inc()
            answer = "DEFER 4.3.0 policy service temporarily unavailable, try again later"
            log.error("%s", refusal_line(attributes, user, answer, f"{exc}: failing closed"))
            return answer
        except RequestRefused as exc:
            DECISIONS.labels("policy", "refused").inc()
            answer = "550 5.7.1 sender refused by the filter"
            log.warning(
                "%s", refusal_line(attributes, user, answer, f"refused by the service: {exc}")
            )
            return answer
        if admission.decision == "defer":
            DECISIONS.labels("policy", "defer").inc()
            reason = admission.reason or "not now"
            answer = f"DEFER 4.7.1 {reason}, try again later"
            log.info("%s", refusal_line(attributes, user, answer, f"{reason} ({admission.state})"))
            return answer
        return DUNNO

    async def _alias_state(self, attributes: dict[str, str], recipient: str) -> str:
        """For a recipient not on the list: ``live``, ``expired`` or ``deleted`` if it is
        a temporary address, ``""`` if not, or a ``DEFER`` answer when the service cannot
        say (whatever the fail mode: neither accepting nor refusing for good is right)."""
        try:
            state = await self.client.alias_state(recipient)
        except RequestRefused:
            return ""  # an address the service refuses is no temporary address
        except (ServiceUnavailable, GatewayMisconfigured) as exc:
            SERVICE_FAILURES.labels("policy", "closed").inc()
            answer = "DEFER 4.3.0 recipient cannot be checked now, try again later"
            why = f"temporary address check failed ({exc})"
            log.warning("%s", refusal_line(attributes, None, answer, why))
            return answer
        return state or ""

    def _unavailable(
        self, attributes: dict[str, str], user: str, cause: str, mode: FailMode
    ) -> str:
        """Fail open (DUNNO) or closed (a 4xx); either way one WARNING line, no content."""
        SERVICE_FAILURES.labels("policy", mode).inc()
        why = f"service unavailable ({cause}): failing {mode}"
        if mode == "open":
            log.warning(
                "%s for queue_id=%s user=%s recipient=%s",
                why,
                log_value(attributes.get("queue_id")),
                log_value(user),
                log_value(attributes.get("recipient")),
            )
            return DUNNO
        answer = "DEFER 4.3.0 policy service temporarily unavailable, try again later"
        log.warning("%s", refusal_line(attributes, user, answer, why))
        return answer

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One Postfix connection: requests one after another until it hangs up."""
        try:
            while True:
                lines = await _read_request(reader)
                if lines is None:
                    return
                action = await self.answer(parse_request(lines))
                writer.write(f"action={action}\n\n".encode())
                await writer.drain()
        except (BadRequest, ValueError, UnicodeDecodeError) as exc:
            log.warning("dropping a policy connection: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> list[str] | None:
    """The lines of one request; None when the peer closed between requests."""
    lines: list[str] = []
    while True:
        raw = await reader.readline()
        if not raw:
            if lines:
                raise BadRequest("connection closed inside a request")
            return None
        if len(raw) > MAX_LINE:
            raise BadRequest("line too long")
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                return lines
            continue  # stray empty line between requests
        lines.append(line)
        if len(lines) > MAX_ATTRIBUTES:
            raise BadRequest("too many attributes")


async def serve_policy(settings: GatewaySettings) -> None:
    """Listen for Postfix connections until cancelled."""
    client = ServiceClient(settings)
    await check_token(client, "policy")
    server = PolicyServer(client, settings)
    listener = await asyncio.start_server(
        server.handle, settings.policy_host, settings.policy_port, limit=MAX_LINE * 2
    )
    log.info(
        "policy server listening on %s:%d, service %s, fail %s",
        settings.policy_host,
        settings.policy_port,
        settings.service_url,
        settings.fail_mode,
    )
    try:
        async with listener:
            await listener.serve_forever()
    finally:
        await client.aclose()
