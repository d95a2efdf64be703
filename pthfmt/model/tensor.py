"""Tensors: lazy tensor references, and the numpy views made from storages.

A torch tensor is a view of a *storage* (one flat run of bytes, shared by every tensor that
views it): ``storage_offset``, ``shape`` and ``stride`` are counted in elements of the tensor's
dtype.  pthfmt keeps exactly that model:

- :class:`~pthfmt.model.storage.StorageInfo` (in ``storage.py``) describes one storage of a
  file and caches the one numpy ``uint8`` buffer made for it, so that every tensor viewing it
  becomes a numpy view of the same memory.
- :class:`TensorRef` is a tensor that has not been read: metadata only, ``.numpy()`` reads.
- :class:`Tensor` is what a user hands to :func:`pthfmt.save` to say what numpy cannot
  (device tag, ``requires_grad``, ``nn.Parameter``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import CorruptError, FormatError, LimitError, UnsupportedError
from ..text import short_repr
from .device import Device
from .dtypes import DTypeInfo
from .storage import StorageInfo

__all__ = [
    "StorageInfo",
    "TensorRef",
    "Tensor",
    "c_strides",
    "check_view",
    "check_expansion",
    "ReadBudget",
    "view_of",
    "EXPANSION_RATIO",
    "EXPANSION_ALLOWANCE",
]  # StorageInfo: re-export

#: numpy's limits: dimensions, and elements, bytes, sizes and strides (its intp).
MAX_NDIM = 64
#: What reads every element of a view (convert's writers, diff's comparison) may read at most
#: this many times its storage's bytes, plus :data:`EXPANSION_ALLOWANCE`: a view with stride 0
#: (or overlapping strides) may repeat a few bytes 2**40 times, and copying or comparing it
#: would take hours and terabytes that the file's size does not justify.
EXPANSION_RATIO = 256
EXPANSION_ALLOWANCE = 1 << 30
#: The validation code of every error :func:`check_view` raises.
_VIEW = "tensor.view"
INTP_MAX = int(np.iinfo(np.intp).max)


def check_view(
    dtype: DTypeInfo, nbytes: int, offset: Any, shape: Any, stride: Any, key: str
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Validate a view's metadata against its storage (``key``, ``nbytes`` bytes); return it
    as plain int tuples.  Offsets, sizes and strides count elements of ``dtype``."""
    if type(offset) is not int or not 0 <= offset <= INTP_MAX:
        raise FormatError(
            f"{_what(key)}: storage offset {_show(offset)} is not an int in [0, 2**63)", code=_VIEW
        )
    if type(shape) is tuple and type(stride) is tuple:  # 1-d and 0-d, checked without calls
        if len(shape) == 1 == len(stride):
            n, step = shape[0], stride[0]
            if (
                type(n) is int
                and type(step) is int
                and 0 <= n <= INTP_MAX
                and 0 <= step <= INTP_MAX
            ):
                if n * dtype.itemsize > INTP_MAX:
                    _too_many(key, shape)
                if n and (offset + (n - 1) * step + 1) * dtype.itemsize > nbytes:
                    _outside(key, offset, shape, stride, dtype.itemsize, nbytes)
                return offset, shape, stride
        elif len(shape) == 2 == len(stride):  # weights: 2-d, checked without calls
            n, m = shape
            s0, s1 = stride
            if (
                type(n) is int
                and type(m) is int
                and type(s0) is int
                and type(s1) is int
                and 0 <= n <= INTP_MAX
                and 0 <= m <= INTP_MAX
                and 0 <= s0 <= INTP_MAX
                and 0 <= s1 <= INTP_MAX
            ):
                if (n or 1) * (m or 1) * dtype.itemsize > INTP_MAX:
                    _too_many(key, shape)
                if n and m and (offset + (n - 1) * s0 + (m - 1) * s1 + 1) * dtype.itemsize > nbytes:
                    _outside(key, offset, shape, stride, dtype.itemsize, nbytes)
                return offset, shape, stride
        elif not shape and not stride:
            if (offset + 1) * dtype.itemsize > nbytes:
                _outside(key, offset, shape, stride, dtype.itemsize, nbytes)
            return offset, shape, stride
    shape = _int_tuple(shape, key, "size")
    stride = _int_tuple(stride, key, "stride")
    ndim = len(shape)
    if ndim != len(stride):
        raise FormatError(
            f"{_what(key)}: size {shape} and stride {stride} differ in length", code=_VIEW
        )
    if ndim > MAX_NDIM:
        raise UnsupportedError(
            f"{_what(key)}: {ndim} dimensions (numpy allows {MAX_NDIM})", code=_VIEW
        )
    itemsize = dtype.itemsize
    if ndim == 1:  # the common case, without loops
        n = shape[0]
        if n * itemsize > INTP_MAX:
            _too_many(key, shape)
        if n and (offset + (n - 1) * stride[0] + 1) * itemsize > nbytes:
            _outside(key, offset, shape, stride, itemsize, nbytes)
        return offset, shape, stride
    if math.prod(n for n in shape if n) * itemsize > INTP_MAX:
        _too_many(key, shape)
    if 0 not in shape:
        extent = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
        if extent * itemsize > nbytes:
            _outside(key, offset, shape, stride, itemsize, nbytes)
    return offset, shape, stride


def _what(key: str) -> str:
    return f"tensor on storage {short_repr(key)}"


def _too_many(key: str, shape: tuple[int, ...]) -> None:
    raise UnsupportedError(
        f"{_what(key)}: size {shape} has more elements than a numpy array can hold", code=_VIEW
    )


def _outside(
    key: str,
    offset: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    itemsize: int,
    nbytes: int,
) -> None:
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    raise CorruptError(
        f"{_what(key)}: view (offset {offset}, size {shape}, stride {stride}) "
        f"needs {extent * itemsize} bytes of a {nbytes}-byte storage",
        code=_VIEW,
    )


def _int_tuple(value: Any, key: str, what: str) -> tuple[int, ...]:
    if type(value) is not tuple:
        if not isinstance(value, (tuple, list)):
            raise FormatError(
                f"{_what(key)}: {what} must be a tuple of ints, not {type(value).__name__}",
                code=_VIEW,
            )
        value = tuple(value)
    for v in value:
        if type(v) is not int or not 0 <= v <= INTP_MAX:
            # (every value bounded before any arithmetic: a product of huge ints, which the
            # memo can repeat at no cost, would take minutes)
            raise FormatError(
                f"{_what(key)}: {what} holds {_show(v)}, not an int in [0, 2**63)", code=_VIEW
            )
    return value  # type: ignore[no-any-return]


def _show(value: Any) -> str:
    """A value for a message, safe for ints too long to print (and for any other object)."""
    if type(value) is int:
        return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit int"
    if type(value) in (float, bool, str) or value is None:
        return repr(value)[:60]
    return f"a {type(value).__name__}"


def view_of(
    buffer: np.ndarray,
    dtype: DTypeInfo,
    offset: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
) -> np.ndarray:
    """A numpy view of ``buffer`` (checked with :func:`check_view` first)."""
    size = dtype.itemsize
    if stride == (1,) and offset == 0 and 0 < shape[0] * size == buffer.nbytes:
        return buffer.view(dtype.numpy)  # a whole 1-d storage: the commonest tensor
    if 0 in shape:  # no elements: offset (and strides too large for numpy) do not matter
        strides = tuple(s * size for s in stride)
        if max(strides, default=0) > INTP_MAX:
            return np.ndarray(shape, dtype.numpy, buffer=buffer[:0])
        return np.ndarray(shape, dtype.numpy, buffer=buffer[:0], strides=strides)
    # (positional arguments: numpy parses keywords at twice the cost of the whole call)
    strides = (stride[0] * size,) if len(stride) == 1 else tuple([s * size for s in stride])
    return np.ndarray(shape, dtype.numpy, buffer, offset * size, strides)


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch's contiguous strides (in elements; a 0-size dimension counts as 1)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def check_expansion(ref: TensorRef) -> None:
    """Refuse to read every element of ``ref`` when that is more than
    :data:`EXPANSION_RATIO` times its storage's bytes (plus :data:`EXPANSION_ALLOWANCE`):
    a :class:`LimitError` (``load``, which makes a view, is not concerned)."""
    limit = EXPANSION_RATIO * ref.storage.nbytes + EXPANSION_ALLOWANCE
    if ref.nbytes > limit:
        raise LimitError(
            f"a view of {ref.numel} elements ({ref.nbytes} bytes) over a storage of "
            f"{ref.storage.nbytes} bytes (stride {ref.stride}): reading every element is more "
            f"than {EXPANSION_RATIO} times the storage"
        )


class ReadBudget:
    """What reading every element of many views may cost in one job (a conversion, a diff):
    each view within :func:`check_expansion`'s bound, and all of them together within
    :data:`EXPANSION_RATIO` times the bytes of the distinct storages they view, plus one
    :data:`EXPANSION_ALLOWANCE` for the whole job (an allowance per view would add up: a
    thousand stride-0 views of one small storage, each just within it, are a terabyte)."""

    def __init__(self) -> None:
        self._storages: dict[int, StorageInfo] = {}  # (kept: their ids stay theirs)
        self.stored = 0
        self.read = 0

    def charge(self, ref: TensorRef) -> None:
        """Count reading every element of ``ref``; a :class:`LimitError` past the bound."""
        check_expansion(ref)
        if id(ref.storage) not in self._storages:
            self._storages[id(ref.storage)] = ref.storage
            self.stored += ref.storage.nbytes
        self.read += ref.nbytes
        if self.read > EXPANSION_RATIO * self.stored + EXPANSION_ALLOWANCE:
            raise LimitError(
                f"the views read so far take {self.read} bytes from storages of {self.stored} "
                f"bytes: reading every element is more than {EXPANSION_RATIO} times the "
                "storages"
            )


class TensorRef:
    """A tensor of a checkpoint whose data has not been read: metadata and ``.numpy()``."""

    __slots__ = (
        "_dtype",
        "_mmap",
        "conj",
        "is_parameter",
        "neg",
        "requires_grad",
        "shape",
        "state",
        "storage",
        "storage_offset",
        "stride",
    )

    def __init__(
        self,
        storage: StorageInfo,
        dtype: DTypeInfo,
        storage_offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        requires_grad: bool = False,
        *,
        conj: bool = False,
        neg: bool = False,
        mmap: bool = False,
    ) -> None:
        self.storage = storage
        self._dtype = dtype
        self.storage_offset = storage_offset
        self.shape = shape
        self.stride = stride
        self.requires_grad = requires_grad
        self.is_parameter = False
        self.conj = conj
        self.neg = neg
        #: Python attributes torch pickled with the tensor (``_rebuild_from_type_v2`` state,
        #: ``_rebuild_parameter_with_state``), else ``None``.
        self.state: dict[str, Any] | None = None
        self._mmap = mmap

    @property
    def dtype(self) -> str:
        """torch's dtype name, e.g. ``"bfloat16"``."""
        return self._dtype.name

    @property
    def dtype_info(self) -> DTypeInfo:
        return self._dtype

    @property
    def device(self) -> Device:
        return self.storage.location

    @property
    def storage_key(self) -> str:
        return self.storage.key

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self._dtype.itemsize

    def numpy(self, *, mmap: bool | None = None) -> np.ndarray:
        """Read the tensor: a numpy view of its storage (shared with other views of it)."""
        buf = self.storage.buffer(self._mmap if mmap is None else mmap)
        arr = view_of(buf, self._dtype, self.storage_offset, self.shape, self.stride)
        if self.conj or self.neg:
            arr = _apply_bits(arr, self.conj, self.neg, self.storage.key)
        return arr

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        kind = "Parameter" if self.is_parameter else "TensorRef"
        extra = ", requires_grad=True" if self.requires_grad else ""
        return (
            f"{kind}(dtype={self.dtype}, shape={self.shape}, device={str(self.device)!r}, "
            f"storage={self.storage_key!r}{extra})"
        )


def _apply_bits(arr: np.ndarray, conj: bool, neg: bool, key: str) -> np.ndarray:
    """A tensor's conjugate and negative bits applied (a copy)."""
    try:
        if conj:
            arr = np.asarray(np.conj(arr))
        if neg:
            arr = np.asarray(np.negative(arr))
        return arr
    except MemoryError:
        pass
    raise LimitError(
        f"out of memory applying the conj/neg bit of a tensor of storage {short_repr(key)}"
    )


class Tensor:
    """A numpy array with what numpy cannot say, for :func:`pthfmt.save`.

    ``Tensor(array, device="cuda:0", requires_grad=True, parameter=True)`` saves as an
    ``nn.Parameter`` on ``cuda:0``.  The data is always the array's.
    """

    __slots__ = ("array", "device", "parameter", "requires_grad")

    def __init__(
        self,
        array: Any,
        device: str | Device = "cpu",
        requires_grad: bool = False,
        parameter: bool = False,
    ) -> None:
        self.array = array if isinstance(array, (np.ndarray, TensorRef)) else np.asarray(array)
        self.device = device if isinstance(device, Device) else Device.parse(device)
        self.requires_grad = bool(requires_grad)
        self.parameter = bool(parameter)

    def __repr__(self) -> str:
        return (
            f"Tensor(shape={self.array.shape}, dtype={self.array.dtype}, "
            f"device={str(self.device)!r}, requires_grad={self.requires_grad}, "
            f"parameter={self.parameter})"
        )
