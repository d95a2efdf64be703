"""The lenient audit of one object pickle: every storage declaration and tensor view.

:class:`Audit` runs the pickle VM in its lenient mode (a failed object becomes a poison and
the run goes on), with the reader's own resource limits (copy budget, key guard), and notes
each storage and view problem with the position of the opcode that caused it.  The rules
it applies beyond the reader's (a redeclared storage or a wrong record size are noted and
the run goes on, as torch goes on) are what only a validator needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import FormatError, PthError, UnsafePickleError, UnsupportedError
from ..formats.contract import copy_budget
from ..model.device import Device, location_mapper
from ..model.dtypes import by_name
from ..model.globals import Global
from ..model.storage import StorageInfo, StorageSlice, StorageTable, StorageType
from ..model.tensor import TensorRef, check_view
from ..pickle import machine
from ..pickle.machine import Unpickler
from ..torch.allowlist import ALLOWLIST, MODULE_ALIASES
from ..torch.handlers import TorchHandlers
from .base import short, text_of

__all__ = ["Audit", "Decl", "Note", "Poison", "allowed", "gadget"]

#: The VM's stand-in for an object whose construction failed (lenient runs).
#: (machine.py is asked to export it publicly as ``Poison``.)
Poison: Final[Any] = getattr(machine, "Poison", None) or machine._Poison
#: Modules whose globals are known code-execution gadgets (message only: all are refused).
_GADGETS: Final = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__",
                   "importlib", "runpy", "pty", "socket", "shutil", "pickle", "marshal",
                   "webbrowser", "code", "codeop", "ctypes", "multiprocessing", "operator",
                   "functools", "types", "pdb", "timeit", "torch.jit", "torch.hub",
                   "torch.serialization", "torch.utils", "torch._inductor", "numpy.testing")
_KNOWN_DEVICES: Final = frozenset(["cpu", "cuda", "mps", "meta", "hpu", "xpu", "mtia",
                                   "privateuseone", "xla", "ipu", "maia", "hip", "ve", "lazy",
                                   "vulkan", "mkldnn", "opengl", "opencl", "ideep", "fpga"])
_UINT8 = by_name("uint8")


def allowed(module: str, name: str) -> bool:
    """Is ``module.name`` in the allowlist (after the module aliases)?"""
    return f"{MODULE_ALIASES.get(module, module)}.{name}" in ALLOWLIST


def gadget(module: str) -> bool:
    """Is ``module`` one whose globals are known code-execution gadgets?"""
    return any(module == g or module.startswith(g + ".") for g in _GADGETS)


@dataclass
class Decl:
    info: StorageInfo
    sig: tuple[str, int, str]
    at: int
    stype: StorageType


@dataclass
class Note:
    code: str
    message: str
    pos: int | None            # absolute position in the unpickler's data (op position)
    storage: str | None = None
    record: str | None = None  # overrides the pickle record
    no_offset: bool = False
    info: StorageInfo | None = None   # the key path is that of the first tensor viewing it


class Audit(TorchHandlers):
    """Handlers for a lenient run of the pickle VM that note every storage and view problem.

    A noted problem also raises (so the VM's lenient mode puts a poison in its place and goes
    on), except where torch itself would go on (a redeclared storage, a wrong record size):
    there the storage is kept so that the views on it are still checked.
    """

    def __init__(self, *, legacy: bool, big_endian: bool, strict: bool, script: bool,
                 locate: Callable[[StorageInfo, int], list[Note]], file_size: int) -> None:
        # TorchScript archives: the archive's own __torch__ classes become inert stubs, as in
        # the reader (they are flagged once as format.torchscript, not global by global).
        # The reader's resource limits apply: the same copy budget and key guard as a load.
        super().__init__(StorageTable(location_mapper(None), lambda info: None), eager=False,
                         mmap=False, script_classes={} if script else None,
                         copy_budget=copy_budget(file_size))
        self.observer = self.observe
        self.legacy = legacy
        self.big_endian = big_endian
        self.strict = strict
        self._locate = locate
        self.u: Unpickler | None = None
        self.notes: list[Note] = []
        self.decl: dict[str, Decl] = {}
        self.order: list[str] = []
        self.refused: dict[int, tuple[str, str]] = {}     # pos -> refused global
        self.claims: dict[str, str] = {}
        self.extents: dict[str, list[tuple[int, int]]] = {}
        self.clones: list[StorageInfo] = []
        self.partial: set[str] = set()      # storages with a view that was not checked
        self.noted = False
        self._once: set[tuple[str, str]] = set()

    # -- plumbing ------------------------------------------------------------------------------
    def lenient(self) -> TorchHandlers:
        return self

    def observe(self, code: str, message: str) -> None:
        """The reader's rules report here before they raise (``TorchHandlers.observer``)."""
        self.note(code, message, once=code)

    def pos(self) -> int:
        return self.u.op_pos if self.u is not None else 0

    def note(self, code: str, message: str, *, storage: str | None = None,
             once: str | None = None, **kw: Any) -> None:
        if once is not None:
            if (code, once) in self._once:
                return
            self._once.add((code, once))
        self.notes.append(Note(code, message, self.pos(), storage, **kw))
        self.noted = True

    # -- globals -------------------------------------------------------------------------------
    def resolve(self, module: str, name: str) -> Any:
        qualname = f"{MODULE_ALIASES.get(module, module)}.{name}"
        if ALLOWLIST.get(qualname) == "unsupported_rebuild":
            return Global(qualname, lambda *a: self._unsupported(qualname, a))
        try:
            return super().resolve(module, name)
        except UnsafePickleError:
            self.refused[self.pos()] = (module, name)
            raise

    def _unsupported(self, qualname: str, args: tuple[Any, ...]) -> Any:
        for arg in args:                    # its storages are not checked view by view
            for value in (arg if isinstance(arg, tuple) else (arg,)):
                if isinstance(value, StorageSlice):
                    value = value.base
                if isinstance(value, StorageInfo):
                    self.partial.add(value.key)
        what = {"torch._utils._rebuild_qtensor": "a quantized tensor",
                "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
                "torch._utils._rebuild_sparse_csr_tensor": "a sparse CSR tensor",
                "torch._utils._rebuild_nested_tensor": "a nested tensor",
                "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor"}.get(
                    qualname, f"a {qualname.rsplit('.', 1)[-1]} object")
        self.note("load.unsupported", f"{what} ({qualname}): pthfmt does not read it, so its "
                  "views were not checked", once=qualname)
        raise UnsupportedError(qualname)

    # -- storages ------------------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            self.note("pickle.persistent_id", f"persistent id {short(pid)} is not a tuple")
            raise FormatError("persistent id")
        if any(isinstance(v, Poison) for v in pid):
            raise FormatError("poisoned persistent id")     # its global is already reported
        kind = text_of(pid[0])
        if kind == "module":
            self.note("pickle.persistent_id", f"persistent id of a pickled nn.Module class "
                      f"{short(pid[1])}: torch.load(weights_only=False) imports it")
            raise FormatError("module persistent id")
        if kind != "storage" or len(pid) not in (5, 6):
            self.note("pickle.persistent_id", f"persistent id {short(pid)} is not a storage "
                      "reference")
            raise FormatError("persistent id")
        want = 6 if self.legacy else 5
        if len(pid) != want:
            self.note("pickle.persistent_id", f"storage reference of {len(pid)} elements; "
                      f"torch.load expects {want} in the {'legacy' if self.legacy else 'zip'} "
                      "format", once="arity")
        _, stype, key, tag, numel = pid[:5]
        key, tag = text_of(key), text_of(tag)
        if not isinstance(key, str):
            self.note("storage.declaration", f"storage key {short(key)} is not a string")
            raise FormatError("key")
        if not isinstance(stype, StorageType):
            self.note("storage.declaration", f"storage {key!r}: {short(stype)} is not a "
                      "storage class", storage=key)
            raise FormatError("class")
        if not isinstance(tag, str):
            self.note("storage.declaration", f"storage {key!r}: location {short(tag)} is not "
                      "a string", storage=key)
            raise FormatError("tag")
        if type(numel) is not int or numel < 0:
            self.note("storage.declaration", f"storage {key!r}: size {short(numel)} is not a "
                      "non-negative int", storage=key)
            raise FormatError("numel")
        sig = (stype.name, numel, tag)
        seen = self.decl.get(key)
        if seen is not None:
            info = seen.info
            if seen.sig != sig:
                # torch keeps the first declaration; a copy of it lets the key path name the
                # tensor of the second one
                first = info
                info = StorageInfo(key, first.dtype, first.nbytes, first.tag, first.location)
                info.record = first.record
                self.clones.append(info)
                self.note("storage.redeclared",
                          f"storage {key!r} is declared as {seen.sig[0]}[{seen.sig[1]}] on "
                          f"{seen.sig[2]!r} and again as {sig[0]}[{sig[1]}] on {sig[2]!r}: "
                          "torch silently keeps the first", storage=key, info=info)
        else:
            device = self._device(tag)
            itemsize = stype.dtype.itemsize if stype.dtype else 1
            info = StorageInfo(key, stype.dtype, numel * itemsize, tag, device)
            self.decl[key] = Decl(info, sig, self.pos(), stype)
            self.order.append(key)
            if self.legacy and stype.dtype is None:
                self.note("legacy.v3_dtype", f"storage {key!r} is an UntypedStorage in a "
                          "legacy-format file: torch saves it but cannot load it", storage=key)
            for n in self._locate(info, self.pos()):
                n.storage, n.info = key, info
                self.notes.append(n)
                self.noted = True
        if len(pid) == 6 and pid[5] is not None:
            try:
                return self._legacy_view(info, pid[5])
            except PthError as exc:
                self.note("tensor.view", exc.message, storage=key)
                raise
        return info

    def _device(self, tag: str) -> Device:
        try:
            device = Device.parse(tag)
        except ValueError:
            self.note("device.invalid", f"device tag {tag!r} is malformed", once=tag)
            return Device("cpu")
        odd = device.type not in _KNOWN_DEVICES or (device.type in ("cpu", "mps", "meta")
                                                      and device.index is not None)
        if odd:
            self.note("device.unknown", f"device tag {tag!r}: torch.load cannot restore it "
                      "unless map_location remaps it", once=tag)
        return device

    # -- tensors -------------------------------------------------------------------------------
    def make_tensor(self, storage: Any, dtype: Any, offset: Any, size: Any, stride: Any,
                    requires_grad: Any, metadata: Any = None) -> Any:
        start, limit = 0, None
        if isinstance(storage, StorageSlice):
            start, limit, storage = storage.start, storage.numel, storage.base
        elif not isinstance(storage, StorageInfo):
            if not isinstance(storage, Poison):
                self.note("tensor.view", f"tensor storage is a {type(storage).__name__}, not a "
                          "persistent storage reference")
            raise FormatError("storage")
        if dtype is None:
            dtype = storage.dtype or _UINT8
        key = storage.key
        claimed = self.claims.setdefault(key, dtype.name)
        if claimed != dtype.name:
            self.note("storage.dtype_conflict", f"storage {key!r} is read as {claimed} by one "
                      f"tensor and as {dtype.name} by another", storage=key, once=key)
        if limit is None:
            nbytes = storage.nbytes
        else:
            nbytes = (start + limit) * dtype.itemsize
            if type(offset) is int:
                offset += start
        try:
            offset, shape, stride = check_view(dtype, nbytes, offset, size, stride, key)
        except PthError as exc:
            self.note("tensor.view", exc.message, storage=key)
            self.partial.add(key)
            raise
        if metadata is not None and not isinstance(metadata, dict):
            self.note("tensor.metadata", f"tensor metadata is a {type(metadata).__name__}, "
                      "not a dict")
            raise FormatError("metadata")
        if not isinstance(requires_grad, bool):
            self.note("tensor.metadata", f"requires_grad is {short(requires_grad)}, not a bool")
            raise FormatError("requires_grad")
        if self.strict and math.prod(shape):
            size_ = dtype.itemsize
            hi = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
            self.extents.setdefault(key, []).append((offset * size_, hi * size_))
        return TensorRef(storage, dtype, offset, shape, stride, requires_grad)

    def rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any,
                          requires_grad: Any, backward_hooks: Any, dtype: Any,
                          metadata: Any = None) -> Any:
        if not hasattr(dtype, "info") or dtype.info is None:
            if not isinstance(dtype, Poison):
                self.note("dtype.invalid", f"_rebuild_tensor_v3 dtype {short(dtype)} is not a "
                          "storable torch dtype")
            raise FormatError("dtype")
        if self.big_endian and dtype.info.swap > 1:
            self.note("record.big_endian_v3", f"big-endian {dtype.name} tensor: torch does not "
                      "byte-swap _rebuild_tensor_v3 dtypes and loads wrong values",
                      once=dtype.name)
        return self.make_tensor(storage, dtype.info, offset, size, stride, requires_grad,
                                metadata)


