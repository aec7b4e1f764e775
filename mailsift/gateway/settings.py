"""Settings of the milter and the policy server, read from ``MAILSIFT_GATEWAY_*`` variables.

A class of their own: they configure processes that run beside the MTA (often on another
host than the service), and none of the service's settings applies to them. Every field
can also be given as a command-line option of ``mailsift milter`` / ``mailsift policy``.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailsift.service.settings import domain_set

__all__ = ["FailMode", "GatewaySettings", "IdentitySource", "Network", "OversizeRule"]

FailMode = Literal["open", "closed"]
IdentitySource = Literal["sasl", "header"]
OversizeRule = Literal["reject", "scan-start"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Characters that would change what an address means (or end it) if put into its local part.
_UNSAFE_IN_ADDRESS = frozenset('@<>",;:\\()[] \t\r\n\0')


def _readable(field: str, path: Path) -> None:
    """A file named in the settings can be read now: a missing one is a line at start-up
    (``--recipients-file=/etc/mailsift/recipients: cannot read it: No such file or
    directory``), not a traceback, nor a policy server that fails every request."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{field}: cannot read it: {exc.strerror or exc}") from None


class GatewaySettings(BaseSettings):
    """Where the service is, how long to wait for it, and what to do when it does not answer."""

    model_config = SettingsConfigDict(env_prefix="MAILSIFT_GATEWAY_", extra="ignore", frozen=True)

    service_url: str = Field(
        "http://127.0.0.1:8470", description="Base URL of the service's gateway listener."
    )
    token: SecretStr | None = Field(
        None, description="A gateway-role token (`mailsift token create --role gateway`)."
    )
    token_file: Path | None = Field(
        None, description="File holding the token (keeps it out of the process list)."
    )
    timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="How long one call to the service may take."
    )
    fail_mode: FailMode = Field(
        "open",
        description="Service down or slow: `open` passes mail unscanned, `closed` "
        "answers 4xx so the client retries later.",
    )
    internal_networks: str = Field(
        "",
        description="Comma-separated client networks whose mail is outbound "
        "(SASL-authenticated clients and mail submitted on the MTA's host always are); "
        "Postfix's `mynetworks` as `postconf -h mynetworks` prints it is taken too.",
    )
    identity_source: IdentitySource = Field(
        "sasl",
        description="Whose limits outbound mail counts against: `sasl`, the SASL login; "
        "`header`, the SASL login, else the `identity_header` the submission server "
        "sets. Without either, the client's address (`client:10.0.0.5`), never MAIL FROM.",
    )
    identity_header: str = Field(
        "X-Authenticated-User",
        description="With `identity_source=header`: the header holding the sender's "
        "login, trusted only when the message holds it exactly once.",
    )
    subject_prefix: str = Field(
        "[SPAM?]", description="Prefix added to the Subject of mail the service tags."
    )
    name: str = Field("", description="Gateway name reported to the service (`gateway`).")
    milter_host: str = Field("127.0.0.1", description="Address the milter listens on.")
    milter_port: int = Field(8472, ge=1, le=65535, description="Port the milter listens on.")
    policy_host: str = Field("127.0.0.1", description="Address the policy server listens on.")
    policy_port: int = Field(8473, ge=1, le=65535, description="Port the policy server listens on.")
    recipients_file: Path | None = Field(
        None,
        description="Valid local recipients, one address per line; recipients in their "
        "domains (and `local_domains`) that are not listed are refused at RCPT.",
    )
    local_domains: str = Field(
        "", description="Comma-separated domains whose recipients must be in the file."
    )
    alias_prefix: str = Field(
        "t-",
        description="Local-part prefix of temporary addresses, as the service's "
        "`MAILSIFT_ALIAS_PREFIX`: only an unlisted recipient with it is looked up as one "
        "(empty: every unlisted recipient is), so a dictionary attack costs the service "
        "nothing and is refused even while the service is down.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Serve Prometheus metrics on this port (0 = off)."
    )
    max_message_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1024,
        description="A larger message is scored on its first this many bytes, headers "
        "first; at most the service's `MAILSIFT_MAX_MESSAGE_BYTES`.",
    )
    oversize_outbound: OversizeRule = Field(
        "reject",
        description="Outbound mail larger than `max_message_bytes`, whose end was not "
        "scanned for leaks: `reject` (`552 5.3.4`) or `scan-start` (its first part "
        "decides, as for inbound).",
    )
    junk_marking: bool = Field(
        True,
        description="Mark a recipient's copy for its Junk folder when that recipient's "
        "personal verdict is stricter than the message's: `bob@x` becomes `bob+junk@x` "
        "(needs the MTA's `recipient_delimiter`; `false` turns it off).",
    )
    junk_detail: str = Field(
        "junk", description="Address extension that marks a copy for Junk (`bob+junk@x`)."
    )
    recipient_delimiter: str = Field(
        "+",
        description="The MTA's `recipient_delimiter`: the first character joins the mark; "
        "any of them starts an address's existing extension, which the mark replaces.",
    )

    @model_validator(mode="after")
    def _valid(self) -> GatewaySettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if not self.recipient_delimiter or _UNSAFE_IN_ADDRESS & set(self.recipient_delimiter):
            raise ValueError("recipient_delimiter: characters an address's local part may hold")
        if (
            not self.junk_detail
            or _UNSAFE_IN_ADDRESS & set(self.junk_detail)
            or set(self.recipient_delimiter) & set(self.junk_detail)
        ):
            raise ValueError(
                "junk_detail: characters an address's local part may hold, not the delimiter"
            )
        name = self.identity_header
        if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
            raise ValueError("identity_header: a header field name (printable, no colon)")
        self.networks  # noqa: B018 - parse now: a typo must stop start-up, not the first mail
        for field, path in (
            ("token_file", self.token_file),
            ("recipients_file", self.recipients_file),
        ):
            if path is not None:
                _readable(field, path)
        return self

    @cached_property
    def networks(self) -> tuple[Network, ...]:
        # Postfix's mynetworks notation too (`postconf -h mynetworks`): spaces between
        # the networks, brackets round an IPv6 address (`[::1]/128`).
        words = self.internal_networks.replace(",", " ").split()
        try:
            return tuple(
                ipaddress.ip_network(word.replace("[", "").replace("]", ""), strict=False)
                for word in words
            )
        except ValueError as exc:
            raise ValueError(f"internal_networks: {exc}") from None

    @cached_property
    def local_domain_set(self) -> frozenset[str]:
        return domain_set(self.local_domains)

    def bearer(self) -> str | None:
        """The token, from the setting or the file (read at start, whitespace stripped)."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        return None
