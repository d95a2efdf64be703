"""What the writer tests share, numpy side: the dtypes pthfmt saves (named as torch names them,
independently of ``pthfmt.model.dtypes``), random arrays, and hypothesis strategies for random
trees of arrays, views and values.  No torch here: ``tests/unit`` uses it as well.
"""

from __future__ import annotations

import collections
import io
import math
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import pthfmt

#: numpy dtype -> torch dtype name, written out independently of pthfmt.model.dtypes.
NUMPY_TO_TORCH: dict[Any, str] = {
    np.dtype(np.float64): "float64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int16): "int16",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "bool",
    np.dtype(np.complex64): "complex64",
    np.dtype(np.complex128): "complex128",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint64): "uint64",
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
V3 = {
    "uint16",
    "uint32",
    "uint64",
    "complex32",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    *TAGGED,
}


def tagged_dtype(name: str) -> np.dtype:
    return np.dtype(np.uint16 if name == "bits16" else np.uint8, metadata={"torch": name})


def all_numpy_dtypes() -> list[np.dtype]:
    return [*NUMPY_TO_TORCH, *(tagged_dtype(n) for n in TAGGED)]


def torch_name(dtype: np.dtype) -> str:
    if dtype.metadata and "torch" in dtype.metadata:
        return dtype.metadata["torch"]
    return NUMPY_TO_TORCH[dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype]


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


def owner(a: np.ndarray) -> Any:
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


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


def zip_layout(path: Path) -> tuple[list[tuple[Any, ...]], bytes]:
    """Every structure of a (possibly sparse) zip file except data, with CRCs zeroed."""
    entries = []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(size - 98)
        tail = f.read(98)
        cd_size, cd_offset = struct.unpack_from("<QQ", tail, 40)
        f.seek(cd_offset)
        cd = f.read(cd_size)
        pos = 0
        while pos < len(cd):
            fields = list(struct.unpack_from("<IHHHHHHIIIHHHHHII", cd, pos))
            name = cd[pos + 46 : pos + 46 + fields[10]]
            extra = cd[pos + 46 + fields[10] : pos + 46 + fields[10] + fields[11]]
            big = struct.unpack_from(f"<{len(extra[4:]) // 8}Q", extra, 4) if extra else ()
            usize = big[0] if fields[9] == 0xFFFFFFFF else fields[9]
            offset = big[-1] if fields[16] == 0xFFFFFFFF else fields[16]
            f.seek(offset)
            local = f.read(30)
            nlen, xlen = struct.unpack_from("<HH", local, 26)
            local_rest = f.read(nlen + xlen)
            start = offset + 30 + nlen + xlen
            f.seek(start + usize)
            zip64 = usize >= 0xFFFFFFFF or offset >= 0xFFFFFFFF
            descriptor = bytearray(f.read(24 if zip64 else 16) if usize else b"")
            descriptor[4:8] = bytes(len(descriptor[4:8]))
            fields[7] = 0
            entries.append((name, fields, extra, local, local_rest, start, bytes(descriptor)))
            pos += 46 + fields[10] + fields[11] + fields[12]
    return entries, tail


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
        if (
            draw(st.booleans())
            and dtype.kind in "iufc"
            and dtype.metadata is None
            and dtype.itemsize > 1
        ):
            base = base.astype(dtype.newbyteorder(">"))
        pool.append(base)
        for op in draw(
            st.lists(
                st.sampled_from(["slice", "step", "rev", "T", "flat", "bcast", "col", "none"]),
                max_size=3,
            )
        ):
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
        floats = [
            a
            for a in pool
            if torch_name(a.dtype) in ("float32", "float64", "float16", "bfloat16", "complex64")
        ]
        if floats:
            pool.append(
                pthfmt.Tensor(
                    draw(st.sampled_from(floats)),
                    parameter=draw(st.booleans()),
                    requires_grad=draw(st.booleans()),
                )
            )
    return pool


ORDERED_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.complex_numbers(allow_nan=False)
    | st.sampled_from(
        [
            np.float32(1.5),
            np.int64(-3),
            np.bool_(True),
            np.float16(2.0),
            pthfmt.Device("cpu"),
            pthfmt.Device("cuda", 1),
            pthfmt.DType("bfloat16"),
            pthfmt.DType("uint16"),
        ]
    )
)


SCALARS = ORDERED_SCALARS | st.sets(st.integers(-5, 300), max_size=4)


@st.composite
def trees(
    draw: st.DrawFn, dtypes: list[np.dtype] | None = None, scalars: st.SearchStrategy[Any] = SCALARS
) -> Any:
    pool = draw(array_pool(dtypes or all_numpy_dtypes()))
    leaf = scalars | st.sampled_from(pool)
    keys = st.text(max_size=6) | st.integers(-3, 3)

    def ordered(pairs: list[tuple[Any, Any]]) -> collections.OrderedDict[Any, Any]:
        od = collections.OrderedDict(pairs)
        if pairs and isinstance(pairs[0][1], int):
            od._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
        return od

    tree = st.recursive(
        leaf,
        lambda children: (
            st.lists(children, max_size=4)
            | st.lists(children, max_size=4).map(tuple)
            | st.dictionaries(keys, children, max_size=4)
            | st.lists(st.tuples(st.text(max_size=4), children), max_size=4).map(ordered)
        ),
        max_leaves=12,
    )
    return draw(st.lists(tree, max_size=4).map(lambda xs: {"items": xs, "pool": pool[:2]}))


HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
