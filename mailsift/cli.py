"""The ``mailsift`` command: a thin layer over library functions, no logic of its own."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

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
def train(
    sources: Annotated[list[str], typer.Argument(help="Corpora: TREC dir, ham/spam folder, or spam:/ham: + mbox/Maildir/file.")],
    model: Annotated[Path, typer.Option("--model", help="Snapshot to create or continue.")] = Path("data/model.joblib"),
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
    typer.echo(f"learned {report.learned} messages -> {model} (ham {info.ham}, spam {info.spam}, version {info.model_version})")


@app.command("eval")
def eval_(
    corpus: Annotated[str, typer.Argument(help="Labelled corpus (TREC dir or ham/spam folder).")],
    mode: Annotated[str, typer.Option(help="online (score then learn each message) or split.")] = "online",
    train_frac: Annotated[float, typer.Option(help="Split mode: fraction learned first.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    scores: Annotated[Optional[Path], typer.Option(help="Write 'label score' per message.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a ROC curve PNG.")] = None,
) -> None:
    """Measure accuracy and speed by the TREC spam-track protocols."""
    from mailsift.training.evaluate import evaluate
    from mailsift.training.metrics import plot_roc

    if mode not in ("online", "split"):
        err.print("[red]error:[/red] --mode must be online or split")
        raise typer.Exit(2)
    try:
        messages, total = _sources([corpus])
        with _progress(total, f"eval {mode}") as bar:
            task = bar.add_task("eval", total=total)
            result = evaluate(messages, mode=mode, train_frac=train_frac, progress=lambda n: bar.advance(task, n))  # type: ignore[arg-type]
    except (CorpusError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if scores:
        scores.write_text("".join(f"{'spam' if s else 'ham'} {v:.6f}\n" for s, v in zip(result.is_spam, result.scores, strict=True)))
    if plot:
        plot_roc(result.is_spam, result.scores, plot, title=f"mailsift {mode}: {corpus}")
    if as_json:
        typer.echo(json.dumps(result.summary))
    else:
        for key, value in result.summary.items():
            typer.echo(f"{key:32s} {value}")
