"""paused_gc: no collection inside, none of the block's objects left young after it, the
program's own young garbage collected (not delayed), a program's frozen objects untouched."""

from __future__ import annotations

import gc
import io
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

import pthfmt
from pthfmt.gcpause import paused_gc


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector on, whatever the test runner had set, and restored after."""
    enabled = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not enabled:
            gc.disable()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_the_block_runs_without_collections(collector: None) -> None:
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_load_leaves_nothing_young(collector: None) -> None:
    data = io.BytesIO()
    pthfmt.save({"layers": [np.arange(3, dtype=np.float32) for i in range(2000)]}, data)
    layers = pthfmt.load(io.BytesIO(data.getvalue()))["layers"]  # (a list: always tracked)
    # already in the oldest generation: no young collection will traverse it
    assert any(obj is layers for obj in gc.get_objects(generation=2))
    assert gc.get_count()[0] < 100


def test_young_garbage_of_the_program_is_collected_not_delayed(collector: None) -> None:
    gc.collect()
    node = Node()
    gone = weakref.ref(node)
    del node
    with paused_gc():
        pass
    assert gone() is None


def test_frozen_objects_of_the_program_stay_frozen(collector: None) -> None:
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        node = Node()
        gone = weakref.ref(node)
        del node
        with paused_gc():
            pass
        assert gc.get_freeze_count() == frozen
        gc.collect()
        assert gone() is None  # and the program's garbage is left to the collector as usual
    finally:
        gc.unfreeze()


def test_the_collector_stays_off_when_the_program_turned_it_off() -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        if enabled:
            gc.enable()


def test_a_block_that_raises_leaves_its_objects_young(collector: None) -> None:
    made: list[object] = []
    with pytest.raises(KeyError), paused_gc():
        made.append([Node()])
        raise KeyError("x")
    assert gc.isenabled()
    assert not any(obj is made[0] for obj in gc.get_objects(generation=2))
