"""The tensor kinds beyond plain strided tensors, as numpy values.

torch saves four more kinds of tensor that ``torch.load(weights_only=True)`` reads; pthfmt
returns each as a small frozen dataclass holding numpy arrays (or, from :func:`pthfmt.open`,
:class:`~pthfmt.TensorRef` s read on first use), and :func:`pthfmt.save` writes each back:

- :class:`QuantizedArray` (``_rebuild_qtensor``): the integer representation (one element per
  value, sub-byte dtypes unpacked) plus ``qscheme``, ``scale``, ``zero_point`` and ``axis``;
  :meth:`QuantizedArray.dequantize` gives float32 bit for bit as torch's ``dequantize()``.
- :class:`SparseArray` (``_rebuild_sparse_tensor``): COO ``indices``/``values`` or the
  compressed layouts' ``compressed_indices``/``plain_indices``/``values``, plus ``shape``;
  :meth:`SparseArray.to_dense`.
- :class:`NestedArray` (``_rebuild_nested_tensor``): the list of component arrays.
- :class:`JaggedArray` (``torch.nested._internal.nested_tensor._rebuild_njt``): the
  jagged layout's ``values``, ``offsets`` (and ``lengths``) and ``ragged_idx``.
- :class:`MetaArray` (``_rebuild_meta_tensor_no_storage``): shape, dtype and stride, no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np

from ..errors import CorruptError, LimitError, UnsupportedError
from .tensor import INTP_MAX, MAX_NDIM, TensorRef, c_strides

__all__ = [
    "QuantizedArray",
    "SparseArray",
    "NestedArray",
    "JaggedArray",
    "DimRange",
    "jagged_problem",
    "MetaArray",
    "QUANTIZED_DTYPES",
    "SUBBYTE_BITS",
    "SPARSE_LAYOUTS",
    "pack_subbyte",
    "unpack_subbyte",
    "as_array",
    "PackedValues",
    "QuantizedRef",
    "c_strides",
]

#: Quantized dtype -> numpy dtype of its integer representation.
QUANTIZED_DTYPES: Final[dict[str, np.dtype]] = {
    "qint8": np.dtype(np.int8),
    "quint8": np.dtype(np.uint8),
    "qint32": np.dtype(np.int32),
    "quint4x2": np.dtype(np.uint8),
    "quint2x4": np.dtype(np.uint8),
}
#: Bits per value of the packed quantized dtypes (values packed from the low bits up).
SUBBYTE_BITS: Final[dict[str, int]] = {"quint4x2": 4, "quint2x4": 2}
QSCHEMES: Final = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")
SPARSE_LAYOUTS: Final = ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")


def as_array(value: Any) -> np.ndarray:
    """A numpy array of ``value`` (a :class:`~pthfmt.TensorRef` is read)."""
    numpy = getattr(value, "numpy", None)
    if not isinstance(value, np.ndarray) and callable(numpy):
        return np.asarray(numpy())
    return np.asarray(value)


def unpack_subbyte(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit values of ``packed`` bytes, low bits first (uint8)."""
    raw = np.asarray(packed, np.uint8).reshape(-1)
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    values = (raw[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return np.ascontiguousarray(values.reshape(-1)[:count])


def pack_subbyte(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (C order, each below ``2**bits``) packed ``8 // bits`` per byte, low first."""
    per = 8 // bits
    flat = np.asarray(values, np.uint8).reshape(-1)
    padded = np.zeros(-(-flat.size // per) * per, np.uint8)
    padded[: flat.size] = flat & np.uint8((1 << bits) - 1)
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    packed: np.ndarray = np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1)
    return packed.astype(np.uint8)


class PackedValues:
    """The values of a packed ``quint4x2``/``quint2x4`` view, unpacked when first read:
    ``packed`` (the storage's bytes: an array or a TensorRef) viewed with ``offset``,
    ``shape`` and ``stride`` counted in values (checked against the storage already)."""

    __slots__ = ("bits", "offset", "packed", "shape", "stride")

    def __init__(
        self,
        packed: Any,
        bits: int,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> None:
        self.packed, self.bits = packed, bits
        self.offset, self.shape, self.stride = offset, shape, stride

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def numpy(self) -> np.ndarray:
        """The values, one uint8 per element (a new array)."""
        raw = as_array(self.packed).view(np.uint8).reshape(-1)
        flat = unpack_subbyte(raw, self.bits, raw.size * (8 // self.bits))
        if 0 in self.shape:
            return np.zeros(self.shape, np.uint8)
        view = np.ndarray(self.shape, np.uint8, flat, self.offset, self.stride)
        return view.copy()


def _channel_shape(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(-1 if d == axis else 1 for d in range(ndim))


@dataclass(frozen=True, eq=False, repr=False)
class QuantizedArray:
    """A quantized tensor: ``data`` is its integer representation (``int_repr()``).

    - ``dtype``: ``"qint8"``, ``"quint8"``, ``"qint32"``, ``"quint4x2"`` or ``"quint2x4"``;
      ``data`` is int8, uint8, int32, or uint8 with one value per element for the packed
      sub-byte dtypes (torch's ``int_repr()`` of those returns the packed bytes instead).
    - ``qscheme``: ``"per_tensor_affine"`` (``scale`` a float, ``zero_point`` an int,
      ``axis`` ``None``), ``"per_channel_affine"`` (``scale`` float64 and ``zero_point``
      int64 arrays along ``axis``) or ``"per_channel_affine_float_qparams"`` (float32
      scales and float32 zero points).
    """

    dtype: str
    data: Any
    qscheme: str
    scale: Any
    zero_point: Any
    axis: int | None = None
    requires_grad: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    def int_repr(self) -> np.ndarray:
        """The integer values, one per element (see the class docstring)."""
        return as_array(self.data).view(QUANTIZED_DTYPES[self.dtype])

    def dequantize(self) -> np.ndarray:
        """float32 values, computed as torch 2.13's CPU kernels compute them (bit for bit)."""
        q = self.int_repr()
        if self.qscheme == "per_tensor_affine":
            # (q - zero_point) in int32 (wrapping, as torch's vectorized kernel), times the
            # scale as float32
            diff = (q.astype(np.int64) - int(self.zero_point)).astype(np.int32)
            return diff.astype(np.float32) * np.float32(self.scale)
        assert self.axis is not None
        shape = _channel_shape(q.ndim, self.axis)
        scales, zeros = as_array(self.scale).reshape(shape), as_array(self.zero_point)
        if self.qscheme == "per_channel_affine_float_qparams":
            return (q.astype(np.float32) - zeros.astype(np.float32).reshape(shape)) * scales.astype(
                np.float32
            )
        # float(q) - zero_point in float32, times the float64 scale, rounded to float32
        delta = q.astype(np.float32) - zeros.astype(np.float32).reshape(shape)
        return (delta.astype(np.float64) * scales.astype(np.float64)).astype(np.float32)

    def numpy(self) -> np.ndarray:
        """The dequantized float32 values (as :meth:`dequantize`)."""
        return self.dequantize()

    def __repr__(self) -> str:
        params = (
            f"scale={self.scale!r}, zero_point={self.zero_point!r}"
            if self.axis is None
            else f"axis={self.axis}"
        )
        return f"QuantizedArray({self.dtype}, shape={self.shape}, {self.qscheme}, {params})"


class QuantizedRef(TensorRef):
    """A quantized tensor from :func:`pthfmt.open`: a :class:`~pthfmt.TensorRef` of its
    integer data (``dtype`` ``"qint8"`` ..., ``shape``, ``stride``, ``storage_key``) that
    carries its quantization in :attr:`quantized` (a :class:`QuantizedArray`).

    ``numpy()`` gives the raw integer values as torch's ``int_repr()`` does (tagged with the
    quantized dtype; for ``quint4x2``/``quint2x4`` packed, ``ceil(numel / k)`` bytes);
    :meth:`int_repr` one value per element, :meth:`dequantize` float32.
    """

    __slots__ = ("quantized",)

    quantized: QuantizedArray

    @property
    def qscheme(self) -> str:
        return self.quantized.qscheme

    @property
    def scale(self) -> Any:
        return self.quantized.scale

    @property
    def zero_point(self) -> Any:
        return self.quantized.zero_point

    @property
    def axis(self) -> int | None:
        return self.quantized.axis

    @property
    def nbytes(self) -> int:
        bits = SUBBYTE_BITS.get(self.dtype)
        return -(-self.numel * bits // 8) if bits else super().nbytes

    def int_repr(self) -> np.ndarray:
        return self.quantized.int_repr()

    def dequantize(self) -> np.ndarray:
        return self.quantized.dequantize()

    def numpy(self, *, mmap: bool | None = None) -> np.ndarray:
        bits = SUBBYTE_BITS.get(self.dtype)
        if bits is None:
            return super().numpy(mmap=mmap)
        return pack_subbyte(self.int_repr(), bits).view(self.dtype_info.numpy)

    def __repr__(self) -> str:
        return f"Quantized{super().__repr__()[:-1]}, qscheme={self.qscheme!r})"


@dataclass(frozen=True, eq=False, repr=False)
class SparseArray:
    """A sparse tensor.

    - ``layout`` ``"sparse_coo"``: ``indices`` (int64, ``(sparse_dims, nnz)``), ``values``
      (``(nnz, *dense_dims)``), ``coalesced`` (torch's flag: ``True``, ``False`` or ``None``
      when the file does not say).
    - ``"sparse_csr"``/``"sparse_csc"``/``"sparse_bsr"``/``"sparse_bsc"``:
      ``compressed_indices`` (row or column pointers), ``plain_indices`` and ``values``
      (``(nnz, *dense)``, or ``(nnz, block_rows, block_cols)`` for the blocked layouts).
    - ``shape``: the dense shape.
    """

    layout: str
    shape: tuple[int, ...]
    values: Any
    indices: Any = None
    compressed_indices: Any = None
    plain_indices: Any = None
    coalesced: bool | None = None

    @property
    def dtype(self) -> Any:
        """The values' dtype (a numpy dtype, or the torch name for a TensorRef)."""
        values = self.values
        return values.dtype

    @property
    def nnz(self) -> int:
        """Stored entries (blocks for the blocked layouts)."""
        return (
            int(self.values.shape[0])
            if self.layout == "sparse_coo"
            else int(self.plain_indices.shape[-1])
        )

    def __repr__(self) -> str:
        return f"SparseArray({self.layout}, shape={self.shape}, nnz={self.nnz}, dtype={self.dtype})"

    def to_dense(self) -> np.ndarray:
        """The dense array (duplicate COO entries are summed, as torch's ``to_dense()``);
        an index outside ``shape`` is a :class:`~pthfmt.errors.CorruptError`."""
        values = as_array(self.values)
        _check_dense_size(self.shape, values.dtype)
        if self.layout == "sparse_coo":
            return _coo_dense(self.shape, as_array(self.indices), values)
        return _compressed_dense(
            self.layout,
            self.shape,
            as_array(self.compressed_indices),
            as_array(self.plain_indices),
            values,
        )


def _check_dense_size(shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A dense array of ``shape`` must fit numpy's limits (the file chose the shape)."""
    if math.prod(shape) * dtype.itemsize > INTP_MAX or len(shape) > MAX_NDIM:
        raise LimitError(f"a dense array of shape {shape} is too large for numpy")


def _coo_dense(shape: tuple[int, ...], indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    sparse_dims = indices.shape[0]
    dense = np.zeros(shape, values.dtype)
    if indices.shape[1] == 0:
        return dense
    bounds = np.asarray(shape[:sparse_dims], np.int64).reshape(-1, 1)
    if ((indices < 0) | (indices >= bounds)).any():
        raise CorruptError(f"sparse COO indices lie outside the shape {shape}")
    np.add.at(dense, tuple(indices), values)
    return dense


def _compressed_dense(
    layout: str,
    shape: tuple[int, ...],
    compressed: np.ndarray,
    plain: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    if compressed.ndim != 1 or len(shape) < 2:
        raise UnsupportedError(f"{layout} to_dense of a batched tensor (shape {shape})")
    columns = layout in ("sparse_csc", "sparse_bsc")
    blocked = layout in ("sparse_bsr", "sparse_bsc")
    block = tuple(int(n) for n in values.shape[1:3]) if blocked else (1, 1)
    outer = shape[1] if columns else shape[0]
    dense = np.zeros(shape, values.dtype)
    if compressed.size != outer // (block[1] if columns else block[0]) + 1:
        raise CorruptError(f"{layout} compressed indices have {compressed.size} entries")
    counts: np.ndarray = np.diff(compressed.astype(np.int64))
    if (counts < 0).any() or compressed[0] != 0 or int(compressed[-1]) != plain.size:
        raise CorruptError(f"{layout} compressed indices are not a valid pointer array")
    major = np.repeat(np.arange(counts.size), counts)
    rows, cols = (plain, major) if columns else (major, plain)
    bh, bw = block
    if rows.size and ((rows < 0).any() or (rows * bh >= shape[0]).any()):
        raise CorruptError(f"{layout} indices lie outside the shape {shape}")
    if cols.size and ((cols < 0).any() or (cols * bw >= shape[1]).any()):
        raise CorruptError(f"{layout} indices lie outside the shape {shape}")
    if not blocked:
        np.add.at(dense, (rows, cols), values)
        return dense
    for r, c, blk in zip(rows.tolist(), cols.tolist(), values):
        dense[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] += blk
    return dense


@dataclass(frozen=True, eq=False, repr=False)
class NestedArray:
    """A nested tensor of the strided layout, as torch stores it: one flat ``buffer`` and,
    per component, a row of ``sizes`` and ``strides`` (int64, ``(n, ndim)``) and an entry
    of ``offsets`` (int64, ``(n,)``, counted in elements of the buffer).

    :attr:`components` are the entries: numpy views of the buffer (from :func:`pthfmt.load`)
    or :class:`~pthfmt.TensorRef` s of its storage (from :func:`pthfmt.open`).  Make one
    from arrays with :meth:`from_arrays`.
    """

    buffer: Any
    sizes: Any
    strides: Any
    offsets: Any

    @classmethod
    def from_arrays(cls, arrays: Any) -> NestedArray:
        """The nested tensor of ``arrays`` (one dtype, one number of dimensions), packed
        contiguously one after another as ``torch.nested.nested_tensor`` does."""
        parts = [np.asarray(a) for a in arrays]
        if not parts or len({p.dtype for p in parts}) != 1 or len({p.ndim for p in parts}) != 1:
            raise ValueError("a nested tensor needs one or more arrays of one dtype and ndim")
        n, ndim = len(parts), parts[0].ndim
        counts = np.array([p.size for p in parts], np.int64)
        return cls(
            np.concatenate([p.reshape(-1) for p in parts]),
            np.array([p.shape for p in parts], np.int64).reshape(n, ndim),
            np.array([c_strides(p.shape) for p in parts], np.int64).reshape(n, ndim),
            np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
        )

    @cached_property
    def components(self) -> tuple[Any, ...]:
        """Each entry (a view of :attr:`buffer`); a view outside it is a CorruptError."""
        from .tensor import check_view, view_of

        sizes, strides = as_array(self.sizes).tolist(), as_array(self.strides).tolist()
        offsets = as_array(self.offsets).tolist()
        buffer = self.buffer
        if isinstance(buffer, TensorRef):
            info, start = buffer.dtype_info, buffer.storage_offset
            nbytes, key = (start + buffer.shape[0]) * info.itemsize, buffer.storage_key
        else:
            buffer = np.ascontiguousarray(buffer)
            info, start, nbytes, key = _info(buffer.dtype), 0, buffer.nbytes, "nested buffer"
        out: list[Any] = []
        for size, stride, offset in zip(sizes, strides, offsets):
            offset = offset + start if type(offset) is int and offset >= 0 else offset
            offset, size, stride = check_view(info, nbytes, offset, tuple(size), tuple(stride), key)
            if isinstance(buffer, TensorRef):
                out.append(TensorRef(buffer.storage, info, offset, size, stride, mmap=buffer._mmap))
            else:
                out.append(view_of(buffer.view(np.uint8), info, offset, size, stride))
        return tuple(out)

    def __len__(self) -> int:
        return len(self.components)

    def arrays(self) -> list[np.ndarray]:
        """The components as numpy arrays."""
        return [as_array(c) for c in self.components]

    def __repr__(self) -> str:
        n = self.sizes.shape[0] if hasattr(self.sizes, "shape") else "?"
        return f"NestedArray({n} components, dtype={self.buffer.dtype})"


def _info(dtype: np.dtype) -> Any:
    from .dtypes import from_numpy

    info = from_numpy(dtype)
    if info is None:
        raise UnsupportedError(f"nested tensor buffer of numpy dtype {dtype}")
    return info


@dataclass(frozen=True, eq=False)
class MetaArray:
    """A tensor on the ``meta`` device: shape, dtype and stride, and no data at all."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def numpy(self) -> np.ndarray:
        """Always raises: a meta tensor holds no values."""
        raise UnsupportedError(
            f"a meta tensor (dtype {self.dtype}, shape {self.shape}) has no data to read"
        )


@dataclass(frozen=True, eq=False, repr=False)
class JaggedArray:
    """A nested tensor of the jagged layout (``torch.jagged``, an "NJT"), as torch stores
    it: one ``values`` array whose axis ``ragged_idx - 1`` joins the components one after
    another, and ``offsets`` (int64, ``(n + 1,)``) where component ``i`` starts along that
    axis; ``lengths`` (``(n,)`` or ``None``) when components do not fill the gaps between
    offsets (component ``i`` then has ``lengths[i]`` entries from ``offsets[i]``, else it
    ends at ``offsets[i + 1]``).  The tensor's shape is ``(n, *values.shape)`` with the
    ragged axis (``None`` in :attr:`shape`) at ``ragged_idx``.  ``min_seqlen`` and
    ``max_seqlen`` are the lengths torch cached when it saved (``None`` if not).

    :attr:`components` are the entries as numpy arrays (views of ``values``); make one from
    arrays with :meth:`from_arrays`.
    """

    values: Any
    offsets: Any
    lengths: Any = None
    ragged_idx: int = 1
    min_seqlen: int | None = None
    max_seqlen: int | None = None
    requires_grad: bool = False

    @classmethod
    def from_arrays(cls, arrays: Any, ragged_idx: int = 1) -> JaggedArray:
        """The jagged tensor of ``arrays`` (one dtype and ndim, equal in every dimension
        but ``ragged_idx - 1``), joined along that axis as ``torch.nested.nested_tensor(...,
        layout=torch.jagged)`` does (for ``ragged_idx`` 1)."""
        parts = [np.asarray(a) for a in arrays]
        if not parts or len({p.dtype for p in parts}) != 1 or len({p.ndim for p in parts}) != 1:
            raise ValueError("a jagged tensor needs one or more arrays of one dtype and ndim")
        axis = ragged_idx - 1
        if not 0 <= axis < parts[0].ndim:
            raise ValueError(f"ragged_idx {ragged_idx} is not in [1, {parts[0].ndim}]")
        counts = [p.shape[axis] for p in parts]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            np.concatenate(parts, axis=axis),
            offsets,
            None,
            ragged_idx,
            min(counts),
            max(counts),
        )

    @property
    def dtype(self) -> Any:
        """The values' dtype (a numpy dtype, or a TensorRef's torch name)."""
        return self.values.dtype

    @property
    def shape(self) -> tuple[int | None, ...]:
        """``(n, ...)`` with ``None`` for the ragged axis."""
        dims: list[int | None] = [int(d) for d in self.values.shape]
        dims[self.ragged_idx - 1] = None
        return (int(self.offsets.shape[0]) - 1, *dims)

    def extents(self) -> list[tuple[int, int]]:
        """Each component's ``(start, length)`` along the ragged axis of :attr:`values`;
        anything outside it is a :class:`~pthfmt.errors.CorruptError`."""
        size = int(self.values.shape[self.ragged_idx - 1])
        offsets = as_array(self.offsets)
        lengths = None if self.lengths is None else as_array(self.lengths)
        problem = jagged_problem(offsets, lengths, size)
        if problem:
            raise CorruptError(f"jagged tensor {problem}")
        starts = offsets[:-1].tolist()
        counts = (np.diff(offsets) if lengths is None else lengths).tolist()
        return list(zip(starts, counts))

    @cached_property
    def components(self) -> tuple[np.ndarray, ...]:
        """Each entry, a view of :attr:`values` (read now from a TensorRef)."""
        values = as_array(self.values)
        axis = self.ragged_idx - 1
        out = []
        for start, count in self.extents():
            index = (slice(None),) * axis + (slice(start, start + count),)
            out.append(values[index])
        return tuple(out)

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def arrays(self) -> list[np.ndarray]:
        """The components as numpy arrays."""
        return list(self.components)

    def __repr__(self) -> str:
        holes = "" if self.lengths is None else ", lengths"
        return (
            f"JaggedArray({len(self)} components, shape={self.shape}, dtype={self.dtype}, "
            f"ragged_idx={self.ragged_idx}{holes})"
        )


def jagged_problem(offsets: np.ndarray, lengths: np.ndarray | None, size: int) -> str:
    """What is wrong with a jagged tensor's ``offsets``/``lengths`` for a ragged axis of
    ``size`` entries (``""`` when nothing): offsets must be non-decreasing within
    ``[0, size]``; each ``offsets[i] + lengths[i]`` must lie within ``size``."""
    if offsets.ndim != 1 or offsets.size == 0:
        return f"offsets have shape {offsets.shape}, not (n + 1,)"
    wide = offsets.astype(np.int64)
    if (wide < 0).any() or (wide > size).any():
        return f"offsets lie outside [0, {size}] (the ragged axis of the values)"
    if lengths is None:
        if (np.diff(wide) < 0).any():
            return "offsets decrease"
        return ""
    if lengths.shape != (offsets.size - 1,):
        return f"lengths have shape {lengths.shape}, not ({offsets.size - 1},) as the offsets"
    counts = lengths.astype(np.int64)
    if (counts < 0).any() or (counts > size - wide[:-1]).any():  # (no int64 overflow)
        return f"offsets + lengths lie outside [0, {size}] (the ragged axis of the values)"
    return ""


@dataclass(frozen=True)
class DimRange:
    """torch's ``torch._dynamo.decorators._DimRange`` (``dim``, ``min``, ``max``), kept as
    the inert record it is: saved in the dynamo state of an NJT's cached seqlen tensors."""

    dim: int
    min: int | None
    max: int | None
