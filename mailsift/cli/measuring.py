"""Measuring: accuracy (``eval``, ``influence``), speed and served throughput (``bench``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from mailsift.cli.app import app, err, fail, load_settings
from mailsift.cli.progress import Phases, open_sources, progress, read_corpus
from mailsift.training.corpus import CorpusError


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
        messages, total = open_sources([corpus])
        labels = source_labels(corpus)
        if plot is not None and len(labels) == 1:
            raise OutputError(
                f"--plot {plot}: a ROC curve needs both ham and spam, and {corpus} gives "
                f"only {next(iter(labels))} (the measures that apply are printed without --plot)"
            )
        with progress(total, f"eval {mode}") as bar:
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
def speed(
    corpus: Annotated[str, typer.Argument(help="Labelled corpus.")],
) -> None:
    """Per-message medians of parse, features and scoring; model memory and snapshot size."""
    from mailsift.training.speed import measure_speed

    # measure_speed reports no progress itself: its two passes over the messages show.
    with progress(None, "{task.description}", refresh_per_second=2) as bar:
        phases = Phases(bar, "speed: ")
        try:
            messages = read_corpus(corpus, phases)
        except CorpusError as exc:
            bar.stop()
            fail(str(exc))
        passes = ["learning every message (pass 1 of 2)", "timing each stage (pass 2 of 2)"]
        result = measure_speed(phases.over(messages, passes, then="writing a snapshot"))
    typer.echo(json.dumps(result))


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
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Start N replicas of 1 worker each on the one database of "
            "MAILSIFT_DATABASE_URL (--workers is then ignored); the result has per-replica "
            "figures besides the total.",
        ),
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start the service with W workers and measure messages/s, latency and memory."""
    from mailsift.learning.trainlog import TrainingLogError
    from mailsift.training.bench import run_bench

    if rebuild_during and model is not None:
        err.print("[red]error:[/red] --rebuild-during rebuilds from the log: drop --model")
        raise typer.Exit(2)
    load_settings()  # the bench server reads them too: a bad one stops us here, not it
    # run_bench reports no phases itself; they show as it reads its inputs: the training
    # corpus first (then it rebuilds and starts the server, whose client baseline
    # follows), the messages to send last, right before the warm-up.
    with progress(None, "{task.description}", refresh_per_second=1) as bar:
        phases = Phases(bar, "bench: ")
        try:
            messages = read_corpus(corpus, phases)
            training = messages if model is None and all(m.label for m in messages) else []
            serving = (
                f"{replicas} replicas of 1 worker"
                if replicas > 1
                else f"{workers} worker{'s' if workers > 1 else ''}"
            )
            starting = f"starting the service ({serving}), then the client's own ceiling (/healthz)"
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
                replicas=replicas,
            )
        except (CorpusError, TrainingLogError, RuntimeError) as exc:
            bar.stop()
            fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        for key, value in result.as_dict().items():
            typer.echo(f"{key:20s} {value}")


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
        messages, total = open_sources([corpus])
        with progress(total, "influence") as bar:
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
