"""Readers that turn mail corpora on disk into a stream of (label, raw bytes) messages.

Every reader checks its path when called, so a wrong path fails at once rather than at the
first ``next()``; messages are then read lazily, one at a time, in the corpus's own order
(the order matters for online evaluation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal, get_args

Label = Literal["ham", "spam"]
LABELS: tuple[Label, ...] = get_args(Label)
_LABEL_OF: dict[str, Label] = {label: label for label in LABELS}  # narrows str to Label

_ESCAPED_FROM = re.compile(rb">+From ")


@dataclass(frozen=True, slots=True)
class LabelledMessage:
    """One raw message; ``label`` is None when neither the source nor the caller gave one."""

    label: Label | None
    raw: bytes
    source: str


class CorpusError(Exception):
    """A corpus path is missing, unreadable or not in the expected layout."""


class _Kind(Enum):
    TREC = "trec"
    FOLDER = "folder"
    MAILDIR = "maildir"
    PLAIN = "plain"
    MBOX = "mbox"
    SINGLE = "single"


def _read_bytes(path: Path, context: str = "") -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        where = f" (listed at {context})" if context else ""
        raise CorpusError(f"cannot read message {path}{where}: {exc.strerror or exc}") from exc


def _require_exists(path: Path) -> None:
    if not os.path.lexists(path):
        raise CorpusError(f"{path}: no such file or directory")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# --- TREC -------------------------------------------------------------------------------


def _trec_index(path: Path) -> Path:
    _require_exists(path)
    index = path / "full" / "index" if path.is_dir() else path
    if not index.is_file():
        raise CorpusError(f"{path}: not a TREC corpus (no index file at {index})")
    return index


def _trec_entries(index: Path) -> Iterator[tuple[int, Label, str]]:
    """Yield (line number, label, relative path) for each non-blank index line."""
    try:
        fh = index.open(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise CorpusError(f"cannot read TREC index {index}: {exc.strerror or exc}") from exc
    with fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.strip().split(maxsplit=1)
            if not fields:
                continue
            label = _LABEL_OF.get(fields[0].lower())
            if len(fields) != 2 or label is None:
                raise CorpusError(
                    f"{index}:{lineno}: expected '<ham|spam> <path>', got {line.strip()!r}"
                )
            yield lineno, label, fields[1]


def read_trec(path: Path) -> Iterator[LabelledMessage]:
    """Read a TREC spam-track corpus (its directory or its index file) in index order."""
    index = _trec_index(path)

    def messages() -> Iterator[LabelledMessage]:
        for lineno, label, rel in _trec_entries(index):
            file = index.parent / rel
            raw = _read_bytes(file, f"{index}:{lineno}")
            yield LabelledMessage(label, raw, os.path.normpath(file))

    return messages()


# --- mbox -------------------------------------------------------------------------------


def _strip_separator(lines: list[bytes]) -> bytes:
    # mbox writers put one blank line between messages; it belongs to the file, not the mail.
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(lines)


def read_mbox(path: Path, label: Label | None = None) -> Iterator[LabelledMessage]:
    """Stream an mbox (mboxrd-unescaping ``>From `` lines); sources are ``path#N``, N from 1."""
    _require_exists(path)
    if not path.is_file():
        raise CorpusError(f"{path}: not an mbox file")

    def messages() -> Iterator[LabelledMessage]:
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise CorpusError(f"cannot read mbox {path}: {exc.strerror or exc}") from exc
        with fh:
            count = 0
            lines: list[bytes] | None = None  # None until the first From_ line
            for lineno, line in enumerate(fh, start=1):
                if line.startswith(b"From "):
                    if lines is not None:
                        count += 1
                        yield LabelledMessage(label, _strip_separator(lines), f"{path}#{count}")
                    lines = []
                elif lines is None:
                    if line.strip():
                        raise CorpusError(f"{path}:{lineno}: text before the first 'From ' line")
                else:
                    lines.append(line[1:] if _ESCAPED_FROM.match(line) else line)
            if lines is not None:
                yield LabelledMessage(label, _strip_separator(lines), f"{path}#{count + 1}")

    return messages()


# --- Maildir and labelled folders ----------------------------------------------------------


def _maildir_files(path: Path) -> list[Path]:
    _require_exists(path)
    subdirs = [path / name for name in ("cur", "new") if (path / name).is_dir()]
    if not subdirs:
        raise CorpusError(f"{path}: not a Maildir (no cur/ or new/ directory)")
    files: list[Path] = []
    for subdir in subdirs:
        try:
            entries = list(os.scandir(subdir))
        except OSError as exc:
            raise CorpusError(f"cannot list {subdir}: {exc.strerror or exc}") from exc
        files += [Path(e.path) for e in entries if not _is_hidden(e.name) and not e.is_dir()]
    # Maildir names start with the delivery time, so sorting by name across cur/ and new/
    # approximates arrival order.
    return sorted(files, key=lambda f: (f.name, f.parent.name))


def read_maildir(path: Path, label: Label | None = None) -> Iterator[LabelledMessage]:
    """Read the messages in a Maildir's cur/ and new/, sorted by file name."""
    files = _maildir_files(path)
    return (LabelledMessage(label, _read_bytes(f), str(f)) for f in files)


def _walk_files(root: Path) -> list[Path]:
    """All non-hidden non-directory entries under ``root``, sorted by relative path."""

    def fail(exc: OSError) -> None:
        raise CorpusError(f"cannot list {exc.filename}: {exc.strerror or exc}") from exc

    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        files += [Path(dirpath, f) for f in filenames if not _is_hidden(f)]
    return sorted(files, key=lambda f: f.relative_to(root).parts)


def _folder_files(path: Path) -> list[tuple[Label, Path]]:
    _require_exists(path)
    found = [label for label in LABELS if (path / label).is_dir()]
    if not found:
        raise CorpusError(f"{path}: not a labelled folder (no ham/ or spam/ directory)")
    return [(label, f) for label in found for f in _walk_files(path / label)]


def read_labelled_folder(path: Path) -> Iterator[LabelledMessage]:
    """Read ``path/ham/**`` then ``path/spam/**`` (sorted, hidden files skipped)."""
    files = _folder_files(path)
    return (LabelledMessage(label, _read_bytes(f), str(f)) for label, f in files)


# --- a plain folder of message files ------------------------------------------------------


def _natural(name: str) -> list[str | int]:
    # MH folders and exports number their files: 2 comes before 10.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _plain_files(path: Path) -> list[Path]:
    """The non-hidden files directly inside ``path``, in natural name order."""
    _require_exists(path)
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise CorpusError(f"cannot list {path}: {exc.strerror or exc}") from exc
    files = [Path(e.path) for e in entries if not _is_hidden(e.name) and not e.is_dir()]
    return sorted(files, key=lambda f: _natural(f.name))


def read_plain_folder(path: Path, label: Label | None = None) -> Iterator[LabelledMessage]:
    """Read a folder of message files (one message a file; a file that starts with
    ``From `` is an mbox), the files directly inside it in natural name order; hidden
    files and subfolders are skipped."""
    files = _plain_files(path)
    if not files:
        raise CorpusError(f"{path}: no message files in it")

    def messages() -> Iterator[LabelledMessage]:
        for f in files:
            if _starts_with_from(f):
                yield from read_mbox(f, label)
            else:
                yield LabelledMessage(label, _read_bytes(f), str(f))

    return messages()


# --- auto-detection -------------------------------------------------------------------------


def _starts_with_from(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(5) == b"From "
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _detect(path: Path) -> _Kind:
    _require_exists(path)
    if path.is_dir():
        if (path / "full" / "index").is_file():
            return _Kind.TREC
        if any((path / label).is_dir() for label in LABELS):
            return _Kind.FOLDER
        if (path / "cur").is_dir() or (path / "new").is_dir():
            return _Kind.MAILDIR
        if _plain_files(path):
            return _Kind.PLAIN
        raise CorpusError(
            f"{path}: unrecognised corpus directory (expected full/index, ham/ or spam/, "
            "a Maildir's cur/ and new/, or message files directly inside)"
        )
    if path.name == "index":
        return _Kind.TREC
    return _Kind.MBOX if _starts_with_from(path) else _Kind.SINGLE


def _parse_spec(spec: str, label: Label | None) -> tuple[Path, Label | None]:
    prefix, sep, rest = spec.partition(":")
    given = _LABEL_OF.get(prefix.lower()) if sep else None
    if given is not None:
        if label is not None and label != given:
            raise CorpusError(f"{spec!r}: prefix says {given!r} but label={label!r} was given")
        return Path(rest), given
    return Path(spec), label


def open_source(spec: str, label: Label | None = None) -> Iterator[LabelledMessage]:
    """Open any supported corpus, detected from what is on disk.

    ``spec`` is a path, optionally prefixed ``ham:`` or ``spam:`` to label an unlabelled
    source. TREC corpora and ham/spam folders always keep their own labels.
    """
    path, label = _parse_spec(spec, label)
    match _detect(path):
        case _Kind.TREC:
            return read_trec(path)
        case _Kind.FOLDER:
            return read_labelled_folder(path)
        case _Kind.MAILDIR:
            return read_maildir(path, label)
        case _Kind.PLAIN:
            return read_plain_folder(path, label)
        case _Kind.MBOX:
            return read_mbox(path, label)
        case _Kind.SINGLE:
            return iter([LabelledMessage(label, _read_bytes(path), str(path))])


def count_messages(spec: str) -> int | None:
    """Count a source's messages without reading them, or None when that needs a full scan."""
    path, _ = _parse_spec(spec, None)
    match _detect(path):
        case _Kind.TREC:
            return sum(1 for _ in _trec_entries(_trec_index(path)))
        case _Kind.FOLDER:
            return len(_folder_files(path))
        case _Kind.MAILDIR:
            return len(_maildir_files(path))
        case _Kind.PLAIN:
            files = _plain_files(path)
            return None if any(_starts_with_from(f) for f in files) else len(files)
        case _Kind.MBOX:
            return None
        case _Kind.SINGLE:
            return 1


def source_labels(spec: str) -> frozenset[Label]:
    """The labels a source gives its messages, known without reading them (empty: none;
    a source of one class gives one). TREC indexes and ham/spam folders are listed."""
    path, label = _parse_spec(spec, None)
    match _detect(path):
        case _Kind.TREC:
            return frozenset(found for _, found, _ in _trec_entries(_trec_index(path)))
        case _Kind.FOLDER:
            return frozenset(found for found, _ in _folder_files(path))
        case _:
            return frozenset() if label is None else frozenset({label})
