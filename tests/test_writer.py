"""pthfmt.save against torch 2.13: whatever we write, torch.load(weights_only=True) reads back.

Comparisons never go through pthfmt's own tables: dtypes are compared by torch's name
(``str(t.dtype)``), bytes through torch's storage (``set_`` on a uint8 tensor), layout through
``t.stride()``/``t.storage_offset()``, sharing through ``untyped_storage().data_ptr()``.
The helpers here are shared by the other ``test_writer_*`` files.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
from pathlib import Path
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt import UnserializableError, writer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# -- torch-side views of what was loaded -------------------------------------------------------

#: numpy dtype -> torch dtype name, written out independently of pthfmt.model.dtypes.
NUMPY_TO_TORCH: dict[Any, str] = {
    np.dtype(np.float64): "float64", np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16", np.dtype(ml_dtypes.bfloat16): "bfloat16",
    np.dtype(np.int64): "int64", np.dtype(np.int32): "int32", np.dtype(np.int16): "int16",
    np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.bool_): "bool",
    np.dtype(np.complex64): "complex64", np.dtype(np.complex128): "complex128",
    np.dtype(np.uint16): "uint16", np.dtype(np.uint32): "uint32", np.dtype(np.uint64): "uint64",
    np.dtype(ml_dtypes.complex32): "complex32",
    np.dtype(ml_dtypes.float8_e4m3fn): "float8_e4m3fn",
    np.dtype(ml_dtypes.float8_e5m2): "float8_e5m2",
    np.dtype(ml_dtypes.float8_e4m3fnuz): "float8_e4m3fnuz",
    np.dtype(ml_dtypes.float8_e5m2fnuz): "float8_e5m2fnuz",
    np.dtype(ml_dtypes.float8_e8m0fnu): "float8_e8m0fnu",
}
#: dtypes only a metadata tag can express in numpy.
TAGGED = ("float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2")
#: dtypes torch writes with _rebuild_tensor_v3 (no typed storage class).
V3 = {"uint16", "uint32", "uint64", "complex32", "float8_e4m3fn", "float8_e5m2",
      "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", *TAGGED}


def tagged_dtype(name: str) -> np.dtype:
    return np.dtype(np.uint16 if name == "bits16" else np.uint8, metadata={"torch": name})


def all_numpy_dtypes() -> list[np.dtype]:
    return [*NUMPY_TO_TORCH, *(tagged_dtype(n) for n in TAGGED)]


def torch_name(dtype: np.dtype) -> str:
    if dtype.metadata and "torch" in dtype.metadata:
        return dtype.metadata["torch"]
    return NUMPY_TO_TORCH[dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype]


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def storage_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's whole storage as uint8, read by torch (no dtype-specific torch op)."""
    u8 = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
    return u8.numpy()


def element_bytes(t: torch.Tensor) -> np.ndarray:
    """Shape + (itemsize,) raw little-endian element bytes, through t's own strides."""
    size = t.element_size()
    buf = storage_bytes(t)
    if t.numel() == 0:
        return np.zeros((*t.shape, size), np.uint8)
    return np.lib.stride_tricks.as_strided(
        buf[t.storage_offset() * size:], shape=(*t.shape, size),
        strides=(*(s * size for s in t.stride()), 1)).copy()


def array_bytes(a: np.ndarray) -> np.ndarray:
    """The same for a numpy array: shape + (itemsize,) little-endian element bytes."""
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    flat = np.ascontiguousarray(a).reshape(-1)
    return flat.view(np.uint8).reshape((*a.shape, a.dtype.itemsize))


def representable(a: np.ndarray) -> bool:
    """Whether torch can express the array as a view (else pthfmt writes a copy)."""
    size = a.dtype.itemsize
    return a.size > 0 and all(s >= 0 and s % size == 0 for s in a.strides)


def assert_tensor_equal(a: np.ndarray, t: torch.Tensor, where: str = "") -> None:
    assert isinstance(t, torch.Tensor), where
    assert dtype_name(t) == torch_name(a.dtype), where
    assert tuple(t.shape) == a.shape, where
    np.testing.assert_array_equal(element_bytes(t), array_bytes(a), err_msg=where)
    if representable(a):
        assert t.stride() == tuple(s // a.dtype.itemsize for s in a.strides), where


def assert_loaded(ours: Any, theirs: Any, where: str = "") -> None:
    """``theirs`` (torch.load) is what saving ``ours`` (pthfmt input) should give."""
    if isinstance(ours, pthfmt.Tensor):
        assert isinstance(theirs, torch.nn.Parameter) == ours.parameter, where
        assert theirs.requires_grad == ours.requires_grad, where
        assert_tensor_equal(np.asarray(ours.array), theirs.detach(), where)
    elif isinstance(ours, np.ndarray):
        assert type(theirs) is torch.Tensor and not theirs.requires_grad, where
        assert_tensor_equal(ours, theirs, where)
    elif isinstance(ours, np.generic):
        assert type(theirs) in (bool, int, float, complex), where
        assert theirs == ours.item() or (math.isnan(theirs) and math.isnan(ours)), where
    elif isinstance(ours, pthfmt.Device):
        assert isinstance(theirs, torch.device) and str(theirs) == str(ours), where
    elif isinstance(ours, pthfmt.DType):
        assert theirs == getattr(torch, ours.name), where
    elif isinstance(ours, dict):
        assert type(theirs) is type(ours), where
        assert list(theirs) == list(ours), where
        for key in ours:
            assert_loaded(ours[key], theirs[key], f"{where}.{key}")
        if isinstance(ours, collections.OrderedDict):
            assert_loaded(dict(vars(ours)), dict(vars(theirs)), f"{where}.__dict__")
    elif isinstance(ours, (list, tuple)):
        assert type(theirs) is type(ours) and len(theirs) == len(ours), where
        for i, (x, y) in enumerate(zip(ours, theirs)):
            assert_loaded(x, y, f"{where}.{i}")
    elif isinstance(ours, float) and math.isnan(ours):
        assert type(theirs) is float and math.isnan(theirs), where
    else:
        assert type(theirs) is type(ours) and theirs == ours, where


def leaves(obj: Any, kinds: type | tuple[type, ...] = (np.ndarray, pthfmt.Tensor)) -> list[Any]:
    """Every leaf of ``kinds`` in a tree of dicts, lists and tuples, in order, with repeats
    (by default the tensor-like inputs of a save)."""
    out: list[Any] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, kinds):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return out


def loaded_leaves(obj: Any) -> list[torch.Tensor]:
    return leaves(obj, torch.Tensor)


def owner(a: np.ndarray) -> Any:
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def assert_sharing(ours: Any, theirs: Any) -> None:
    """Same input object -> same loaded object; views of one base (same dtype, both
    expressible as views) -> one torch storage; different bases -> different storages."""
    ins, outs = leaves(ours), loaded_leaves(theirs)
    assert len(ins) == len(outs)
    for (a, ta), (b, tb) in itertools.combinations(zip(ins, outs), 2):
        if a is b:
            assert ta is tb
            continue
        xa = a.array if isinstance(a, pthfmt.Tensor) else a
        xb = b.array if isinstance(b, pthfmt.Tensor) else b
        same_ptr = ta.untyped_storage().data_ptr() == tb.untyped_storage().data_ptr()
        if owner(xa) is not owner(xb):
            assert not same_ptr or ta.untyped_storage().nbytes() == 0
        elif (xa.dtype == xb.dtype and xa.dtype.byteorder == xb.dtype.byteorder
              and representable(xa) and representable(xb) and
              (xa.__array_interface__["data"][0] - xb.__array_interface__["data"][0])
              % xa.dtype.itemsize == 0):
            assert same_ptr


def torch_load(src: Any, **kwargs: Any) -> Any:
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    return torch.load(src, weights_only=True, **kwargs)


def save_bytes(obj: Any, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pthfmt.save(obj, buf, **kwargs)
    return buf.getvalue()


def random_array(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Arbitrary bit patterns of ``dtype`` (bools 0/1)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, math.prod(shape) * dtype.itemsize, dtype=np.uint8)
    if dtype == np.bool_:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy array viewing ``t``'s memory, with the dtype pthfmt expects for it."""
    name = dtype_name(t)
    numpy_dtype = next((d for d, n in NUMPY_TO_TORCH.items() if n == name), None)
    if name in TAGGED:
        numpy_dtype = tagged_dtype(name)
    if numpy_dtype is None:
        raise TypeError(name)
    raw = t.detach().view(torch.uint8) if t.element_size() == 1 else \
        t.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}
                        [t.element_size()])
    return raw.numpy().view(numpy_dtype)


def from_torch(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """The pthfmt input that stands for a torch object tree: tensors become numpy arrays
    (Parameters and grad-requiring tensors become pthfmt.Tensor), containers are rebuilt with
    the same sharing, and everything else (keys, strings, numbers) is kept as the same object,
    so that the pickle memo sees what torch's pickler sees."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    out: Any
    if isinstance(obj, torch.Tensor):
        data = tensor_to_numpy(obj)
        is_param = isinstance(obj, torch.nn.Parameter)
        out = pthfmt.Tensor(data, device=str(obj.device), requires_grad=obj.requires_grad,
                            parameter=is_param) if is_param or obj.requires_grad else data
    elif isinstance(obj, torch.device):
        out = pthfmt.Device(obj.type, obj.index)
    elif isinstance(obj, torch.dtype):
        out = pthfmt.DType(str(obj).removeprefix("torch."))
    elif type(obj) in (dict, collections.OrderedDict):
        out = type(obj)((k, from_torch(v, memo)) for k, v in obj.items())
        if vars(obj) if isinstance(obj, collections.OrderedDict) else False:
            out.__dict__.update({k: from_torch(v, memo) for k, v in vars(obj).items()})
    elif type(obj) is list:
        out = [from_torch(v, memo) for v in obj]
    elif type(obj) is tuple:
        out = tuple(from_torch(v, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out


# -- hypothesis: random trees ------------------------------------------------------------------

@st.composite
def array_pool(draw: st.DrawFn, dtypes: list[np.dtype]) -> list[Any]:
    """A few base arrays and views of them (slices, steps, transposes, broadcasts, reversed,
    big-endian copies), some wrapped as Parameters."""
    pool: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(dtypes))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        base = random_array(dtype, shape, draw(st.integers(0, 2**16)))
        if draw(st.booleans()) and dtype.kind in "iufc" and dtype.metadata is None and \
                dtype.itemsize > 1:
            base = base.astype(dtype.newbyteorder(">"))
        pool.append(base)
        for op in draw(st.lists(st.sampled_from(
                ["slice", "step", "rev", "T", "flat", "bcast", "col", "none"]), max_size=3)):
            view = {
                "slice": lambda a: a[1:] if a.ndim else a,
                "step": lambda a: a[::2] if a.ndim else a,
                "rev": lambda a: a[::-1] if a.ndim else a,
                "T": lambda a: a.T,
                "flat": lambda a: a.reshape(-1),
                "bcast": lambda a: np.broadcast_to(a, (2, *a.shape)),
                "col": lambda a: a[..., :1] if a.ndim else a,
                "none": lambda a: a,
            }[op](base)
            pool.append(view)
    if draw(st.booleans()):
        floats = [a for a in pool if torch_name(a.dtype) in
                  ("float32", "float64", "float16", "bfloat16", "complex64")]
        if floats:
            pool.append(pthfmt.Tensor(draw(st.sampled_from(floats)), parameter=draw(
                st.booleans()), requires_grad=draw(st.booleans())))
    return pool


ORDERED_SCALARS = (
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.complex_numbers(allow_nan=False)
    | st.sampled_from([np.float32(1.5), np.int64(-3), np.bool_(True), np.float16(2.0),
                       pthfmt.Device("cpu"), pthfmt.Device("cuda", 1),
                       pthfmt.DType("bfloat16"), pthfmt.DType("uint16")]))
SCALARS = ORDERED_SCALARS | st.sets(st.integers(-5, 300), max_size=4)


@st.composite
def trees(draw: st.DrawFn, dtypes: list[np.dtype] | None = None,
          scalars: st.SearchStrategy[Any] = SCALARS) -> Any:
    pool = draw(array_pool(dtypes or all_numpy_dtypes()))
    leaf = scalars | st.sampled_from(pool)
    keys = st.text(max_size=6) | st.integers(-3, 3)

    def ordered(pairs: list[tuple[Any, Any]]) -> collections.OrderedDict[Any, Any]:
        od = collections.OrderedDict(pairs)
        if pairs and isinstance(pairs[0][1], int):
            od._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
        return od

    tree = st.recursive(leaf, lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.lists(st.tuples(st.text(max_size=4), children), max_size=4).map(ordered)),
        max_leaves=12)
    return draw(st.lists(tree, max_size=4).map(lambda xs: {"items": xs, "pool": pool[:2]}))


HYPOTHESIS = settings(max_examples=60, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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


@HYPOTHESIS
@given(obj=trees())
def test_the_collecting_first_pass_equals_the_pickling_one(obj: Any) -> None:
    """save() finds the tensors with a plain walk; the pickling first pass it falls back to
    (for anything the walk does not know) must give the very same bytes."""
    fast = save_bytes(obj)
    with mock.patch.object(writer._Plan, "collect", return_value=False):
        assert save_bytes(obj) == fast


def test_the_collecting_first_pass_sees_tensors_everywhere_the_pickler_does() -> None:
    base = np.arange(12, dtype=np.float32)
    od = collections.OrderedDict(w=base[:6])
    od._metadata = {"": {"version": 1}, "x": base[6:]}  # type: ignore[attr-defined]
    torch_file = io.BytesIO()
    torch.save({"p": torch.nn.Parameter(torch.ones(3))}, torch_file)
    ref = dict(pthfmt.open(io.BytesIO(torch_file.getvalue())).tensors())["p"]
    obj = {"od": od, "set": {1, "a"}, "count": collections.Counter(a=2), "ref": ref,
           "t": pthfmt.Tensor(base.reshape(3, 4), device="cuda:0"), "list": [base, (base,)],
           "dtype": pthfmt.DType("bfloat16"), "scalar": np.float16(2)}
    fast = save_bytes(obj)
    with mock.patch.object(writer._Plan, "collect", return_value=False):
        assert save_bytes(obj) == fast
    assert writer._Plan(legacy=False).collect(obj)          # the walk handled all of it
    theirs = torch_load(fast, map_location="cpu")            # and torch reads what it wrote
    assert theirs["od"]._metadata["x"].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert theirs["od"]["w"].untyped_storage().data_ptr() == \
        theirs["list"][0].untyped_storage().data_ptr()      # one storage, as in numpy
    assert theirs["t"].tolist() == base.reshape(3, 4).tolist()
    assert isinstance(theirs["ref"], torch.nn.Parameter) and theirs["ref"].tolist() == [1.0] * 3


@HYPOTHESIS
@given(obj=trees(scalars=ORDERED_SCALARS))
def test_saving_what_we_read_gives_the_same_bytes(obj: Any) -> None:
    """save(open(save(x)).obj) == save(x): the reader keeps everything the writer wrote
    (sets are left out: a set rebuilt from its items may iterate in another order)."""
    for fmt in ("zip", "legacy"):
        try:
            first = save_bytes(obj, format=fmt)
        except UnserializableError:
            assert fmt == "legacy"                   # v3 dtypes
            continue
        with pthfmt.open(io.BytesIO(first)) as ck:
            assert save_bytes(ck.obj, format=fmt) == first


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
        torch.zeros(2 * dtype.itemsize, dtype=torch.uint8) \
            .view(getattr(torch, torch_name(dtype))).requires_grad_(True)
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
            t = torch.zeros(2 * dtype.itemsize, dtype=torch.uint8) \
                .view(getattr(torch, torch_name(dtype))).requires_grad_(True)
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
    obj = {dt: np.array([1, -2, 3, 100], dt) for dt in (">f4", ">f8", ">i4", ">i2", ">i8", ">c8",
                                                      ">c16", ">f2")}
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
    loaded[0][3] = 100.0                      # they really share: torch sees the write
    assert loaded[1][1] == 100.0 and loaded[2][3, 0] == 100.0


def test_partial_views_store_only_the_span() -> None:
    base = np.arange(100, dtype=np.int64)
    loaded = torch_load(save_bytes({"a": base[10:20], "b": base[50:52]}))
    assert loaded["a"].untyped_storage().data_ptr() == loaded["b"].untyped_storage().data_ptr()
    assert loaded["a"].untyped_storage().nbytes() == 42 * 8       # bytes 10..52
    assert loaded["b"].storage_offset() == 40
    assert loaded["b"].tolist() == [50, 51]


def test_overlapping_views_of_a_foreign_buffer_share() -> None:
    raw = bytearray(np.arange(16, dtype=np.float32).tobytes())
    a = np.frombuffer(raw, np.float32)
    b = np.frombuffer(memoryview(raw)[8:], np.float32)          # another base object
    loaded = torch_load(save_bytes([a, b]))
    assert loaded[0].untyped_storage().data_ptr() == loaded[1].untyped_storage().data_ptr()
    assert loaded[1].storage_offset() == 2 and loaded[1][0] == 2.0


def test_unrepresentable_views_are_copied() -> None:
    base = np.arange(24, dtype=np.int32)
    rev, odd = base[::-1], np.ndarray((3,), np.int32, base, offset=2, strides=(5,))
    loaded = torch_load(save_bytes({"base": base, "rev": rev, "odd": odd,
                                    "as16": base.view(np.int16)}))
    np.testing.assert_array_equal(loaded["rev"].numpy(), rev)
    np.testing.assert_array_equal(loaded["odd"].numpy(), odd)
    assert loaded["rev"].stride() == (1,) and loaded["odd"].storage_offset() == 0
    ptrs = {k: t.untyped_storage().data_ptr() for k, t in loaded.items()}
    assert len(set(ptrs.values())) == 4      # torch cannot share across dtypes or odd strides


def test_same_object_twice_is_one_tensor_and_tied_parameters() -> None:
    w = np.ones((2, 2), np.float32)
    p = pthfmt.Tensor(w, parameter=True, requires_grad=True)
    loaded = torch_load(save_bytes({"a": w, "b": w, "p": p, "q": p, "view": w[0]}))
    assert loaded["a"] is loaded["b"] and loaded["p"] is loaded["q"]
    assert isinstance(loaded["p"], torch.nn.Parameter) and loaded["p"].requires_grad
    ptrs = {t.untyped_storage().data_ptr() for t in loaded.values()}
    assert len(ptrs) == 1


def test_devices_are_recorded_per_storage() -> None:
    a = np.arange(4, dtype=np.float32)
    obj = {"gpu": pthfmt.Tensor(a, device="cuda:1"), "cpu": a, "mps": pthfmt.Tensor(a, "mps")}
    data = save_bytes(obj)
    with pthfmt.open(io.BytesIO(data)) as ck:
        assert {k: str(t.device) for k, t in ck.tensors()} == \
            {"gpu": "cuda:1", "cpu": "cpu", "mps": "mps"}
    loaded = torch_load(data, map_location="cpu")
    assert len({t.untyped_storage().data_ptr() for t in loaded.values()}) == 3
    with pytest.raises(RuntimeError, match="CUDA"):
        torch_load(data)


# -- plain values -------------------------------------------------------------------------------

def test_plain_values_match_torch_and_pickle() -> None:
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    od._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    obj = {"none": None, "t": True, "f": False, "ints": [0, 255, 256, 65535, 65536, -1,
           2**31 - 1, 2**31, -2**31 - 1, 2**64, -2**100], "float": [1.5, float("inf"), -0.0],
           "str": ["", "ü", "\U0001f600"], "bytes": [b"", b"\x00\xff"],
           "bytearray": [bytearray(), bytearray(b"ab")], "set": {1, "x"}, "complex": 1 - 2j,
           "tuple": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)), "od": od,
           "counter": collections.Counter(a=2), "np": [np.float32(0.5), np.int8(-3),
                                                       np.bool_(False), np.complex64(1j),
                                                       np.str_("s"), ml_dtypes.bfloat16(2)],
           "device": pthfmt.Device("cuda", 0), "dtype": pthfmt.DType("float8_e5m2")}
    loaded = torch_load(save_bytes(obj))
    assert_loaded({k: v for k, v in obj.items() if k != "np"},
                  {k: v for k, v in loaded.items() if k != "np"})
    assert loaded["np"] == [0.5, -3, False, 1j, "s", 2.0]
    assert [type(v) for v in loaded["np"]] == [float, int, bool, complex, str, float]
    assert loaded["od"]._metadata == {"": {"version": 1}}


# -- refusals -------------------------------------------------------------------------------------

class Opaque:
    pass


@pytest.mark.parametrize(("value", "message"), [
    (lambda: 0, "functions and classes"),
    (Opaque(), "tests.test_writer.Opaque|test_writer.Opaque"),
    (Opaque, "functions and classes"),
    ((i for i in range(3)), "generators"),
    (np.array([object()], dtype=object), "object arrays"),
    (np.array(["a"]), "no torch equivalent"),
    (np.zeros(2, dtype=[("x", "f4")]), "no torch equivalent"),
    (np.ma.masked_array([1.0], mask=[True]), "mask"),
    (frozenset([1]), "frozenset"),
    (np.datetime64("2020-01-01"), "no Python or torch"),
    (pthfmt.Tensor(np.zeros(2, np.int64), requires_grad=True), "cannot require gradients"),
    (np.zeros(2, np.dtype(np.int8, metadata={"torch": "qint8"})), "quantization"),
    (collections.defaultdict(list), "defaultdict"),
])
def test_unserializable_values_name_their_key_path(value: Any, message: str,
                                                   tmp_path: Path) -> None:
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")
    obj = {"model": {"layers": [{"weight": np.ones(2)}, {"weight": value}]}}
    with pytest.raises(UnserializableError, match=message) as info:
        pthfmt.save(obj, target)
    assert info.value.key_path == "model.layers.1.weight"
    assert "model.layers.1.weight" in str(info.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    buf = io.BytesIO()
    with pytest.raises(UnserializableError):
        pthfmt.save(obj, buf)
    assert buf.getvalue() == b""             # nothing written to a stream either


def test_errors_inside_keys_sets_and_attributes_are_located() -> None:
    with pytest.raises(UnserializableError) as info:
        save_bytes({"a": {(1, Opaque()): 1}})
    assert info.value.key_path == "a.<key>.1"
    od = collections.OrderedDict(w=1)
    od._metadata = {"x": Opaque()}  # type: ignore[attr-defined]
    with pytest.raises(UnserializableError) as info:
        save_bytes({"sd": od})
    assert info.value.key_path == "sd._metadata.x"


def test_deep_nesting_is_an_error_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UnserializableError, match="nested more than 1000") as info:
        save_bytes(deep)
    assert info.value.key_path == "<936 levels>." + ".".join(["0"] * 64)   # the innermost 64
    ok: Any = np.ones(1)
    for _ in range(900):
        ok = {"x": ok}
    loaded = torch_load(save_bytes(ok))
    for _ in range(900):
        loaded = loaded["x"]
    assert loaded.tolist() == [1.0]


def test_recursion_through_containers() -> None:
    d: dict[str, Any] = {}
    d["self"] = d
    loaded = torch_load(save_bytes(d))
    assert loaded["self"] is loaded
    t: list[Any] = []
    tup = (t,)
    t.append(tup)
    with pytest.raises(UnserializableError, match="contains itself"):
        save_bytes(tup)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="format"):
        pthfmt.save({}, io.BytesIO(), format="tar")
    with pytest.raises(ValueError, match="archive_name"):
        pthfmt.save({}, io.BytesIO(), archive_name="a/b")
    with pytest.raises(TypeError, match="writable"):
        pthfmt.save({}, 3)  # type: ignore[arg-type]
