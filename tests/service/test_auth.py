"""Stored tokens: the check every gateway call makes, on the event loop and in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mailsift.service.auth import Principal, TokenStore
from mailsift.service.db import open_state_engine


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TokenStore]:
    engine = open_state_engine(None, tmp_path)
    yield TokenStore(engine)
    engine.dispose()


@pytest.mark.parametrize("nowait", [False, True], ids=["thread", "loop"])
def test_verify_answers_the_same_on_the_loop_and_in_a_thread(
    store: TokenStore, nowait: bool
) -> None:
    assert store.on_loop  # SQLite: the gateway's check runs on the event loop
    info, token = store.create("gateway", "mx1")
    assert store.verify(token, nowait=nowait) == Principal("mx1", "gateway")
    _, user_token = store.create("user", "bob", ["Bob@Example.com"])
    bob = store.verify(user_token, nowait=nowait)
    assert bob is not None and bob.role == "user" and bob.addresses == {"bob@example.com"}

    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert store.verify(wrong_secret, nowait=nowait) is None
    assert store.verify("msk_000000000000_" + "x" * 30, nowait=nowait) is None  # unknown id
    assert store.verify("Bearer nonsense", nowait=nowait) is None  # not a token's shape

    assert store.revoke(info.id)
    assert store.verify(token, nowait=nowait) is None  # at once: no cache to outlive it


def test_a_role_this_version_does_not_know_grants_nothing(store: TokenStore) -> None:
    info, token = store.create("gateway", "mx1")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET role = 'root' WHERE id = :id"), {"id": info.id})
    assert store.verify(token) is None
    assert store.verify(token, nowait=True) is None
