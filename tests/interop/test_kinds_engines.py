"""inspect, convert and diff on quantized, sparse, nested (strided and jagged) and meta
tensors written by torch 2.13."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pthfmt
from pthfmt.engines.convert import convert
from pthfmt.engines.diff import diff
from pthfmt.engines.inspect import inspect_summary

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]


def kinds(scale: float = 1.0, meta: int = 2) -> dict[str, Any]:
    x = torch.eye(3) * scale
    parts = [torch.arange(6.0).reshape(2, 3) * scale, torch.arange(9.0).reshape(3, 3)]
    return {
        "w": torch.ones(2),
        "s": x.to_sparse(),
        "csr": x.to_sparse_csr(),
        "n": torch.nested.nested_tensor(parts),
        "j": torch.nested.nested_tensor(parts, layout=torch.jagged),
        "m": torch.empty(meta, device="meta"),
    }


def test_inspect_lists_each_kind(tmp_path: Path) -> None:
    path = tmp_path / "k.pt"
    torch.save(kinds(), path)
    summary = inspect_summary(str(path))
    assert summary["kinds"] == [
        {"key": "s", "kind": "sparse_coo tensor", "dtype": "float32", "shape": [3, 3], "nnz": 3},
        {"key": "csr", "kind": "sparse_csr tensor", "dtype": "float32", "shape": [3, 3], "nnz": 3},
        {"key": "n", "kind": "nested tensor", "dtype": "float32", "components": 2},
        {
            "key": "j",
            "kind": "jagged nested tensor",
            "dtype": "float32",
            "shape": [2, "*", 3],
            "ragged_idx": 1,
            "lengths": False,
        },
        {"key": "m", "kind": "meta tensor", "dtype": "float32", "shape": [2], "stride": [1]},
    ]
    assert summary["values"]["j"] == "<jagged nested tensor float32 2x*x3, ragged_idx 1>"
    assert summary["values"]["s"] == "<sparse_coo tensor float32 3x3, nnz 3>"
    assert summary["totals"]["tensors"] == 1


def test_convert_names_each_kind_and_pth_keeps_them(tmp_path: Path) -> None:
    src = tmp_path / "k.pt"
    obj = kinds()
    torch.save(obj, src)
    warnings = convert(src, tmp_path / "k.safetensors")
    assert warnings == [
        "left out 5 values that safetensors metadata cannot carry: s (sparse_coo tensor), "
        "csr (sparse_csr tensor), n (nested tensor), j (jagged nested tensor), m (meta tensor)"
    ]
    assert convert(src, tmp_path / "copy.pt") == []
    back = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert torch.equal(back["s"].to_dense(), obj["s"].to_dense())
    assert torch.equal(back["csr"].to_dense(), obj["csr"].to_dense())
    assert all(torch.equal(a, b) for a, b in zip(back["n"].unbind(), obj["n"].unbind()))
    assert back["j"].layout == torch.jagged
    assert all(torch.equal(a, b) for a, b in zip(back["j"].unbind(), obj["j"].unbind()))
    assert back["m"].is_meta and back["m"].shape == (2,)
    assert diff(src, tmp_path / "copy.pt").identical


def test_diff_compares_kinds_by_their_parts(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(kinds(), a)
    torch.save(kinds(scale=1.001, meta=3), b)
    result = diff(a, b)
    assert result.mismatched == [{"key": "m", "what": "shape", "a": [2], "b": [3]}]
    found = {d["key"]: d for d in result.different}
    assert sorted(found) == ["csr", "j", "n", "s"]
    assert found["j"]["kind"] == "jagged nested tensor"
    assert found["j"]["not_close"] == 5  # the first component's nonzero values
    assert found["s"]["max_abs_diff"] == pytest.approx(0.001, rel=1e-3)
    loose = diff(a, b, rtol=0.01)
    assert loose.different == [] and loose.equal == 5


def test_diff_kind_against_kind(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    x = torch.eye(3)
    torch.save({"t": x.to_sparse(), "u": x.to_sparse()}, a)
    torch.save({"t": x.to_sparse_csr(), "u": x}, b)
    result = diff(a, b)
    assert result.mismatched == [
        {"key": "t", "what": "kind", "a": "sparse_coo tensor", "b": "sparse_csr tensor"},
        {"key": "u", "what": "kind", "a": "sparse_coo tensor", "b": "tensor"},
    ]


def test_diff_sparse_with_other_indices(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    i = torch.tensor([[0, 1], [1, 2]])
    torch.save({"s": torch.sparse_coo_tensor(i, torch.ones(2), (3, 3)).coalesce()}, a)
    torch.save({"s": torch.sparse_coo_tensor(i + 1, torch.ones(2), (3, 3)).coalesce()}, b)
    result = diff(a, b, atol=10)  # indices are compared exactly, whatever the tolerance
    assert [d["key"] for d in result.different] == ["s"]
    assert isinstance(pthfmt.load(a)["s"], pthfmt.SparseArray)


def test_convert_to_pth_keeps_quantized_tensors(tmp_path: Path) -> None:
    src, dst = tmp_path / "q.pt", tmp_path / "copy.pt"
    q = torch.quantize_per_channel(
        torch.randn(3, 4),
        torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        torch.tensor([0, 1, 2]),
        0,
        torch.quint8,
    )
    torch.save({"q": q, "w": torch.ones(2)}, src)
    assert convert(src, dst) == []
    back = torch.load(dst, weights_only=True)["q"]
    assert back.qscheme() == torch.per_channel_affine
    assert torch.equal(back.int_repr(), q.int_repr())
    assert torch.equal(back.q_per_channel_scales(), q.q_per_channel_scales())
    assert convert(src, tmp_path / "q.safetensors") == [
        "left out 1 tensor with a dtype safetensors cannot hold: q (quint8)"
    ]
