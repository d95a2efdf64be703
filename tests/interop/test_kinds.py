"""Quantized, sparse, nested and meta tensors against torch 2.13: files torch writes load
with torch's own values (int_repr, qparams, dequantize() bit for bit, indices, values,
to_dense(), components, shapes), and pthfmt.save writes them back so that
torch.load(weights_only=True) returns equal tensors, in the zip and legacy formats."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

import pthfmt
from pthfmt import strategies as pst
from pthfmt.model.kinds import unpack_subbyte

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]

BITS = {"quint4x2": 4, "quint2x4": 2}
QDTYPES = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")


def torch_bytes(obj: Any, legacy: bool = False) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    buf.seek(0)
    return buf


def torch_back(obj: Any, fmt: str) -> Any:
    """pthfmt.save(obj) read by torch's weights-only loader."""
    buf = io.BytesIO()
    pthfmt.save({"v": obj}, buf, format=fmt)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["v"]


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int32)


def int_repr(t: Any) -> np.ndarray:
    """torch's integer values, one per element (sub-byte dtypes unpacked)."""
    name = str(t.dtype).removeprefix("torch.")
    raw = t.int_repr().numpy()
    if name in BITS:
        return unpack_subbyte(raw, BITS[name], t.numel()).reshape(tuple(t.shape))
    return raw


def quantized(name: str, scheme: str, axis: int = 0, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, name)
    x = torch.randn(5, 6, 7, generator=gen) * (1e8 if name == "qint32" else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scheme == "per_tensor_affine":
            zp = {"qint8": -3, "quint8": 130, "qint32": 12345, "quint4x2": 7, "quint2x4": 1}
            return torch.quantize_per_tensor(x, 0.0137, zp[name], dtype)
        n = x.shape[axis]
        scales = torch.rand(n, dtype=torch.float64, generator=gen) * 0.1 + 0.001
        if scheme == "per_channel_affine":
            zps = torch.randint(-2, 3, (n,), generator=gen) + (128 if name == "quint8" else 0)
        else:
            scales, zps = scales.float(), torch.randn(n, generator=gen)
        return torch.quantize_per_channel(x, scales, zps, axis, dtype)


CASES = (
    [(n, "per_tensor_affine", 0) for n in QDTYPES]
    + [(n, "per_channel_affine", a) for n in ("qint8", "quint8", "qint32") for a in (0, 1, 2)]
    + [
        (n, "per_channel_affine_float_qparams", a)
        for n in ("quint8", "quint4x2", "quint2x4")
        for a in (0, 2)
    ]
)


def assert_quantized(got: pthfmt.QuantizedArray, t: Any) -> None:
    assert got.dtype == str(t.dtype).removeprefix("torch.")
    assert got.qscheme == str(t.qscheme()).removeprefix("torch.")
    assert got.shape == tuple(t.shape)
    assert np.array_equal(got.int_repr(), int_repr(t))
    if got.qscheme == "per_tensor_affine":
        assert (got.scale, got.zero_point, got.axis) == (t.q_scale(), t.q_zero_point(), None)
    else:
        assert got.axis == t.q_per_channel_axis()
        scales = t.q_per_channel_scales().numpy()
        zeros = t.q_per_channel_zero_points().numpy()
        assert got.scale.dtype == scales.dtype and np.array_equal(got.scale, scales)
        assert got.zero_point.dtype == zeros.dtype and np.array_equal(got.zero_point, zeros)
    want = t.dequantize().numpy()
    assert np.array_equal(bits_of(got.dequantize()), bits_of(want))


@pytest.mark.parametrize(("name", "scheme", "axis"), CASES)
def test_quantized_load_open_and_round_trip(name: str, scheme: str, axis: int) -> None:
    t = quantized(name, scheme, axis)
    obj = {"q": t}
    for legacy in (False, True):
        assert_quantized(pthfmt.load(torch_bytes(obj, legacy))["q"], t)
        with pthfmt.open(torch_bytes(obj, legacy)) as ck:
            assert_quantized(ck.obj["q"], t)
    for fmt in ("zip", "legacy"):
        back = torch_back(pthfmt.load(torch_bytes(obj))["q"], fmt)
        assert back.dtype == t.dtype and back.qscheme() == t.qscheme()
        assert torch.equal(back.int_repr(), t.int_repr())
        assert torch.equal(back.dequantize(), t.dequantize())
        with pthfmt.open(torch_bytes(obj)) as ck:
            assert torch.equal(torch_back(ck.obj["q"], fmt).int_repr(), t.int_repr())


def test_quantized_views_and_big_qint32() -> None:
    t = quantized("qint8", "per_tensor_affine").transpose(0, 2)[1:, ::2]
    got = pthfmt.load(torch_bytes({"q": t}))["q"]
    assert_quantized(got, t)
    assert torch.equal(torch_back(got, "zip").int_repr(), t.int_repr())
    # int32 wraparound of (q - zero_point), as torch's kernel computes it
    big = torch.quantize_per_tensor(torch.tensor([-3e9, 3e9, 1.5e9]), 1.0, 2**31 - 1, torch.qint32)
    assert_quantized(pthfmt.load(torch_bytes(big)), big)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.bfloat16,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.float8_e4m3fn,
        torch.uint16,
    ],
)
def test_meta(dtype: Any) -> None:
    t = torch.empty(3, 4, 5, device="meta", dtype=dtype)[:, 1:, ::2]
    for legacy in (False, True):
        m = pthfmt.load(torch_bytes({"m": t}, legacy))["m"]
        assert isinstance(m, pthfmt.MetaArray)
        assert (m.dtype, m.shape, m.stride, m.requires_grad) == (
            str(dtype).removeprefix("torch."),
            tuple(t.shape),
            t.stride(),
            False,
        )
        with pytest.raises(pthfmt.UnsupportedError, match="has no data"):
            m.numpy()
    for fmt in ("zip", "legacy"):
        back = torch_back(m, fmt)
        assert back.is_meta and back.dtype == dtype
        assert (tuple(back.shape), back.stride()) == (tuple(t.shape), t.stride())
    grad = torch.empty(2, device="meta", requires_grad=True)
    assert pthfmt.load(torch_bytes(grad)).requires_grad is True
    assert torch_back(pthfmt.load(torch_bytes(grad)), "zip").requires_grad is True


def _dense(seed: int = 0) -> Any:
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed))
    x[x.abs() < 0.8] = 0
    return x


def sparse_cases() -> dict[str, Any]:
    x = _dense()
    uncoalesced = torch.sparse_coo_tensor(
        torch.tensor([[1, 0, 1], [2, 3, 2]]), torch.tensor([1.0, 2.0, 3.0]), (2, 4)
    )
    return {
        "coo": x.to_sparse(),
        "coo_uncoalesced": uncoalesced,
        "coo_hybrid": torch.randn(4, 3, 2).to_sparse(1),
        "coo_int": (x * 10).long().to_sparse(),
        "csr": x.to_sparse_csr(),
        "csr_int32": torch.sparse_csr_tensor(
            torch.tensor([0, 1, 3], dtype=torch.int32),
            torch.tensor([2, 0, 1], dtype=torch.int32),
            torch.tensor([1.0, 2.0, 3.0]),
            (2, 3),
        ),
        "csc": x.to_sparse_csc(),
        "bsr": x.to_sparse_bsr((2, 4)),
        "bsc": x.to_sparse_bsc((3, 2)),
        "csr_empty": torch.zeros(3, 3).to_sparse_csr(),
    }


def assert_sparse(got: pthfmt.SparseArray, t: Any) -> None:
    assert got.layout == str(t.layout).removeprefix("torch.")
    assert got.shape == tuple(t.shape)
    if t.layout == torch.sparse_coo:
        assert got.coalesced == t.is_coalesced()
        assert np.array_equal(np.asarray(got.indices), t._indices().numpy())
        assert np.array_equal(np.asarray(got.values), t._values().numpy())
    else:
        compressed = (
            t.crow_indices()
            if t.layout in (torch.sparse_csr, torch.sparse_bsr)
            else t.ccol_indices()
        )
        plain = (
            t.col_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr) else t.row_indices()
        )
        assert np.array_equal(np.asarray(got.compressed_indices), compressed.numpy())
        assert np.asarray(got.plain_indices).dtype == plain.numpy().dtype
        assert np.array_equal(np.asarray(got.plain_indices), plain.numpy())
        assert np.array_equal(np.asarray(got.values), t.values().numpy())
    assert np.array_equal(got.to_dense(), t.to_dense().numpy())


SPARSE = (
    "coo",
    "coo_uncoalesced",
    "coo_hybrid",
    "coo_int",
    "csr",
    "csr_int32",
    "csc",
    "bsr",
    "bsc",
    "csr_empty",
)


@pytest.mark.parametrize("name", SPARSE)
def test_sparse(name: str) -> None:
    t = sparse_cases()[name]
    for legacy in (False, True):
        assert_sparse(pthfmt.load(torch_bytes({"s": t}, legacy))["s"], t)
    with pthfmt.open(torch_bytes({"s": t})) as ck:
        lazy = ck.obj["s"]
        assert_sparse(lazy, t)
        for fmt in ("zip", "legacy"):
            back = torch_back(lazy, fmt)
            assert back.layout == t.layout and torch.equal(back.to_dense(), t.to_dense())
            if t.layout == torch.sparse_coo:
                assert back.is_coalesced() == t.is_coalesced()
                assert torch.equal(back._indices(), t._indices())


def test_nested() -> None:
    parts = [torch.randn(2, 3), torch.randn(4, 3), torch.randn(0, 3)]
    t = torch.nested.nested_tensor(parts)
    n = pthfmt.load(torch_bytes({"n": t}))["n"]
    assert len(n) == 3
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(n.arrays(), parts))
    with pthfmt.open(torch_bytes({"n": t})) as ck:
        refs = ck.obj["n"].components
        assert [r.shape for r in refs] == [(2, 3), (4, 3), (0, 3)]
        back = torch_back(ck.obj["n"], "zip")
    assert back.is_nested and all(torch.equal(a, p) for a, p in zip(back.unbind(), parts))
    with pytest.raises(pthfmt.UnserializableError, match="legacy"):
        pthfmt.save(n, io.BytesIO(), format="legacy")


def test_kinds_with_plain_tensors_share_one_file(tmp_path: Path) -> None:
    x = _dense(1)
    obj = {
        "w": x,
        "q": quantized("quint8", "per_channel_affine", 1),
        "s": x.to_sparse(),
        "m": torch.empty(2, device="meta"),
        "list": [x.to_sparse_csr(), x],
    }
    path = tmp_path / "mixed.pt"
    torch.save(obj, path)
    loaded = pthfmt.load(path)
    out = tmp_path / "copy.pt"
    pthfmt.save(loaded, out)
    back = torch.load(out, weights_only=True)
    assert torch.equal(back["w"], x) and torch.equal(back["list"][1], x)
    assert torch.equal(back["q"].int_repr(), obj["q"].int_repr())
    assert torch.equal(back["s"].to_dense(), x) and torch.equal(back["list"][0].to_dense(), x)
    assert back["m"].is_meta


def test_torch_package_archive_is_named(tmp_path: Path) -> None:
    from torch.package import PackageExporter

    path = tmp_path / "pkg.pt"
    with PackageExporter(str(path)) as exporter:
        exporter.save_pickle("res", "model.pkl", {"w": torch.ones(2)})
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(path)
    assert exc.value.message == (
        "a torch.package archive (.data/extern_modules): only torch.package.PackageImporter "
        "reads it, by importing and running the Python modules it packages (record "
        "pkg/data.pkl is missing)"
    )


@settings(max_examples=60)
@given(pst.kinds())
def test_strategies_load_in_torch(value: Any) -> None:
    for fmt in ("zip", "legacy"):
        if fmt == "legacy" and isinstance(value, pthfmt.NestedArray):
            continue
        back = torch_back(value, fmt)
        if isinstance(value, pthfmt.QuantizedArray):
            assert str(back.qscheme()).removeprefix("torch.") == value.qscheme
            assert np.array_equal(int_repr(back), value.int_repr())
            assert np.array_equal(bits_of(back.dequantize().numpy()), bits_of(value.dequantize()))
        elif isinstance(value, pthfmt.SparseArray):
            assert str(back.layout).removeprefix("torch.") == value.layout
            assert np.array_equal(back.to_dense().numpy(), value.to_dense())
        elif isinstance(value, (pthfmt.NestedArray, pthfmt.JaggedArray)):
            assert all(
                np.array_equal(_plain(a), _plain(b), equal_nan=True)
                for a, b in zip(back.unbind(), value.arrays())
            )
        else:
            assert back.is_meta and (tuple(back.shape), back.stride()) == (
                value.shape,
                value.stride,
            )


def _plain(a: Any) -> np.ndarray:
    """A torch tensor or numpy array as numpy (bfloat16 as its bits)."""
    if isinstance(a, np.ndarray):
        return a.view(np.int16) if a.dtype.name == "bfloat16" else a
    return a.view(torch.int16).numpy() if a.dtype == torch.bfloat16 else a.numpy()
