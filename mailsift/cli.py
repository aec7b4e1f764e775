"""The ``mailsift`` command: a thin layer over library functions, no logic of its own."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from mailsift.gateway.settings import GatewaySettings
    from mailsift.service.auth import TokenStore
    from mailsift.service.settings import Settings

from mailsift.training.corpus import CorpusError, LabelledMessage, count_messages, open_source

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
err = Console(stderr=True)


@app.callback()
def _private_files() -> None:
    # What any command creates (databases and their WAL, snapshots, locks, metrics
    # files; the processes it starts inherit this) is for mailsift's user alone.
    os.umask(0o077)


def _progress(total: int | None, label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


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
    port: Annotated[int, typer.Option(help="Port of the gateway listener.")] = 8470,
    admin_host: Annotated[
        str, typer.Option(envvar="MAILSIFT_ADMIN_HOST", help="Address of the admin listener.")
    ] = "127.0.0.1",
    admin_port: Annotated[
        int,
        typer.Option(
            envvar="MAILSIFT_ADMIN_PORT",
            help="Port of the admin listener; 0 = one listener serves everything.",
        ),
    ] = 8471,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
) -> None:
    """Run the HTTP service (settings from MAILSIFT_* variables)."""
    import uvicorn
    from pydantic import ValidationError

    from mailsift.service.db import private_dir
    from mailsift.service.listeners import is_loopback
    from mailsift.service.listeners import serve as serve_listeners
    from mailsift.service.settings import Settings

    os.environ["MAILSIFT_ADMIN_HOST"] = admin_host
    if admin_port:
        os.environ["MAILSIFT_ADMIN_PORT"] = str(admin_port)
    else:
        os.environ.pop("MAILSIFT_ADMIN_PORT", None)
    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]error:[/red] invalid settings:\n{exc}")
        raise typer.Exit(2) from exc
    tls = settings.tls_certfile is not None
    for where in {host, admin_host} if admin_port else {host}:
        if not tls and not is_loopback(where) and not settings.allow_plain_http:
            err.print(
                f"[red]error:[/red] refusing plain HTTP on {where}: set MAILSIFT_TLS_CERTFILE and "
                "MAILSIFT_TLS_KEYFILE, or MAILSIFT_ALLOW_PLAIN_HTTP=true behind a TLS proxy"
            )
            raise typer.Exit(2)
    private_dir(settings.data_dir)
    if workers > 1:
        from mailsift.service.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(settings.data_dir)  # the spawned workers pool metrics here
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["mailsift"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
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


@app.command()
def diagnose(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    admin_host: Annotated[
        str | None, typer.Option(help="Admin listener address to judge (default: the setting).")
    ] = None,
) -> None:
    """Check model, lists, limits, listeners, gateways, disk and the mail domains' DNS."""
    from pydantic import ValidationError

    from mailsift.service.diagnostics.cli import diagnose_command
    from mailsift.service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]error:[/red] invalid settings:\n{exc}")
        raise typer.Exit(2) from exc
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


def _gateway(**options: object) -> GatewaySettings:
    from pydantic import ValidationError

    from mailsift.gateway.run import gateway_settings

    try:
        return gateway_settings(**options)
    except (ValidationError, OSError) as exc:
        err.print(f"[red]error:[/red] invalid gateway settings:\n{exc}")
        raise typer.Exit(2) from exc


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


token_app = typer.Typer(no_args_is_help=True, help="API tokens (service accounts of mailsift).")
app.add_typer(token_app, name="token")


def _token_store() -> TokenStore:
    from mailsift.service.auth import TokenStore
    from mailsift.service.db import open_state_engine
    from mailsift.service.settings import Settings

    settings = Settings()
    _private_data_dir(settings)
    return TokenStore(open_state_engine(settings.database_url, settings.data_dir))


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="gateway, user, reporter or admin.")],
    name: Annotated[str, typer.Option(help="Who or what holds it.")] = "",
    address: Annotated[
        list[str],
        typer.Option(help="User and reporter tokens: an address (or @domain) it speaks for."),
    ] = [],  # noqa: B006 - typer copies defaults
) -> None:
    """Create a token; it is printed once, as the last word of the output."""
    try:
        info, secret = _token_store().create(role, name or role, address)  # type: ignore[arg-type]
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(f"created {info.role} token {info.id} ({info.name}); shown only now: {secret}")


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    for t in _token_store().list():
        state = "revoked" if t.revoked_at else "active"
        typer.echo(f"{t.id}  {t.role:7s}  {state:7s}  {t.name}  {' '.join(t.addresses)}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The id shown by `token list`.")],
) -> None:
    """Revoke a token; it fails at once everywhere."""
    if not _token_store().revoke(token_id):
        err.print(f"[red]error:[/red] no active token {token_id}")
        raise typer.Exit(2)
    typer.echo(f"revoked {token_id}")


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
        str, typer.Option(help="inbound, or outbound (500 simulated senders).")
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

    if direction not in ("inbound", "outbound"):
        err.print("[red]error:[/red] --direction must be inbound or outbound")
        raise typer.Exit(2)
    if rebuild_during and model is not None:
        err.print("[red]error:[/red] --rebuild-during rebuilds from the log: drop --model")
        raise typer.Exit(2)
    try:
        messages = list(open_source(corpus))
        training = messages if model is None and all(m.label for m in messages) else []
        if training:
            err.print(f"appending {len(training)} messages to the training log, rebuilding")
        result = run_bench(
            [m.raw for m in messages],
            workers=workers,
            concurrency=concurrency,
            model=model,
            training=training,
            rounds=rounds,
            direction=direction,
            warmup=warmup,
            rebuild_during=rebuild_during,
        )
    except (CorpusError, TrainingLogError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
            "`mailsift bench --model`; the service's log is not touched.",
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
    from mailsift.learning.trainlog import TrainingLogError, open_training_log
    from mailsift.service.settings import Settings
    from mailsift.training.train import train_log, train_snapshot

    settings = Settings()
    try:
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
            info = report.info
            typer.echo(
                f"learned {report.learned} messages -> {model} "
                f"(ham {info.ham}, spam {info.spam}, version {info.model_version})"
            )
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
    except (CorpusError, TrainingLogError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(
        f"appended {logged.learned} examples to the training log ({logged.unchanged} already "
        f"there, {logged.kept} kept by a label of higher rank); log head {logged.head}"
    )
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
    from mailsift.service.settings import Settings

    _rebuild(Settings(), wait=not if_idle, nice=nice, as_json=as_json)


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

    try:
        messages = list(open_source(corpus))
    except CorpusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(measure_speed(messages)))


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
    from mailsift.training.evaluate import Mode, evaluate
    from mailsift.training.metrics import plot_roc

    if mode not in ("online", "split"):
        err.print("[red]error:[/red] --mode must be online or split")
        raise typer.Exit(2)
    try:
        messages, total = _sources([corpus])
        with _progress(total, f"eval {mode}") as bar:
            task = bar.add_task("eval", total=total)
            result = evaluate(
                messages,
                mode=cast(Mode, mode),
                train_frac=train_frac,
                progress=lambda n: bar.advance(task, n),
            )
        if scores:
            scores.write_text(
                "".join(
                    f"{'spam' if s else 'ham'} {v:.6f}\n"
                    for s, v in zip(result.is_spam, result.scores, strict=True)
                )
            )
        if plot:
            plot_roc(result.is_spam, result.scores, plot, title=f"mailsift {mode}: {corpus}")
    except (CorpusError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # Undefined measures (a class missing from half the stream) are NaN: JSON says null.
    summary = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in result.summary.items()
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:32s} {value}")


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
