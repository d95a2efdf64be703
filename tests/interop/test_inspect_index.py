"""``inspect`` of a shard index opens every shard once, the way it opens one file: classes
outside the allowlist become stubs (listed under ``classes``), not an error."""

from __future__ import annotations

import pytest

import pthfmt
from pthfmt.engines.inspect import inspect_summary

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


class Tag:
    """A class torch pickles by reference: pthfmt's allowlist does not hold it."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_inspect_of_an_index_opens_each_shard_once_with_stubs(tmp_path, monkeypatch):
    from tests.support.torch_helpers import write_shards

    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    index = write_shards(tmp_path, state, [["a"], ["b"]])
    # the first shard also holds a pickled object of a class outside the allowlist
    first = next(p for p in sorted(tmp_path.iterdir()) if p.suffix == ".bin")
    torch.save({"a": torch.ones(2), "tag": Tag("x")}, first)

    opened: list[str] = []
    real_open = pthfmt.reader.open

    def counting_open(f, **kwargs):
        opened.append(str(f))
        return real_open(f, **kwargs)

    monkeypatch.setattr(pthfmt.reader, "open", counting_open)
    summary = inspect_summary(str(index))
    assert sorted(opened) == sorted(str(p) for p in tmp_path.iterdir() if p.suffix == ".bin")
    assert [r["key"] for r in summary["tensors"]] == ["a", "b"]
    assert summary["classes"] == [f"{__name__}.Tag"]
    assert summary["shards"] == sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".bin")
