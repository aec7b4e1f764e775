"""Files the training commands write: checked before a long run, written whole after it.

``mailsift eval`` runs for minutes before it writes ``--scores`` and ``--plot``, and
``mailsift train --model`` featurises a whole corpus before it saves: a path that cannot
be written must fail at once, not after the work. A file is written to a temporary file
beside it and renamed into place, so a failure never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

__all__ = ["OutputError", "check_outputs", "write_atomically"]


class OutputError(Exception):
    """An output path cannot be written; the message names the option and the path."""


def _check(option: str, path: Path) -> None:
    where = f"{option} {path}"
    if path.is_dir():
        raise OutputError(f"{where}: is a directory (give a file name)")
    if path.exists() and not path.is_file():
        raise OutputError(f"{where}: exists and is not a regular file")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"{where}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{where}: {parent} is not a directory")
    # Try it: the file is written beside its final name and renamed, so the directory
    # must take a new file (permissions, ACLs, a read-only mount all show here).
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".check")
    except OSError as exc:
        raise OutputError(
            f"{where}: cannot write in directory {parent}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(outputs: Mapping[str, Path | None]) -> None:
    """Raise :class:`OutputError` unless every given output (by option name) can be
    written, and no two options name the same file."""
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        _check(option, path)
    seen: dict[Path, str] = {}
    for option, path in given.items():
        key = path.resolve()
        if key in seen:
            raise OutputError(f"{seen[key]} and {option} name the same file {path}")
        seen[key] = option


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file beside it,
    which then replaces ``path`` (created readable by this user only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
