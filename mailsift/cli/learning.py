"""Learning: ``train`` and ``rebuild`` the shared model; ``label`` a scored message."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mailsift.cli.app import app, err, load_settings, private_data_dir
from mailsift.cli.progress import open_sources, progress
from mailsift.training.corpus import CorpusError

if TYPE_CHECKING:
    from mailsift.service.settings import Settings


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
        messages, total = open_sources(sources)
        if model is not None:
            with progress(total, "training") as bar:
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
        private_data_dir(settings)
        trainlog = open_training_log(settings.database_url, settings.data_dir)
        try:
            with progress(total, "appending") as bar:
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
    _rebuild(load_settings(), wait=not if_idle, nice=nice, as_json=as_json)


def _rebuild(settings: Settings, *, wait: bool, nice: bool, as_json: bool) -> None:
    from mailsift.learning.rebuild import RebuildBusy, publish, rebuild_lock, rebuild_model
    from mailsift.learning.trainlog import TrainingLogError, open_training_log
    from mailsift.service.rebuilds import BUSY_EXIT

    if nice:
        os.nice(10)
    private_data_dir(settings)
    try:
        trainlog = open_training_log(settings.database_url, settings.data_dir)
    except TrainingLogError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        with rebuild_lock(trainlog, settings.data_dir, wait=wait):
            with progress(None, "rebuilding") as bar:
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
