"""The state database, as the token and alias commands open it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mailsift.cli.app import err, load_settings, private_data_dir

if TYPE_CHECKING:
    from sqlalchemy import Engine


@contextmanager
def state_database(doing: str) -> Iterator[tuple[Engine, str]]:
    """The state database (where tokens live) and where it is, for the token and alias commands.

    A database that cannot be opened, reached or read is one line naming it, without
    its password ("cannot ``doing`` WHERE: cause"), and exit status 2.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from mailsift.service.db import describe, open_state_engine, redact

    settings = load_settings()
    private_data_dir(settings)
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
