"""Users' personal layers, as the log's personal entries build them."""

from __future__ import annotations

from mailsift.learning.personal import PersonalLayers, PersonalView

BOB = "bob@example.com"


def test_a_users_only_report_relabelled_is_kept_with_its_new_label() -> None:
    layers = PersonalLayers()
    layers.apply(BOB, 1, "f1", "spam", None, "x@shop.test")
    layers.apply(BOB, 2, "f1", "ham", "spam", "x@shop.test")
    assert layers.view(BOB, "f1", "x@shop.test") == PersonalView("ham", None)
    assert layers.view(BOB, "f2", "x@shop.test") == PersonalView(None, "ham")
    assert (layers.users, layers.reports) == (1, 1)


def test_a_withdrawn_report_leaves_nothing_behind() -> None:
    layers = PersonalLayers()
    layers.apply(BOB, 1, "f1", "spam", None, "x@shop.test")
    layers.apply(BOB, 2, "f1", None, "spam", "x@shop.test")
    assert layers.view(BOB, "f2", "x@shop.test") is None
    assert (layers.users, layers.reports) == (0, 0)
