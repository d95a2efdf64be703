"""Storage planning for :func:`pthfmt.save`: which tensors share a storage, and the views.

A :class:`View` describes one tensor to write (its dtype, device, flags and source: a numpy
array or a :class:`~pthfmt.TensorRef`), made by :func:`make_view`, which refuses what torch
cannot load; :func:`assign_storages` gives every view its :class:`Storage` (the bytes of one
``data/<key>`` record), element offset, shape and stride, by the rules in
:mod:`pthfmt.writer`'s docstring: checkpoint storages stay as they are; arrays share a
storage when they have the same owning base or overlapping bytes (union-find over address
ranges), except that arrays owning their memory alone get one each without any address
arithmetic; arrays torch cannot view get a contiguous copy.  (:mod:`pthfmt.formats.sharding`
plans shards with the same two functions.)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnserializableError
from .formats.tensordata import CHUNK, array_chunks, c_strides, is_big, little_bytes
from .model.dtypes import DTypeInfo, from_numpy
from .model.tensor import Tensor, TensorRef

__all__ = [
    "Member",
    "Storage",
    "View",
    "alone",
    "assign_storages",
    "make_view",
    "torch_dtype",
    "buffer_chunks",
    "own_copy",
    "owner_of",
    "share",
    "sharing_components",
]


class Storage:
    """One storage to write: ``nbytes`` little-endian bytes from :meth:`chunks`: those of
    ``array`` in C order (byte-swapped when ``big``), or what ``read()`` yields."""

    __slots__ = ("array", "big", "dtype", "key", "nbytes", "read", "tag")
    dtype: DTypeInfo
    nbytes: int
    tag: str
    array: np.ndarray | None
    big: bool
    read: Callable[[], Iterator[Any]] | None
    key: str | None

    def __init__(
        self,
        dtype: DTypeInfo,
        nbytes: int,
        tag: str,
        array: np.ndarray | None = None,
        big: bool = False,
        read: Callable[[], Iterator[Any]] | None = None,
    ) -> None:
        self.dtype, self.nbytes, self.tag = dtype, nbytes, tag
        self.array, self.big, self.read, self.key = array, big, read, None

    def chunks(self) -> Iterator[Any]:
        if self.read is not None:
            return self.read()
        assert self.array is not None
        return array_chunks(self.array, self.dtype.swap, self.big)


@dataclass(eq=False, slots=True)
class View:
    """One tensor: how it views its storage, and what else torch records about it.
    :func:`assign_storages` gives each view a ``shape`` and ``stride`` tuple of its own (the
    pickle memo shares equal tuples only when they are one object, and torch's never are)."""

    dtype: DTypeInfo
    tag: str
    requires_grad: bool
    parameter: bool
    array: np.ndarray | None = None  # numpy source
    ref: TensorRef | None = None  # checkpoint source
    state: dict[str, Any] | None = None
    conj: bool = False
    neg: bool = False
    storage: Storage | None = None
    offset: int = 0
    shape: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()


Member = tuple[int, int, View]  # (lowest byte address, one past the highest, view)


def assign_storages(views: list[View]) -> None:
    """Give every view its storage, offset, shape and stride (see the module docstring)."""
    shared: dict[tuple[Any, ...], Storage] = {}
    arrays: list[tuple[View, np.ndarray, Any]] = []
    owners: set[int] = set()  # ids of the owners seen ...
    shared_owners: set[int] = set()  # ... and of those seen more than once
    foreign = False  # an array whose memory may overlap another's without a common owner
    for view in views:
        ref, array = view.ref, view.array
        if ref is not None:
            key = (id(ref.storage), ref.dtype, view.tag)
            if key not in shared:
                shared[key] = Storage(
                    view.dtype, ref.storage.nbytes, view.tag, read=buffer_chunks(ref, view.dtype)
                )
            view.storage = shared[key]
            view.offset = ref.storage_offset
            view.shape, view.stride = tuple(list(ref.shape)), tuple(list(ref.stride))
            continue
        assert array is not None
        size = array.dtype.itemsize
        if array.size == 0 or [s for s in array.strides if s < 0 or s % size]:
            own_copy(view, array)
            continue
        owner = owner_of(array)
        if owner is None or (isinstance(owner, np.ndarray) and not owner.flags.owndata):
            foreign = True
        elif id(owner) in owners:
            shared_owners.add(id(owner))
        else:
            owners.add(id(owner))
        arrays.append((view, array, owner))
    groups: dict[tuple[Any, ...], list[Member]] = defaultdict(list)
    for view, array, owner in arrays:
        if not foreign and array.flags.c_contiguous and id(owner) not in shared_owners:
            alone(view, array)  # nothing else uses its owner's memory
            continue
        size = array.dtype.itemsize
        lo = array.__array_interface__["data"][0]
        hi = lo + size + sum((n - 1) * s for n, s in zip(array.shape, array.strides))
        groups[(view.dtype.name, is_big(array.dtype), view.tag, lo % size)].append((lo, hi, view))
    for members in groups.values():
        for component in sharing_components(members):
            share(component)


def alone(view: View, array: np.ndarray) -> None:
    """What :func:`_share` makes of a C-contiguous array that shares memory with no other:
    a storage of exactly its bytes."""
    size = array.dtype.itemsize
    view.storage = Storage(view.dtype, array.nbytes, view.tag, array, is_big(array.dtype))
    view.offset = 0
    view.shape = array.shape
    view.stride = tuple([s // size for s in array.strides])


def own_copy(view: View, array: np.ndarray) -> None:
    """A storage holding a C-contiguous copy of ``array`` (made chunk by chunk when written).
    Empty arrays get contiguous strides too, as ``torch.empty`` has (numpy's are 0)."""
    view.storage = Storage(view.dtype, array.nbytes, view.tag, array, is_big(array.dtype))
    view.offset, view.shape = 0, tuple(int(n) for n in array.shape)
    view.stride = c_strides(view.shape)


def sharing_components(members: list[Member]) -> list[list[Member]]:
    """Split same-typed arrays into groups that share memory: same owning base, or
    overlapping byte ranges (union-find)."""
    parent = list(range(len(members)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    by_owner: dict[int, int] = {}
    for i, (_, _, view) in enumerate(members):
        owner = owner_of(view.array)
        if owner is not None:
            union(i, by_owner.setdefault(id(owner), i))
    order = sorted(range(len(members)), key=lambda i: members[i][0])
    reach, last = -1, -1
    for i in order:
        lo, hi, _ = members[i]
        if lo < reach:
            union(i, last)
        if hi > reach:
            reach, last = hi, i
    components: dict[int, list[Member]] = defaultdict(list)
    for i, member in enumerate(members):
        components[find(i)].append(member)
    return list(components.values())


def owner_of(array: Any) -> Any:
    """The object owning ``array``'s memory when that is one block (an ndarray owning its data,
    bytes, bytearray), else ``None``."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    if isinstance(array, (np.ndarray, bytes, bytearray)):
        return array
    return None


def share(members: list[Member]) -> None:
    """One storage spanning every member's bytes; each member views it at its own offset."""
    lo = min(m[0] for m in members)
    hi = max(m[1] for m in members)
    first = next(m[2] for m in members if m[0] == lo)
    assert first.array is not None
    array = first.array
    size, big = array.dtype.itemsize, is_big(array.dtype)
    if len(members) == 1 and array.flags.c_contiguous:
        span = array  # the common case: memory order is C order
    else:
        # The bytes from lo to hi as uint8, from the first element of the lowest member
        # (as_strided on the member would go through __array_interface__: no ml_dtypes).
        element = (
            array.reshape(1) if array.ndim == 0 else array[(slice(0, 1),) * array.ndim].reshape(-1)
        )
        span = np.lib.stride_tricks.as_strided(
            element.view(np.uint8), shape=(hi - lo,), strides=(1,), writeable=False
        )
    storage = Storage(first.dtype, hi - lo, first.tag, span, big)
    for start, _, view in members:
        assert view.array is not None
        view.storage = storage
        view.offset = (start - lo) // size
        view.shape = tuple([int(n) for n in view.array.shape])
        view.stride = tuple([s // size for s in view.array.strides])


def buffer_chunks(ref: TensorRef, dtype: DTypeInfo) -> Callable[[], Iterator[Any]]:
    """Chunks of a checkpoint storage: slices of its (memory-mapped where possible) buffer."""

    def chunks() -> Iterator[Any]:
        buffer = ref.storage.buffer(True)
        big = sys.byteorder == "big"  # the reader's buffers are in host order
        for start in range(0, buffer.nbytes, CHUNK):
            yield little_bytes(buffer[start : start + CHUNK], dtype.swap, big)

    return chunks


def make_view(obj: Any, legacy: bool) -> View:
    """Describe a tensor-like leaf; raises UnserializableError for what torch cannot load."""
    if type(obj) is np.ndarray:  # the common case: no device, gradients or wrapper
        info = torch_dtype(obj.dtype)
        if info.kind != "quantized" and (info.storage is not None or not legacy):
            return View(info, "cpu", False, False, array=obj)
    source = obj.array if isinstance(obj, Tensor) else obj
    if isinstance(source, TensorRef):
        view = View(
            source.dtype_info,
            str(source.device),
            source.requires_grad,
            source.is_parameter,
            ref=source,
            state=source.state,
            conj=source.conj,
            neg=source.neg,
        )
    else:
        if isinstance(source, np.ma.MaskedArray):
            raise UnserializableError(
                "a masked array would lose its mask; save .data and .mask separately"
            )
        array = np.asarray(source)
        view = View(torch_dtype(array.dtype), "cpu", False, False, array=array)
    if isinstance(obj, Tensor):
        view.tag, view.requires_grad, view.parameter = (
            str(obj.device),
            obj.requires_grad,
            obj.parameter,
        )
    info = view.dtype
    if info.kind == "quantized":
        raise UnserializableError(
            f"{info.name} tensors need quantization parameters: save a "
            "pthfmt.QuantizedArray (scale, zero_point, axis) instead of a plain array"
        )
    if legacy and info.storage is None:
        raise UnserializableError(
            f"torch cannot load {info.name} tensors from the legacy "
            "format (it has no typed storage for them); use format='zip'"
        )
    if view.requires_grad and info.kind not in ("float", "complex"):
        raise UnserializableError(
            f"a {info.name} tensor cannot require gradients (only "
            "floating point and complex tensors can)"
        )
    if view.requires_grad and not view.parameter and info.storage is None:
        # _rebuild_tensor_v3 makes the tensor with requires_grad, then calls set_() on it:
        # torch 2.13 fails to load such a file (even one torch.save wrote).
        raise UnserializableError(
            f"torch cannot load a {info.name} tensor that requires "
            "gradients (_rebuild_tensor_v3 fails); save it as a "
            "Parameter or without requires_grad"
        )
    return view


def torch_dtype(dtype: np.dtype) -> DTypeInfo:
    if dtype.hasobject:
        raise UnserializableError("numpy object arrays cannot be saved: tensors hold numbers")
    info = from_numpy(dtype)
    if info is None:
        raise UnserializableError(f"numpy dtype {dtype} has no torch equivalent")
    return info
