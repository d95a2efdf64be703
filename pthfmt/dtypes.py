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
  float8 and complex32 come from ``ml_dtypes``; dtypes numpy cannot express (packed sub-byte
  and ``bits`` types, quantized integers) are the raw integer type tagged with
  ``metadata={"torch": name}`` so that a save writes them back as what they were.
- ``swap``: the unit of a byte swap (complex numbers swap each half; packed types not at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import ml_dtypes
import numpy as np

__all__ = ["DTypeInfo", "DType", "DTYPES", "by_name", "by_storage", "from_numpy"]


def _tagged(base: type, name: str) -> np.dtype:
    return np.dtype(base, metadata={"torch": name})


@dataclass(frozen=True)
class DTypeInfo:
    name: str
    storage: str | None
    itemsize: int
    numpy: np.dtype
    swap: int
    aliases: tuple[str, ...] = ()
    kind: str = "float"
    note: str = ""

    @property
    def rebuild(self) -> str:
        """The rebuild function torch 2.13 writes for a plain tensor of this dtype."""
        if self.kind == "quantized":
            return "_rebuild_qtensor"
        return "_rebuild_tensor_v2" if self.storage else "_rebuild_tensor_v3"


def _row(name, storage, numpy, swap=None, aliases=(), kind="float", note="") -> DTypeInfo:
    dt = np.dtype(numpy)
    return DTypeInfo(name, storage, dt.itemsize, dt, dt.itemsize if swap is None else swap,
                     tuple(aliases), kind, note)


#: Every dtype torch 2.13 can save, in the order of torch's own storage-type table first.
DTYPES: Final[tuple[DTypeInfo, ...]] = (
    _row("float64", "DoubleStorage", np.float64, aliases=("double",)),
    _row("float32", "FloatStorage", np.float32, aliases=("float",)),
    _row("float16", "HalfStorage", np.float16, aliases=("half",)),
    _row("bfloat16", "BFloat16Storage", ml_dtypes.bfloat16, note="numpy dtype from ml_dtypes"),
    _row("int64", "LongStorage", np.int64, aliases=("long",), kind="int"),
    _row("int32", "IntStorage", np.int32, aliases=("int",), kind="int"),
    _row("int16", "ShortStorage", np.int16, aliases=("short",), kind="int"),
    _row("int8", "CharStorage", np.int8, kind="int"),
    _row("uint8", "ByteStorage", np.uint8, kind="int"),
    _row("bool", "BoolStorage", np.bool_, kind="bool"),
    _row("complex64", "ComplexFloatStorage", np.complex64, swap=4, aliases=("cfloat",),
         kind="complex"),
    _row("complex128", "ComplexDoubleStorage", np.complex128, swap=8, aliases=("cdouble",),
         kind="complex"),
    _row("qint8", "QInt8Storage", _tagged(np.int8, "qint8"), kind="quantized"),
    _row("quint8", "QUInt8Storage", _tagged(np.uint8, "quint8"), kind="quantized"),
    _row("qint32", "QInt32Storage", _tagged(np.int32, "qint32"), kind="quantized"),
    _row("quint4x2", "QUInt4x2Storage", _tagged(np.uint8, "quint4x2"), kind="quantized",
         note="two 4-bit values per byte"),
    _row("quint2x4", "QUInt2x4Storage", _tagged(np.uint8, "quint2x4"), kind="quantized",
         note="four 2-bit values per byte"),
    # The dtypes torch writes through UntypedStorage + _rebuild_tensor_v3.
    _row("uint16", None, np.uint16, kind="int"),
    _row("uint32", None, np.uint32, kind="int"),
    _row("uint64", None, np.uint64, kind="int"),
    _row("complex32", None, ml_dtypes.complex32, swap=2, aliases=("chalf",), kind="complex",
         note="numpy dtype from ml_dtypes (two float16)"),
    _row("float8_e4m3fn", None, ml_dtypes.float8_e4m3fn),
    _row("float8_e5m2", None, ml_dtypes.float8_e5m2),
    _row("float8_e4m3fnuz", None, ml_dtypes.float8_e4m3fnuz),
    _row("float8_e5m2fnuz", None, ml_dtypes.float8_e5m2fnuz),
    _row("float8_e8m0fnu", None, ml_dtypes.float8_e8m0fnu),
    _row("float4_e2m1fn_x2", None, _tagged(np.uint8, "float4_e2m1fn_x2"), swap=1,
         note="two float4_e2m1fn values per byte, kept packed as uint8"),
    _row("bits8", None, _tagged(np.uint8, "bits8"), kind="bits"),
    _row("bits16", None, _tagged(np.uint16, "bits16"), kind="bits"),
    _row("bits1x8", None, _tagged(np.uint8, "bits1x8"), kind="bits"),
    _row("bits2x4", None, _tagged(np.uint8, "bits2x4"), kind="bits"),
    _row("bits4x2", None, _tagged(np.uint8, "bits4x2"), kind="bits"),
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
    if _info.numpy.metadata is None:
        _BY_NUMPY.setdefault(_info.numpy, _info)


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
    return _BY_NUMPY.get(dtype)


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
