"""Mail-server integration: the milter and policy daemons, and ``report`` for Dovecot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mailsift.cli.app import app, fail, invalid_settings

if TYPE_CHECKING:
    from mailsift.gateway.settings import GatewaySettings


# -- gateway integration: options shared by `milter` and `policy` (unset = MAILSIFT_GATEWAY_*)
ServiceUrl = Annotated[
    str | None,
    typer.Option(help="The service's gateway listener (default: http://127.0.0.1:8470)."),
]
TokenFile = Annotated[
    Path | None, typer.Option(help="File with a gateway token (`token create --role gateway`).")
]
Timeout = Annotated[
    float | None, typer.Option(help="Seconds one service call may take (default: 5).")
]
FailModeOpt = Annotated[
    str | None,
    typer.Option(help="Service down or slow: open (pass mail) or closed (4xx) (default: open)."),
]
InternalNetworks = Annotated[
    str | None,
    typer.Option(help="Comma-separated client networks whose mail is outbound (CIDR)."),
]
MetricsPort = Annotated[
    int | None, typer.Option(help="Serve Prometheus metrics on this port (default: off).")
]
IdentitySourceOpt = Annotated[
    str | None,
    typer.Option(
        help="Whose limits outbound mail counts against: sasl (the SASL login) or header "
        "(else --identity-header); without either, the client's address (default: sasl)."
    ),
]


_GATEWAY_OPTIONS = {  # gateway settings whose option is not --FIELD-NAME
    "milter_host": "--host",
    "policy_host": "--host",
    "milter_port": "--port",
    "policy_port": "--port",
    "timeout_seconds": "--timeout",
}


def _gateway(**options: object) -> GatewaySettings:
    """``MAILSIFT_GATEWAY_*`` with the options given on top; a bad value names the option
    when it came from the command line, else the variable."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from mailsift.gateway.run import gateway_settings
    from mailsift.gateway.settings import GatewaySettings

    given = {
        field: _GATEWAY_OPTIONS.get(field, "--" + field.replace("_", "-"))
        for field, value in options.items()
        if value is not None
    }
    try:
        return gateway_settings(**options)
    except (ValidationError, SettingsError) as exc:
        invalid_settings(exc, GatewaySettings, given)
    except OSError as exc:
        fail(f"gateway settings: {exc}")


@app.command()
def milter(
    host: Annotated[str | None, typer.Option(help="Listen address (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: 8472).")] = None,
    service_url: ServiceUrl = None,
    token_file: TokenFile = None,
    timeout: Timeout = None,
    fail_mode: FailModeOpt = None,
    internal_networks: InternalNetworks = None,
    subject_prefix: Annotated[
        str | None, typer.Option(help="Subject prefix of tagged mail (default: \\[SPAM?]).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Gateway name reported to the service.")] = None,
    metrics_port: MetricsPort = None,
    identity_source: IdentitySourceOpt = None,
    identity_header: Annotated[
        str | None,
        typer.Option(
            help="With --identity-source header: the header your submission server sets "
            "(default: X-Authenticated-User)."
        ),
    ] = None,
    junk_marking: Annotated[
        bool | None,
        typer.Option(
            "--junk-marking/--no-junk-marking",
            help="Mark a recipient's copy for Junk when their own verdict is stricter "
            "(bob@x -> bob+junk@x; needs the MTA's recipient_delimiter). Default: on.",
            show_default=False,
        ),
    ] = None,
    junk_detail: Annotated[
        str | None, typer.Option(help="Address extension of the Junk mark (default: junk).")
    ] = None,
    recipient_delimiter: Annotated[
        str | None,
        typer.Option(
            help="The MTA's recipient_delimiter; its first character joins the mark (default: +)."
        ),
    ] = None,
    max_message_bytes: Annotated[
        int | None,
        typer.Option(
            help="A larger message is scored on its first this many bytes; at most the "
            "service's MAILSIFT_MAX_MESSAGE_BYTES (default: 26214400)."
        ),
    ] = None,
    oversize_outbound: Annotated[
        str | None,
        typer.Option(
            help="Outbound mail over --max-message-bytes: reject (552 5.3.4, its end "
            "unscanned for leaks) or scan-start (its first part decides) (default: reject)."
        ),
    ] = None,
) -> None:
    """Run the milter for Postfix/Sendmail (smtpd_milters = inet:HOST:PORT)."""
    from mailsift.gateway.run import run_milter

    run_milter(
        _gateway(
            milter_host=host,
            milter_port=port,
            service_url=service_url,
            token_file=token_file,
            timeout_seconds=timeout,
            fail_mode=fail_mode,
            internal_networks=internal_networks,
            subject_prefix=subject_prefix,
            name=name,
            metrics_port=metrics_port,
            identity_source=identity_source,
            identity_header=identity_header,
            junk_marking=junk_marking,
            junk_detail=junk_detail,
            recipient_delimiter=recipient_delimiter,
            max_message_bytes=max_message_bytes,
            oversize_outbound=oversize_outbound,
        )
    )


@app.command()
def policy(
    host: Annotated[str | None, typer.Option(help="Listen address (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: 8473).")] = None,
    service_url: ServiceUrl = None,
    token_file: TokenFile = None,
    timeout: Timeout = None,
    fail_mode: FailModeOpt = None,
    internal_networks: InternalNetworks = None,
    recipients_file: Annotated[
        Path | None, typer.Option(help="Valid local recipients, one address per line.")
    ] = None,
    local_domains: Annotated[
        str | None, typer.Option(help="Comma-separated domains whose recipients must be listed.")
    ] = None,
    metrics_port: MetricsPort = None,
    identity_source: IdentitySourceOpt = None,
    alias_prefix: Annotated[
        str | None,
        typer.Option(
            help="Local-part prefix of temporary addresses, as the service's "
            "MAILSIFT_ALIAS_PREFIX (default: t-); only unlisted recipients with it are "
            "looked up."
        ),
    ] = None,
) -> None:
    """Run the Postfix policy server (check_policy_service inet:HOST:PORT)."""
    from mailsift.gateway.run import run_policy

    run_policy(
        _gateway(
            policy_host=host,
            policy_port=port,
            service_url=service_url,
            token_file=token_file,
            timeout_seconds=timeout,
            fail_mode=fail_mode,
            internal_networks=internal_networks,
            recipients_file=recipients_file,
            local_domains=local_domains,
            metrics_port=metrics_port,
            identity_source=identity_source,
            alias_prefix=alias_prefix,
        )
    )


@app.command()
def report(
    label: Annotated[Literal["spam", "ham"], typer.Argument(help="What the message really is.")],
    user: Annotated[
        str, typer.Option(help="Whose report it is: the address of the mailbox it came from.")
    ],
    url: Annotated[
        str, typer.Option(envvar="MAILSIFT_URL", help="The service (its gateway listener).")
    ] = "http://127.0.0.1:8470",
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding a reporter (or user) token; default: the file "
            "MAILSIFT_TOKEN_FILE names."
        ),
    ] = None,
    via: Annotated[
        Literal["api", "imap"],
        typer.Option(
            help="How the user reported it (logged): imap for a move into or out of Junk."
        ),
    ] = "api",
    timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds to wait for the service.")
    ] = 8.0,
) -> None:
    """Send the message on standard input as one user's report (for Dovecot's Junk folder).

    Exits 0 once the service has acknowledged it; otherwise prints one line and exits 1
    (refused: sending it again will not help), 2 (nothing sent: token, URL or input) or
    75 (the service did not answer usably: try later).
    """
    import sys

    from mailsift.gateway.report import (
        ReportFailed,
        ReportTarget,
        read_message,
        read_token,
        send_report,
    )

    try:
        target = ReportTarget(url, read_token(token_file), timeout)
        raw = read_message(sys.stdin.buffer)
        done = send_report(raw, label, user, target, via=via)
    except ReportFailed as exc:
        typer.echo(f"mailsift report: {exc}", err=True)
        raise typer.Exit(exc.status) from None
    typer.echo(done.line(label, user))
