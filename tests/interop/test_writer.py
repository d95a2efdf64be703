"""pthfmt.save against torch 2.13: whatever we write, torch.load(weights_only=True) reads back.

Comparisons never go through pthfmt's own tables: dtypes are compared by torch's name
(``str(t.dtype)``), bytes through torch's storage (``set_`` on a uint8 tensor), layout through
``t.stride()``/``t.storage_offset()``, sharing through ``untyped_storage().data_ptr()``.
The helpers are in ``tests.support.writer`` (numpy side) and ``tests.support.writer_torch``;
what needs no torch is in ``tests/unit/test_writer.py``.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]
torch = pytest.importorskip("torch")

import pthfmt  # noqa: E402
from pthfmt import UnserializableError, writer  # noqa: E402
from tests.support.writer import (  # noqa: E402
    HYPOTHESIS,
    V3,
    all_numpy_dtypes,
    array_bytes,
    leaves,
    random_array,
    save_bytes,
    torch_name,
    trees,
)
from tests.support.writer_torch import (  # noqa: E402
    assert_loaded,
    assert_sharing,
    assert_tensor_equal,
    element_bytes,
    loaded_leaves,
    torch_load,
)


@HYPOTHESIS
@given(obj=trees())
def test_random_trees_round_trip_through_torch(obj: Any, tmp_path_factory: Any) -> None:
    path = tmp_path_factory.mktemp("tree") / "ck.pt"
    pthfmt.save(obj, path)
    loaded = torch_load(path)
    assert_loaded(obj, loaded)
    assert_sharing(obj, loaded)
    mapped = torch_load(path, mmap=True)
    assert_loaded(obj, mapped)
    assert_sharing(obj, mapped)


@HYPOTHESIS
@given(obj=trees([d for d in all_numpy_dtypes() if torch_name(d) not in V3]))
def test_random_trees_round_trip_legacy(obj: Any) -> None:
    loaded = torch_load(save_bytes(obj, format="legacy"))
    assert_loaded(obj, loaded)
    assert_sharing(obj, loaded)


@HYPOTHESIS
@given(obj=trees())
def test_random_trees_round_trip_through_pthfmt(obj: Any) -> None:
    """Our reader reads our writer: every array comes back with its values."""
    data = save_bytes(obj)
    theirs = torch_load(data)
    ours = pthfmt.load(io.BytesIO(data))
    for t, a in zip(loaded_leaves(theirs), leaves(ours, np.ndarray)):
        assert a.shape == tuple(t.shape)
        np.testing.assert_array_equal(array_bytes(a), element_bytes(t.detach()))


def test_the_collecting_first_pass_sees_tensors_everywhere_the_pickler_does() -> None:
    base = np.arange(12, dtype=np.float32)
    od = collections.OrderedDict(w=base[:6])
    od._metadata = {"": {"version": 1}, "x": base[6:]}  # type: ignore[attr-defined]
    torch_file = io.BytesIO()
    torch.save({"p": torch.nn.Parameter(torch.ones(3))}, torch_file)
    ref = dict(pthfmt.open(io.BytesIO(torch_file.getvalue())).tensors())["p"]
    obj = {
        "od": od,
        "set": {1, "a"},
        "count": collections.Counter(a=2),
        "ref": ref,
        "t": pthfmt.Tensor(base.reshape(3, 4), device="cuda:0"),
        "list": [base, (base,)],
        "dtype": pthfmt.DType("bfloat16"),
        "scalar": np.float16(2),
    }
    fast = save_bytes(obj)
    with mock.patch.object(writer._Plan, "collect", return_value=False):
        assert save_bytes(obj) == fast
    assert writer._Plan(legacy=False).collect(obj)  # the walk handled all of it
    theirs = torch_load(fast, map_location="cpu")  # and torch reads what it wrote
    assert theirs["od"]._metadata["x"].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert (
        theirs["od"]["w"].untyped_storage().data_ptr()
        == theirs["list"][0].untyped_storage().data_ptr()
    )  # one storage, as in numpy
    assert theirs["t"].tolist() == base.reshape(3, 4).tolist()
    assert isinstance(theirs["ref"], torch.nn.Parameter) and theirs["ref"].tolist() == [1.0] * 3


# -- every dtype -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", all_numpy_dtypes(), ids=torch_name)
def test_every_dtype(dtype: np.dtype, tmp_path: Path) -> None:
    a = random_array(dtype, (3, 5), seed=len(str(dtype)))
    obj = {"a": a, "view": a[1:, ::2], "t": a.T, "scalar": a[1, 2].copy(), "empty": a[:0]}
    pthfmt.save(obj, tmp_path / "d.pt")
    for mmap in (False, True):
        loaded = torch_load(tmp_path / "d.pt", mmap=mmap)
        assert_loaded(obj, loaded)
        assert_sharing(obj, loaded)
        assert loaded["view"].storage_offset() == 1 * 5
        assert loaded["view"].stride() == (5, 2)
    if torch_name(dtype) in V3:
        with pytest.raises(UnserializableError, match="legacy format"):
            save_bytes(obj, format="legacy")
    else:
        assert_loaded(obj, torch_load(save_bytes(obj, format="legacy")))


@pytest.mark.parametrize("dtype", all_numpy_dtypes(), ids=torch_name)
def test_requires_grad_only_where_torch_allows_it(dtype: np.dtype) -> None:
    """Our rule and torch's agree: floating point and complex tensors only."""
    a = random_array(dtype, (2,))
    try:
        torch.zeros(2 * dtype.itemsize, dtype=torch.uint8).view(
            getattr(torch, torch_name(dtype))
        ).requires_grad_(True)
        allowed = True
    except RuntimeError:
        allowed = False
    for parameter in (False, True):
        obj = pthfmt.Tensor(a, requires_grad=True, parameter=parameter)
        if not allowed:
            with pytest.raises(UnserializableError, match="cannot require gradients"):
                save_bytes(obj)
        elif not parameter and torch_name(dtype) in V3:
            # torch.save writes these, but _rebuild_tensor_v3 cannot load them: refused.
            t = (
                torch.zeros(2 * dtype.itemsize, dtype=torch.uint8)
                .view(getattr(torch, torch_name(dtype)))
                .requires_grad_(True)
            )
            buf = io.BytesIO()
            torch.save(t, buf)
            with pytest.raises(RuntimeError, match="leaf Variable"):
                torch_load(buf.getvalue())
            with pytest.raises(UnserializableError, match="_rebuild_tensor_v3"):
                save_bytes(obj)
        else:
            loaded = torch_load(save_bytes(obj))
            assert loaded.requires_grad and isinstance(loaded, torch.nn.Parameter) == parameter
            assert_tensor_equal(a, loaded.detach())


def test_big_endian_arrays_are_written_little_endian() -> None:
    obj = {
        dt: np.array([1, -2, 3, 100], dt)
        for dt in (">f4", ">f8", ">i4", ">i2", ">i8", ">c8", ">c16", ">f2")
    }
    obj[">u2"] = np.array([1, 258, 65535], ">u2")
    obj["view"] = obj[">i4"][::2]
    loaded = torch_load(save_bytes(obj))
    for key, t in loaded.items():
        np.testing.assert_array_equal(t.numpy(), obj[key])
        assert t.numpy().dtype.byteorder in "=|<"
    assert loaded["view"].untyped_storage().data_ptr() == loaded[">i4"].untyped_storage().data_ptr()
    del obj[">u2"]
    for key, t in torch_load(save_bytes(obj, format="legacy")).items():
        np.testing.assert_array_equal(t.numpy(), obj[key])


# -- views and sharing -------------------------------------------------------------------------


def test_views_share_one_storage_like_torch() -> None:
    base = np.arange(12, dtype=np.float32)
    obj = [base, base[2:5], base.reshape(3, 4).T, base.reshape(3, 4)[:, 1]]
    loaded = torch_load(save_bytes(obj))
    expected = [torch.arange(12.0)]
    expected += [expected[0][2:5], expected[0].view(3, 4).t(), expected[0].view(3, 4)[:, 1]]
    for t, e in zip(loaded, expected):
        assert t.storage_offset() == e.storage_offset() and t.stride() == e.stride()
        assert torch.equal(t, e)
    assert len({t.untyped_storage().data_ptr() for t in loaded}) == 1
    loaded[0][3] = 100.0  # they really share: torch sees the write
    assert loaded[1][1] == 100.0 and loaded[2][3, 0] == 100.0


def test_partial_views_store_only_the_span() -> None:
    base = np.arange(100, dtype=np.int64)
    loaded = torch_load(save_bytes({"a": base[10:20], "b": base[50:52]}))
    assert loaded["a"].untyped_storage().data_ptr() == loaded["b"].untyped_storage().data_ptr()
    assert loaded["a"].untyped_storage().nbytes() == 42 * 8  # bytes 10..52
    assert loaded["b"].storage_offset() == 40
    assert loaded["b"].tolist() == [50, 51]


def test_overlapping_views_of_a_foreign_buffer_share() -> None:
    raw = bytearray(np.arange(16, dtype=np.float32).tobytes())
    a = np.frombuffer(raw, np.float32)
    b = np.frombuffer(memoryview(raw)[8:], np.float32)  # another base object
    loaded = torch_load(save_bytes([a, b]))
    assert loaded[0].untyped_storage().data_ptr() == loaded[1].untyped_storage().data_ptr()
    assert loaded[1].storage_offset() == 2 and loaded[1][0] == 2.0


def test_unrepresentable_views_are_copied() -> None:
    base = np.arange(24, dtype=np.int32)
    rev, odd = base[::-1], np.ndarray((3,), np.int32, base, offset=2, strides=(5,))
    loaded = torch_load(
        save_bytes({"base": base, "rev": rev, "odd": odd, "as16": base.view(np.int16)})
    )
    np.testing.assert_array_equal(loaded["rev"].numpy(), rev)
    np.testing.assert_array_equal(loaded["odd"].numpy(), odd)
    assert loaded["rev"].stride() == (1,) and loaded["odd"].storage_offset() == 0
    ptrs = {k: t.untyped_storage().data_ptr() for k, t in loaded.items()}
    assert len(set(ptrs.values())) == 4  # torch cannot share across dtypes or odd strides


def test_same_object_twice_is_one_tensor_and_tied_parameters() -> None:
    w = np.ones((2, 2), np.float32)
    p = pthfmt.Tensor(w, parameter=True, requires_grad=True)
    loaded = torch_load(save_bytes({"a": w, "b": w, "p": p, "q": p, "view": w[0]}))
    assert loaded["a"] is loaded["b"] and loaded["p"] is loaded["q"]
    assert isinstance(loaded["p"], torch.nn.Parameter) and loaded["p"].requires_grad
    ptrs = {t.untyped_storage().data_ptr() for t in loaded.values()}
    assert len(ptrs) == 1


def test_torch_reads_per_storage_devices() -> None:
    """The device tags of tests/unit/test_writer.py::test_devices_are_recorded_per_storage."""
    a = np.arange(4, dtype=np.float32)
    obj = {"gpu": pthfmt.Tensor(a, device="cuda:1"), "cpu": a, "mps": pthfmt.Tensor(a, "mps")}
    data = save_bytes(obj)
    loaded = torch_load(data, map_location="cpu")
    assert len({t.untyped_storage().data_ptr() for t in loaded.values()}) == 3
    with pytest.raises(RuntimeError, match="CUDA"):
        torch_load(data)


# -- plain values -------------------------------------------------------------------------------


def test_plain_values_match_torch_and_pickle() -> None:
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    od._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    obj = {
        "none": None,
        "t": True,
        "f": False,
        "ints": [0, 255, 256, 65535, 65536, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**64, -(2**100)],
        "float": [1.5, float("inf"), -0.0],
        "str": ["", "ü", "\U0001f600"],
        "bytes": [b"", b"\x00\xff"],
        "bytearray": [bytearray(), bytearray(b"ab")],
        "set": {1, "x"},
        "complex": 1 - 2j,
        "tuple": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)),
        "od": od,
        "counter": collections.Counter(a=2),
        "np": [
            np.float32(0.5),
            np.int8(-3),
            np.bool_(False),
            np.complex64(1j),
            np.str_("s"),
            ml_dtypes.bfloat16(2),
        ],
        "device": pthfmt.Device("cuda", 0),
        "dtype": pthfmt.DType("float8_e5m2"),
    }
    loaded = torch_load(save_bytes(obj))
    assert_loaded(
        {k: v for k, v in obj.items() if k != "np"}, {k: v for k, v in loaded.items() if k != "np"}
    )
    assert loaded["np"] == [0.5, -3, False, 1j, "s", 2.0]
    assert [type(v) for v in loaded["np"]] == [float, int, bool, complex, str, float]
    assert loaded["od"]._metadata == {"": {"version": 1}}


# -- what the writer refuses, and what it writes below the limits ---------------------------------


def test_torch_reads_900_levels_of_nesting() -> None:
    """What tests/unit/test_writer.py::test_deep_nesting_is_an_error_not_a_recursion_error
    saves below the limit, torch reads."""
    ok: Any = np.ones(1)
    for _ in range(900):
        ok = {"x": ok}
    loaded = torch_load(save_bytes(ok))
    for _ in range(900):
        loaded = loaded["x"]
    assert loaded.tolist() == [1.0]


def test_torch_reads_a_dict_that_contains_itself() -> None:
    d: dict[str, Any] = {}
    d["self"] = d
    loaded = torch_load(save_bytes(d))
    assert loaded["self"] is loaded
