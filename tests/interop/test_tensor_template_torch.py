"""The per-tensor fast path on files torch writes: taken, and right (values against torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pthfmt
from tests.support.fastpath import count_fast_path

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from tests.support.torch_helpers import assert_same_tree  # noqa: E402  (imports torch)


def test_torch_files_take_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = count_fast_path(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    state = {f"block{i}.{k}": v for i in range(60) for k, v in model.state_dict().items()}
    state["shared"] = state["block0.0.weight"][1:]
    state["param"] = torch.nn.Parameter(torch.ones(2, 2))
    state["big"] = torch.zeros(70000, dtype=torch.int8)  # a BININT size: the loop's
    obj = {"model": state, "optimizer": {"step": torch.tensor(3.0)}}
    torch.save(obj, tmp_path / "f.pt")
    expected = torch.load(tmp_path / "f.pt", weights_only=True)
    assert_same_tree(pthfmt.load(tmp_path / "f.pt"), expected)
    # every tensor but the first (nothing memoized yet) is tried; declined: the first
    # LongStorage (its class is a GLOBAL, not yet a memo get) and the BININT-sized one
    assert counts == [len(state) + 1 - 1 - 2, 2]
