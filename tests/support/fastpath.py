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
        done = run(self, *args)
        counts[done is None] += 1
        return done

    monkeypatch.setattr(tensor_template.TensorTemplate, "run", counted)
    return counts
