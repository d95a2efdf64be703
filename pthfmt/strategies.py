"""Hypothesis strategies for testing *your* checkpoint loaders and converters.

Needs ``hypothesis`` (not a dependency of pthfmt itself)::

    import io
    from hypothesis import given
    from pthfmt import strategies as pst

    @given(pst.checkpoints())
    def test_my_loader_reads_torch_checkpoints(example):
        weights = my_loader(io.BytesIO(example.data))
        for key, expected in example.tensors.items():
            assert (weights[key] == expected).all()

    @given(pst.corrupted(pst.checkpoints()))
    def test_my_loader_fails_cleanly(bad):
        try:
            my_loader(io.BytesIO(bad.data))
        except MyLoaderError:
            pass                                  # anything else is a bug

- :func:`tensors` — numpy arrays of every dtype torch can save (bfloat16, float8, complex32
  through ``ml_dtypes``), any shape, including non-contiguous views (slices with steps,
  transposes, offsets into a larger buffer).
- :func:`state_dicts` — torch-like ``OrderedDict``\\ s (``encoder.layers.0.weight``) whose
  tensors may share storage (views of one array) and may be ``nn.Parameter``\\ s.
- :func:`checkpoints` — :class:`Example`\\ s: a state dict (or a training-checkpoint dict)
  encoded by :func:`pthfmt.save` in the zip or legacy format, with the values a correct reader
  must decode.  torch loads every example exactly as described.
- :func:`corrupted` — :class:`Corruption`\\ s of checkpoints: structured mutations that still
  look plausible (a wrong CRC, off-by-one record sizes, swapped records, lying headers,
  truncation, flipped pickle bytes).  Some still load (torch ignores CRCs); a careful reader
  either loads them or fails with its own error, never a crash or a hang.
- :func:`quantized_arrays`, :func:`sparse_arrays`, :func:`nested_arrays`,
  :func:`jagged_arrays` (NJTs: any ragged dimension, holes between components),
  :func:`meta_arrays` and :func:`kinds` (any of them) — the other tensor kinds, each of which
  :func:`pthfmt.save` writes and ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import io
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st

from .model.dtypes import DTYPES, DTypeInfo, from_numpy
from .model.kinds import (
    QUANTIZED_DTYPES,
    SPARSE_LAYOUTS,
    JaggedArray,
    MetaArray,
    NestedArray,
    QuantizedArray,
    SparseArray,
    c_strides,
)
from .model.tensor import Tensor
from .writer import save

__all__ = [
    "dtypes",
    "tensors",
    "state_dicts",
    "checkpoints",
    "corrupted",
    "Example",
    "Corruption",
    "quantized_arrays",
    "sparse_arrays",
    "nested_arrays",
    "jagged_arrays",
    "meta_arrays",
    "kinds",
]

#: Dtypes a checkpoint can hold without extra metadata (quantized ones need scales).
SAVABLE: tuple[DTypeInfo, ...] = tuple(i for i in DTYPES if i.kind != "quantized")
_NAMES = ("weight", "bias", "running_mean", "running_var", "scale", "embed", "proj")
_MODULES = ("encoder", "decoder", "layers", "blocks", "attn", "mlp", "norm", "head")


def dtypes(*, names: Iterable[str] | None = None) -> st.SearchStrategy[DTypeInfo]:
    """Rows of :data:`pthfmt.DTYPES` (all savable ones, or those ``names`` lists: torch's
    names, ``"bfloat16"``, ``"float8_e4m3fn"``...; ``KeyError`` for an unknown one)."""
    if names is None:
        return st.sampled_from(SAVABLE)
    rows = [DTYPES[name] for name in names]
    unsavable = [i.name for i in rows if i not in SAVABLE]
    if unsavable or not rows:
        raise ValueError(f"no savable dtypes among {list(names)!r}: {unsavable}")
    return st.sampled_from(rows)


_dtype_rows = dtypes


@st.composite
def _array(draw: st.DrawFn, info: DTypeInfo, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=count * info.itemsize, max_size=count * info.itemsize))
    arr = np.frombuffer(bytearray(raw), np.uint8).view(info.numpy)
    if info.kind == "bool":
        arr = arr.view(np.uint8) & 1
        arr = arr.view(info.numpy)
    return arr.reshape(shape)


@st.composite
def tensors(
    draw: st.DrawFn,
    *,
    dtype: DTypeInfo | None = None,
    max_dims: int = 4,
    max_side: int = 5,
    views: bool = True,
) -> np.ndarray:
    """A numpy array of a torch dtype; with ``views``, often a non-contiguous view."""
    info = dtype or draw(dtypes())
    shape = tuple(draw(st.lists(st.integers(0, max_side), max_size=max_dims)))
    if not views or not shape or draw(st.booleans()):
        return draw(_array(info, shape))
    # a view: a slice with steps, or a transpose, of a larger array
    big = tuple(n * 2 + 1 for n in shape)
    base = draw(_array(info, big))
    index = tuple(slice(draw(st.integers(0, 1)), None, draw(st.integers(1, 2))) for _ in big)
    view = base[index][tuple(slice(0, n) for n in shape)]
    if len(shape) > 1 and draw(st.booleans()):
        view = view.T
    return view


@st.composite
def state_dicts(
    draw: st.DrawFn,
    *,
    max_tensors: int = 6,
    shared: bool = True,
    parameters: bool = True,
    dtypes: Iterable[str] | None = None,
) -> OrderedDict[str, Any]:
    """A torch-like state dict: dotted keys, arrays, shared storages, Parameters; tensors of
    every savable dtype, or of those ``dtypes`` names (``dtypes=["float32", "bfloat16"]``)."""
    kinds = _dtype_rows(names=dtypes)
    out: OrderedDict[str, Any] = OrderedDict()
    count = draw(st.integers(1, max_tensors))
    pool: list[np.ndarray] = []
    for i in range(count):
        path = draw(st.lists(st.sampled_from(_MODULES), max_size=2))
        indexed: bool = draw(st.booleans())
        if path and indexed:
            path.append(str(draw(st.integers(0, 3))))
        key = ".".join([*path, draw(st.sampled_from(_NAMES))])
        while key in out:
            key = f"{key}_{i}"
        if shared and pool and draw(st.integers(0, 3)) == 0:
            base = draw(st.sampled_from(pool))  # a second view of an earlier array
            value: Any = base[1:] if base.ndim and base.shape[0] > 1 else base[...]
        else:
            value = draw(tensors(dtype=draw(kinds)))
            pool.append(value)
        if (
            parameters
            and value.dtype.kind in "fc"
            and value.dtype.metadata is None
            and draw(st.integers(0, 3)) == 0
        ):
            value = Tensor(value, parameter=True, requires_grad=draw(st.booleans()))
        out[key] = value
    return out


@dataclass
class Example:
    """A checkpoint as bytes, and what a correct reader decodes from it."""

    data: bytes
    format: str
    obj: Any
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Example({self.format}, {len(self.data)} bytes, "
            f"{len(self.tensors)} tensors: {list(self.tensors)[:4]})"
        )


def _plain(value: Any) -> Any:
    return value.array if isinstance(value, Tensor) else value


SaveFormat = Literal["zip", "legacy"]
_FORMATS: st.SearchStrategy[SaveFormat] = st.sampled_from(("zip", "legacy"))


@st.composite
def checkpoints(
    draw: st.DrawFn,
    format: SaveFormat | None = None,
    values: st.SearchStrategy[Any] | None = None,
) -> Example:
    """A state dict, or a training checkpoint around one, encoded by :func:`pthfmt.save`."""
    fmt: SaveFormat = format if format is not None else draw(_FORMATS)
    sd = draw(values if values is not None else state_dicts())
    if fmt == "legacy":  # the legacy format cannot hold _rebuild_tensor_v3 dtypes
        sd = OrderedDict((k, v) for k, v in sd.items() if _typed(_plain(v).dtype))
    obj: Any = sd
    if draw(st.booleans()):
        obj = {
            "epoch": draw(st.integers(0, 1000)),
            "model_state_dict": sd,
            "loss": draw(st.floats(0, 10, allow_nan=False)),
            "note": draw(st.text()),
        }
    buf = io.BytesIO()
    save(obj, buf, format=fmt)
    prefix = "model_state_dict." if obj is not sd else ""
    expected = {prefix + k: np.asarray(_plain(v)) for k, v in sd.items()}
    return Example(buf.getvalue(), fmt, obj, expected)


def _typed(dtype: np.dtype) -> bool:
    """Whether torch writes this dtype with a typed storage class (``_rebuild_tensor_v2``)."""
    info = from_numpy(dtype)
    return info is not None and info.storage is not None


@dataclass
class Corruption:
    """Bytes of a damaged checkpoint, and which damage was done."""

    data: bytes
    kind: str
    original: Example | bytes

    def __repr__(self) -> str:
        return f"Corruption({self.kind}, {len(self.data)} bytes)"


def _central(data: bytes) -> list[int]:
    """Offsets of whatever looks like a whole central-directory header (46 fixed bytes)."""
    out, pos = [], 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        if pos + 46 <= len(data):
            out.append(pos)
        pos += 4
    return out


def _mutate(data: bytes, kind: str, pick: int, value: int) -> bytes:
    buf = bytearray(data)
    entries = _central(data)
    if kind == "truncate":
        return bytes(buf[: pick % max(len(buf), 1)])
    if kind == "bitflip":
        buf[pick % len(buf)] ^= 1 << (value % 8)
        return bytes(buf)
    if not entries:  # legacy format: lie in a storage count or the pickle
        pos = pick % max(len(buf) - 8, 1)
        buf[pos] = (buf[pos] + 1 + value % 255) % 256
        return bytes(buf)
    at = entries[pick % len(entries)]
    if kind == "crc":
        struct.pack_into(
            "<I", buf, at + 16, struct.unpack_from("<I", buf, at + 16)[0] ^ (value | 1)
        )
    elif kind == "size":
        usize = struct.unpack_from("<I", buf, at + 24)[0]
        struct.pack_into("<I", buf, at + 24, (usize + (1 if value % 2 else -1)) % 2**32)
    elif kind == "offset":
        lho = struct.unpack_from("<I", buf, at + 42)[0]
        struct.pack_into("<I", buf, at + 42, (lho + 1 + value % 64) % 2**32)
    elif kind == "swap" and len(entries) > 1:
        other = entries[value % len(entries)]
        n1, n2 = (struct.unpack_from("<H", buf, a + 28)[0] for a in (at, other))
        if n1 == n2:
            a_name = bytes(buf[at + 46 : at + 46 + n1])
            buf[at + 46 : at + 46 + n1] = buf[other + 46 : other + 46 + n2]
            buf[other + 46 : other + 46 + n2] = a_name
    elif kind == "header":
        lho = struct.unpack_from("<I", buf, at + 42)[0]
        if lho + 30 <= len(buf):
            struct.pack_into("<H", buf, lho + 26, (value % 200) + 1)
    return bytes(buf)


_KINDS = ("crc", "size", "offset", "swap", "header", "truncate", "bitflip")


@st.composite
def corrupted(draw: st.DrawFn, checkpoint: st.SearchStrategy[Any] | Example | bytes) -> Corruption:
    """A structured mutation of a checkpoint (an :class:`Example`, bytes, or a strategy)."""
    original = draw(checkpoint) if isinstance(checkpoint, st.SearchStrategy) else checkpoint
    data = original.data if isinstance(original, Example) else bytes(original)
    kind = draw(st.sampled_from(_KINDS))
    pick, value = draw(st.integers(0, 2**31)), draw(st.integers(0, 2**31))
    mutated = _mutate(data, kind, pick, value)
    if mutated == data:
        mutated = _mutate(data, "bitflip", pick, value)
    return Corruption(mutated, kind, original)


# -- quantized, sparse, nested and meta tensors ------------------------------------------------

_QRANGES = {
    "qint8": (-128, 127),
    "quint8": (0, 255),
    "qint32": (-(2**31), 2**31 - 1),
    "quint4x2": (0, 15),
    "quint2x4": (0, 3),
}
_SHAPES = st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def quantized_arrays(
    draw: st.DrawFn, *, dtype: str | None = None, qscheme: str | None = None
) -> QuantizedArray:
    """A :class:`~pthfmt.QuantizedArray` of any quantized dtype and qscheme torch saves
    (float qparams only with quint8, quint4x2 and quint2x4, as torch allows)."""
    name = dtype or draw(st.sampled_from(sorted(_QRANGES)))
    schemes = ["per_tensor_affine", "per_channel_affine"]
    if name in ("quint8", "quint4x2", "quint2x4"):
        schemes.append("per_channel_affine_float_qparams")
    if name in ("quint4x2", "quint2x4"):
        schemes.remove("per_channel_affine")
    scheme = qscheme or draw(st.sampled_from(schemes))
    lo, hi = _QRANGES[name]
    shape = draw(_SHAPES)
    count = int(np.prod(shape))
    values = draw(st.lists(st.integers(lo, hi), min_size=count, max_size=count))
    data = np.array(values, QUANTIZED_DTYPES[name]).reshape(shape)
    scales = st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False)
    if scheme == "per_tensor_affine":
        return QuantizedArray(name, data, scheme, draw(scales), draw(st.integers(lo, hi)))
    axis = draw(st.integers(0, len(shape) - 1))
    n = shape[axis]
    scale = np.array(draw(st.lists(scales, min_size=n, max_size=n)), np.float64)
    if scheme == "per_channel_affine":
        zeros = np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), np.int64)
        return QuantizedArray(name, data, scheme, scale, zeros, axis)
    zeros_f = draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n))
    return QuantizedArray(
        name, data, scheme, scale.astype(np.float32), np.array(zeros_f, np.float32), axis
    )


@st.composite
def sparse_arrays(draw: st.DrawFn, *, layout: str | None = None) -> SparseArray:
    """A valid :class:`~pthfmt.SparseArray` (COO coalesced or not, CSR, CSC, BSR, BSC) of
    float32 values, made from a random dense array."""
    name = layout or draw(st.sampled_from(SPARSE_LAYOUTS))
    block = (
        (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        if name in ("sparse_bsr", "sparse_bsc")
        else (1, 1)
    )
    rows, cols = draw(st.integers(0, 3)) * block[0], draw(st.integers(0, 3)) * block[1]
    mask = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    dense = np.zeros((rows, cols), np.float32)
    dense.reshape(-1)[np.array(mask, bool)] = 1.5
    return _sparse_of(dense, name, block, draw(st.booleans()))


def _sparse_of(
    dense: np.ndarray, layout: str, block: tuple[int, int], coalesced: bool
) -> SparseArray:
    if layout == "sparse_coo":
        indices = np.array(np.nonzero(dense), np.int64).reshape(2, -1)
        return SparseArray(
            layout, dense.shape, dense[tuple(indices)], indices=indices, coalesced=coalesced
        )
    columns = layout in ("sparse_csc", "sparse_bsc")
    bh, bw = block
    grid = dense.reshape(dense.shape[0] // bh, bh, dense.shape[1] // bw, bw).swapaxes(1, 2)
    if columns:
        grid = grid.swapaxes(0, 1)
    nonzero = grid.reshape(grid.shape[0], grid.shape[1], bh * bw).any(axis=2)
    compressed = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int64)
    outer, plain = np.nonzero(nonzero)
    blocks = grid[outer, plain]
    values = blocks if layout in ("sparse_bsr", "sparse_bsc") else blocks.reshape(-1)
    return SparseArray(
        layout,
        dense.shape,
        np.ascontiguousarray(values),
        compressed_indices=compressed,
        plain_indices=plain.astype(np.int64),
    )


@st.composite
def nested_arrays(draw: st.DrawFn) -> NestedArray:
    """A :class:`~pthfmt.NestedArray` of 1 to 3 float32 components of one ndim."""
    ndim = draw(st.integers(1, 3))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim)))
        parts.append(draw(_array(DTYPES["float32"], shape)))
    return NestedArray.from_arrays(parts)


_JAGGED_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


@st.composite
def jagged_arrays(draw: st.DrawFn) -> JaggedArray:
    """A :class:`~pthfmt.JaggedArray` (NJT) of 1 to 3 components: values of 1 to 3
    dimensions, a ragged axis anywhere in them, and sometimes ``lengths`` with holes
    between the components (as ``torch.nested.nested_tensor_from_jagged`` makes)."""
    info = draw(dtypes(names=_JAGGED_DTYPES))
    ndim = draw(st.integers(1, 3))
    ragged = draw(st.integers(1, ndim))
    rest = list(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    counts = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    holes = draw(st.booleans())
    gaps = [draw(st.integers(0, 2)) if holes else 0 for _ in counts]
    starts = np.cumsum([0] + [c + g for c, g in zip(counts, gaps)]).astype(np.int64)
    rest[ragged - 1] = int(starts[-1])
    values = draw(_array(info, tuple(rest)))
    lengths = np.array(counts, np.int64) if holes else None
    seqlens = (min(counts), max(counts)) if draw(st.booleans()) else (None, None)
    return JaggedArray(values, starts, lengths, ragged, *seqlens)


@st.composite
def meta_arrays(draw: st.DrawFn) -> MetaArray:
    """A :class:`~pthfmt.MetaArray`: a savable dtype, a shape and its contiguous strides."""
    info = draw(dtypes())
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    return MetaArray(info.name, shape, c_strides(shape))


def kinds() -> st.SearchStrategy[Any]:
    """Any of the quantized, sparse, nested (strided and jagged) and meta strategies."""
    return st.one_of(
        quantized_arrays(), sparse_arrays(), nested_arrays(), jagged_arrays(), meta_arrays()
    )
