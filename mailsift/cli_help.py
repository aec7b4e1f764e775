"""How ``mailsift --help`` reads: commands listed by task, values described in words.

typer 0.29 prints every parameter's Python type (``<bool>`` beside a flag,
``<list[str]>``, ``<int range> [x>=1]``). Every command and group of the app renders its
parameters through :class:`Option` and :class:`Argument` instead: no type beside a flag,
a word for a value (INTEGER, NUMBER, PATH, TEXT, or the choices), a range in words,
arguments in capitals. These override typer's display methods, some of them private, so
pyproject.toml pins typer's minor version; ``tests/test_cli.py`` checks the result for
every command.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["TASKS", "Command", "Group"]

# `mailsift --help` lists the commands by task: these panels, in this order.
TASKS = {
    "Serving": ("serve", "diagnose"),
    "Mail-server integration": ("milter", "policy", "report"),
    "Learning": ("train", "rebuild", "label"),
    "Measuring": ("eval", "speed", "bench", "influence"),
    "Tokens": ("token",),
    "Users' addresses": ("alias",),
}
_PANEL = {command: panel for panel, commands in TASKS.items() for command in commands}


class Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or _value_word(self.display_type(ctx))

    def _get_number_range_help_str(self) -> str | None:
        return _range_words(self.min, self.max)


class Argument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: Any) -> str | None:
        word = _value_word(self.display_type(ctx))
        return word if "|" in word else None  # choices say something; TEXT would not

    def _get_number_range_help_str(self) -> str | None:
        return _range_words(self.min, self.max)


_WORDS = {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "path": "PATH", "file": "FILE"}


def _value_word(typer_label: str) -> str:
    """typer's ``<int range>``, ``<list[str]>``, ``<spam|ham>`` as INTEGER, TEXT, spam|ham."""
    label = typer_label.strip("<>").removesuffix(" range")
    label = label.removeprefix("list[").removesuffix("]")
    return label if "|" in label else _WORDS.get(label, label.upper())


def _range_words(low: float | None, high: float | None) -> str | None:
    if low is None and high is None:
        return None
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"{low} to {high}"


def _plain(params: list[Any]) -> list[Any]:
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = Option
        elif type(param) is TyperArgument:
            param.__class__ = Argument
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))


class Group(TyperGroup):
    """A group whose commands are listed by task (:data:`TASKS`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            if isinstance(command, TyperCommand | TyperGroup) and not command.rich_help_panel:
                command.rich_help_panel = _PANEL.get(name)

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        order = list(_PANEL)
        return sorted(
            super().list_commands(ctx),
            key=lambda name: order.index(name) if name in order else len(order),
        )
