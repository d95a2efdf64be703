"""One tensor object under several keys (``{"a": t, "b": t}``, ``[t, t]``): torch's loaded
dict has every key, so ``inspect``, ``convert`` and ``diff`` see every key path, while
``Checkpoint.tensors()`` yields the object once (its first path)."""

from __future__ import annotations

import numpy as np
import pytest

import pthfmt
from pthfmt.engines.convert import convert
from pthfmt.engines.diff import diff
from pthfmt.engines.inspect import inspect_summary

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


@pytest.fixture
def shared(tmp_path):
    t = torch.arange(4.0)
    path = tmp_path / "tw.pt"
    torch.save({"a": t, "b": t, "l": [t, t], "v": t[1:]}, path)
    return path


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def test_every_key_path_as_torch_has_it(shared, tmp_path):
    want = dict(_flat(torch.load(shared, weights_only=True)))
    assert list(want) == ["a", "b", "l.0", "l.1", "v"]
    rows = inspect_summary(str(shared))["tensors"]
    assert [r["key"] for r in rows] == list(want)
    assert {r["storage"] for r in rows} == {"0"}

    for fmt in ("safetensors", "pth", "npz"):
        out = tmp_path / f"o.{fmt}"
        convert(shared, out)
        got = dict(np.load(out)) if fmt == "npz" else dict(pthfmt.load(out))
        assert list(got) == list(want), fmt
        for k, t in want.items():
            np.testing.assert_array_equal(got[k], t.numpy(), err_msg=f"{fmt} {k}")

    result = diff(str(shared), str(tmp_path / "o.safetensors"))
    assert result.ok and result.only_a == [] and result.only_b == []


def test_tensors_yields_each_object_once(shared):
    with pthfmt.open(shared) as ck:
        assert [k for k, _ in ck.tensors()] == ["a", "v"]
