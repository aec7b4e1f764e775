"""All service settings, read from ``MAILSIFT_*`` environment variables.

One class, read through the cached :func:`get_settings` dependency, so tests build a
``Settings(...)`` and hand it to ``create_app`` instead of patching globals.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailsift.models.parse import ParseLimits

__all__ = ["Action", "Settings", "domain_set", "get_settings"]

Action = Literal["accept", "tag", "quarantine", "reject", "defer"]
MiB = 1024 * 1024


class Settings(BaseSettings):
    """mailsift service settings; every field is ``MAILSIFT_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAILSIFT_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("data"), description="SQLite file and model snapshots live here.")
    database_url: str | None = Field(
        None,
        description="Training log database; unset = SQLite in the data dir, "
        "`postgresql://user@host/db` to share learning between replicas.",
    )
    max_message_bytes: int = Field(
        25 * MiB, ge=1024, description="Largest message accepted; larger bodies get 413."
    )
    max_json_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest body of any other request (JSON); larger bodies get 413.",
    )
    http_head_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A connection's request head (request line and header fields) must "
        "arrive within this; otherwise 408 and the connection is closed.",
    )
    http_body_idle_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A request body that sends nothing for this long gets 408 and the "
        "connection is closed.",
    )

    # Verdict thresholds on the combined spam probability, per direction.
    inbound_suspect_threshold: float = Field(
        0.3, gt=0, lt=1, description="Inbound: at or above, `suspect`."
    )
    inbound_spam_threshold: float = Field(
        0.5, gt=0, lt=1, description="Inbound: at or above, `spam`."
    )
    inbound_reject_threshold: float = Field(
        0.999,
        gt=0,
        le=1,
        description="Inbound: at or above, reject during SMTP instead of quarantine.",
    )
    outbound_suspect_threshold: float = Field(
        0.3, gt=0, lt=1, description="Outbound: at or above, `suspect`."
    )
    outbound_spam_threshold: float = Field(
        0.5, gt=0, lt=1, description="Outbound: at or above, `spam`."
    )
    suspect_action: Action = Field("tag", description="Action for a `suspect` verdict.")
    spam_action: Action = Field("quarantine", description="Action for a `spam` verdict.")

    # Training log replay and snapshots.
    log_poll_seconds: float = Field(
        0.25,
        gt=0,
        le=60,
        description="How often each worker looks for new training-log entries (on "
        "PostgreSQL, while notifications of appends arrive, every 2 s at most: they wake "
        "it at once).",
    )
    replica_behind_seconds: float = Field(
        5.0,
        gt=0,
        description="A worker whose model has not been at the training log's head for "
        "this long says it is behind (`GET /v1/model`, metrics).",
    )
    pg_listen_url: str | None = Field(
        None,
        description="PostgreSQL: where each worker LISTENs for notifications of appends "
        "and revocations, when `MAILSIFT_DATABASE_URL` goes through a pooler in "
        "transaction mode (PgBouncer), which cannot hold a LISTEN; unset = that URL.",
    )
    pg_pool_size: int = Field(
        4,
        ge=1,
        le=100,
        description="PostgreSQL: connections each worker keeps for the calls made per "
        "message (besides its engine's for the rest, and one listening for notifications).",
    )
    snapshot_every_entries: int = Field(
        500, ge=1, description="Write a snapshot after this many new log entries…"
    )
    snapshot_every_seconds: float = Field(
        300.0, gt=0, description="…or this long after the last one, if anything was learned."
    )
    snapshot_check_seconds: float = Field(
        5.0,
        gt=0,
        description="How often workers look for a model a rebuild published, and whether "
        "a rebuild is due.",
    )

    # Bounds on the work one message may cost (see models.parse.ParseLimits).
    parse_time_budget_ms: int = Field(
        1000,
        ge=1,
        description="Wall-clock milliseconds one message's parse may take when scoring "
        "(the rest is skipped, reason mime_time_budget); learning never has a time budget.",
    )
    parse_max_bytes: int = Field(
        4 * MiB, ge=1024, description="Bytes of a message the parser reads."
    )
    parse_max_part_bytes: int = Field(
        256 * 1024, ge=1024, description="Decoded bytes read per text part."
    )
    parse_max_parts: int = Field(256, ge=1, description="MIME parts visited per message.")
    parse_max_depth: int = Field(16, ge=1, description="MIME nesting depth followed.")
    parse_max_headers: int = Field(512, ge=1, description="Header fields read per message.")
    parse_max_guess_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Bytes of undeclared non-UTF-8 text whose charset is guessed per message "
        "(about 17 ms per 64 KB); past them it is read as Windows-1252 "
        "(reason mime_charset_guesses).",
    )
    offload_bytes: int = Field(
        256 * 1024, ge=0, description="Messages larger than this are parsed off the event loop."
    )

    min_examples_per_class: int = Field(
        10,
        ge=0,
        description="Until the model has learned this many ham and spam, "
        "its opinion does not count.",
    )
    explain_tokens: int = Field(8, ge=0, le=50, description="Tokens reported each way per verdict.")

    # -- outbound protection -------------------------------------------------------
    local_domains: str = Field(
        "",
        description="Comma-separated mail domains this installation serves (never allowlistable).",
    )
    # -- temporary addresses (aliases) ------------------------------------------------
    alias_domain: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\.?$",
        description="Domain of new temporary addresses (default: the owner's domain when it "
        "is a local domain, else the first of `MAILSIFT_LOCAL_DOMAINS`).",
    )
    alias_prefix: str = Field(
        "t-",
        pattern=r"^[a-z0-9][a-z0-9.-]{0,15}$",
        description="Local-part prefix of new temporary addresses (`t-` gives `t-k3x9…@`).",
    )
    alias_max_per_user: int = Field(
        50, ge=1, description="Live temporary addresses one user may hold at once."
    )
    alias_max_days: int = Field(
        365, ge=1, description="Longest lifetime of a temporary address, in days."
    )
    alias_default_days: int = Field(
        30, ge=1, description="Lifetime of a temporary address created without `days=`."
    )
    authserv_id: str | None = Field(
        None,
        description="authserv-id of the trusted Authentication-Results header (RFC 8601); "
        "headers from any other id are ignored.",
    )
    freemail_extra_domains: str = Field(
        "", description="Comma-separated domains treated as freemail on top of the packaged list."
    )

    dlp_config_file: Path | None = Field(
        None, description="TOML file with extra DLP keyword dictionaries and patterns."
    )
    dlp_labels: str = Field(
        "CONFIDENTIAL,STRICTLY CONFIDENTIAL,INTERNAL ONLY,INTERNAL USE ONLY,RESTRICTED,"
        "NOT FOR DISTRIBUTION",
        description="Comma-separated document labels that mark a message as sensitive.",
    )
    dlp_inbound: bool = Field(False, description="Also run leak detection on inbound mail.")
    dlp_action_low: Literal["flag", "quarantine", "reject"] = Field(
        "flag", description="Action for a low-severity DLP finding (flag = reason only)."
    )
    dlp_action_medium: Literal["flag", "quarantine", "reject"] = Field(
        "quarantine", description="Action for a medium-severity DLP finding."
    )
    dlp_action_high: Literal["flag", "quarantine", "reject"] = Field(
        "reject", description="Action for a high-severity DLP finding."
    )
    dlp_max_scan_chars: int = Field(
        2_000_000, ge=1000, description="Characters of text scanned per message for leaks."
    )

    limit_messages_per_hour: int = Field(
        200, ge=0, description="Outbound messages per user per rolling hour (0 = no limit)."
    )
    limit_messages_per_day: int = Field(
        1000, ge=0, description="Outbound messages per user per rolling day (0 = no limit)."
    )
    limit_recipients_per_hour: int = Field(
        1000, ge=0, description="Outbound recipients per user per rolling hour (0 = no limit)."
    )
    limit_overrides: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per-user limits as JSON, e.g. "
        '{"bulk@example.com": {"messages_per_hour": 5000}}.',
    )

    account_suspend_action: Literal["quarantine", "defer"] = Field(
        "defer", description="What happens to a suspended user's outbound mail."
    )
    account_auth_failures_watch: int = Field(
        5, ge=1, description="Authentication failures per hour that put a user on watch."
    )
    account_auth_failures_suspend: int = Field(
        20, ge=1, description="Authentication failures per hour that suspend a user."
    )
    account_spam_share_watch: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of a user's outbound mail (last hour) scored spam "
        "that puts them on watch.",
    )
    account_spam_share_suspend: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Share of a user's outbound mail (last hour) scored spam that suspends them.",
    )
    account_min_messages: int = Field(
        10, ge=1, description="Messages in the last hour before the spam share is judged."
    )
    account_burst_factor: float = Field(
        5.0, gt=1, description="Hourly volume this many times the user's usual rate is suspicious."
    )
    account_new_domains_watch: int = Field(
        25,
        ge=1,
        description="Recipient domains never mailed before, per hour, that put a user on watch.",
    )
    alert_webhook_url: str | None = Field(
        None, description="URL that receives a JSON POST for every alert."
    )

    outbound_learning: bool = Field(True, description="Learn clean outbound mail as ham.")
    outbound_learn_max_score: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Outbound mail scoring at most this is clean enough to learn as ham.",
    )
    outbound_learn_per_user_per_hour: int = Field(
        10, ge=0, description="Most outbound ham examples one user may contribute per hour."
    )
    outbound_learn_per_minute: int = Field(
        60,
        ge=0,
        description="Most outbound ham examples learned per minute, all users, workers and "
        "replicas together (bounds what learning costs at any traffic).",
    )

    audit_retention_days: int = Field(90, ge=1, description="Days audit rows are kept.")

    # -- operations: health watch, alerts and diagnostics -----------------------------
    gateways: str = Field(
        "",
        description="Comma-separated gateway names (the `gateway` parameter) that must call; "
        "one that falls silent raises an alert.",
    )
    gateway_silence_minutes: float = Field(
        10.0, gt=0, description="Minutes without a call after which a configured gateway is silent."
    )
    disk_min_free_mb: int = Field(
        1024, ge=0, description="Free space in the data dir below which an alert is raised."
    )
    model_max_age_hours: float = Field(
        168.0, gt=0, description="Hours without learning anything after which the model is stale."
    )
    snapshot_max_age_hours: float = Field(
        24.0, gt=0, description="Hours after which a snapshot behind the log counts as stale."
    )
    log_lag_alert_entries: int = Field(
        1000, ge=1, description="Training-log entries a worker may be behind before an alert."
    )
    auth_failure_burst_per_minute: int = Field(
        50, ge=1, description="Authentication failures per minute, all users together, that alert."
    )
    monitor_seconds: float = Field(30.0, gt=0, description="How often the health watch runs.")
    alert_smtp_host: str | None = Field(None, description="SMTP relay for alert mail (optional).")
    alert_smtp_port: int = Field(25, ge=1, le=65535, description="Port of the SMTP relay.")
    alert_smtp_from: str | None = Field(None, description="Sender address of alert mail.")
    alert_smtp_to: str = Field("", description="Comma-separated recipients of alert mail.")
    outbound_ips: str = Field(
        "", description="Comma-separated IPs the organisation sends mail from (PTR audit)."
    )
    dns_nameservers: str = Field(
        "",
        description="Comma-separated resolvers (ip or ip:port) for the DNS audit; "
        "empty = the system's.",
    )
    diagnose_min_examples: int = Field(
        200, ge=1, description="Examples of each class the diagnostics want the model to have."
    )

    # -- security: tokens, TLS, listeners ------------------------------------------------
    admin_token: SecretStr | None = Field(
        None,
        description="Seeds an admin API token (for containers and scripts); "
        "other tokens come from `mailsift token create`.",
    )
    tls_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS (TLS 1.2+).")
    tls_keyfile: Path | None = Field(None, description="PEM private key of the certificate.")
    allow_plain_http: bool = Field(
        False, description="Allow plain HTTP on a non-loopback address (behind a TLS proxy)."
    )
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the admin listener; admin endpoints answer only there. "
        "Unset = one listener for everything (set by `mailsift serve --admin-port`).",
    )
    admin_host: str = Field(
        "127.0.0.1",
        description="Bind address of the admin listener (set by `mailsift serve --admin-host`).",
    )
    feedback_per_token_per_minute: int = Field(
        60,
        ge=1,
        description="Feedback reports one token may send per minute (per worker); a "
        "reporter token (a whole site's) may send this many for each of its users.",
    )
    feedback_consensus: int = Field(
        3,
        ge=1,
        description="Distinct users whose reports of one message must agree before the "
        "shared model learns it (an administrator's confirmation also does).",
    )
    feedback_consensus_per_user_per_day: int = Field(
        20,
        ge=0,
        description="Reports per user and day that count towards consensus (all count for "
        "the user's own verdicts); bounds one user's influence on the shared model.",
    )
    feedback_require_scored: bool = Field(
        True,
        description="A user may report only a message that was scored for one of their "
        "addresses (per the audit trail); off for sites that import old mail.",
    )
    rebuild_every_entries: int = Field(
        1000,
        ge=0,
        description="Rebuild the shared model from the log's live examples once this many "
        "entries came after the last rebuild (0 = not by count); corrections are exact "
        "after a rebuild.",
    )
    rebuild_every_seconds: float = Field(
        3600.0,
        ge=0,
        description="Rebuild at least this often when anything was learned (0 = not by time).",
    )
    history_retention_hours: int = Field(
        72,
        ge=0,
        le=24 * 90,
        description="Hours each scored message is kept whole (DATA_DIR/history, 0600), "
        "so an administrator can label it by fingerprint "
        "(`POST /v1/history/{fingerprint}/label`, `mailsift label`); 0 keeps none.",
    )
    history_max_mb: int = Field(
        2048,
        ge=1,
        description="Most megabytes the kept messages may take; past it, the oldest hours "
        "go first.",
    )
    raw_retention_days: float = Field(
        30.0,
        gt=0,
        description="Days the training log keeps a message's raw bytes; its features (all "
        "that learning needs) stay. Past it, a message can no longer be labelled from "
        "history or re-featurised after a change of feature settings.",
    )
    personal_sender: bool = Field(
        True,
        description="A user's spam report also makes further mail from that From address "
        "`suspect` or worse for that user (their personal layer).",
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        if (
            not self.inbound_suspect_threshold
            <= self.inbound_spam_threshold
            <= self.inbound_reject_threshold
        ):
            raise ValueError(
                "inbound thresholds out of order: needs "
                f"inbound_suspect_threshold ({self.inbound_suspect_threshold}) <= "
                f"inbound_spam_threshold ({self.inbound_spam_threshold}) <= "
                f"inbound_reject_threshold ({self.inbound_reject_threshold})"
            )
        if not self.outbound_suspect_threshold <= self.outbound_spam_threshold:
            raise ValueError(
                "outbound thresholds out of order: needs "
                f"outbound_suspect_threshold ({self.outbound_suspect_threshold}) <= "
                f"outbound_spam_threshold ({self.outbound_spam_threshold})"
            )
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: set both or neither")
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("admin_token must be at least 16 characters")
        return self

    @cached_property
    def local_domain_set(self) -> frozenset[str]:
        return domain_set(self.local_domains)

    @cached_property
    def freemail_extra_set(self) -> frozenset[str]:
        return domain_set(self.freemail_extra_domains)

    @cached_property
    def dlp_label_list(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.dlp_labels.split(",") if x.strip())

    @cached_property
    def gateway_set(self) -> frozenset[str]:
        return frozenset(g.strip() for g in self.gateways.split(",") if g.strip())

    @cached_property
    def outbound_ip_list(self) -> tuple[str, ...]:
        return tuple(ip.strip() for ip in self.outbound_ips.split(",") if ip.strip())

    @cached_property
    def history_dir(self) -> Path:
        return self.data_dir / "history"

    @cached_property
    def snapshot_path(self) -> Path:
        return self.data_dir / "model.snapshot"

    @cached_property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            max_bytes=self.parse_max_bytes,
            max_part_bytes=self.parse_max_part_bytes,
            max_parts=self.parse_max_parts,
            max_depth=self.parse_max_depth,
            max_headers=self.parse_max_headers,
            max_guess_bytes=self.parse_max_guess_bytes,
            time_budget_ms=self.parse_time_budget_ms,
        )


def domain_set(value: str) -> frozenset[str]:
    """A comma-separated domain setting, lower-cased, without trailing dots."""
    return frozenset(d.strip().lower().rstrip(".") for d in value.split(",") if d.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
