"""Counting what the per-tensor fast path (``pthfmt/torch/tensor_template.py``) takes."""

from __future__ import annotations

from typing import Any

import pytest

from pthfmt.torch import tensor_template


def count_fast_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``[taken, declined]``: the fast path's tensors from now on (``monkeypatch`` undoes it)."""
    counts = [0, 0]
    run = tensor_template.TensorTemplate.run

    def counted(self: Any, *args: Any) -> Any:
        stack = args[5]
        before = len(stack)
        done = run(self, *args)
        if done is None:
            counts[1] += 1
        else:  # the tensor, then a key and a tensor for each item run on
            counts[0] += (len(stack) - before + 1) // 2
        return done

    monkeypatch.setattr(tensor_template.TensorTemplate, "run", counted)
    return counts


def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The stack's length at each call of the fast path from now on (one call per run of
    tensors it takes; ``monkeypatch`` undoes it)."""
    calls: list[int] = []
    run = tensor_template.TensorTemplate.run

    def counted(self: Any, *args: Any) -> Any:
        calls.append(len(args[5]))
        return run(self, *args)

    monkeypatch.setattr(tensor_template.TensorTemplate, "run", counted)
    return calls
