"""The lenient audit of one object pickle: the reader's own run, observed.

:class:`Audit` is the reader's :class:`~pthfmt.torch.handlers.TorchHandlers` with the reader's
resource limits (copy budget, key guard), run by the pickle VM in its lenient mode: an object
whose handler refuses it becomes a poison and the run goes on.  It re-implements no rule: each
error a handler or the storage table raises reaches :meth:`Audit.failed` (the VM's
``on_error``) and is noted under the check code the error carries.  What it adds is only what
a validator needs: where each storage's record is and whether it holds the declared bytes
(the container's ``locate``), the bytes each tensor views (strict mode), and notes about
what torch itself does with a valid file (a big-endian ``_rebuild_tensor_v3``, an untyped
storage in a legacy file, a device type torch cannot restore).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import LimitError, PthError, UnsafePickleError, UnsupportedError
from ..formats.contract import copy_budget
from ..model.device import location_mapper
from ..model.globals import Global
from ..model.storage import StorageInfo, StorageSlice, StorageTable
from ..model.tensor import TensorRef
from ..pickle.machine import Poison, Unpickler
from ..text import short_repr
from ..torch.allowlist import ALLOWLIST, MODULE_ALIASES, UNSUPPORTED_REBUILDS, gadget
from ..torch.handlers import TorchHandlers

__all__ = ["Audit", "Decl", "Note", "Poison", "allowed", "gadget", "error_code"]

_KNOWN_DEVICES: Final = frozenset(
    [
        "cpu",
        "cuda",
        "mps",
        "meta",
        "hpu",
        "xpu",
        "mtia",
        "privateuseone",
        "xla",
        "ipu",
        "maia",
        "hip",
        "ve",
        "lazy",
        "vulkan",
        "mkldnn",
        "opengl",
        "opencl",
        "ideep",
        "fpga",
    ]
)


def allowed(module: str, name: str) -> bool:
    """Is ``module.name`` in the allowlist (after the module aliases)?"""
    return f"{MODULE_ALIASES.get(module, module)}.{name}" in ALLOWLIST


#: The codes of a refused storage reference (its record then looks unreferenced).
_STORAGE_CODES: Final = frozenset(
    ["pickle.persistent_id", "storage.declaration", "storage.redeclared", "device.invalid"]
)


def error_code(exc: PthError) -> str:
    """The check code of a reader error: the one its rule gave it, else by its class."""
    if exc.code is not None:
        return exc.code
    if isinstance(exc, LimitError):
        return "pickle.limit"
    if isinstance(exc, UnsupportedError):
        return "load.unsupported"
    return "load.failed"


@dataclass
class Decl:
    """A storage as first declared, and the position of the opcode that declared it."""

    info: StorageInfo
    at: int


@dataclass
class Note:
    code: str
    message: str
    pos: int | None  # absolute position in the unpickler's data (op position)
    storage: str | None = None
    record: str | None = None  # overrides the pickle record
    no_offset: bool = False
    info: StorageInfo | None = None  # the key path is that of the first tensor viewing it


class Audit(TorchHandlers):
    """The reader's handlers, observed: every refusal and every record problem is noted.

    ``locate(info, pos)`` is the container's check of a storage's record; it returns notes
    instead of raising, so that the views on the storage are still checked.
    """

    def __init__(
        self,
        *,
        legacy: bool,
        big_endian: bool,
        strict: bool,
        script: bool,
        locate: Callable[[StorageInfo, int], list[Note]],
        file_size: int,
    ) -> None:
        # TorchScript archives: the archive's own __torch__ classes become inert stubs, as in
        # the reader (they are flagged once as format.torchscript, not global by global).
        table = StorageTable(location_mapper(None), lambda info: self._declared(info))
        super().__init__(
            table,
            eager=False,
            mmap=False,
            script_classes={} if script else None,
            copy_budget=copy_budget(file_size),
            pid_length=6 if legacy else 5,
        )
        self.on_tensor = self._viewed
        self.legacy = legacy
        self.big_endian = big_endian
        self.strict = strict
        self._locate = locate
        self.u: Unpickler | None = None
        self.notes: list[Note] = []
        self.decl: dict[str, Decl] = {}
        self.order: list[str] = []
        self.refused: dict[int, tuple[str, str]] = {}  # pos -> refused global
        self.extents: dict[str, list[tuple[int, int]]] = {}
        self.partial: set[str] = set()  # storages with a view that was not checked
        self.refused_storage = False  # a storage reference was refused
        self.noted = False
        self._once: set[tuple[str, str]] = set()

    # -- plumbing ------------------------------------------------------------------------------
    def lenient(self) -> TorchHandlers:
        return self

    def run(self, data: Any, start: int, end: int, record: str) -> Unpickler:
        """The lenient VM over ``data[start:end]``, reporting to this audit."""
        u = Unpickler(data, self, start=start, end=end, record=record)
        u.lenient = True
        u.on_error = self.failed
        self.u = u
        return u

    def pos(self) -> int:
        return self.u.op_pos if self.u is not None else 0

    def note(
        self,
        code: str,
        message: str,
        *,
        storage: str | None = None,
        once: str | None = None,
        **kw: Any,
    ) -> None:
        if once is not None:
            if (code, once) in self._once:
                return
            self._once.add((code, once))
        self.notes.append(Note(code, message, self.pos(), storage, **kw))
        self.noted = True

    def failed(self, exc: PthError) -> None:
        """A handler's refusal in the lenient run (the VM goes on with a poison)."""
        if isinstance(exc, UnsafePickleError) and exc.code is None and self.pos() in self.refused:
            return  # a refused global: the static scan reports it
        code = error_code(exc)
        if code in _STORAGE_CODES:
            self.refused_storage = True
        self.note(code, exc.message, once=exc.message)

    def make_tensor(self, storage: Any, *args: Any, **kwargs: Any) -> Any:
        """The reader's ``make_tensor``, observed: a storage with a view that could not be
        checked is left out of the strict unviewed-bytes check."""
        try:
            return super().make_tensor(storage, *args, **kwargs)
        except PthError:
            if isinstance(storage, StorageSlice):
                storage = storage.base
            if isinstance(storage, StorageInfo):
                self.partial.add(storage.key)
            raise

    # -- globals -------------------------------------------------------------------------------
    def resolve(self, module: str, name: str) -> Any:
        try:
            value = super().resolve(module, name)
        except UnsafePickleError:
            self.refused[self.pos()] = (module, name)
            raise
        if (
            isinstance(value, Global)
            and value.qualname.rsplit(".", 1)[-1] in UNSUPPORTED_REBUILDS
            and value.qualname.startswith("torch._utils.")
        ):
            return Global(value.qualname, lambda *args: self._unchecked(value, args))
        return value

    def _unchecked(self, rebuild: Global, args: tuple[Any, ...]) -> Any:
        """A rebuild the reader does not support: its storages' views go unchecked."""
        for arg in args:
            for value in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(value, StorageSlice):
                    value = value.base
                if isinstance(value, StorageInfo):
                    self.partial.add(value.key)
        return rebuild.apply(args)

    # -- what only a validator records ---------------------------------------------------------
    def _declared(self, info: StorageInfo) -> None:
        """The storage table's ``locate``: a storage's first declaration."""
        at = self.pos()
        self.decl[info.key] = Decl(info, at)
        self.order.append(info.key)
        key = info.key
        if self.legacy and info.dtype is None:
            self.note(
                "legacy.v3_dtype",
                f"storage {short_repr(key)} is an UntypedStorage in a "
                "legacy-format file: torch saves it but cannot load it",
                storage=key,
            )
        device = info.location
        if device.type not in _KNOWN_DEVICES or (
            device.type in ("cpu", "mps", "meta") and device.index is not None
        ):
            self.note(
                "device.unknown",
                f"device tag {info.tag!r}: torch.load cannot restore "
                "it unless map_location remaps it",
                once=info.tag,
            )
        for n in self._locate(info, at):
            n.storage, n.info = key, info
            self.notes.append(n)
            self.noted = True

    def _viewed(self, ref: TensorRef) -> None:
        """Each tensor built: the bytes it views (strict mode's unviewed-storage check)."""
        info = ref.dtype_info
        if self.big_endian and info.swap > 1 and ref.storage.storage_class == "UntypedStorage":
            # (an untyped storage read as a multi-byte dtype: what _rebuild_tensor_v3 saves)
            self.note(
                "record.big_endian_v3",
                f"big-endian {info.name} tensor: torch does not byte-swap "
                "_rebuild_tensor_v3 dtypes and loads wrong values",
                once=info.name,
            )
        if not self.strict or not math.prod(ref.shape):
            return
        size = ref.dtype_info.itemsize
        offset = ref.storage_offset
        hi = offset + 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        self.extents.setdefault(ref.storage_key, []).append((offset * size, hi * size))
