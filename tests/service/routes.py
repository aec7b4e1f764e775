"""Every operation of the app, from the table it builds of its own routes (no list by hand)."""

from __future__ import annotations

import re
from pathlib import Path

from mailsift.service.app import create_app
from mailsift.service.http.operations import Operation
from mailsift.service.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
FINGERPRINT = "0123456789abcdef0123456789abcdef"
_PARAM = re.compile(r"\{([^}]+)\}")
_SAMPLES = {"fingerprint": FINGERPRINT, "kind": "block", "user": "alice@example.org"}


def operations() -> tuple[Operation, ...]:
    table: tuple[Operation, ...] = create_app(Settings(data_dir=Path("unused"))).state.operations
    assert len(table) > 20  # guard: an empty table would make every walk pass
    return table


def concrete(op: Operation) -> str:
    """The operation's path with a plausible value in each parameter."""
    return _PARAM.sub(lambda m: _SAMPLES.get(m.group(1), "example.org"), op.path)


def body_operations() -> list[Operation]:
    return [op for op in operations() if op.method in BODY_METHODS]
