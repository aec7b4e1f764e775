"""Log lines a client cannot forge: control characters escaped in every logged value.

A ``user`` with a newline in it (an event's, or the ``by`` of an all-clear) wrote a
second, forged line into the service log. Refusing such values at the API edge is one
half (:data:`~mailsift.service.schemas.IDENTITY_PATTERN`); this is the other, for every
value any call site logs, so none can forget: :class:`EscapeControls` sits on the log
handlers of the mailsift, uvicorn and root loggers (:func:`log_config`) and rewrites each
record before it is formatted:

* in the message and its arguments, C0 and C1 controls, DEL, U+2028 and U+2029 become
  ``\\xNN`` / ``\\uNNNN`` (the request line in uvicorn's access log too);
* a traceback keeps its lines, each indented, so an exception message cannot start a
  line of its own.
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Mapping
from numbers import Number
from typing import Any

import uvicorn.config

from mailsift.service.schemas import CONTROL_CHARACTERS

__all__ = ["EscapeControls", "escape_controls", "log_config"]


def _escape(match: Any) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape."""
    return CONTROL_CHARACTERS.sub(_escape, text)


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, Number | bytes | type(None)):
        return value  # %d and %f need the number; bytes log as their repr
    return escape_controls(str(value))


class EscapeControls(logging.Filter):
    """Escapes control characters in a record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _safe(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_safe(value) for value in args)
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = "\n".join(f"    {escape_controls(line)}" for line in text.split("\n"))
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with mailsift's logger and the filter on every handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"escape_controls": {"()": EscapeControls}}
    for handler in config["handlers"].values():
        handler["filters"] = ["escape_controls"]
    config["loggers"]["mailsift"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # Libraries' own warnings (SQLAlchemy, the DNS resolver) through the same handler.
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config
