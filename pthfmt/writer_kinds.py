"""How :func:`pthfmt.save` writes quantized, sparse, nested (strided and jagged) and meta
tensors.

Each :mod:`pthfmt.model.kinds` value becomes the call torch's ``Tensor.__reduce_ex__``
writes (``spec/pth-format.md`` §8.9); the plain tensors inside (indices, values, scales, the
nested buffer) are written as ordinary tensors by the writer.  A quantized tensor's integer
data is a storage of its quantized dtype (``QInt8Storage`` ...; ``quint4x2``/``quint2x4``
packed low bits first), described to the writer as a :class:`QuantizedData`.

:class:`KindParts` computes each value's pieces once: the writer pickles twice and finds
tensors by identity, so the arrays made here must be the same objects both times.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

import numpy as np

from .errors import PthError, UnserializableError
from .model.dtypes import DTYPES, DType
from .model.kinds import (
    QUANTIZED_DTYPES,
    SPARSE_LAYOUTS,
    SUBBYTE_BITS,
    JaggedArray,
    MetaArray,
    NestedArray,
    QuantizedArray,
    SparseArray,
    as_array,
    c_strides,
    pack_subbyte,
)
from .model.tensor import TensorRef
from .pickle.pickler import GlobalRef, Reduction

__all__ = ["KINDS", "KindParts", "QuantizedData", "qtensor_args"]

KINDS: Final = (QuantizedArray, SparseArray, NestedArray, JaggedArray, MetaArray)
_QTENSOR = GlobalRef("torch._utils", "_rebuild_qtensor")
_SPARSE = GlobalRef("torch._utils", "_rebuild_sparse_tensor")
_NESTED = GlobalRef("torch._utils", "_rebuild_nested_tensor")
_META = GlobalRef("torch._utils", "_rebuild_meta_tensor_no_storage")
_FROM_TYPE = GlobalRef("torch._tensor", "_rebuild_from_type_v2")
_NJT = GlobalRef("torch.nested._internal.nested_tensor", "_rebuild_njt")
_NJT_CLASS = GlobalRef("torch.nested._internal.nested_tensor", "NestedTensor")
_LAYOUT = GlobalRef("torch.serialization", "_get_layout")
_SIZE = GlobalRef("torch", "Size")
_PER_TENSOR = GlobalRef("torch", "per_tensor_affine")
_PER_CHANNEL = GlobalRef("torch", "per_channel_affine")


class QuantizedData:
    """The integer storage of a quantized tensor: ``array`` (tagged with the quantized
    dtype; packed bytes for the sub-byte dtypes) and the logical ``shape``."""

    __slots__ = ("array", "qparams", "shape", "value")

    def __init__(self, value: QuantizedArray) -> None:
        self.value = value
        name = value.dtype
        if name not in QUANTIZED_DTYPES:
            raise UnserializableError(f"quantized dtype {name!r} is not one torch saves")
        data = _array(value.data)
        if data.dtype.kind not in "iu":
            raise UnserializableError(f"quantized {name} data is {data.dtype}, not integers")
        plain = QUANTIZED_DTYPES[name]
        info = DTYPES[name]
        bits = SUBBYTE_BITS.get(name)
        self.shape = tuple(int(n) for n in data.shape)
        if bits is not None:
            if data.size and (data.min() < 0 or data.max() >= 1 << bits):
                raise UnserializableError(f"{name} values must lie in [0, {1 << bits})")
            self.array = pack_subbyte(data, bits).view(info.numpy)
        else:
            info_range = np.iinfo(plain)
            if data.size and (data.min() < info_range.min or data.max() > info_range.max):
                raise UnserializableError(f"{name} values do not fit {plain}")
            self.array = data.astype(plain, copy=False).view(info.numpy)
        self.qparams = _qparams(value, len(self.shape))


def _array(value: Any) -> np.ndarray:
    return as_array(value)


def _tensor(value: Any) -> Any:
    """A component tensor as the writer takes it: a TensorRef as is, else a numpy array."""
    if isinstance(value, TensorRef):
        return value
    array = np.asarray(value)
    if array.dtype.metadata and "torch" in array.dtype.metadata:
        array = array.view(np.dtype(array.dtype.str))
    return array


class KindParts:
    """The reduction of each kinds value, made once per object (see the module docstring)."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[Any, Any]] = {}

    def reduce(self, obj: Any) -> Any:
        """The :class:`Reduction` (or :class:`QuantizedData`) that writes ``obj``."""
        hit = self._made.get(id(obj))
        if hit is None:
            hit = self._made[id(obj)] = (obj, _reduce(obj))
        return hit[1]


def _reduce(obj: Any) -> Any:
    if isinstance(obj, QuantizedArray):
        return QuantizedData(obj)
    if isinstance(obj, MetaArray):
        try:
            dtype = DType(obj.dtype)
        except ValueError:
            raise UnserializableError(f"meta tensor dtype {obj.dtype!r} is unknown") from None
        shape, stride = _dims(obj.shape), _dims(obj.stride)
        return Reduction(
            _META, (GlobalRef("torch", dtype.name), shape, stride, bool(obj.requires_grad))
        )
    if isinstance(obj, SparseArray):
        return _sparse(obj)
    if isinstance(obj, JaggedArray):
        return _jagged(obj)
    return _nested(obj)


def _dims(values: Any) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise UnserializableError(f"{values!r} is not a tuple of ints") from None


def _sparse(obj: SparseArray) -> Reduction:
    if obj.layout not in SPARSE_LAYOUTS:
        raise UnserializableError(
            f"sparse layout {obj.layout!r} is not one of {', '.join(SPARSE_LAYOUTS)}"
        )
    layout = Reduction(_LAYOUT, (f"torch.{obj.layout}",))
    size = Reduction(_SIZE, (_dims(obj.shape),))
    values = _tensor(obj.values)
    if obj.layout == "sparse_coo":
        indices = _tensor(obj.indices)
        if not isinstance(indices, TensorRef) and indices.dtype != np.int64:
            indices = indices.astype(np.int64)
        coalesced = None if obj.coalesced is None else bool(obj.coalesced)
        return Reduction(_SPARSE, (layout, (indices, values, size, coalesced)))
    compressed, plain = _tensor(obj.compressed_indices), _tensor(obj.plain_indices)
    return Reduction(_SPARSE, (layout, (compressed, plain, values, size)))


def _nested(obj: NestedArray) -> Reduction:
    _ = obj.components  # the views must lie inside the buffer
    buffer = _tensor(obj.buffer)
    if not isinstance(buffer, TensorRef):
        buffer = buffer.reshape(-1)
    parts = tuple(_tensor(v) for v in (obj.sizes, obj.strides, obj.offsets))
    for part in parts:
        if not isinstance(part, TensorRef) and part.dtype != np.int64:
            raise UnserializableError("nested tensor sizes, strides and offsets must be int64")
    return Reduction(_NESTED, (buffer, *parts))


def _jagged(obj: JaggedArray) -> Reduction:
    """``_rebuild_from_type_v2(_rebuild_njt, NestedTensor, ({values, offsets, lengths,
    _ragged_idx, _metadata_cache, requires_grad},), state)`` as torch's
    ``NestedTensor.__reduce_ex__`` writes it (the state repeats the tensors; the cached
    seqlens are ``(n, 0)`` float32 tensors, without dynamo's marks)."""
    ragged = obj.ragged_idx
    if type(ragged) is not int or not 1 <= ragged <= len(obj.values.shape):
        raise UnserializableError(f"jagged tensor ragged_idx {ragged!r} is out of range")
    try:
        obj.extents()
    except PthError as exc:
        raise UnserializableError(str(exc)) from None
    values, offsets = _tensor(obj.values), _index(obj.offsets, "offsets")
    lengths = None if obj.lengths is None else _index(obj.lengths, "lengths")
    cache: dict[str, Any] = {}
    for key, count in (("min_seqlen", obj.min_seqlen), ("max_seqlen", obj.max_seqlen)):
        if count is not None:
            cache[key] = np.zeros((int(count), 0), np.float32)
    kwargs = {
        "values": values,
        "offsets": offsets,
        "lengths": lengths,
        "_ragged_idx": ragged,
        "_metadata_cache": cache,
        "requires_grad": bool(obj.requires_grad),
    }
    state = {
        "_ragged_idx": ragged,
        "_values": values,
        "_offsets": offsets,
        "_lengths": lengths,
        "_metadata_cache": cache,
    }
    return Reduction(_FROM_TYPE, (_NJT, _NJT_CLASS, (kwargs,), state))


def _index(value: Any, what: str) -> Any:
    """Offsets or lengths: int64 (a TensorRef as is)."""
    tensor = _tensor(value)
    if isinstance(tensor, TensorRef):
        return tensor
    if tensor.dtype.kind not in "iu":
        raise UnserializableError(f"jagged tensor {what} are {tensor.dtype}, not integers")
    return tensor.astype(np.int64, copy=False)


def qtensor_args(data: QuantizedData, pid: Any, offset: int, stride: tuple[int, ...]) -> Reduction:
    """``_rebuild_qtensor(storage, offset, size, stride, quantizer_params, requires_grad,
    OrderedDict())`` for a quantized tensor whose storage ``pid`` the writer assigned."""
    value = data.value
    if SUBBYTE_BITS.get(value.dtype):
        offset, stride = 0, c_strides(data.shape)
    return Reduction(
        _QTENSOR,
        (pid, offset, data.shape, stride, data.qparams, bool(value.requires_grad), OrderedDict()),
    )


def _qparams(value: QuantizedArray, ndim: int) -> tuple[Any, ...]:
    if value.qscheme == "per_tensor_affine":
        return (_PER_TENSOR, float(value.scale), int(value.zero_point))
    if value.qscheme not in ("per_channel_affine", "per_channel_affine_float_qparams"):
        raise UnserializableError(
            f"qscheme {value.qscheme!r} cannot be saved (torch saves "
            "per_tensor_affine and the per-channel affine schemes)"
        )
    axis = value.axis
    if type(axis) is not int or not 0 <= axis < ndim:
        raise UnserializableError(f"per-channel axis {axis!r} is out of range")
    floats = value.qscheme == "per_channel_affine_float_qparams"
    scales = _array(value.scale).astype(np.float32 if floats else np.float64).reshape(-1)
    zeros = _array(value.zero_point).astype(np.float32 if floats else np.int64).reshape(-1)
    return (_PER_CHANNEL, scales, zeros, axis)
