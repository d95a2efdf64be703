"""Running out of memory mid-pickle: a ``LimitError`` that keeps nothing alive."""

from __future__ import annotations

import io

import pytest

import pthfmt
from pthfmt.torch.handlers import TorchHandlers
from tests.support.adversarial import checkpoint, state, tensor


def test_out_of_memory_keeps_nothing_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    # a MemoryError mid-pickle is a LimitError that pins neither the MemoryError (nor so its
    # traceback's frames) nor what the run had built
    def exhausted(self: TorchHandlers, *args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(TorchHandlers, "make_tensor", exhausted)
    with pytest.raises(pthfmt.LimitError) as info:
        pthfmt.load(io.BytesIO(checkpoint(state(tensor()))))
    assert info.value.message == "out of memory at REDUCE"
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_out_of_memory_outside_the_pickle_keeps_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a container reader (not the VM) runs out: the same, from the one place."""
    import pthfmt.reader as reader

    def exhausted(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(reader, "read_zip", exhausted)
    data = checkpoint(state(tensor()))
    with pytest.raises(pthfmt.LimitError) as info:
        pthfmt.load(io.BytesIO(data))
    assert info.value.message == f"out of memory reading the {len(data)}-byte file"
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_allocation_failure_keeps_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import pthfmt.source as source

    def empty(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(source, "_POPULATE", 0)
    monkeypatch.setattr(np, "empty", empty)
    with pytest.raises(pthfmt.LimitError) as info:
        source.fresh_buffer(1 << 20)
    assert info.value.__context__ is None
