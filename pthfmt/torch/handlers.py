"""The handlers: pthfmt's own code for every allowlisted global (tensors, storages, containers).

Nothing named by a file is ever imported.  ``resolve(module, name)`` looks the name up in
:data:`~pthfmt.torch.allowlist.ALLOWLIST`; a hit is either an inert *value* (a dtype, a
storage class, a qscheme) or the name of a handler method here, wrapped in a
:class:`~pthfmt.model.globals.Global`.  Anything else raises
:class:`~pthfmt.errors.UnsafePickleError` naming ``module.name``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from typing import Any, Final

import numpy as np

from ..errors import CorruptError, FormatError, LimitError, UnsafePickleError, UnsupportedError
from ..model.device import Device
from ..model.dtypes import DTYPES, DType, DTypeInfo
from ..model.globals import Global
from ..model.storage import StorageSlice, StorageTable
from ..model.stub import Stub, StubType
from ..model.tensor import INTP_MAX, MAX_NDIM, StorageInfo, TensorRef, check_view, view_of
from ..pickle.keys import KeyGuard
from ..pickle.machine import Pending
from ..text import escape, short_repr
from .allowlist import ALLOWLIST, LAYOUTS, MODULE_ALIASES, UNSUPPORTED_REBUILDS, gadget
from .kinds import kind_handler
from .tensor_template import TensorTemplate

__all__ = ["TorchHandlers", "ScriptClasses"]

_CODECS = {
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "ascii": "ascii",
}
_NUMPY_KINDS = frozenset("biufcSUV?")


class _PendingArray(Pending):
    """``numpy.core.multiarray._reconstruct``; its ``BUILD`` state holds the data."""

    __slots__ = ("handlers",)

    def __init__(self, handlers: TorchHandlers) -> None:
        super().__init__()
        self.handlers = handlers

    def build(self, state: Any) -> np.ndarray:
        if not isinstance(state, tuple) or len(state) != 5:
            raise FormatError("numpy array state is not a 5-tuple")
        _version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype):
            raise FormatError(f"numpy array dtype is a {type(dtype).__name__}")
        if dtype.hasobject:
            raise UnsafePickleError("numpy object arrays are not allowed")
        _np_shape(shape)
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError(f"numpy array data is a {type(raw).__name__}, not bytes")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise CorruptError(
                f"numpy array of shape {shape} and dtype {dtype} needs "
                f"{math.prod(shape) * dtype.itemsize} bytes, has {len(raw)}"
            )
        self.handlers.charge(len(raw), "numpy array")
        arr = np.frombuffer(bytearray(raw), dtype)
        return arr.reshape(shape, order="F" if fortran else "C")


class _PendingDType(Pending):
    """``numpy.dtype(spec, align, copy)``; ``BUILD`` sets its byte order."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def build(self, state: Any) -> np.dtype:
        if not isinstance(state, tuple) or len(state) < 8:
            raise FormatError("numpy dtype state is not a tuple of 8 or more")
        order, sub, names, fields = state[1], state[2], state[3], state[4]
        if sub is not None or names is not None or fields is not None:
            raise UnsupportedError("structured or sub-array numpy dtypes")
        if order not in ("<", ">", "|", "="):
            raise FormatError(f"numpy dtype byte order {order!r}")
        return self.dtype.newbyteorder(order) if order in "<>" else self.dtype


ScriptClasses = dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]]


class TorchHandlers:
    r"""Handlers for one checkpoint: torch's rebuild functions, containers, numpy values.

    With ``eager`` every tensor becomes a numpy array as soon as it is rebuilt; otherwise it
    stays a :class:`~pthfmt.model.tensor.TensorRef`.  ``unknown="stub"`` turns globals outside the
    allowlist into inert :class:`~pthfmt.model.stub.StubType`\ s instead of refusing them;
    ``script_classes`` (TorchScript archives) stubs the archive's own ``__torch__`` classes,
    with the parameter and buffer names its code records declare.
    """

    def __init__(
        self,
        storages: StorageTable,
        *,
        eager: bool,
        mmap: bool,
        unknown: str | Collection[str] = "error",
        script_classes: ScriptClasses | None = None,
        copy_budget: int = 1 << 62,
        pid_length: int = 5,
    ) -> None:
        #: ``unknown`` as a set of qualified names to stub (``None``: "error" or "stub").
        self.stub_names: frozenset[str] | None = None
        if isinstance(unknown, str):
            if unknown not in ("error", "stub"):
                raise ValueError(
                    f"unknown must be 'error', 'stub' or a collection of qualified "
                    f"class names, not {unknown!r}"
                )
        else:
            self.stub_names = _names(unknown)
            unknown = "names"
        self.storages = storages
        self.eager = eager
        self.mmap = mmap
        self.unknown = unknown
        self.script_classes = script_classes
        self._globals: dict[tuple[str, str], Any] = {}
        #: the tensor fast path's compiled run patterns, shared by its templates
        self._run_patterns: dict[tuple[bytes, bytes, bytes], re.Pattern[bytes]] = {}
        #: Bytes that handlers may still copy out of pickled values (bytearray(),
        #: _codecs.encode, numpy arrays): a memo reference lets a file name one big blob
        #: many times, so copies are charged against a budget set from the file's size.
        self.copy_budget = copy_budget
        #: zip persistent ids have 5 items; legacy ones a 6th, the storage view metadata.
        self.pid_length = pid_length
        self.keys = KeyGuard(copy_budget // 32)
        #: Told of each tensor this run builds (the validator's view bookkeeping); ``None``
        #: (the default) costs nothing on the load path.
        self.on_tensor: Callable[[TensorRef], None] | None = None

    def check_keys(self, keys: Any) -> None:
        """The key guard over dict/set keys built by a handler."""
        self.keys.check_all(keys)

    # -- the pickle VM's interface ---------------------------------------------------------
    def lenient(self) -> TorchHandlers:
        table = StorageTable(self.storages.mapper, self.storages.locate)
        unknown = self.stub_names if self.stub_names is not None else self.unknown
        return TorchHandlers(
            table,
            eager=False,
            mmap=False,
            unknown=unknown,
            script_classes=self.script_classes,
            copy_budget=self.copy_budget,
            pid_length=self.pid_length,
        )

    def charge(self, nbytes: int, what: str) -> None:
        self.copy_budget -= nbytes
        if self.copy_budget < 0:
            raise LimitError(
                f"{what}: the pickle copies more data than the file's size "
                "justifies (a blob referenced again and again)"
            )

    def resolve(self, module: str, name: str) -> Any:
        key = (module, name)
        hit = self._globals.get(key)
        if hit is not None:
            return hit
        qualname = f"{MODULE_ALIASES.get(module, module)}.{name}"
        entry = ALLOWLIST.get(qualname)
        if entry is None:
            stub = self._stub_type(module, name)
            self._globals[key] = stub
            return stub
        # Handler globals are made anew, never cached: a cached Global holding a bound method
        # of these handlers would be a reference cycle keeping the storage table, the archive
        # and the file's mapping alive until the next garbage collection (which then pays to
        # free them).  A pickle names each global once and memoizes it, so this is cheap.
        if entry == "unsupported_rebuild":
            return Global(qualname, _unsupported(name))
        if isinstance(entry, str) and entry.startswith("kind_"):
            return Global(qualname, kind_handler(self, entry))
        if entry == "rebuild_tensor_v2" and self._standard_ids:
            template = TensorTemplate(
                self.storages.declare_typed,
                self.make_tensor,
                eager=self.eager,
                mmap=self.mmap,
                direct=self.on_tensor is None
                and type(self).make_tensor is TorchHandlers.make_tensor,
                stored=self.storages.stored,
                compiled=self._run_patterns,
            )
            return Global(qualname, self.rebuild_tensor_v2, template.run)
        if isinstance(entry, str):
            return Global(qualname, getattr(self, entry))
        self._globals[key] = entry
        return entry

    @property
    def _standard_ids(self) -> bool:
        """Whether persistent ids are zip storage ids read by :meth:`persistent_load` itself:
        the tensor fast path calls ``storages.declare`` as that method does, so it is
        attached only then (not for legacy 6-item ids, nor for handlers that read ids their
        own way, as the tar format's)."""
        return self.pid_length == 5 and type(self).persistent_load is TorchHandlers.persistent_load

    def _stub_type(self, module: str, name: str) -> StubType:
        script = self.script_classes is not None and module.split(".", 1)[0] == "__torch__"
        stub = StubType(module, name)
        if (
            self.unknown != "stub"
            and not script
            and (self.stub_names is None or stub.qualname not in self.stub_names)
        ):
            raise UnsafePickleError(_refusal(module, name, stub.qualname))
        if script and self.script_classes:
            info = self.script_classes.get(stub.qualname)
            if info is not None:
                stub.parameters, stub.buffers, stub.is_module = info
        return stub

    def persistent_load(self, pid: Any) -> Any:
        if (
            type(pid) is tuple
            and len(pid) == 5 == self.pid_length
            and type(pid[0]) is str
            and pid[0] == "storage"
            and type(pid[2]) is str
            and type(pid[3]) is str
        ):  # the common case
            return self.storages.declare(pid[2], pid[1], pid[3], pid[4])
        if not isinstance(pid, tuple) or not pid:
            raise FormatError(
                f"persistent id {_short(pid)} is not a tuple", code="pickle.persistent_id"
            )
        kind = _text(pid[0])
        if type(kind) is not str:
            raise FormatError(
                f"persistent id {_short(pid)} does not start with a string",
                code="pickle.persistent_id",
            )
        if kind == "module":
            if self.unknown == "stub" and len(pid) > 1 and isinstance(pid[1], StubType):
                return pid[1]
            raise UnsafePickleError(
                f"persistent id of a pickled nn.Module class {_short(pid)}: "
                "torch.load(weights_only=False) imports it",
                code="pickle.persistent_id",
            )
        if kind != "storage" or len(pid) != self.pid_length:
            raise FormatError(
                f"persistent id {_short(pid)} is not a storage reference "
                f"(a {self.pid_length}-tuple in this container)",
                code="pickle.persistent_id",
            )
        _, stype, key, tag, numel = pid[:5]
        info = self.storages.declare(_text(key), stype, _text(tag), numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return info
        return self._legacy_view(info, view)

    def _legacy_view(self, info: StorageInfo, view: Any) -> StorageSlice:
        if not isinstance(view, tuple) or len(view) != 3:
            raise FormatError(
                f"storage {short_repr(info.key)}: view metadata {_short(view)}", code="tensor.view"
            )
        _view_key, start, numel = view
        if (
            type(start) is not int
            or type(numel) is not int
            or start < 0
            or numel < 0
            or start + numel > info.numel
        ):
            raise CorruptError(
                f"storage {short_repr(info.key)}: view [{start}:{start}+{numel}] of a "
                f"{info.numel}-element storage",
                code="tensor.view",
            )
        return StorageSlice(info, start, numel)

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, Stub):
            obj.state = state
            return
        if isinstance(obj, (OrderedDict, argparse.Namespace)):
            if isinstance(state, tuple) and len(state) == 2:
                state = {} if state[0] is None else state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise FormatError(f"{type(obj).__name__} state is not a dict of attribute names")
            vars(obj).update(state)
            return
        raise UnsafePickleError(
            f"BUILD on a {type(obj).__name__} (only OrderedDict, "
            "argparse.Namespace and pthfmt's own types accept state)"
        )

    def setitems(self, obj: Any, items: list[Any]) -> None:
        if not isinstance(obj, Stub):
            raise FormatError(f"SETITEM on a {_kind(obj)}; only dicts take items")
        if len(items) % 2:
            raise CorruptError("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            self.keys.check(items[i])
            obj.dictitems[items[i]] = items[i + 1]

    def extend(self, obj: Any, items: list[Any]) -> None:
        if not isinstance(obj, Stub):
            raise FormatError(f"APPEND to a {_kind(obj)}; only lists take items")
        obj.listitems.extend(items)

    # -- tensors -------------------------------------------------------------------------------
    def make_tensor(
        self,
        storage: Any,
        dtype: DTypeInfo | None,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        metadata: Any = None,
    ) -> Any:
        if type(storage) is StorageInfo:
            nbytes = storage.nbytes
            if dtype is None:
                dtype = storage.dtype
                if dtype is None:
                    dtype = storage.dtype = _UINT8
            elif storage.dtype is not dtype:
                StorageTable.claim(storage, dtype)
        elif isinstance(storage, StorageSlice):
            start, limit, storage = storage.start, storage.numel, storage.base
            if dtype is None:
                dtype = storage.dtype or _UINT8
            StorageTable.claim(storage, dtype)
            nbytes = (start + limit) * dtype.itemsize
            if type(offset) is int:
                offset += start
        else:
            raise FormatError(
                f"tensor storage is a {type(storage).__name__}, not a persistent storage reference",
                code="tensor.view",
            )
        offset, size, stride = check_view(dtype, nbytes, offset, size, stride, storage.key)
        conj = neg = False
        if metadata:
            if not isinstance(metadata, dict):
                raise FormatError(
                    f"tensor metadata is a {type(metadata).__name__}", code="tensor.metadata"
                )
            conj, neg = bool(metadata.get("conj")), bool(metadata.get("neg"))
            if neg and dtype.kind == "bool":
                if math.prod(size if isinstance(size, (tuple, list)) else ()):
                    raise UnsupportedError(
                        "a negated view of a bool tensor (torch cannot "
                        "materialize it either: bool has no negative)"
                    )
                neg = False  # an empty one holds no values to negate
        if requires_grad is not True and requires_grad is not False:
            raise FormatError(
                f"requires_grad is {_short(requires_grad)}, not a bool", code="tensor.metadata"
            )
        if self.eager and not (conj or neg):
            buffer = storage._buffer
            if buffer is None:
                buffer = storage.buffer(self.mmap)
            return view_of(buffer, dtype, offset, size, stride)
        ref = TensorRef(
            storage, dtype, offset, size, stride, requires_grad, conj=conj, neg=neg, mmap=self.mmap
        )
        if self.on_tensor is not None:
            self.on_tensor(ref)
        return ref.numpy() if self.eager else ref

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> Any:
        return self.make_tensor(storage, None, offset, size, stride, False)

    def rebuild_tensor_v2(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> Any:
        return self.make_tensor(storage, None, offset, size, stride, requires_grad, metadata)

    def rebuild_tensor_v3(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> Any:
        if not isinstance(dtype, DType) or dtype.info is None:
            raise FormatError(
                f"_rebuild_tensor_v3 dtype {_short(dtype)} is not a storable dtype",
                code="dtype.invalid",
            )
        return self.make_tensor(storage, dtype.info, offset, size, stride, requires_grad, metadata)

    def rebuild_parameter(
        self, data: Any, requires_grad: Any, backward_hooks: Any = None, state: Any = None
    ) -> Any:
        if not isinstance(requires_grad, bool):
            raise FormatError(f"Parameter requires_grad is {_short(requires_grad)}, not a bool")
        return self._as_parameter(data, requires_grad, state)

    def rebuild_parameter_with_state(
        self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any
    ) -> Any:
        return self.rebuild_parameter(data, requires_grad, backward_hooks, state)

    def _as_parameter(self, data: Any, requires_grad: bool, state: Any) -> Any:
        if isinstance(data, np.ndarray):
            return data
        if not isinstance(data, TensorRef):
            raise FormatError(f"Parameter data is a {type(data).__name__}, not a tensor")
        ref = _copy_ref(data)
        ref.is_parameter = True
        ref.requires_grad = requires_grad
        state = _state_dict(state)
        if state:
            ref.state = state
        return ref

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        if not isinstance(func, Global) or not isinstance(args, tuple):
            raise UnsafePickleError(f"_rebuild_from_type_v2 with function {_short(func)}")
        kind = getattr(new_type, "qualname", None)
        if kind not in ("torch.Tensor", "torch.nn.parameter.Parameter") and not isinstance(
            new_type, StubType
        ):
            raise UnsafePickleError(f"_rebuild_from_type_v2 to class {_short(new_type)}")
        tensor = func.apply(args)
        if kind == "torch.nn.parameter.Parameter":  # torch keeps the inner tensor's flag
            flag = tensor.requires_grad if isinstance(tensor, TensorRef) else True
            return self._as_parameter(tensor, flag, state)
        state = _state_dict(state)
        if state and isinstance(tensor, TensorRef):
            tensor = _copy_ref(tensor)
            tensor.state = state
        return tensor

    def tensor_class(self, *args: Any) -> Any:
        raise UnsupportedError("torch.Tensor constructed directly (pre-1.0 tensor pickling)")

    def parameter_class(self, data: Any = None, requires_grad: Any = True) -> Any:
        return self.rebuild_parameter(data, requires_grad)

    # -- TorchScript ---------------------------------------------------------------------------
    def restore_type_tag(self, value: Any, type_str: Any = None) -> Any:
        return value

    def build_list(self, items: Any) -> list[Any]:
        return list(_iterable(items, "TorchScript list"))

    # -- torch values ------------------------------------------------------------------------
    def size(self, dims: Any = ()) -> tuple[int, ...]:
        if not isinstance(dims, (tuple, list)) or not all(type(d) is int for d in dims):
            raise FormatError(f"torch.Size({_short(dims)}) is not a tuple of ints")
        return tuple(dims)

    def device(self, type_: Any, index: Any = None) -> Device:
        if not isinstance(type_, str) or (index is not None and type(index) is not int):
            raise FormatError(f"torch.device({_short(type_)}, {_short(index)})")
        try:
            return Device(type_, index) if index is not None else Device.parse(type_)
        except ValueError as exc:
            raise FormatError(str(exc)) from None

    def get_layout(self, name: Any) -> str:
        if type(name) is not str or name not in LAYOUTS:
            raise FormatError(f"unknown tensor layout {_short(name)}")
        return name

    # -- builtins and collections ------------------------------------------------------------
    def ordered_dict(self, items: Any = ()) -> OrderedDict[Any, Any]:
        if items == ():  # every tensor's backward_hooks: OrderedDict()
            return OrderedDict()
        pairs = _pairs(items, "OrderedDict")
        if not isinstance(items, dict):
            self.check_keys(pair[0] for pair in pairs)
        return OrderedDict(pairs)

    def namespace(self, *args: Any) -> argparse.Namespace:
        """``argparse.Namespace`` (pickled as ``NEWOBJ`` + ``BUILD`` of its fields)."""
        if args:
            raise FormatError(f"argparse.Namespace called with {len(args)} arguments")
        return argparse.Namespace()

    def counter(self, items: Any = ()) -> Counter[Any]:
        if isinstance(items, dict):
            return Counter(items)
        raise FormatError("Counter() argument is not a dict")

    def set_(self, items: Any = ()) -> set[Any]:
        self.check_keys(_iterable(items, "set"))
        return set(items)

    def frozenset_(self, items: Any = ()) -> frozenset[Any]:
        self.check_keys(_iterable(items, "frozenset"))
        return frozenset(items)

    def complex_(self, real: Any = 0.0, imag: Any = 0.0) -> complex:
        if not all(type(v) in (int, float) for v in (real, imag)):
            raise FormatError("complex() of non-numbers")
        return complex(real, imag)

    def bytearray_(self, data: Any = b"") -> bytearray:
        if not isinstance(data, (bytes, bytearray)):
            raise FormatError("bytearray() of a non-bytes value")
        self.charge(len(data), "bytearray()")
        return bytearray(data)

    def bytes_(self, data: Any = b"") -> bytes:
        if not isinstance(data, (bytes, bytearray)):
            raise FormatError("bytes() of a non-bytes value")
        return bytes(data)

    def codecs_encode(self, text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        codec = _CODECS.get(encoding) if isinstance(encoding, str) else None
        if (
            not isinstance(text, str)
            or codec is None
            or type(errors) is not str
            or errors != "strict"
        ):
            raise UnsafePickleError(f"_codecs.encode with encoding {_short(encoding)}")
        self.charge(len(text), "_codecs.encode")
        try:
            return text.encode(codec)
        except UnicodeEncodeError as exc:
            raise CorruptError(f"_codecs.encode: {exc.reason}") from None

    # -- numpy ---------------------------------------------------------------------------------
    def np_reconstruct(self, subtype: Any, shape: Any, code: Any) -> _PendingArray:
        if getattr(subtype, "qualname", None) != "numpy.ndarray":
            raise UnsafePickleError(f"numpy _reconstruct of {subtype!r}")
        return _PendingArray(self)

    def np_dtype(self, spec: Any, align: Any = False, copy: Any = False) -> _PendingDType:
        if (
            not isinstance(spec, str)
            or not spec
            or spec[0] not in _NUMPY_KINDS
            or (not spec[1:].isdigit() and spec[1:] != "")
        ):
            raise UnsafePickleError(f"numpy dtype {_short(spec)} is not a plain numeric dtype")
        try:
            return _PendingDType(np.dtype(spec))
        except TypeError:
            raise FormatError(f"invalid numpy dtype {spec!r}") from None

    def np_frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        """numpy's protocol-5 array pickling (in-band buffer)."""
        if isinstance(dtype, _PendingDType):
            dtype = dtype.dtype
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafePickleError(f"numpy array of dtype {_short(dtype)}")
        if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
            raise FormatError("numpy _frombuffer of a non-bytes buffer or unknown order")
        _np_shape(shape)
        if len(buf) != math.prod(shape) * dtype.itemsize:
            raise CorruptError(
                f"numpy array of shape {shape} and dtype {dtype} needs "
                f"{math.prod(shape) * dtype.itemsize} bytes, has {len(buf)}"
            )
        self.charge(len(buf), "numpy array")
        return np.frombuffer(bytearray(buf), dtype).reshape(shape, order=order)

    def np_scalar(self, dtype: Any, raw: Any = None) -> Any:
        if isinstance(dtype, _PendingDType):
            dtype = dtype.dtype
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafePickleError(f"numpy scalar of dtype {_short(dtype)}")
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
            raise CorruptError(f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes")
        return np.frombuffer(raw, dtype)[0]


_UINT8: Final = next(i for i in DTYPES if i.name == "uint8")


def _refusal(module: str, name: str, qualname: str) -> str:
    """The message for a global outside the allowlist: how to go on, unless it is a gadget."""
    if gadget(module):
        return f"global {escape(qualname)} is not allowed: a known code-execution gadget"
    return (
        f"global {escape(qualname)} is not allowed (to read its objects as inert stubs, "
        f'pass unknown="stub", or unknown={{{short_repr(qualname)}}} for this class only)'
    )


def _names(unknown: Any) -> frozenset[str]:
    if not isinstance(unknown, (set, frozenset, list, tuple)) or not all(
        isinstance(n, str) for n in unknown
    ):
        raise TypeError(
            "unknown must be 'error', 'stub' or a collection of qualified class names (strings)"
        )
    return frozenset(unknown)


def _unsupported(name: str) -> Callable[..., Any]:
    def handler(*args: Any) -> Any:
        raise UnsupportedError(f"{UNSUPPORTED_REBUILDS[name]} (torch._utils.{name})")

    return handler


def _copy_ref(ref: TensorRef) -> TensorRef:
    new = TensorRef(
        ref.storage,
        ref.dtype_info,
        ref.storage_offset,
        ref.shape,
        ref.stride,
        ref.requires_grad,
        conj=ref.conj,
        neg=ref.neg,
        mmap=ref._mmap,
    )
    new.is_parameter = ref.is_parameter
    new.state = ref.state
    return new


def _state_dict(state: Any) -> dict[str, Any] | None:
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    if state is None or isinstance(state, dict):
        return state
    raise FormatError(f"tensor state is a {type(state).__name__}, not a dict")


def _np_shape(shape: Any) -> None:
    """A numpy shape: at most 64 ints in [0, 2**63), checked before any arithmetic (a
    product of huge ints, repeated at no cost through the memo, would take minutes)."""
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_NDIM
        or not all(type(n) is int and 0 <= n <= INTP_MAX for n in shape)
    ):
        raise FormatError(
            f"numpy array shape {_short(shape)} is not a tuple of at most "
            f"{MAX_NDIM} ints in [0, 2**63)"
        )


def _iterable(items: Any, what: str) -> Any:
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise FormatError(f"{what}() argument is a {type(items).__name__}")
    return items


def _pairs(items: Any, what: str) -> Any:
    if isinstance(items, dict):
        return items.items()
    for pair in _iterable(items, what):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise FormatError(f"{what}() item {_short(pair)} is not a pair")
    return items


def _kind(obj: Any) -> str:
    return getattr(obj, "qualname", None) or type(obj).__name__


def _text(value: Any) -> Any:
    """torch's ``_maybe_decode_ascii``: Python 2 files carry bytes for names."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


_short = short_repr
