"""The alias store on both state databases (SQLite and PostgreSQL): what the API and the
scoring rely on, below HTTP."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from mailsift.service.aliases.store import DAY, AliasError, AliasLimit, AliasStore
from mailsift.service.aliases.traffic import observe, related
from mailsift.service.settings import Settings

SETTINGS = Settings(local_domains="corp.example", alias_max_per_user=3, alias_max_days=60)
BOB = "Bob@Corp.Example"
NOW = 1_750_000_000.0


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    return state_engine


def test_lifecycle_live_expired_deleted_and_never_reissued(engine: Engine) -> None:
    store = AliasStore(engine, SETTINGS)
    made = store.create(BOB, days=10, label="Shop.Example.", now=NOW)
    assert made.owner == "bob@corp.example" and made.label == "shop.example"
    assert made.address.startswith("t-") and made.address.endswith("@corp.example")
    assert made.expires_at == NOW + 10 * DAY
    found = store.lookup([made.address.upper(), "bob@corp.example", "t-nothere@corp.example"])
    assert list(found) == [made.address]
    assert found[made.address].state(NOW + 10 * DAY - 1) == "live"
    assert found[made.address].state(NOW + 10 * DAY) == "expired"
    extended = store.extend(made.address, 30, now=NOW + 20 * DAY)
    assert extended is not None and extended.state(NOW + 49 * DAY) == "live"
    deleted = store.delete(made.address)
    assert deleted is not None and deleted.state(NOW) == "deleted"
    assert store.extend(made.address, 5) is not None
    assert store.get(made.address).state() == "deleted"  # type: ignore[union-attr]
    assert store.delete("t-nothere@corp.example") is None


def test_limits(engine: Engine) -> None:
    store = AliasStore(engine, SETTINGS)
    for _ in range(3):
        store.create(BOB, now=NOW)
    with pytest.raises(AliasLimit):
        store.create(BOB, now=NOW)
    # Expired ones do not count against the limit.
    assert store.create(BOB, now=NOW + 31 * DAY).owner == "bob@corp.example"
    with pytest.raises(AliasError, match="MAILSIFT_ALIAS_MAX_DAYS"):
        store.create("carol@corp.example", days=61)
    no_domain = AliasStore(engine, Settings())
    with pytest.raises(AliasError, match="MAILSIFT_ALIAS_DOMAIN"):
        no_domain.create("dave@elsewhere.example")


def test_observe_learns_the_label_then_counts_foreign_senders(engine: Engine) -> None:
    store = AliasStore(engine, SETTINGS)
    alias = store.create(BOB, now=NOW).address
    (first,) = observe(store, [alias], "mail.shop.example", now=NOW + 1)
    assert first.label == "mail.shop.example" and not first.foreign
    (same,) = observe(store, [alias], "news.shop.example", now=NOW + 2)
    assert not same.foreign  # same organisation
    for t in (3, 4):
        (leak,) = observe(store, [alias], "spam.example", now=NOW + t)
        assert leak.foreign and leak.owner == "bob@corp.example"
    (sender,) = store.get(alias).foreign_senders  # type: ignore[union-attr]
    assert (sender.domain, sender.messages) == ("spam.example", 2)
    assert (sender.first_seen, sender.last_seen) == (NOW + 3, NOW + 4)
    assert observe(store, ["bob@corp.example"], "spam.example") == ()


def test_related_senders() -> None:
    assert related("shop.example", "shop.example")
    assert related("shop.example", "mail.shop.example")
    assert related("mail.shop.example", "news.shop.example")
    assert related("shop.co.uk", "mail.shop.co.uk")
    assert not related("shop.co.uk", "other.co.uk")
    assert not related("shop.example", "shop.example.evil.test")
    assert not related("shop.example", "notshop.example")
