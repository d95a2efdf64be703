"""The dtype table: torch dtypes, their storage classes, element sizes and numpy equivalents.

This one table drives the reader (storage class and ``torch.<dtype>`` globals), the writer
(numpy dtype -> storage class or ``_rebuild_tensor_v3`` dtype), the validator and the docs
(``spec/``).  A row is a :class:`DTypeInfo`:

- ``name``: torch's name (``str(torch.float32) == "torch.float32"``), which is also the
  global a pickle uses for the dtype object (``torch float32``).
- ``storage``: the legacy typed-storage class (``FloatStorage``), or ``None`` for the dtypes
  torch writes through ``torch.storage.UntypedStorage`` + ``_rebuild_tensor_v3``; for those a
  persistent id's ``numel`` counts bytes, for typed storages it counts elements.
- ``itemsize``: bytes per element of the storage.
- ``numpy``: the numpy dtype an array of this dtype has (native little-endian).  bfloat16,
  float8 and complex32 come from ``ml_dtypes``, imported the first time one of them is
  needed (``import ml_dtypes`` costs several times ``import numpy``, so a float32 checkpoint
  never pays it); dtypes numpy cannot express (packed sub-byte
  and ``bits`` types, quantized integers) are the raw integer type tagged with
  ``metadata={"torch": name}`` so that a save writes them back as what they were.
- ``swap``: the unit of a byte swap (complex numbers swap each half; packed types not at all).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, overload

import numpy as np

__all__ = ["DTypeInfo", "DType", "DTYPES", "by_name", "by_storage", "from_numpy"]


def _tagged(base: type, name: str) -> np.dtype:
    return np.dtype(base, metadata={"torch": name})


def _ml_dtypes_type(name: str) -> np.dtype:
    """The numpy dtype ``ml_dtypes.<name>``, importing ml_dtypes on the first call."""
    import ml_dtypes  # deferred: see the module docstring

    dt: np.dtype = np.dtype(getattr(ml_dtypes, name))
    if not _ML_REGISTERED:
        _register_ml_dtypes()
    return dt


@dataclass(frozen=True)
class DTypeInfo:
    name: str
    storage: str | None
    itemsize: int
    raw: np.dtype = field(repr=False)
    swap: int
    aliases: tuple[str, ...] = ()
    kind: str = "float"
    note: str = ""
    #: The ``ml_dtypes`` attribute that gives :attr:`numpy`, or ``None`` when numpy has it.
    ml_dtypes: str | None = None

    @cached_property
    def numpy(self) -> np.dtype:
        """The numpy dtype of an array of this dtype (imports ``ml_dtypes`` where needed)."""
        return self.raw if self.ml_dtypes is None else _ml_dtypes_type(self.ml_dtypes)

    @property
    def rebuild(self) -> str:
        """The rebuild function torch 2.13 writes for a plain tensor of this dtype."""
        if self.kind == "quantized":
            return "_rebuild_qtensor"
        return "_rebuild_tensor_v2" if self.storage else "_rebuild_tensor_v3"


def _row(
    name: str,
    storage: str | None,
    numpy: Any,
    swap: int | None = None,
    aliases: tuple[str, ...] = (),
    kind: str = "float",
    note: str = "",
) -> DTypeInfo:
    dt = np.dtype(numpy)
    return DTypeInfo(
        name,
        storage,
        dt.itemsize,
        dt,
        dt.itemsize if swap is None else swap,
        tuple(aliases),
        kind,
        note,
    )


def _ml(name: str, raw: type, swap: int | None = None, **kw: Any) -> DTypeInfo:
    """A row whose numpy type is ``ml_dtypes.<name>``; ``raw`` has its size (and bits)."""
    row = _row(name, kw.pop("storage", None), raw, swap, **kw)
    return DTypeInfo(
        row.name,
        row.storage,
        row.itemsize,
        row.raw,
        row.swap,
        row.aliases,
        row.kind,
        row.note,
        name,
    )


class DTypeTable(tuple[DTypeInfo, ...]):
    """:data:`DTYPES`: a tuple of rows that can also be indexed by torch name or alias.

    ``DTYPES["bfloat16"]`` (or ``DTYPES["torch.half"]``) is the row; an unknown name raises
    ``KeyError``.  Integer indexes and slices work as on any tuple.
    """

    __slots__ = ()

    @overload  # type: ignore[override]
    def __getitem__(self, key: str) -> DTypeInfo: ...
    @overload
    def __getitem__(self, key: int) -> DTypeInfo: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[DTypeInfo, ...]: ...
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            info = _BY_NAME.get(key.removeprefix("torch."))
            if info is None:
                raise KeyError(f"unknown torch dtype {key!r}")
            return info
        return tuple.__getitem__(self, key)


#: Every dtype torch 2.13 can save, in the order of torch's own storage-type table first.
DTYPES: Final[DTypeTable] = DTypeTable(
    (
        _row("float64", "DoubleStorage", np.float64, aliases=("double",)),
        _row("float32", "FloatStorage", np.float32, aliases=("float",)),
        _row("float16", "HalfStorage", np.float16, aliases=("half",)),
        _ml("bfloat16", np.uint16, storage="BFloat16Storage", note="numpy dtype from ml_dtypes"),
        _row("int64", "LongStorage", np.int64, aliases=("long",), kind="int"),
        _row("int32", "IntStorage", np.int32, aliases=("int",), kind="int"),
        _row("int16", "ShortStorage", np.int16, aliases=("short",), kind="int"),
        _row("int8", "CharStorage", np.int8, kind="int"),
        _row("uint8", "ByteStorage", np.uint8, kind="int"),
        _row("bool", "BoolStorage", np.bool_, kind="bool"),
        _row(
            "complex64",
            "ComplexFloatStorage",
            np.complex64,
            swap=4,
            aliases=("cfloat",),
            kind="complex",
        ),
        _row(
            "complex128",
            "ComplexDoubleStorage",
            np.complex128,
            swap=8,
            aliases=("cdouble",),
            kind="complex",
        ),
        _row("qint8", "QInt8Storage", _tagged(np.int8, "qint8"), kind="quantized"),
        _row("quint8", "QUInt8Storage", _tagged(np.uint8, "quint8"), kind="quantized"),
        _row("qint32", "QInt32Storage", _tagged(np.int32, "qint32"), kind="quantized"),
        _row(
            "quint4x2",
            "QUInt4x2Storage",
            _tagged(np.uint8, "quint4x2"),
            kind="quantized",
            note="two 4-bit values per byte",
        ),
        _row(
            "quint2x4",
            "QUInt2x4Storage",
            _tagged(np.uint8, "quint2x4"),
            kind="quantized",
            note="four 2-bit values per byte",
        ),
        # The dtypes torch writes through UntypedStorage + _rebuild_tensor_v3.
        _row("uint16", None, np.uint16, kind="int"),
        _row("uint32", None, np.uint32, kind="int"),
        _row("uint64", None, np.uint64, kind="int"),
        _ml(
            "complex32",
            np.uint32,
            swap=2,
            aliases=("chalf",),
            kind="complex",
            note="numpy dtype from ml_dtypes (two float16)",
        ),
        _ml("float8_e4m3fn", np.uint8),
        _ml("float8_e5m2", np.uint8),
        _ml("float8_e4m3fnuz", np.uint8),
        _ml("float8_e5m2fnuz", np.uint8),
        _ml("float8_e8m0fnu", np.uint8),
        _row(
            "float4_e2m1fn_x2",
            None,
            _tagged(np.uint8, "float4_e2m1fn_x2"),
            swap=1,
            note="two float4_e2m1fn values per byte, kept packed as uint8",
        ),
        _row("bits8", None, _tagged(np.uint8, "bits8"), kind="bits"),
        _row("bits16", None, _tagged(np.uint16, "bits16"), kind="bits"),
        _row("bits1x8", None, _tagged(np.uint8, "bits1x8"), kind="bits"),
        _row("bits2x4", None, _tagged(np.uint8, "bits2x4"), kind="bits"),
        _row("bits4x2", None, _tagged(np.uint8, "bits4x2"), kind="bits"),
    )
)

_BY_NAME: Final[dict[str, DTypeInfo]] = {}
for _info in DTYPES:
    for _n in (_info.name, *_info.aliases):
        _BY_NAME[_n] = _info
_BY_STORAGE: Final[dict[str, DTypeInfo]] = {i.storage: i for i in DTYPES if i.storage}
#: The sub-byte dtypes torch knows but cannot save (``dtype torch.uint4 is not recognized``).
UNSAVABLE: Final[frozenset[str]] = frozenset(
    [f"uint{i}" for i in range(1, 8)] + [f"int{i}" for i in range(1, 8)] + ["bit"]
)
_BY_NUMPY: Final[dict[np.dtype, DTypeInfo]] = {}
for _info in DTYPES:
    if _info.ml_dtypes is None and _info.raw.metadata is None:
        _BY_NUMPY.setdefault(_info.raw, _info)
_ML_REGISTERED = False


def _register_ml_dtypes() -> None:
    """Add the ml_dtypes rows to the numpy lookup (once ``ml_dtypes`` is imported)."""
    global _ML_REGISTERED
    _ML_REGISTERED = True
    for info in DTYPES:
        if info.ml_dtypes is not None:
            _BY_NUMPY.setdefault(info.numpy, info)


def by_name(name: str) -> DTypeInfo | None:
    """The row for a torch dtype name or alias (``"float32"``, ``"half"``), else ``None``."""
    return _BY_NAME.get(name)


def by_storage(storage_class: str) -> DTypeInfo | None:
    """The row for a typed storage class name (``"FloatStorage"``), else ``None``."""
    return _BY_STORAGE.get(storage_class)


def from_numpy(dtype: np.dtype) -> DTypeInfo | None:
    """The row for a numpy dtype (any byte order; tagged raw dtypes by their tag), else None."""
    meta = dtype.metadata
    if meta and "torch" in meta:
        return _BY_NAME.get(meta["torch"])
    if dtype.byteorder not in "=|":
        dtype = dtype.newbyteorder("=")
    found = _BY_NUMPY.get(dtype)
    if found is None and not _ML_REGISTERED and "ml_dtypes" in sys.modules:
        # An ml_dtypes array exists only if its user imported ml_dtypes: register and retry.
        _register_ml_dtypes()
        found = _BY_NUMPY.get(dtype)
    return found


class DType:
    """A torch dtype as a small value type: ``DType("bfloat16")`` prints as ``torch.bfloat16``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        info = _BY_NAME.get(name)
        if info is None and name not in UNSAVABLE:
            raise ValueError(f"unknown torch dtype {name!r}")
        self.name: str = info.name if info else name

    @property
    def info(self) -> DTypeInfo | None:
        return _BY_NAME.get(self.name)

    @property
    def itemsize(self) -> int:
        info = self.info
        if info is None:
            raise ValueError(f"torch.{self.name} has no storage representation")
        return info.itemsize

    @property
    def numpy(self) -> np.dtype:
        info = self.info
        if info is None:
            raise ValueError(f"torch.{self.name} has no numpy representation")
        return info.numpy

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return self.name == other.name
        if isinstance(other, str):
            return other in (self.name, f"torch.{self.name}")
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return DType, (self.name,)
