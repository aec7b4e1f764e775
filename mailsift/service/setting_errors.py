"""Invalid settings said in an operator's terms: one line per problem, naming the
environment variable (or the command-line option) that holds the value, the value, and
what is expected instead; never pydantic's field names, error codes or links.

Used for both settings classes (``MAILSIFT_*`` and ``MAILSIFT_GATEWAY_*``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsError

__all__ = ["settings_errors"]

# Error types the expected form already says all about (a bad number, a bad choice...).
_SAID_BY_FORM = frozenset(
    {
        "bool_parsing",
        "bool_type",
        "finite_number",
        "float_parsing",
        "float_type",
        "greater_than",
        "greater_than_equal",
        "int_from_float",
        "int_parsing",
        "int_type",
        "less_than",
        "less_than_equal",
        "literal_error",
        "path_type",
        "string_type",
    }
)
_FORMS: dict[Any, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    Path: "a path",
    str: "text",
    SecretStr: "text",
    dict: "a JSON object",
    list: "a JSON list",
}
_BOUNDS = (
    (annotated_types.Gt, "gt", "greater than"),
    (annotated_types.Ge, "ge", "at least"),
    (annotated_types.Lt, "lt", "less than"),
    (annotated_types.Le, "le", "at most"),
)
_WORD = re.compile(r"\b[a-z][a-z0-9_]*\b")
_PARSED_FIELD = re.compile(r'field "(?P<field>\w+)"')
_LONGEST_VALUE = 80


def settings_errors(
    exc: ValidationError | SettingsError,
    settings: type[BaseSettings],
    options: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per problem ``exc`` (raised building ``settings``) reports.

    ``options`` maps the fields that were given on the command line to their option
    (``{"timeout_seconds": "--timeout"}``): the option is named instead of the variable.
    """
    names = _Names(settings, options or {})
    if isinstance(exc, SettingsError):  # a value pydantic-settings could not even decode
        return [names.undecodable(exc)]
    return [names.line(error) for error in exc.errors(include_url=False)]


class _Names:
    def __init__(self, settings: type[BaseSettings], options: Mapping[str, str]) -> None:
        self.fields = settings.model_fields
        self.prefix = str(settings.model_config.get("env_prefix", ""))
        self.options = options

    def name(self, field: str) -> str:
        return self.options.get(field) or f"{self.prefix}{field}".upper()

    def assigned(self, field: str, value: object) -> str:
        """``NAME=value`` as it would be written in a shell or an environment file."""
        if self.secret(field):
            return f"{self.name(field)} (value not shown)"
        return f"{self.name(field)}={_shown(value)}"

    def secret(self, field: str) -> bool:
        info = self.fields.get(field)
        return info is not None and SecretStr in (info.annotation, *get_args(info.annotation))

    def line(self, error: Mapping[str, Any]) -> str:
        loc = tuple(error["loc"])
        if not loc or loc[0] not in self.fields:
            return self.whole(error)
        field, inner = str(loc[0]), loc[1:]
        expected = _expected(self.fields[field])
        if inner:  # inside a JSON value: say where, as a JSON path
            where = "".join(f"[{json.dumps(part)}]" for part in inner)
            return f"{self.name(field)}: {where}={_shown(error['input'])}: {_said(error)}"
        if error["type"] in _SAID_BY_FORM:
            return f"{self.assigned(field, error['input'])}: expected {expected}"
        return f"{self.assigned(field, error['input'])}: {_said(error)}; expected {expected}"

    def whole(self, error: Mapping[str, Any]) -> str:
        """A rule across settings: its message, with every setting it names as the
        variable (or option), and the value given for it unless the message has it."""
        context = error.get("ctx") or {}
        message = str(context.get("error") or _said(error))
        given = error["input"] if isinstance(error.get("input"), Mapping) else {}

        def named(match: re.Match[str]) -> str:
            field = match.group()
            if field not in self.fields:
                return field
            if field in given and not self.secret(field) and _shown(given[field]) not in message:
                return self.assigned(field, given[field])
            return self.name(field)

        return _WORD.sub(named, message)

    def undecodable(self, exc: SettingsError) -> str:
        match = _PARSED_FIELD.search(str(exc))
        if match is None or match.group("field") not in self.fields:
            return str(exc)
        field = match.group("field")
        name = self.name(field)
        value = next((v for k, v in os.environ.items() if k.upper() == name), None)
        shown = name if value is None else self.assigned(field, value)
        why = f"not valid JSON ({exc.__cause__})" if exc.__cause__ else "cannot be decoded"
        return f"{shown}: {why}; expected {_expected(self.fields[field])}"


def _expected(field: FieldInfo) -> str:
    """The form a setting's value takes, e.g. ``a number greater than 0 and at most 60``."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = present[0] if len(present) == 1 else annotation
    if get_origin(annotation) is Literal:
        form = "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    else:
        form = _FORMS.get(annotation) or _FORMS.get(get_origin(annotation)) or "text"
    bounds = [
        f"{word} {_shown(getattr(rule, attribute))}"
        for rule in field.metadata
        for kind, attribute, word in _BOUNDS
        if isinstance(rule, kind)
    ]
    if bounds:
        form = f"{form} {' and '.join(bounds)}"
    if form.startswith("a JSON") and field.description:
        form = f"{form}: {field.description.rstrip('.')}"
    default = field.get_default(call_default_factory=True)
    if default is not None and default != "" and not isinstance(default, dict | list):
        form = f"{form} (default {_shown(default)})"
    return form


def _said(error: Mapping[str, Any]) -> str:
    """pydantic's message, as a clause: "Input should be a valid integer" -> "expected
    a valid integer"; a validator's "Value error, x" -> "x"."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should be "):
        return "expected " + message.removeprefix("Input should be ")
    return message[:1].lower() + message[1:]


def _shown(value: object) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    if len(text) > _LONGEST_VALUE:
        text = text[: _LONGEST_VALUE - 1] + "…"
    return shlex.quote(text)
