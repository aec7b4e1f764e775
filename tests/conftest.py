"""Shared fixtures for the tests: a fresh PostgreSQL database per module."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from mailsift.service.db import open_state_engine

PG_HOST, PG_PORT = "127.0.0.1", 5432


def pg_listening() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


def pg_admin(user: str, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=dbname, autocommit=True)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database for this module: (user, database name)."""
    if not pg_listening():
        pytest.skip(f"no PostgreSQL listening on {PG_HOST}:{PG_PORT}")
    user = "postgres"
    try:
        pg_admin(user, "test").close()
    except psycopg.OperationalError:
        user = "root"
    name = f"mailsift_test_{secrets.token_hex(6)}"
    with pg_admin(user, "test") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield user, name
    finally:
        with pg_admin(user, "test") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def pg_url(pg_database: tuple[str, str]) -> str:
    user, name = pg_database
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A state database with nothing in it, on SQLite and on PostgreSQL (the module's
    database emptied first, so each test starts from no tables)."""
    if request.param == "sqlite":
        url = None
    else:
        user, name = request.getfixturevalue("pg_database")
        with pg_admin(user, name) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        url = request.getfixturevalue("pg_url")
    opened = open_state_engine(url, tmp_path)
    yield opened
    opened.dispose()
