"""The ``mailsift`` command: options, help, progress and one-line errors over library
functions, which do the work."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar, cast, overload

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from typer.models import CommandFunctionType

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings, SettingsError
    from sqlalchemy import Engine

    from mailsift.gateway.settings import GatewaySettings
    from mailsift.service.aliases.store import Alias, AliasStore
    from mailsift.service.http.listeners import ListenError
    from mailsift.service.settings import Settings

from mailsift.cli_help import Command, Group
from mailsift.training.corpus import CorpusError, LabelledMessage, count_messages, open_source

T = TypeVar("T")

HELP = """mailsift is a spam and data-leak filter that mail gateways call over HTTP for every
message, inbound and outbound; these commands run it, connect mail servers to it, teach
it, measure it and manage its API tokens.

Settings are MAILSIFT_* environment variables (the README's Settings section lists them).
"""


class _App(typer.Typer):
    """A typer app whose commands render their help through :class:`~mailsift.cli_help.Command`, and
    which turns invalid settings met anywhere into one line each and exit status 2."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            lines = _settings_problem(exc)
            if lines is None:
                raise
            for line in lines:
                _error(line)
            raise SystemExit(2) from None


app = _App(no_args_is_help=True, add_completion=False, help=HELP)
err = Console(stderr=True)


def _error(line: str) -> None:
    """``error: line`` on stderr, on one line whatever the terminal's width."""
    err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, highlight=False)


def _fail(line: str) -> NoReturn:
    _error(line)
    raise typer.Exit(2)


# -- settings: every command loads them through these, so a bad value is one line each,
# naming the variable (or the option), the value and the form expected; exit status 2.


def _settings() -> Settings:
    """The service's settings (``MAILSIFT_*``)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from mailsift.service.settings import Settings

    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        _invalid_settings(exc, Settings)


def _invalid_settings(
    exc: ValidationError | SettingsError,
    settings: type[BaseSettings],
    options: dict[str, str] | None = None,
) -> NoReturn:
    for line in _settings_lines(exc, settings, options):
        _error(line)
    raise typer.Exit(2)


def _settings_lines(
    exc: ValidationError | SettingsError,
    settings: type[BaseSettings],
    options: dict[str, str] | None = None,
) -> list[str]:
    from mailsift.service.setting_errors import settings_errors

    return settings_errors(exc, settings, options)


def _settings_problem(exc: BaseException) -> list[str] | None:
    """``exc``'s lines if it is about invalid settings (as when a command builds them
    itself, or a library function does for it), else None."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from mailsift.gateway.settings import GatewaySettings
    from mailsift.service.settings import Settings

    classes: tuple[type[BaseSettings], ...] = (Settings, GatewaySettings)
    if isinstance(exc, SettingsError):  # a value that is not JSON, for a JSON setting
        named = str(exc)
        for settings in classes:
            if any(f'field "{field}"' in named for field in settings.model_fields):
                return _settings_lines(exc, settings)
        return _settings_lines(exc, Settings)
    if isinstance(exc, ValidationError):
        for settings in classes:
            if exc.title == settings.__name__:
                return _settings_lines(exc, settings)
    return None


@app.callback()
def _private_files() -> None:
    # What any command creates (databases and their WAL, snapshots, locks, metrics
    # files; the processes it starts inherit this) is for mailsift's user alone.
    os.umask(0o077)


def _progress(total: int | None, label: str, *, refresh_per_second: float = 10) -> Progress:
    """A progress line on stderr while a long command runs, gone when it ends; nothing
    at all unless stderr is an interactive terminal (logs, pipes and cron stay clean).

    ``label`` may show the task's own description: ``"{task.description}"``. Commands
    that measure time refresh it less often, so that drawing it costs them nothing.
    """
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_interactive,
        refresh_per_second=refresh_per_second,
    )


class _Phases:
    """One progress line for a command that runs in phases: each phase replaces the one
    before, with its own label, count (when known) and elapsed time."""

    def __init__(self, bar: Progress, prefix: str) -> None:
        self._bar = bar
        self._prefix = prefix
        self._task: TaskID | None = None

    def start(self, label: str, total: int | None = None) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(self._prefix + label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def over(
        self, items: Sequence[T], labels: Sequence[str] = (), then: str | None = None
    ) -> Sequence[T]:
        """``items``, marking phases as a library function reads them: pass ``i`` over
        them is phase ``labels[i]`` (counted; the last label repeats), and once the pass
        of the last label ends, phase ``then`` begins (what the function does next)."""
        return _PhaseItems(items, self, labels, then)


class _PhaseItems(Sequence[T]):
    def __init__(
        self, items: Sequence[T], phases: _Phases, labels: Sequence[str], then: str | None
    ) -> None:
        self._items = items
        self._phases = phases
        self._labels = labels
        self._then = then
        self._passes = 0

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        counted = bool(self._labels)
        if counted:
            label = self._labels[min(self._passes, len(self._labels) - 1)]
            self._phases.start(label, len(self._items))
        self._passes += 1
        for item in self._items:
            yield item
            if counted:
                self._phases.advance()
        if self._then is not None and self._passes >= len(self._labels):
            self._phases.start(self._then)


def _read_corpus(corpus: str, phases: _Phases) -> list[LabelledMessage]:
    phases.start(f"reading {corpus}", count_messages(corpus))
    messages = []
    for message in open_source(corpus):
        messages.append(message)
        phases.advance()
    return messages


def _private_data_dir(settings: Settings) -> None:
    """The data dir holds the SQLite databases unless a database URL is set: 0700."""
    from mailsift.service.db import private_dir

    if settings.database_url is None:
        private_dir(settings.data_dir)


def _sources(specs: list[str]) -> tuple[Iterator[LabelledMessage], int | None]:
    counts = [count_messages(s) for s in specs]
    total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    return itertools.chain.from_iterable(open_source(s) for s in specs), total


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address of the gateway listener; loopback unless TLS is set up.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the gateway listener.")
    ] = 8470,
    admin_host: Annotated[
        str, typer.Option(envvar="MAILSIFT_ADMIN_HOST", help="Address of the admin listener.")
    ] = "127.0.0.1",
    admin_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            envvar="MAILSIFT_ADMIN_PORT",
            help="Port of the admin listener; 0 = one listener serves everything.",
        ),
    ] = 8471,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
) -> None:
    """Run the HTTP service (settings from MAILSIFT_* variables)."""

    from mailsift.service.db import private_dir
    from mailsift.service.http.listeners import ListenError, is_loopback
    from mailsift.service.http.listeners import serve as serve_listeners
    from mailsift.service.http.supervisor import WorkersFailed
    from mailsift.service.leftovers import clean_leftovers

    if admin_port and admin_port == port:
        _fail(
            f"--port and --admin-port are both {port}: give the admin listener a port of "
            "its own, or --admin-port 0 for one listener that serves everything"
        )
    os.environ["MAILSIFT_ADMIN_HOST"] = admin_host
    if admin_port:
        os.environ["MAILSIFT_ADMIN_PORT"] = str(admin_port)
    else:
        os.environ.pop("MAILSIFT_ADMIN_PORT", None)
    settings = _settings()
    tls = settings.tls_certfile is not None
    for where in {host, admin_host} if admin_port else {host}:
        if not tls and not is_loopback(where) and not settings.allow_plain_http:
            _fail(
                f"refusing plain HTTP on {where}: set MAILSIFT_TLS_CERTFILE and "
                "MAILSIFT_TLS_KEYFILE, or MAILSIFT_ALLOW_PLAIN_HTTP=true behind a TLS proxy"
            )
    private_dir(settings.data_dir)
    # What a killed run left behind: before the metrics dir of this one is made.
    clean_leftovers(settings.data_dir, settings.snapshot_path)
    if workers > 1:
        from mailsift.service.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(settings.data_dir)  # the spawned workers pool metrics here
    from mailsift.service.logsafe import log_config as safe_log_config

    log_config = safe_log_config()  # control characters escaped in every line
    try:
        serve_listeners(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port or None,
            workers=workers,
            certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
            keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
            log_config=log_config,
            access_log=access_log,
        )
    except ListenError as exc:
        _fail(_cannot_listen(exc))
    except WorkersFailed as exc:
        _fail(f"workers failed, service stopped: {exc}")


def _cannot_listen(exc: ListenError) -> str:
    """What stopped a listener, and the option that moves it."""
    import errno

    if exc.listener == "admin":
        host_option, port_option = "--admin-host", "--admin-port (or MAILSIFT_ADMIN_PORT)"
    else:
        host_option, port_option = "--host", "--port"
    if exc.errno == errno.EADDRINUSE:
        why, change = "another mailsift serve, or another service, listens there", port_option
    elif exc.errno == errno.EACCES:
        why, change = "ports below 1024 need privileges", port_option
    else:
        why, change = "not an address of this machine?", host_option
    reason = exc.reason[:1].lower() + exc.reason[1:]
    return (
        f"the {exc.listener} listener cannot listen on {exc.address}: {reason} ({why}); "
        f"choose another {'port' if change is port_option else 'address'} with {change}"
    )


@app.command()
def diagnose(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    admin_host: Annotated[
        str | None, typer.Option(help="Admin listener address to judge (default: the setting).")
    ] = None,
) -> None:
    """Check model, lists, limits, listeners, gateways, disk and the mail domains' DNS."""
    from mailsift.service.diagnostics.cli import diagnose_command

    settings = _settings()
    raise typer.Exit(diagnose_command(settings, as_json=json_output, admin_host=admin_host))


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
        _invalid_settings(exc, GatewaySettings, given)
    except OSError as exc:
        _fail(f"gateway settings: {exc}")


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


@app.command()
def label(
    fingerprint: Annotated[str, typer.Argument(help="The fingerprint a score answer gave.")],
    what: Annotated[Literal["spam", "ham"], typer.Argument(help="What the message really is.")],
    url: Annotated[
        str, typer.Option(envvar="MAILSIFT_ADMIN_URL", help="The service's admin listener.")
    ] = "http://127.0.0.1:8471",
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding an admin token; default: the file MAILSIFT_TOKEN_FILE names."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds to wait for the service.")
    ] = 30.0,
) -> None:
    """Label a recently scored message by its fingerprint, as an administrator.

    The service keeps each scored message MAILSIFT_HISTORY_RETENTION_HOURS (72); past
    that the answer says it is gone. Exit statuses as for `report`.
    """
    from mailsift.gateway.report import ReportFailed, ReportTarget, label_from_history, read_token

    try:
        target = ReportTarget(url, read_token(token_file), timeout)
        typer.echo(label_from_history(fingerprint, what, target))
    except ReportFailed as exc:
        typer.echo(f"mailsift label: {exc}", err=True)
        raise typer.Exit(exc.status) from None


token_app = _App(no_args_is_help=True, help="API tokens (service accounts of mailsift).")
app.add_typer(token_app, name="token")


@contextmanager
def _state_database(doing: str) -> Iterator[tuple[Engine, str]]:
    """The state database (where tokens live) and where it is, for the token commands.

    A database that cannot be opened, reached or read is one line naming it, without
    its password ("cannot ``doing`` WHERE: cause"), and exit status 2.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from mailsift.service.db import describe, open_state_engine, redact

    settings = _settings()
    _private_data_dir(settings)
    try:
        engine = open_state_engine(settings.database_url, settings.data_dir)
    except ValueError as exc:  # a database URL that cannot be used; says why, no password
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    url = engine.url
    database = url.database if url.get_backend_name() == "sqlite" else None
    where = str(Path(database).absolute()) if database else describe(url)
    try:
        yield engine, where
    except SQLAlchemyError as exc:
        cause = redact(" ".join(str(getattr(exc, "orig", None) or exc).split()), url)
        typer.echo(f"error: cannot {doing} {where}: {cause}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="gateway, user, reporter or admin.")],
    name: Annotated[str, typer.Option(help="Who or what holds it.")] = "",
    address: Annotated[
        list[str],
        typer.Option(help="User and reporter tokens: an address (or @domain) it speaks for."),
    ] = [],  # noqa: B006 - typer copies defaults
) -> None:
    """Create a token; it is printed once, as the last word of the output.

    The output names the state database it went into (MAILSIFT_DATA_DIR, default ./data,
    or MAILSIFT_DATABASE_URL); a warning on stderr says when that database was created
    just now, so no service has ever used it and none will accept the token.
    """
    from sqlalchemy import inspect

    from mailsift.service.auth import ROLES, TokenStore

    if role not in ROLES:  # before anything is created
        err.print(f"[red]error:[/red] role must be one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    with _state_database("write to") as (engine, where):
        used = inspect(engine).has_table("api_tokens")  # every service start creates it
        try:
            info, secret = TokenStore(engine).create(role, name or role, address)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    typer.echo(
        f"created {info.role} token {info.id} ({info.name}) in {where}; shown only now: {secret}"
    )
    if not used:
        typer.echo(
            f"warning: {where} was not a state database before: this command created it, "
            "so no service uses it yet. A service started with another MAILSIFT_DATA_DIR "
            "(default ./data) or MAILSIFT_DATABASE_URL will refuse this token: create it "
            "again with the service's settings.",
            err=True,
        )


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    from mailsift.service.auth import TokenStore

    with _state_database("use the state database") as (engine, _):
        tokens = TokenStore(engine).list()
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        typer.echo(f"{t.id}  {t.role:7s}  {state:7s}  {t.name}  {' '.join(t.addresses)}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The id shown by `token list`.")],
) -> None:
    """Revoke a token; it fails at once everywhere."""
    from mailsift.service.auth import TokenStore

    with _state_database("use the state database") as (engine, _):
        revoked = TokenStore(engine).revoke(token_id)
    if not revoked:
        err.print(f"[red]error:[/red] no active token {token_id}")
        raise typer.Exit(2)
    typer.echo(f"revoked {token_id}")


alias_app = _App(
    no_args_is_help=True,
    help="Temporary addresses: a user's throw-away address, delivered until it expires.",
)
app.add_typer(alias_app, name="alias")


def _alias_store(engine: Engine) -> AliasStore:
    from mailsift.service.aliases.store import AliasStore

    return AliasStore(engine, _settings())


def _alias_line(alias: Alias) -> str:
    leaked = ",".join(s.domain for s in alias.foreign_senders) or "-"
    expires = datetime.fromtimestamp(alias.expires_at, UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"{alias.address}  {alias.state():7s}  {alias.owner}  until {expires}  "
        f"for {alias.label or '-'}  leaked to {leaked}"
    )


@alias_app.command("create")
def alias_create(
    user: Annotated[str, typer.Option(help="Whose address it is (delivered to them).")],
    days: Annotated[
        int | None, typer.Option(min=1, help="Lifetime (default MAILSIFT_ALIAS_DEFAULT_DAYS).")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="The sender domain it is for (default: its first mail's).")
    ] = None,
) -> None:
    """Create a random temporary address for a user; prints it."""
    from mailsift.service.aliases.store import AliasError

    with _state_database("write to") as (engine, _):
        try:
            alias = _alias_store(engine).create(user, days=days, label=label, created_by="cli")
        except (AliasError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    typer.echo(_alias_line(alias))


@alias_app.command("list")
def alias_list(
    user: Annotated[str | None, typer.Option(help="Only this user's (default: all).")] = None,
) -> None:
    """List temporary addresses, newest first, with the sender domains that leaked each."""
    with _state_database("use the state database") as (engine, _):
        found = _alias_store(engine).list_aliases(user)
    for alias in found:
        typer.echo(_alias_line(alias))


@alias_app.command("delete")
def alias_delete(
    address: Annotated[str, typer.Argument(help="The temporary address.")],
) -> None:
    """Delete a temporary address: refused from now on, never handed out again."""
    with _state_database("write to") as (engine, _):
        alias = _alias_store(engine).delete(address)
    if alias is None:
        err.print(f"[red]error:[/red] no temporary address {address}")
        raise typer.Exit(2)
    typer.echo(_alias_line(alias))


@app.command()
def bench(
    corpus: Annotated[str, typer.Argument(help="Messages to send (any corpus source).")],
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 2,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Concurrent keep-alive connections.")
    ] = 16,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Snapshot file to serve; default: the corpus (if labelled) goes onto the "
            "server's training log and a rebuild publishes the model it serves."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Times each message is sent.")] = 1,
    direction: Annotated[
        Literal["inbound", "outbound"],
        typer.Option(help="inbound, or outbound (500 simulated senders)."),
    ] = "inbound",
    warmup: Annotated[
        int,
        typer.Option(min=0, help="Messages sent first and not measured: a served worker is warm."),
    ] = 300,
    rebuild_during: Annotated[
        bool,
        typer.Option(
            "--rebuild-during",
            help="Rebuild the model back to back (POST /v1/model/rebuild) while measuring.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start the service with W workers and measure messages/s, latency and memory."""
    from mailsift.learning.trainlog import TrainingLogError
    from mailsift.training.bench import run_bench

    if rebuild_during and model is not None:
        err.print("[red]error:[/red] --rebuild-during rebuilds from the log: drop --model")
        raise typer.Exit(2)
    _settings()  # the bench server reads them too: a bad one stops us here, not it
    # run_bench reports no phases itself; they show as it reads its inputs: the training
    # corpus first (then it rebuilds and starts the server, whose client baseline
    # follows), the messages to send last, right before the warm-up.
    with _progress(None, "{task.description}", refresh_per_second=1) as bar:
        phases = _Phases(bar, "bench: ")
        try:
            messages = _read_corpus(corpus, phases)
            training = messages if model is None and all(m.label for m in messages) else []
            starting = (
                f"starting the service ({workers} worker{'s' if workers > 1 else ''}), "
                "then the client's own ceiling (/healthz)"
            )
            sent = len(messages) * rounds
            measuring = (
                f"warm-up ({min(warmup, sent)} messages), then the measured run "
                f"({sent} messages, {concurrency} connections)"
            )
            if not training:
                phases.start(starting)
            result = run_bench(
                phases.over([m.raw for m in messages], then=measuring),
                workers=workers,
                concurrency=concurrency,
                model=model,
                training=phases.over(
                    training,
                    [f"appending {len(training)} messages to the training log"],
                    then=f"rebuilding the model, then {starting}",
                ),
                rounds=rounds,
                direction=direction,
                warmup=warmup,
                rebuild_during=rebuild_during,
            )
        except (CorpusError, TrainingLogError, RuntimeError) as exc:
            bar.stop()
            _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        for key, value in result.as_dict().items():
            typer.echo(f"{key:20s} {value}")


@app.command()
def train(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Corpora: TREC dir, ham/spam folder, or spam:/ham: + mbox/Maildir/file."
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Train a standalone snapshot file instead (created or continued), e.g. for "
            "`mailsift bench --model`; the service's log is not touched. Without it: the "
            "service's training log, ./data/mailsift.db (MAILSIFT_DATA_DIR/mailsift.db, or "
            "the MAILSIFT_DATABASE_URL database).",
        ),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Rebuild and publish the shared model afterwards.")
    ] = True,
) -> None:
    """Teach labelled corpora as an administrator's examples, through the training log.

    Every worker and replica learns them from the log; the rebuild afterwards publishes
    a model that includes them, which running services swap in.
    """
    from rich.markup import escape

    from mailsift.learning.trainlog import TrainingLogError, open_training_log
    from mailsift.models.snapshot import SnapshotError
    from mailsift.service.settings import Settings
    from mailsift.training.outputs import OutputError, check_outputs
    from mailsift.training.train import train_log, train_snapshot

    settings = Settings()
    try:
        check_outputs({"--model": model})  # before the corpus is read, not after
        messages, total = _sources(sources)
        if model is not None:
            with _progress(total, "training") as bar:
                task = bar.add_task("train", total=total)
                report = train_snapshot(
                    messages,
                    model,
                    limits=settings.parse_limits,
                    progress=lambda n: bar.advance(task, n),
                )
            for line in report.lines(model):
                typer.echo(line)
            for line in report.notes(model):
                typer.echo(f"note: {line}", err=True)
            for line in report.repeats.warnings():
                typer.echo(f"warning: {line}", err=True)
            return
        _private_data_dir(settings)
        trainlog = open_training_log(settings.database_url, settings.data_dir)
        try:
            with _progress(total, "appending") as bar:
                task = bar.add_task("train", total=total)
                logged = train_log(
                    messages,
                    trainlog,
                    actor="mailsift train",
                    limits=settings.parse_limits,
                    progress=lambda n: bar.advance(task, n),
                )
        finally:
            trainlog.close()
    except (CorpusError, OutputError, SnapshotError, TrainingLogError, OSError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    for line in logged.lines():
        typer.echo(line)
    for line in logged.repeats.warnings():
        typer.echo(f"warning: {line}", err=True)
    if rebuild:
        _rebuild(settings, wait=True, nice=False, as_json=False)


@app.command("rebuild")
def rebuild_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    if_idle: Annotated[
        bool, typer.Option(help=f"Exit {3} at once if another rebuild is running.")
    ] = False,
    nice: Annotated[bool, typer.Option(help="Run at a lower CPU priority.")] = False,
) -> None:
    """Rebuild the shared model from the log's live examples and publish it.

    Corrections (forgets, relabels) are exact after a rebuild; running services swap the
    published model in within MAILSIFT_SNAPSHOT_CHECK_SECONDS.
    """
    _rebuild(_settings(), wait=not if_idle, nice=nice, as_json=as_json)


def _rebuild(settings: Settings, *, wait: bool, nice: bool, as_json: bool) -> None:
    from mailsift.learning.rebuild import RebuildBusy, publish, rebuild_lock, rebuild_model
    from mailsift.learning.trainlog import TrainingLogError, open_training_log
    from mailsift.service.rebuilds import BUSY_EXIT

    if nice:
        os.nice(10)
    _private_data_dir(settings)
    try:
        trainlog = open_training_log(settings.database_url, settings.data_dir)
    except TrainingLogError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        with rebuild_lock(trainlog, settings.data_dir, wait=wait):
            with _progress(None, "rebuilding") as bar:
                task = bar.add_task("rebuild", total=None)
                rebuilt = rebuild_model(
                    trainlog, settings.parse_limits, progress=lambda n: bar.advance(task, n)
                )
            model_id, version = publish(trainlog, rebuilt)
    except RebuildBusy:
        err.print("another rebuild is running")
        raise typer.Exit(BUSY_EXIT) from None
    finally:
        trainlog.close()
    summary = {
        "published_id": model_id,
        "model_version": version,
        "log_position": rebuilt.position,
        "examples": rebuilt.examples,
        "skipped": rebuilt.skipped,
        "seconds": round(rebuilt.seconds, 3),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"rebuilt {rebuilt.examples} examples at log position {rebuilt.position} in "
            f"{rebuilt.seconds:.1f} s -> published model {model_id} ({version})"
        )


@app.command()
def speed(
    corpus: Annotated[str, typer.Argument(help="Labelled corpus.")],
) -> None:
    """Per-message medians of parse, features and scoring; model memory and snapshot size."""
    from mailsift.training.speed import measure_speed

    # measure_speed reports no progress itself: its two passes over the messages show.
    with _progress(None, "{task.description}", refresh_per_second=2) as bar:
        phases = _Phases(bar, "speed: ")
        try:
            messages = _read_corpus(corpus, phases)
        except CorpusError as exc:
            bar.stop()
            _fail(str(exc))
        passes = ["learning every message (pass 1 of 2)", "timing each stage (pass 2 of 2)"]
        result = measure_speed(phases.over(messages, passes, then="writing a snapshot"))
    typer.echo(json.dumps(result))


@app.command("eval")
def eval_(
    corpus: Annotated[str, typer.Argument(help="Labelled corpus (TREC dir or ham/spam folder).")],
    mode: Annotated[
        str, typer.Option(help="online (score then learn each message) or split.")
    ] = "online",
    train_frac: Annotated[float, typer.Option(help="Split mode: fraction learned first.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    scores: Annotated[Path | None, typer.Option(help="Write 'label score' per message.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a ROC curve PNG.")] = None,
) -> None:
    """Measure accuracy and speed by the TREC spam-track protocols."""
    from rich.markup import escape

    from mailsift.training.corpus import source_labels
    from mailsift.training.evaluate import Mode, evaluate, write_outputs
    from mailsift.training.outputs import OutputError, check_outputs

    if mode not in ("online", "split"):
        err.print("[red]error:[/red] --mode must be online or split")
        raise typer.Exit(2)
    try:
        # Everything that can be known before the run is checked before it.
        if not 0.0 < train_frac < 1.0:
            raise ValueError(f"--train-frac must be between 0 and 1, not {train_frac}")
        check_outputs({"--scores": scores, "--plot": plot})
        messages, total = _sources([corpus])
        labels = source_labels(corpus)
        if plot is not None and len(labels) == 1:
            raise OutputError(
                f"--plot {plot}: a ROC curve needs both ham and spam, and {corpus} gives "
                f"only {next(iter(labels))} (the measures that apply are printed without --plot)"
            )
        with _progress(total, f"eval {mode}") as bar:
            task = bar.add_task("eval", total=total)
            result = evaluate(
                messages,
                mode=cast(Mode, mode),
                train_frac=train_frac,
                progress=lambda n: bar.advance(task, n),
            )
    except (CorpusError, OutputError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    outputs = write_outputs(result, scores=scores, plot=plot, title=f"mailsift {mode}: {corpus}")
    # Undefined measures (one class only, or in the second half) are NaN: JSON says null
    # and "undefined" says why; the text output says why on the measure's own line.
    summary: dict[str, object] = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in result.summary.items()
    }
    why = {k: reason for k, reason in result.undefined.items() if summary.get(k) is None}
    if as_json:
        typer.echo(json.dumps(summary | ({"undefined": why} if why else {})))
    else:
        for key, value in summary.items():
            shown = f"n/a: {why[key]}" if key in why else value
            typer.echo(f"{key:32s} {shown}")
    for line in outputs.written:
        typer.echo(line, err=True)
    for line in outputs.failed:
        err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    if outputs.failed:
        raise typer.Exit(1)


@app.command()
def influence(
    corpus: Annotated[str, typer.Argument(help="Labelled corpus (TREC dir or ham/spam folder).")],
    train_frac: Annotated[
        float, typer.Option(help="Fraction learned first; the rest are the probes.")
    ] = 0.8,
    examples: Annotated[
        int, typer.Option(min=1, help="Held-out messages of each class learned wrongly.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure how far one wrongly labelled message moves the scores of other messages."""
    from mailsift.training.influence import measure_influence

    try:
        messages, total = _sources([corpus])
        with _progress(total, "influence") as bar:
            task = bar.add_task("influence", total=None if total is None else total + 2 * examples)
            report = measure_influence(
                messages,
                train_frac=train_frac,
                examples=examples,
                progress=lambda n: bar.advance(task, n),
            )
    except (CorpusError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(
        f"trained on {report.trained}; probes: {report.ham_probes} ham, {report.spam_probes} spam"
    )
    for direction, figures in report.summary().items():
        typer.echo(direction)
        for key, value in figures.items():
            typer.echo(f"  {key:32s} {value}")


if __name__ == "__main__":
    app()
