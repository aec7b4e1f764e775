"""The ``mailsift`` app and what every command shares: one-line errors, settings that
name a bad value in one line, private files."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.models import CommandFunctionType

from mailsift.cli_help import Command, Group

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings, SettingsError

    from mailsift.service.settings import Settings


HELP = """mailsift is a spam and data-leak filter that mail gateways call over HTTP for every
message, inbound and outbound; these commands run it, connect mail servers to it, teach
it, measure it and manage its API tokens.

Settings are MAILSIFT_* environment variables (the README's Settings section lists them).
"""


class App(typer.Typer):
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
                error(line)
            raise SystemExit(2) from None


app = App(no_args_is_help=True, add_completion=False, help=HELP)
err = Console(stderr=True)


def error(line: str) -> None:
    """``error: line`` on stderr, on one line whatever the terminal's width."""
    err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, highlight=False)


def fail(line: str) -> NoReturn:
    error(line)
    raise typer.Exit(2)


# -- settings: every command loads them through these, so a bad value is one line each,
# naming the variable (or the option), the value and the form expected; exit status 2.


def load_settings() -> Settings:
    """The service's settings (``MAILSIFT_*``)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from mailsift.service.settings import Settings

    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        invalid_settings(exc, Settings)


def invalid_settings(
    exc: ValidationError | SettingsError,
    settings: type[BaseSettings],
    options: dict[str, str] | None = None,
) -> NoReturn:
    for line in _settings_lines(exc, settings, options):
        error(line)
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


def private_data_dir(settings: Settings) -> None:
    """The data dir holds the SQLite databases unless a database URL is set: 0700."""
    from mailsift.service.db import private_dir

    if settings.database_url is None:
        private_dir(settings.data_dir)
