"""``mailsift diagnose``: the diagnostic report from the command line, without a server.

Opens the training log and the state database itself, loads the model the way a worker
does (newest snapshot plus the log after it), runs the same report as the API and prints
it, led by a ``data`` line naming the databases it read. It creates nothing: where a
SQLite file is missing (a fresh install, or a data dir that is not the service's) the
checks that need it are left out and ``data`` says so. The exit code is 0 when
everything passes, 1 with a warning, 2 with a failure, so cron or a monitoring system
can run it monthly and act on the result.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, inspect

from mailsift.learning import log_schema
from mailsift.learning.learner import Learner
from mailsift.learning.published import PublishedModels
from mailsift.learning.trainlog import TrainingLog, open_training_log
from mailsift.service.audit import AUDIT_TABLE, AuditTrail
from mailsift.service.db import (
    STATE_FILENAME,
    create_db_engine,
    describe,
    open_state_engine,
    resolve_url,
)
from mailsift.service.diagnostics.checks import DiagResult, check_stores
from mailsift.service.diagnostics.report import (
    EXIT_CODES,
    DiagReport,
    run_diagnostics,
    run_settings_diagnostics,
)
from mailsift.service.lists.store import ListStore
from mailsift.service.settings import Settings

__all__ = ["StoreFiles", "diagnose_command", "locate_stores", "print_report"]

_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@dataclass(frozen=True, slots=True)
class StoreFiles:
    """Where the training log and the state are, and whether they exist yet."""

    training_log: str
    """A file's absolute path, or a database URL without its password."""
    state: str
    log_exists: bool
    state_exists: bool

    def check(self) -> DiagResult:
        return check_stores(
            self.training_log,
            self.state,
            log_exists=self.log_exists,
            state_exists=self.state_exists,
        )


def locate_stores(settings: Settings) -> StoreFiles:
    """Where ``settings`` put the databases, found without opening (or creating) them.

    A SQLite file exists or not; in a server database (PostgreSQL) the log and the state
    exist when their tables do (looked up, never created). Raises ValueError for a
    database URL that cannot be used, and the driver's error when it cannot connect.
    """
    url = resolve_url(settings.database_url, settings.data_dir)
    if url.get_backend_name() != "sqlite":
        where = describe(url)
        engine = create_db_engine(url)
        try:
            with engine.connect() as conn:
                tables = inspect(conn)
                log_exists = tables.has_table(log_schema.meta.name)
                state_exists = tables.has_table(AUDIT_TABLE)
        finally:
            engine.dispose()
        return StoreFiles(where, where, log_exists, state_exists)
    assert url.database is not None
    log = Path(url.database).absolute()
    # Without a URL the state has a file of its own beside the log (open_state_engine).
    state = log if settings.database_url else (settings.data_dir / STATE_FILENAME).absolute()
    return StoreFiles(str(log), str(state), log.is_file(), state.is_file())


@dataclass(slots=True)
class _Stores:
    """The part of the service state the report reads, opened for one run; ``lists`` and
    ``audit`` are None when there is no state database to open."""

    settings: Settings
    trainlog: TrainingLog
    learner: Learner
    lists: ListStore | None
    audit: AuditTrail | None
    engine: Engine | None

    def close(self) -> None:
        self.trainlog.close()
        if self.engine is not None:
            self.engine.dispose()


def _open(settings: Settings, *, with_state: bool) -> _Stores:
    trainlog = open_training_log(settings.database_url, settings.data_dir)
    engine: Engine | None = None
    lists: ListStore | None = None
    audit: AuditTrail | None = None
    try:
        if with_state:
            engine = open_state_engine(settings.database_url, settings.data_dir)
            lists = ListStore(engine, settings)
            audit = AuditTrail(engine, settings)
    except BaseException:
        if engine is not None:
            engine.dispose()
        trainlog.close()
        raise
    learner = Learner(
        trainlog, PublishedModels(trainlog.engine), settings.snapshot_path, settings.parse_limits
    )
    return _Stores(settings, trainlog, learner, lists, audit, engine)


async def _diagnose(settings: Settings, admin_host: str | None) -> DiagReport:
    files = locate_stores(settings)
    if not files.log_exists:
        return await run_settings_diagnostics(settings, files.check(), admin_host=admin_host)
    stores = await asyncio.to_thread(_open, settings, with_state=files.state_exists)
    try:
        await asyncio.to_thread(stores.learner.load_initial)
        await stores.learner.catch_up()
        return await run_diagnostics(stores, admin_host=admin_host, data=files.check())
    finally:
        stores.close()


def diagnose_command(
    settings: Settings,
    *,
    as_json: bool = False,
    admin_host: str | None = None,
    console: Console | None = None,
) -> int:
    """Run the report and print it (a table, or JSON); returns the exit code 0/1/2."""
    console = console or Console()
    try:
        report = asyncio.run(_diagnose(settings, admin_host))
    except Exception as exc:  # the stores could not be opened: nothing to diagnose with
        console.print(
            Text(f"error: cannot open mailsift's stores: {type(exc).__name__}: {exc}", "red")
        )
        return EXIT_CODES["fail"]
    if as_json:
        console.out(json.dumps(report.as_dict(), indent=2), highlight=False)
    else:
        print_report(report, console)
    return report.exit_code


def print_report(report: DiagReport, console: Console) -> None:
    """The report as a table in report order, then a one-line summary."""
    table = Table(show_lines=False, header_style="bold")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("remedy", overflow="fold")
    for result in report.results:
        table.add_row(
            Text(result.name),
            Text(result.status.upper(), _STYLES[result.status]),
            Text(result.detail),
            Text(result.remedy),
        )
    console.print(table)
    counts = report.counts
    console.print(
        Text.assemble(
            ("overall: ", "bold"),
            (report.status.upper(), _STYLES[report.status]),
            f" ({counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail)",
        )
    )
