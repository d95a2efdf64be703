"""Writing checkpoints: :func:`save`, the counterpart of ``torch.save``.

What is written, for a tensor (a numpy array, a :class:`~pthfmt.TensorRef` from
:func:`pthfmt.open`, or a :class:`~pthfmt.Tensor` wrapper)::

    torch._utils._rebuild_tensor_v2(
        PERSID ('storage', torch.<X>Storage, '<key>', '<device>', <numel in elements>),
        storage_offset, size, stride,            # in elements
        requires_grad, OrderedDict()             # backward hooks: always empty
        [, {'neg': True, 'conj': True}])         # only when set (TensorRef flags)

    torch._utils._rebuild_tensor_v3(             # dtypes with no typed storage class
        PERSID ('storage', torch.storage.UntypedStorage, key, device, <numel in BYTES>),
        storage_offset, size, stride, requires_grad, OrderedDict(), torch.<dtype> [, metadata])

``nn.Parameter`` is ``_rebuild_parameter(<tensor, requires_grad=False>, requires_grad,
OrderedDict())`` (``_rebuild_parameter_with_state`` with Python attributes); a plain tensor
with attributes is ``torch._tensor._rebuild_from_type_v2(_rebuild_tensor_v2, torch.Tensor,
args, state)``.  Storage keys are ``"0"``, ``"1"``, ... in the order the pickle first meets
them, and the bytes of storage ``k`` are the record ``data/k``, little-endian, written in key
order (zip layout: :mod:`pthfmt.formats.zip.writer`; legacy: :func:`_write_legacy`).

**Storages from numpy arrays.**  Arrays that view one memory block share one storage, as
torch tensors viewing one storage do: arrays whose byte ranges overlap, or that have the same
owning base (an ``ndarray`` that owns its data, or a ``bytes``/``bytearray``), become one
storage spanning the lowest to the highest byte any of them uses, each with its own element
offset and strides.  A memory-mapped file is not one block (every array loaded from it has the
mapping as base), so arrays based on other buffer objects share only when they overlap.
Arrays that torch cannot express as a view get a contiguous copy of their own: negative
strides, strides that are not a multiple of the item size, and empty arrays.  Arrays of
different torch dtypes, byte orders or devices, or whose element grids do not line up, never
share a storage (torch cannot load that).  Big-endian arrays are byte-swapped as written.

**Streaming.**  The pickle is built in memory (it holds no tensor data); storages are written
straight from the arrays (or the mapped checkpoint of a ``TensorRef``) in pieces of
:data:`CHUNK` bytes, so saving costs about that much memory beyond the inputs; storages of up
to :data:`~pthfmt.formats.zip.writer.SMALL` bytes are copied into batches of records that go
out in one write each.  Nothing is ever sought: the output may be a pipe.

**Speed.**  Two passes over the object: :meth:`_Plan.collect` walks it once to find every
tensor (and whether the C pickler may write it), storages are planned, and the pickle is
written by CPython's C pickler (:mod:`pthfmt.pickle.cpickler`, byte for byte what
:class:`~pthfmt.pickle.pickler.Pickler` writes; SECURITY.md says why that is safe) or, for
what that one writes differently, by the Python pickler.  Arrays that own their memory alone
(nothing else in the object has the same owner, and no array sits on foreign memory) get a
storage each without comparing addresses.

**Refusals.**  Everything is checked before a byte is written: an object the format cannot
hold, or that torch 2.13 could not load, raises :class:`~pthfmt.errors.UnserializableError`
naming its key path, and nothing is written.  Beyond unknown types that covers numpy dtypes
torch lacks (object, strings, structured, ``float128``), quantized dtypes (they need
quantization parameters), ``requires_grad`` on a non-floating dtype, ``requires_grad`` on a
plain (non-Parameter) ``_rebuild_tensor_v3`` tensor (torch writes such files but
``_rebuild_tensor_v3`` fails to load them), and ``_rebuild_tensor_v3`` dtypes in the legacy
format (torch cannot load those either).

**Atomicity.**  A path target is written to a temporary file beside it (``.<name>.<random>.tmp``),
flushed, fsynced and renamed over the target; on any error, ``KeyboardInterrupt`` and a full
disk included, the temporary file is removed and the old file is untouched.  A process killed
by SIGKILL can leave the temporary file behind, never a partial file under the target name.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import types
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import IO, Any, Final, Literal, Union

import numpy as np

from .atomic import stream_writer, write_atomically
from .errors import UnserializableError
from .formats.legacy import MAGIC_NUMBER, PROTOCOL_VERSION
from .formats.tensordata import CHUNK
from .formats.zip.writer import SMALL, ZipWriter, archive_name_for_path
from .gcpause import paused_gc
from .model.device import Device
from .model.dtypes import DTYPES, DType, DTypeInfo, from_numpy
from .model.kinds import NestedArray, QuantizedRef
from .model.tensor import Tensor, TensorRef
from .pickle import cpickler
from .pickle.pickler import MAX_DEPTH, GlobalRef, Path, PersistentId, Pickler, Reduction
from .writer_kinds import KINDS, KindParts, QuantizedData, qtensor_args
from .writer_storages import Storage as _Storage
from .writer_storages import View as _View
from .writer_storages import assign_storages, make_view

__all__ = ["CHUNK", "save"]

Target = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", IO[bytes]]
Write = Callable[[Any], None]

_REBUILD_V2 = GlobalRef("torch._utils", "_rebuild_tensor_v2")
_REBUILD_V3 = GlobalRef("torch._utils", "_rebuild_tensor_v3")
_PARAMETER = GlobalRef("torch._utils", "_rebuild_parameter")
_PARAMETER_WITH_STATE = GlobalRef("torch._utils", "_rebuild_parameter_with_state")
_FROM_TYPE = GlobalRef("torch._tensor", "_rebuild_from_type_v2")
_TENSOR_CLASS = GlobalRef("torch", "Tensor")
_UNTYPED = GlobalRef("torch.storage", "UntypedStorage")
_DEVICE = GlobalRef("torch", "device")
#: ``sys_info`` of a legacy file, as ``torch.save`` writes it (``struct`` sizes of ``=h =i =l``).
_SYS_INFO: Final = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


def save(
    obj: Any,
    f: Target,
    *,
    format: Literal["zip", "legacy"] = "zip",
    archive_name: str | None = None,
) -> None:
    """Save ``obj`` as a checkpoint that ``torch.load(f, weights_only=True)`` reads.

    ``f`` is a path (written atomically) or a writable binary file object (written from its
    current position, never sought, so pipes work).  ``format`` is ``"zip"`` (torch's default
    since 1.6, laid out byte for byte as ``torch.save`` does) or ``"legacy"``
    (``_use_new_zipfile_serialization=False``).  ``archive_name`` overrides the zip's folder
    name, which is otherwise what torch picks: the file name without its extension, or
    ``archive`` for file objects and non-ASCII paths.

    ``obj`` may hold dicts (``OrderedDict`` attributes such as ``_metadata`` included),
    lists, tuples, sets, ``Counter``, str, bytes, bytearray, int, float, complex, bool,
    ``None``, :class:`~pthfmt.Device`, :class:`~pthfmt.DType`, numpy arrays of every dtype in
    :data:`pthfmt.DTYPES` but the quantized ones, :class:`~pthfmt.TensorRef` and
    :class:`~pthfmt.Tensor`, and the other tensor kinds (:class:`~pthfmt.QuantizedArray`,
    :class:`~pthfmt.SparseArray`, :class:`~pthfmt.NestedArray`, :class:`~pthfmt.MetaArray`;
    written as torch writes them, see :mod:`pthfmt.writer_kinds`).  numpy scalars are written
    as the Python scalar they hold (torch's weights-only loader refuses numpy's own
    pickling).  Anything else raises :class:`~pthfmt.errors.UnserializableError` naming its
    key path, before anything is written.
    """
    if format not in ("zip", "legacy"):
        raise ValueError(f"format must be 'zip' or 'legacy', not {format!r}")
    if archive_name is not None:
        if format != "zip":
            raise ValueError("archive_name only applies to the zip format")
        if not isinstance(archive_name, str) or not archive_name or "/" in archive_name:
            raise ValueError(f"archive_name {archive_name!r} must be a non-empty name without '/'")
    with paused_gc():
        _save(obj, f, format, archive_name)


def _save(obj: Any, f: Target, format: str, archive_name: str | None) -> None:
    plan = _Plan(legacy=format == "legacy")
    pickled = plan.pickle(obj)

    def emit(write: Write, name: str) -> None:
        if format == "zip":
            _write_zip(write, name, pickled, plan.storages)
        else:
            _write_legacy(write, pickled, plan.storages)

    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(f))
        name = archive_name or archive_name_for_path(path)
        write_atomically(path, lambda write: emit(write, name))
    elif callable(getattr(f, "write", None)):
        emit(stream_writer(f), archive_name or "archive")
        flush = getattr(f, "flush", None)
        if callable(flush):
            flush()
    else:
        raise TypeError(f"expected a path or a writable binary file object, not {type(f).__name__}")


# -- the plan: tensors, their storages and the pickle ----------------------------------------


class _Inner:
    """The plain tensor inside an ``nn.Parameter`` (a fresh object, as ``Parameter.data``)."""

    __slots__ = ("view",)

    def __init__(self, view: _View) -> None:
        self.view = view


@dataclass(eq=False)
class _Plan:
    """Pickles an object twice: once to check it and collect its tensors, once to write it
    after the tensors' storages are laid out (keys follow the second pass's order)."""

    legacy: bool
    views: dict[int, _View] = field(default_factory=dict)
    keep: list[Any] = field(default_factory=list)  # leaves, so their ids stay unique
    storages: list[_Storage] = field(default_factory=list)
    final: bool = False
    kinds: KindParts = field(default_factory=KindParts)  # quantized, sparse, nested, meta
    fast: bool = False  # the final pass may use the C pickler (cpickler)

    def pickle(self, obj: Any) -> bytes:
        if not self.collect(obj):
            self.fast = False
            self.views.clear()
            self.keep.clear()
            Pickler(self.reduce).dump(obj)
        assign_storages(list(self.views.values()))
        self.final = True
        if self.fast:  # the C pickler's bytes are the Python pickler's for this object
            with contextlib.suppress(Exception):  # anything unexpected: the Python pickler says
                fast = cpickler.dump(obj, self.c_reduce)
                if fast is not None:
                    return fast
            for storage in self.storages:
                storage.key = None
            self.storages.clear()
        return Pickler(self.reduce).dump(obj)

    def collect(self, root: Any) -> bool:
        """The first pass without pickling, for the containers and leaves the pickler knows:
        make every tensor's view.  False when it meets anything else, or a tensor torch
        cannot load: the pickling first pass then runs, and says where the problem is.
        Sets :attr:`fast`: whether the C pickler writes what the Python pickler would."""
        seen: set[int] = set()
        stack = [root]
        depth = deepest = 0
        fast = True
        while stack:
            obj = stack.pop()
            kind = type(obj)
            if kind in _PLAIN:
                if fast and kind in _SPECIAL_ATOMS and not _c_atom(obj):
                    fast = False
                continue
            if obj is _UP:
                depth -= 1
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if kind is dict or kind is OrderedDict or kind is Counter:
                # children in pickling order (popped last pushed first): items, then attributes
                levels = _LEVELS[kind]
                depth += levels
                stack += (_UP,) * levels
                if kind is OrderedDict:
                    stack.append(vars(obj))
                stack += reversed(list(chain.from_iterable(obj.items())))
            elif kind is list or kind is tuple or kind is set:
                levels = _LEVELS[kind]
                depth += levels
                stack += (_UP,) * levels
                stack += reversed(obj) if kind is not set else obj
                if kind is tuple and fast and not _flat_tuple(obj):
                    fast = False
            elif isinstance(obj, (np.ndarray, TensorRef, Tensor)):
                try:
                    view = self.views[id(obj)] = make_view(obj, self.legacy)
                except UnserializableError:
                    return False
                self.keep.append(obj)
                if view.state:  # inside the tensor's arguments
                    depth += 2
                    stack += (_UP, _UP, view.state)
            elif isinstance(obj, (DType, np.generic)):
                fast = False  # written as stand-in values: the Python pickler's
            elif not isinstance(obj, Device):
                return False
            if depth > deepest:
                deepest = depth
        self.fast = fast and deepest < MAX_DEPTH - _DEPTH_MARGIN
        return True

    # -- the pickler's reducer -----------------------------------------------------------------
    def reduce(self, obj: Any, path: Path) -> Any:
        if isinstance(obj, QuantizedRef):  # pthfmt.open's quantized tensors
            obj = obj.quantized
        if isinstance(obj, (np.ndarray, TensorRef, Tensor)):
            view = self.views.get(id(obj))
            if view is None:
                if self.final:
                    raise UnserializableError("the object changed while it was being saved")
                view = self.views[id(obj)] = make_view(obj, self.legacy)
                self.keep.append(obj)
            if not self.final:  # first pass: only the tensor's own Python state
                return Reduction(_REBUILD_V2, (view.state,) if view.state else ())
            return self._tensor(view)
        if isinstance(obj, _Inner):
            return self._plain_tensor(obj.view, requires_grad=False)
        if isinstance(obj, DType):
            return GlobalRef("torch", obj.name)
        if isinstance(obj, Device):
            args = (_fresh(obj.type),) if obj.index is None else (_fresh(obj.type), obj.index)
            return Reduction(_DEVICE, args)
        if isinstance(obj, np.generic):
            return _python_scalar(obj)
        if isinstance(obj, KINDS):
            if self.legacy and isinstance(obj, NestedArray):
                raise UnserializableError(
                    "torch cannot load nested tensors from the legacy "
                    "format (its own legacy files of them fail too); "
                    "use format='zip'"
                )
            made = self.kinds.reduce(obj)
            return self._qtensor(obj, made) if isinstance(made, QuantizedData) else made
        if isinstance(obj, Reduction):  # inside a kinds value's arguments
            return obj
        raise UnserializableError(_unsupported(obj))

    def _qtensor(self, obj: Any, data: QuantizedData) -> Reduction:
        """A quantized tensor: its integer data is a storage of the quantized dtype."""
        view = self.views.get(id(obj))
        if view is None:
            if self.final:
                raise UnserializableError("the object changed while it was being saved")
            view = _View(DTYPES[data.value.dtype], "cpu", False, False, array=data.array)
            self.views[id(obj)] = view
            self.keep.append(obj)
        if not self.final:  # first pass: the qparams' tensors get views
            return Reduction(_REBUILD_V2, (data.qparams,))
        pid = self._plain_tensor(view, False).args[0]
        return qtensor_args(data, pid, view.offset, view.stride)

    def _tensor(self, view: _View) -> Reduction:
        if view.parameter:
            args: tuple[Any, ...] = (_Inner(view), view.requires_grad, OrderedDict())
            if view.state:
                return Reduction(_PARAMETER_WITH_STATE, (*args, view.state))
            return Reduction(_PARAMETER, args)
        plain = self._plain_tensor(view, view.requires_grad)
        if view.state:
            return Reduction(_FROM_TYPE, (plain.func, _TENSOR_CLASS, plain.args, view.state))
        return plain

    def _plain_tensor(self, view: _View, requires_grad: bool) -> Reduction:
        return Reduction(*self._plain_args(view, requires_grad))

    def _plain_args(self, view: _View, requires_grad: bool) -> tuple[GlobalRef, tuple[Any, ...]]:
        """A plain tensor's rebuild function and arguments (its storage gets the next key
        when this is its first reference)."""
        info, storage = view.dtype, view.storage
        assert storage is not None
        key = storage.key
        if key is None:
            key = storage.key = str(len(self.storages))
            self.storages.append(storage)
        typed = info.storage is not None
        pid: tuple[Any, ...] = (
            "storage",
            _storage_class(info),
            key,
            _location(storage.tag),
            storage.nbytes // info.itemsize if typed else storage.nbytes,
        )
        if self.legacy:
            pid += (None,)  # view_metadata
        args: tuple[Any, ...] = (
            PersistentId(pid),
            view.offset,
            view.shape,  # (tuples of this view alone)
            view.stride,
            requires_grad,
            OrderedDict(),
        )
        if not typed:
            args += (GlobalRef("torch", info.name),)
        if view.neg or view.conj:
            args += (
                {**({"neg": True} if view.neg else {}), **({"conj": True} if view.conj else {})},
            )
        return (_REBUILD_V2 if typed else _REBUILD_V3), args

    def c_reduce(self, obj: Any, path: Path) -> Any:
        """:meth:`reduce` for the C pickler: plain tensors straight to a reduce tuple."""
        view = self.views.get(id(obj))  # (only tensors of this pickle are keys)
        if view is not None and not view.parameter and not view.state:
            return self._plain_args(view, view.requires_grad)
        return self.reduce(obj, path)


def _storage_class(info: DTypeInfo) -> GlobalRef:
    """``torch.<X>Storage`` for a typed storage, ``torch.storage.UntypedStorage`` otherwise."""
    return GlobalRef("torch", info.storage) if info.storage is not None else _UNTYPED


#: Values that hold no tensor (what the pickler writes as is, or reduces to such values).
_PLAIN: Final = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
#: Of those, the ones the C pickler writes differently for some values (:func:`_c_atom`).
_SPECIAL_ATOMS: Final = frozenset({int, bytes})
#: What a tuple may hold for the C pickler: nothing that could lead back to the tuple.
_FLAT: Final = _PLAIN | {tuple, np.ndarray}
#: The Python pickler's refusal of deep nesting is kept: the C pickler's own limit is the
#: interpreter's recursion limit, which a program may raise.  The first pass counts levels as
#: the Python pickler does (:data:`_LEVELS`; a tensor's state is two levels below it), and
#: nesting within this margin of MAX_DEPTH goes to the Python pickler, which decides.
_DEPTH_MARGIN: Final = 16
#: LONG1 holds up to 255 bytes of two's complement; the C pickler writes LONG4 beyond.
_LONG1_MAX: Final = 1 << (255 * 8 - 1)


class _Up:
    """Marks the end of one nesting level on the first pass's stack."""


_UP: Final = _Up()
#: Nesting levels the pickler goes down from a container to its items: a ``Counter`` or
#: ``set`` is a reduction whose argument tuple holds a dict or list of them.
_LEVELS: Final[dict[type, int]] = {dict: 1, OrderedDict: 1, list: 1, tuple: 1, Counter: 3, set: 3}


def _c_atom(value: Any) -> bool:
    """Whether the C pickler writes ``value`` (an int or bytes) as the Python pickler does:
    not for ``b""`` (``__builtin__.bytes()``, which torch refuses) or ints beyond LONG1."""
    if type(value) is bytes:
        return bool(value)
    return bool(-_LONG1_MAX <= value < _LONG1_MAX)


def _flat_tuple(items: tuple[Any, ...]) -> bool:
    """A tuple of values that cannot contain the tuple: then the C pickler cannot meet it
    inside itself (it writes such a tuple as ``POP``s and a ``BINGET``; the Python pickler
    refuses it, as torch cannot load it)."""
    flat = _FLAT
    return all(type(item) in flat for item in items)


def _location(tag: str) -> str:
    """The device tag as torch's ``location_tag`` returns it: ``'cpu'`` (and other index-less
    tags) is one interned string, ``'cuda:0'`` a new string per storage reference.  This only
    decides which repeats the pickle memo shares, so that the bytes match torch's."""
    return sys.intern(tag) if ":" not in tag else _fresh(tag)


def _fresh(text: str) -> str:
    """A new ``str`` object equal to ``text`` (as torch builds device strings per call)."""
    return text[:1] + text[1:] if len(text) > 1 else text


def _python_scalar(value: np.generic) -> Any:
    """numpy scalars are written as Python scalars: torch's weights-only loader refuses the
    ``numpy.core.multiarray.scalar`` global that pickling a numpy scalar needs."""
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    item = value.item() if value.dtype.kind in "biufc" or from_numpy(value.dtype) else None
    if type(item) in (bool, int, float, complex):
        return item
    raise UnserializableError(
        f"numpy scalar of dtype {value.dtype} has no Python or torch equivalent"
    )


def _unsupported(obj: Any) -> str:
    kind = type(obj)
    name = (
        f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__ != "builtins"
        else kind.__qualname__
    )
    if isinstance(obj, (types.GeneratorType, types.CoroutineType)) or (
        hasattr(obj, "__next__") and hasattr(obj, "__iter__")
    ):
        why = "iterators and generators cannot be saved; save a list"
    elif isinstance(obj, type) or callable(obj):
        why = "functions and classes cannot be saved (torch.load(weights_only=True) refuses code)"
    elif hasattr(obj, "__array__"):
        why = "convert it with numpy.asarray() first"
    else:
        why = (
            "torch.load(weights_only=True) only rebuilds tensors, dicts, lists, tuples, "
            "sets, strings, bytes, numbers, None, devices and dtypes"
        )
    return f"cannot save an object of type {name}: {why}"


# -- tensors -----------------------------------------------------------------------------------


# -- containers --------------------------------------------------------------------------------


def _write_zip(write: Write, archive_name: str, pickled: bytes, storages: list[_Storage]) -> None:
    """torch's record order: the pickle, ``.format_version``, ``.storage_alignment``,
    ``byteorder``, ``data/0..N`` (numeric order, which ``.format_version`` 1 promises and
    ``calculate_storage_offsets`` relies on), then ``version`` and the serialization id."""
    archive = ZipWriter(write, archive_name)
    archive.add("data.pkl", pickled)
    archive.add(".format_version", b"1")
    archive.add(".storage_alignment", str(archive.alignment).encode("ascii"))
    archive.add("byteorder", b"little")
    for storage in storages:
        name = f"data/{storage.key}"
        if storage.array is not None and not storage.big and storage.nbytes <= SMALL:
            data = storage.array.tobytes()  # one copy, into the zip writer's batch
            if len(data) != storage.nbytes:
                raise UnserializableError(
                    f"record {name!r} produced {len(data)} bytes, expected "
                    f"{storage.nbytes} (was an array resized while saving?)"
                )
            archive.add(name, data)
        else:
            archive.add(name, storage.chunks(), storage.nbytes)
    archive.finish()


def _write_legacy(write: Write, pickled: bytes, storages: list[_Storage]) -> None:
    """Five pickles (magic number, protocol 1001, sys_info, the object, the storage keys
    sorted as strings), then per key an int64 little-endian element count and the bytes."""

    def plain(value: Any) -> bytes:
        def refuse(obj: Any, path: Path) -> Any:
            raise UnserializableError(_unsupported(obj))

        return Pickler(refuse).dump(value)

    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, _SYS_INFO):
        write(plain(header))
    write(pickled)
    by_key = {s.key: s for s in storages if s.key is not None}  # (all are keyed by now)
    keys = sorted(by_key)
    write(plain(keys))
    for key in keys:
        storage = by_key[key]
        write(struct.pack("<q", storage.nbytes // storage.dtype.itemsize))
        written = 0
        for chunk in storage.chunks():
            write(chunk)
            written += chunk.nbytes
        if written != storage.nbytes:
            raise UnserializableError(
                f"storage {key} produced {written} bytes, expected "
                f"{storage.nbytes} (was an array modified while saving?)"
            )
