"""The ``mailsift`` command: a thin layer over library functions, no logic of its own."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mailsift.training.corpus import CorpusError, LabelledMessage, count_messages, open_source

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
err = Console(stderr=True)


def _progress(total: int | None, label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _sources(specs: list[str]) -> tuple[Iterator[LabelledMessage], int | None]:
    counts = [count_messages(s) for s in specs]
    total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    return itertools.chain.from_iterable(open_source(s) for s in specs), total


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; keep loopback unless TLS is set up.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the gateway API.")] = 8470,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
) -> None:
    """Run the HTTP service (settings from MAILSIFT_* variables)."""
    import uvicorn
    from pydantic import ValidationError

    from mailsift.service.settings import Settings

    try:
        Settings()
    except ValidationError as exc:
        err.print(f"[red]error:[/red] invalid settings:\n{exc}")
        raise typer.Exit(2) from exc
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["mailsift"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    uvicorn.run(
        "mailsift.service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
    )


@app.command()
def bench(
    corpus: Annotated[str, typer.Argument(help="Messages to send (any corpus source).")],
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 2,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Concurrent keep-alive connections.")
    ] = 16,
    model: Annotated[
        Path | None,
        typer.Option(help="Snapshot to serve; default: train one on the corpus first."),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Times each message is sent.")] = 1,
    direction: Annotated[
        str, typer.Option(help="inbound, or outbound (500 simulated senders).")
    ] = "inbound",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start the service with W workers and measure messages/s, latency and memory."""
    import tempfile

    from mailsift.training.bench import run_bench
    from mailsift.training.train import train_snapshot

    try:
        messages = list(open_source(corpus))
        if model is None and all(m.label for m in messages):
            model = Path(tempfile.mkdtemp(prefix="mailsift-bench-model-")) / "model.joblib"
            err.print(f"training a model on {len(messages)} messages first")
            train_snapshot(iter(messages), model)
    except CorpusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if direction not in ("inbound", "outbound"):
        err.print("[red]error:[/red] --direction must be inbound or outbound")
        raise typer.Exit(2)
    result = run_bench(
        [m.raw for m in messages],
        workers=workers,
        concurrency=concurrency,
        model=model,
        rounds=rounds,
        direction=direction,
    )
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
    model: Annotated[Path, typer.Option("--model", help="Snapshot to create or continue.")] = Path(
        "data/model.joblib"
    ),
) -> None:
    """Train (or continue training) a model snapshot from labelled corpora."""
    from mailsift.training.train import train_snapshot

    try:
        messages, total = _sources(sources)
        with _progress(total, "training") as bar:
            task = bar.add_task("train", total=total)
            report = train_snapshot(messages, model, progress=lambda n: bar.advance(task, n))
    except CorpusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    info = report.info
    typer.echo(
        f"learned {report.learned} messages -> {model} "
        f"(ham {info.ham}, spam {info.spam}, version {info.model_version})"
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


if __name__ == "__main__":
    app()
