"""short_repr of sets: the same text for the same set, whatever the order its items hash to."""

from __future__ import annotations

import random

from pthfmt.model.globals import Global
from pthfmt.text import short_repr


def _globals(names: list[str]) -> list[Global]:
    return [Global(name, print) for name in names]


def test_a_set_of_objects_hashed_by_identity_reads_the_same_every_time() -> None:
    names = [f"mod.f{i % 7}" for i in range(40)]
    texts = set()
    for seed in range(20):
        order = names[:]
        random.Random(seed).shuffle(order)
        items = _globals(order)  # (new objects, new addresses: a new iteration order)
        texts.add(short_repr(frozenset(items), 2000))
        texts.add(short_repr(set(items), 2000).replace("{", "frozenset({", 1) + ")")
    assert len(texts) == 1
    assert texts.pop().startswith(
        "frozenset({<allowed global mod.f0>, <allowed global mod.f0>, <allowed global mod.f0>"
    )


def test_sets_that_compare_keep_reprlibs_sorted_order() -> None:
    assert short_repr({3, 1, 2}) == "{1, 2, 3}"
    assert short_repr(frozenset({"b", "a"})) == "frozenset({'a', 'b'})"
    assert short_repr(frozenset(range(2000))) == "frozenset({0, 1, 2, 3, 4, 5, ...})"
    assert short_repr(set()) == "set()"


def test_a_large_set_that_does_not_compare_is_counted() -> None:
    assert short_repr(set(_globals(["x"] * 2000))) == "set(<2000 items>)"
    assert short_repr(frozenset(_globals(["x"] * 1001))) == "frozenset(<1001 items>)"
