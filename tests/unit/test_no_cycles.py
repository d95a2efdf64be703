"""A load leaves no reference cycles: the storage table, the archive and the file's mapping
are freed as soon as the result (or the error) is dropped, not at the next garbage
collection (which would also pay to traverse them)."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest

import pthfmt
from tests.support.adversarial import checkpoint, state, system_call


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _cyclic_garbage(action) -> int:
    action()  # once first: imports and caches made on first use are not the action's
    gc.collect()
    action()
    return gc.collect()


def test_load_and_open_leave_no_cycles(no_gc, tmp_path):
    path = tmp_path / "m.pt"
    pthfmt.save({f"w{i}": np.arange(4, dtype=np.float32) for i in range(50)}, path)

    def opened() -> None:
        with pthfmt.open(path) as ck:
            [ref.numpy() for _, ref in ck.tensors()]

    assert _cyclic_garbage(lambda: pthfmt.load(path)) == 0
    assert _cyclic_garbage(lambda: pthfmt.load(path, mmap=True)) == 0
    assert _cyclic_garbage(opened) == 0


def test_a_refused_file_leaves_no_cycles(no_gc):
    data = checkpoint(state(system_call("/nonexistent/canary")))

    def refused() -> None:
        try:
            pthfmt.load(io.BytesIO(data))
        except pthfmt.UnsafePickleError:
            return
        raise AssertionError("not refused")

    assert _cyclic_garbage(refused) == 0
