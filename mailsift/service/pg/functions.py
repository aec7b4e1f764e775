"""The PL/pgSQL functions the per-message path calls, installed together at start."""

from __future__ import annotations

from sqlalchemy import Engine, text

from mailsift.service.db import lock_key_for, write_transaction
from mailsift.service.pg import admission, states

__all__ = ["create_functions"]


def create_functions(engine: Engine) -> None:
    """Create (or replace) every function in one transaction, under the accounts'
    schema lock: once across workers starting together."""
    with write_transaction(engine, lock_key=lock_key_for("accounts:schema")) as conn:
        for ddl in (admission.DDL, states.DDL):
            conn.execute(text(ddl))
