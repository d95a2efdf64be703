"""Handlers for the rebuild functions of quantized, sparse, nested (strided and jagged) and
meta tensors.

Each handler checks every argument the file passes (types, lengths, shapes against each
other, views against their storage) and builds a :mod:`pthfmt.model.kinds` value; anything
malformed is a :class:`~pthfmt.errors.FormatError` (the pickle machine adds the record,
offset and key path).  The tensors inside (indices, values, scales, buffers) were already
built by the plain tensor handlers: numpy arrays for ``load``, :class:`TensorRef` s for
``open`` (read when first used).  See ``spec/pth-format.md`` §8.9 for the argument lists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ..errors import FormatError, UnsafePickleError
from ..model.dtypes import DTYPES, DType, DTypeInfo, from_numpy
from ..model.kinds import (
    QUANTIZED_DTYPES,
    SPARSE_LAYOUTS,
    SUBBYTE_BITS,
    DimRange,
    JaggedArray,
    MetaArray,
    NestedArray,
    PackedValues,
    QuantizedArray,
    QuantizedRef,
    SparseArray,
)
from ..model.storage import StorageInfo, StorageSlice
from ..model.tensor import INTP_MAX, MAX_NDIM, TensorRef, check_view
from ..pickle.machine import Pending
from ..text import short_repr

if TYPE_CHECKING:
    from .handlers import TorchHandlers

__all__ = ["KIND_HANDLERS", "kind_handler", "check_dynamo_state", "NJT_CLASS", "NJT_REBUILD"]

_UINT8: Final = DTYPES["uint8"]
_CODE: Final = "tensor.metadata"


def _fail(message: str) -> FormatError:
    return FormatError(message, code=_CODE)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """A size or stride: at most 64 ints in [0, 2**63), checked before any arithmetic."""
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
        raise _fail(f"{what} is {short_repr(value)}, not a tuple of at most {MAX_NDIM} ints")
    for v in value:
        if type(v) is not int or not 0 <= v <= INTP_MAX:
            raise _fail(f"{what} holds {short_repr(v)}, not an int in [0, 2**63)")
    return tuple(value)


def _bool(value: Any, what: str) -> bool:
    if value is not True and value is not False:
        raise _fail(f"{what} is {short_repr(value)}, not a bool")
    return value


def _tensor(value: Any, what: str) -> tuple[tuple[int, ...], DTypeInfo]:
    """The shape and dtype of a tensor argument (a numpy array or a TensorRef)."""
    if isinstance(value, TensorRef):
        return value.shape, value.dtype_info
    if isinstance(value, np.ndarray):
        info = from_numpy(value.dtype)
        if info is not None:
            return tuple(int(n) for n in value.shape), info
    raise _fail(f"{what} is {_kind(value)}, not a tensor")


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


# -- quantized ---------------------------------------------------------------------------------


def rebuild_qtensor(
    h: TorchHandlers,
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    quantizer_params: Any,
    requires_grad: Any,
    backward_hooks: Any = None,
) -> QuantizedArray | QuantizedRef:
    """``_rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params,
    requires_grad, backward_hooks)``."""
    base = storage.base if isinstance(storage, StorageSlice) else storage
    info = base.dtype if isinstance(base, StorageInfo) else None
    if info is None or info.kind != "quantized":
        what = info.storage if info is not None else _kind(storage)
        raise _fail(f"_rebuild_qtensor storage is {what}, not a quantized storage")
    size = _ints(size, "_rebuild_qtensor size")
    requires_grad = _bool(requires_grad, "_rebuild_qtensor requires_grad")
    qscheme, scale, zero_point, axis = _qparams(quantizer_params, size)
    bits = SUBBYTE_BITS.get(info.name)
    if bits is None:
        data = h.make_tensor(storage, None, offset, size, stride, False)
        if isinstance(data, np.ndarray):
            data = data.view(QUANTIZED_DTYPES[info.name])
    else:
        data = _subbyte(h, storage, info, bits, offset, size, stride)
    value = QuantizedArray(info.name, data, qscheme, scale, zero_point, axis, requires_grad)
    if h.eager:
        return value
    # pthfmt.open: a TensorRef of the integer data that carries the quantization
    if isinstance(data, TensorRef):
        geometry = (data.storage, info, data.storage_offset, data.shape, data.stride)
    else:
        packed = data.packed
        geometry = (packed.storage, info, data.offset, data.shape, data.stride)
    ref = QuantizedRef(*geometry, requires_grad, mmap=h.mmap)
    ref.quantized = value
    return ref


def _subbyte(
    h: TorchHandlers,
    storage: Any,
    info: DTypeInfo,
    bits: int,
    offset: Any,
    size: tuple[int, ...],
    stride: Any,
) -> Any:
    """The values of a packed quint4x2/quint2x4 view, unpacked (offset, size and stride count
    values; the storage's numel counts bytes)."""
    nbytes = storage.numel if isinstance(storage, StorageSlice) else storage.nbytes
    key = storage.base.key if isinstance(storage, StorageSlice) else storage.key
    offset, size, stride = check_view(_UINT8, nbytes * (8 // bits), offset, size, stride, key)
    packed = h.make_tensor(storage, None, 0, (nbytes,), (1,), False)
    values = PackedValues(packed, bits, offset, size, stride)
    return values.numpy() if isinstance(packed, np.ndarray) else values


def _qparams(params: Any, size: tuple[int, ...]) -> tuple[str, Any, Any, int | None]:
    if not isinstance(params, tuple) or not params:
        raise _fail(f"quantizer_params is {short_repr(params)}, not a tuple")
    scheme = getattr(params[0], "qualname", "")
    if scheme == "torch.per_tensor_affine":
        if len(params) != 3:
            raise _fail(f"per_tensor_affine quantizer_params has {len(params)} items, not 3")
        scale, zero_point = params[1], params[2]
        if type(scale) not in (float, int) or type(zero_point) is not int:
            raise _fail(
                f"per_tensor_affine scale {short_repr(scale)} and zero point "
                f"{short_repr(zero_point)} are not a float and an int"
            )
        if not -(1 << 63) <= zero_point < 1 << 63:
            raise _fail(f"per_tensor_affine zero point {short_repr(zero_point)} is not an int64")
        return "per_tensor_affine", float(scale), zero_point, None
    if scheme in ("torch.per_channel_affine", "torch.per_channel_affine_float_qparams"):
        if len(params) != 4:
            raise _fail(f"per-channel quantizer_params has {len(params)} items, not 4")
        return _per_channel(scheme.removeprefix("torch."), *params[1:], size)
    raise _fail(
        f"quantizer_params qscheme {short_repr(params[0])} (torch loads only "
        "per_tensor_affine, per_channel_affine and per_channel_affine_float_qparams)"
    )


def _per_channel(
    scheme: str, scales: Any, zeros: Any, axis: Any, size: tuple[int, ...]
) -> tuple[str, Any, Any, int | None]:
    if type(axis) is not int or not 0 <= axis < len(size):
        raise _fail(f"per-channel axis {short_repr(axis)} is out of range for size {size}")
    float_qparams = scheme == "per_channel_affine_float_qparams"
    if isinstance(scales, list) and isinstance(zeros, list):
        scales = _list_array(scales, np.float32 if float_qparams else np.float64, "scales")
        zeros = _list_array(zeros, np.float32 if float_qparams else np.int64, "zero points")
        shapes = [scales.shape, zeros.shape]
    else:
        s_shape, s_info = _tensor(scales, "per-channel scales")
        z_shape, z_info = _tensor(zeros, "per-channel zero points")
        if s_info.kind != "float" or z_info.kind not in ("float", "int"):
            raise _fail(
                f"per-channel scales of {s_info.name} and zero points of {z_info.name} are "
                "not floating point and integer or floating point"
            )
        float_qparams = z_info.kind == "float"  # torch decides by the zero points' dtype
        want = np.float32 if float_qparams else np.float64
        if isinstance(scales, np.ndarray) and scales.dtype != want:
            scales = scales.astype(want)
        if isinstance(zeros, np.ndarray) and zeros.dtype != (
            np.float32 if float_qparams else np.int64
        ):
            zeros = zeros.astype(np.float32 if float_qparams else np.int64)
        shapes = [s_shape, z_shape]
    if shapes != [(size[axis],), (size[axis],)]:
        raise _fail(
            f"per-channel scales of shape {shapes[0]} and zero points of shape {shapes[1]} "
            f"do not match size[{axis}] = {size[axis]}"
        )
    kind = "per_channel_affine_float_qparams" if float_qparams else "per_channel_affine"
    return kind, scales, zeros, axis


def _list_array(items: list[Any], dtype: Any, what: str) -> np.ndarray:
    if not all(type(v) in (int, float) for v in items):
        raise _fail(f"per-channel {what} list holds something other than numbers")
    try:
        return np.array(items, dtype)
    except OverflowError:
        raise _fail(f"per-channel {what} do not fit {np.dtype(dtype)}") from None


# -- sparse ------------------------------------------------------------------------------------


def rebuild_sparse_tensor(h: TorchHandlers, layout: Any, data: Any) -> SparseArray:
    """``_rebuild_sparse_tensor(layout, data)``: COO ``data`` is ``(indices, values, size[,
    is_coalesced])``, the compressed layouts' ``(compressed_indices, plain_indices, values,
    size)``."""
    name = layout.removeprefix("torch.") if isinstance(layout, str) else None
    if name not in SPARSE_LAYOUTS:
        raise _fail(f"_rebuild_sparse_tensor layout {short_repr(layout)} is not a sparse layout")
    if not isinstance(data, tuple):
        raise _fail(f"_rebuild_sparse_tensor data is {_kind(data)}, not a tuple")
    if name == "sparse_coo":
        return _coo(data)
    if len(data) != 4:
        raise _fail(f"{name} data has {len(data)} items, not 4")
    compressed, plain, values, size = data
    shape = _ints(size, f"{name} size")
    c_shape, c_info = _tensor(compressed, f"{name} compressed indices")
    p_shape, p_info = _tensor(plain, f"{name} plain indices")
    v_shape, _ = _tensor(values, f"{name} values")
    if c_info.name not in ("int32", "int64") or p_info.name != c_info.name:
        raise _fail(f"{name} indices are {c_info.name} and {p_info.name}, not both int32 or int64")
    batch = len(c_shape) - 1
    blocked = name in ("sparse_bsr", "sparse_bsc")
    if (
        batch < 0
        or len(p_shape) != batch + 1
        or c_shape[:batch] != p_shape[:batch]
        or len(v_shape) < batch + (3 if blocked else 1)
        or v_shape[: batch + 1] != p_shape
        or len(shape) < batch + 2
    ):
        raise _fail(
            f"{name} shapes do not fit together: compressed indices {c_shape}, plain "
            f"indices {p_shape}, values {v_shape}, size {shape}"
        )
    return SparseArray(name, shape, values, compressed_indices=compressed, plain_indices=plain)


def _coo(data: tuple[Any, ...]) -> SparseArray:
    if len(data) not in (3, 4):
        raise _fail(f"sparse_coo data has {len(data)} items, not 3 or 4")
    indices, values, size = data[:3]
    coalesced = data[3] if len(data) == 4 else None
    if coalesced is not None:
        _bool(coalesced, "sparse_coo is_coalesced")
    shape = _ints(size, "sparse_coo size")
    i_shape, i_info = _tensor(indices, "sparse_coo indices")
    v_shape, _ = _tensor(values, "sparse_coo values")
    if i_info.name != "int64" or len(i_shape) != 2:
        raise _fail(f"sparse_coo indices are {i_info.name} of shape {i_shape}, not 2-d int64")
    sparse_dims, nnz = i_shape
    if (
        not v_shape
        or v_shape[0] != nnz
        or len(shape) != sparse_dims + len(v_shape) - 1
        or shape[sparse_dims:] != v_shape[1:]
    ):
        raise _fail(
            f"sparse_coo shapes do not fit together: indices {i_shape}, values {v_shape}, "
            f"size {shape}"
        )
    return SparseArray("sparse_coo", shape, values, indices=indices, coalesced=coalesced)


# -- nested and meta ---------------------------------------------------------------------------


def rebuild_nested_tensor(
    h: TorchHandlers, buffer: Any, sizes: Any, strides: Any, offsets: Any
) -> NestedArray:
    """``_rebuild_nested_tensor(buffer, sizes, strides, storage_offsets)``: component ``i``
    views ``buffer`` at ``storage_offsets[i]`` with ``sizes[i]`` and ``strides[i]``."""
    b_shape, _ = _tensor(buffer, "nested tensor buffer")
    if len(b_shape) != 1:
        raise _fail(f"nested tensor buffer has shape {b_shape}, not one dimension")
    table = []
    for value, what, ndim in (
        (sizes, "sizes", 2),
        (strides, "strides", 2),
        (offsets, "offsets", 1),
    ):
        shape, i_info = _tensor(value, f"nested tensor {what}")
        if i_info.name != "int64" or len(shape) != ndim:
            raise _fail(f"nested tensor {what} are {i_info.name} of shape {shape}")
        table.append(shape)
    if table[0] != table[1] or table[2] != table[0][:1]:
        raise _fail(
            f"nested tensor sizes {table[0]}, strides {table[1]} and offsets {table[2]} "
            "do not fit together"
        )
    if isinstance(buffer, TensorRef) and buffer.stride != (1,):
        raise _fail(f"nested tensor buffer has stride {buffer.stride}, not (1,)")
    nested = NestedArray(buffer, sizes, strides, offsets)
    if h.eager or all(map(_readable, (sizes, strides, offsets))):
        _ = nested.components  # checked now, where errors get their key path
    return nested


def _readable(value: Any) -> bool:
    """Can the tensor's data be read now?  (Not in the validator's audit, which runs the
    pickle before any storage has data; its checks come later.)"""
    if not isinstance(value, TensorRef):
        return True
    storage = value.storage
    return storage._buffer is not None or storage._reader is not None


def rebuild_meta_tensor(
    h: TorchHandlers, dtype: Any, size: Any, stride: Any, requires_grad: Any
) -> MetaArray:
    """``_rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad)``."""
    if not isinstance(dtype, DType):
        raise _fail(f"meta tensor dtype is {short_repr(dtype)}, not a torch dtype")
    shape = _ints(size, "meta tensor size")
    strides = _ints(stride, "meta tensor stride")
    if len(shape) != len(strides):
        raise _fail(f"meta tensor size {shape} and stride {strides} differ in length")
    return MetaArray(dtype.name, shape, strides, _bool(requires_grad, "meta tensor requires_grad"))


# -- jagged nested tensors ---------------------------------------------------------------------

NJT_CLASS: Final = "torch.nested._internal.nested_tensor.NestedTensor"
NJT_REBUILD: Final = "torch.nested._internal.nested_tensor._rebuild_njt"
_NJT_KWARGS: Final = (
    "values",
    "offsets",
    "lengths",
    "_ragged_idx",
    "_metadata_cache",
    "requires_grad",
)
#: the NJT's own state (torch sets each as an attribute); its tensors repeat the kwargs'
_NJT_STATE: Final = frozenset(("_ragged_idx", "_values", "_offsets", "_lengths", "_metadata_cache"))
_SEQLENS: Final = ("min_seqlen", "max_seqlen")
#: dynamo's marks on a tensor (``torch._dynamo.mark_dynamic`` ...) -> what each holds
DYNAMO_STATE: Final = {
    "_dynamo_dynamic_indices": "dims",
    "_dynamo_weak_dynamic_indices": "dims",
    "_dynamo_static_indices": "dims",
    "_dynamo_unbacked_indices": "dims",
    "_dynamo_propagated_dynamic_indices": "dims",
    "_dynamo_dynamic_range": "ranges",
    "_dynamo_hint_overrides": "hints",
    "_specialize_on": "specialize",
    "_has_dynamo_dim_marking": "bool",
}
_INT64: Final = 1 << 63


class _PendingDimRange(Pending):
    """``torch._dynamo.decorators._DimRange`` (``NEWOBJ``); ``BUILD`` gives its fields
    ``[dim, min, max]`` (a slots dataclass's state)."""

    __slots__ = ()

    def build(self, state: Any) -> DimRange:
        if not isinstance(state, (list, tuple)) or len(state) != 3:
            raise _fail(f"_DimRange state is {short_repr(state)}, not [dim, min, max]")
        dim, low, high = state
        if type(dim) is not int or not 0 <= dim < MAX_NDIM:
            raise _fail(f"_DimRange dim is {short_repr(dim)}, not an int in [0, {MAX_NDIM})")
        for bound in (low, high):
            if bound is not None and (type(bound) is not int or not -_INT64 <= bound < _INT64):
                raise _fail(f"_DimRange bound is {short_repr(bound)}, not None or an int64")
        return DimRange(dim, low, high)


def dim_range(h: TorchHandlers) -> Pending:
    """``_DimRange()`` (no arguments; its fields come by ``BUILD``)."""
    return _PendingDimRange()


def _dims_set(value: Any, what: str) -> None:
    if not isinstance(value, set) or not all(type(d) is int and 0 <= d < MAX_NDIM for d in value):
        raise _fail(f"{what} is {short_repr(value)}, not a set of dimensions")


def check_dynamo_state(state: Any, what: str) -> None:
    """A tensor state with dynamo's marks: each known key holds what torch puts there, and a
    state that has any of them holds nothing else."""
    if not isinstance(state, dict) or not any(k in DYNAMO_STATE for k in state):
        return
    for key, value in state.items():
        kind = DYNAMO_STATE.get(key) if isinstance(key, str) else None
        name = f"{what} state {short_repr(key)}"
        if kind is None:
            raise _fail(f"{what} state key {short_repr(key)} is not one of dynamo's marks")
        if kind == "dims":
            _dims_set(value, name)
        elif kind == "ranges":
            if not isinstance(value, set) or not all(type(r) is DimRange for r in value):
                raise _fail(f"{name} is {short_repr(value)}, not a set of _DimRange")
        elif kind == "bool":
            _bool(value, name)
        elif not isinstance(value, dict) or not all(
            type(k) is int and 0 <= k < MAX_NDIM for k in value
        ):
            raise _fail(f"{name} is {short_repr(value)}, not a dict of dimensions")
        elif kind == "hints" and not all(
            type(v) is int and -_INT64 <= v < _INT64 for v in value.values()
        ):
            raise _fail(f"{name} holds {short_repr(value)}, not int hints")
        elif kind == "specialize" and any(type(v) is not list or v for v in value.values()):
            raise _fail(f"{name} holds {short_repr(value)}, not empty lists")


def rebuild_from_type(
    h: TorchHandlers, func: Any, new_type: Any, args: Any, state: Any = None
) -> Any:
    """``_rebuild_from_type_v2(func, new_type, args, state)``: an NJT (``_rebuild_njt`` to
    ``NestedTensor``), else a tensor or Parameter as the plain handler builds it, after a
    check of any dynamo marks in its state."""
    njt_class = getattr(new_type, "qualname", None) == NJT_CLASS
    njt_func = getattr(func, "qualname", None) == NJT_REBUILD
    if njt_class != njt_func:
        raise UnsafePickleError(
            f"_rebuild_from_type_v2 of {short_repr(func)} to {short_repr(new_type)} "
            "(_rebuild_njt builds only a NestedTensor, and only it does)"
        )
    if not njt_class:
        check_dynamo_state(state[0] if _pair(state) else state, "tensor")
        return h.rebuild_from_type_v2(func, new_type, args, state)
    value = func.apply(args) if isinstance(args, tuple) else None
    if not isinstance(value, JaggedArray):
        raise _fail(f"_rebuild_njt arguments {short_repr(args)} are not one dict")
    _njt_state(value, state[0] if _pair(state) else state)
    return value


def _pair(state: Any) -> bool:
    return isinstance(state, tuple) and len(state) == 2


def _njt_state(value: JaggedArray, state: Any) -> None:
    """The NJT's state repeats its constructor's arguments (torch would set each as an
    attribute, so one that differs would replace the values read)."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise _fail(f"NestedTensor state is {_kind(state)}, not a dict")
    for key, item in state.items():
        if key == "_dynamo_propagated_dynamic_indices":
            _dims_set(item, "NestedTensor state _dynamo_propagated_dynamic_indices")
            continue
        if key == "_is_param":  # an nn.Parameter of an NJT (torch loads a NestedTensor)
            _bool(item, "NestedTensor state _is_param")
            continue
        if key not in _NJT_STATE:
            raise _fail(f"NestedTensor state key {short_repr(key)} is not one torch writes")
        same = (
            type(item) is int and item == value.ragged_idx
            if key == "_ragged_idx"
            else key == "_metadata_cache" or item is _njt_field(value, key)
        )
        if not same:
            raise _fail(f"NestedTensor state {key} differs from the _rebuild_njt argument")


def _njt_field(value: JaggedArray, key: str) -> Any:
    return {"_values": value.values, "_offsets": value.offsets, "_lengths": value.lengths}[key]


def rebuild_njt(h: TorchHandlers, kwargs: Any) -> JaggedArray:
    """``_rebuild_njt({values, offsets, lengths, _ragged_idx, _metadata_cache,
    requires_grad})``."""
    if (
        not isinstance(kwargs, dict)
        or not all(type(k) is str for k in kwargs)
        or sorted(kwargs) != sorted(_NJT_KWARGS)
    ):
        keys = _keys(kwargs) if isinstance(kwargs, dict) else _kind(kwargs)
        raise _fail(f"_rebuild_njt arguments are {keys}, not {', '.join(_NJT_KWARGS)}")
    values, offsets, lengths = kwargs["values"], kwargs["offsets"], kwargs["lengths"]
    v_shape, _ = _tensor(values, "NJT values")
    o_shape, o_info = _tensor(offsets, "NJT offsets")
    if o_info.name not in ("int32", "int64") or len(o_shape) != 1 or o_shape[0] < 1:
        raise _fail(f"NJT offsets are {o_info.name} of shape {o_shape}, not 1-d int64")
    if lengths is not None:
        l_shape, l_info = _tensor(lengths, "NJT lengths")
        if l_info.name not in ("int32", "int64") or l_shape != (o_shape[0] - 1,):
            raise _fail(
                f"NJT lengths are {l_info.name} of shape {l_shape}, not int64 of shape "
                f"({o_shape[0] - 1},) as the offsets"
            )
    ragged = kwargs["_ragged_idx"]
    if type(ragged) is not int or not 1 <= ragged <= len(v_shape):
        raise _fail(f"NJT _ragged_idx {short_repr(ragged)} is not in [1, {len(v_shape)}]")
    seqlens = _seqlens(kwargs["_metadata_cache"])
    grad = _bool(kwargs["requires_grad"], "NJT requires_grad")
    value = JaggedArray(values, offsets, lengths, ragged, *seqlens, grad)
    if h.eager:  # checked now, where errors get their key path (pthfmt.open: when read,
        value.extents()  # and validate reports nested.jagged)
    return value


def _keys(mapping: dict[Any, Any]) -> str:
    return "{" + ", ".join(sorted(map(short_repr, mapping))) + "}"


def _seqlens(cache: Any) -> tuple[int | None, int | None]:
    """``_metadata_cache``: ``min_seqlen``/``max_seqlen`` tensors of shape ``(n, 0)``
    (torch keeps the number in the shape)."""
    if not isinstance(cache, dict) or not all(k in _SEQLENS for k in cache):
        keys = _keys(cache) if isinstance(cache, dict) else _kind(cache)
        raise _fail(f"NJT _metadata_cache holds {keys}, not min_seqlen and max_seqlen")
    out: list[int | None] = []
    for key in _SEQLENS:
        if key not in cache:
            out.append(None)
            continue
        shape, _ = _tensor(cache[key], f"NJT {key}")
        if len(shape) != 2 or shape[1] != 0:
            raise _fail(f"NJT {key} has shape {shape}, not (n, 0)")
        check_dynamo_state(getattr(cache[key], "state", None), f"NJT {key}")
        out.append(shape[0])
    return out[0], out[1]


#: ALLOWLIST handler names -> handlers (each takes the run's TorchHandlers first).
KIND_HANDLERS: Final[dict[str, Callable[..., Any]]] = {
    "kind_qtensor": rebuild_qtensor,
    "kind_sparse": rebuild_sparse_tensor,
    "kind_nested": rebuild_nested_tensor,
    "kind_meta": rebuild_meta_tensor,
    "kind_from_type": rebuild_from_type,
    "kind_njt": rebuild_njt,
    "kind_dim_range": dim_range,
}


def kind_handler(h: TorchHandlers, name: str) -> Callable[..., Any]:
    """The handler ``name`` of :data:`KIND_HANDLERS`, bound to ``h`` (a ``partial``, so that
    arguments that do not bind are still told apart from errors inside the handler)."""
    return partial(KIND_HANDLERS[name], h)
