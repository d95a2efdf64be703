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
