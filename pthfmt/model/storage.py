"""The storages of one checkpoint: declared by persistent ids, located by the container.

Every persistent id goes through :meth:`StorageTable.declare`.  The first declaration of a key
fixes its type, size and device tag; a later one that disagrees is refused (torch silently
keeps the first, which can turn a ``LongStorage`` into floats).  The container's ``locate``
callback then says where the bytes are and checks that the record holds exactly
``numel x itemsize`` bytes, so nothing is allocated that the file does not hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..errors import CorruptError, FormatError, LimitError
from ..source import PREAD_FROM, Source
from ..text import quoted, short_repr
from .device import Device
from .dtypes import DTypeInfo, by_name

__all__ = [
    "StorageInfo",
    "StorageType",
    "StorageSlice",
    "StorageTable",
    "Reader",
    "swap_to_native",
    "StoredReader",
    "SMALL_COPY",
    "chunked_reader",
]

UINT8 = by_name("uint8")

#: ``reader(info, mmap)``: a storage's bytes as one flat ``uint8`` array.
Reader = Callable[["StorageInfo", bool], np.ndarray]


class StorageInfo:
    """One storage of a checkpoint.

    ``dtype`` is the element type (``None`` for an untyped storage no tensor has claimed yet),
    ``numel`` counts elements of ``dtype`` (bytes while untyped), ``location`` is the device
    after ``map_location`` and ``tag`` the device tag written in the file.  ``record`` names
    where the bytes live (``archive/data/0``, or a legacy section), ``offset`` is their
    absolute offset in the file when they lie there uncompressed (``None`` otherwise).
    """

    __slots__ = (
        "_buffer",
        "_cache",
        "_reader",
        "compressed",
        "dtype",
        "key",
        "location",
        "nbytes",
        "offset",
        "record",
        "storage_class",
        "tag",
    )

    def __init__(
        self,
        key: str,
        dtype: DTypeInfo | None,
        nbytes: int,
        tag: str,
        location: Device,
        storage_class: str | None = None,
    ) -> None:
        self.key = key
        self.dtype = dtype
        self.nbytes = nbytes
        self.tag = tag
        self.location = location
        self.record: str | None = None
        self.offset: int | None = None
        self.compressed = False
        #: the storage class named in the file (``FloatStorage``, ``UntypedStorage``...)
        self.storage_class = storage_class
        self._buffer: np.ndarray | None = None
        self._reader: Reader | None = None
        self._cache = True

    def attach(self, reader: Reader, *, cache: bool = True) -> None:
        """Say how the bytes are read: ``reader(info, mmap)`` returns the flat ``uint8``
        buffer, called on first use and kept (``cache=False``: called on every use, for
        data that is streamed once and not held)."""
        self._reader = reader
        self._cache = cache

    def release(self) -> None:
        """Drop the cached buffer (arrays made from it keep theirs): the next use reads the
        bytes again.  For streaming a compressed storage once, without holding it."""
        self._buffer = None

    @property
    def numel(self) -> int:
        return self.nbytes // (self.dtype.itemsize if self.dtype else 1)

    @property
    def device(self) -> Device:
        return self.location

    def buffer(self, mmap: bool) -> np.ndarray:
        """The storage's bytes as one flat ``uint8`` array, made once and then shared."""
        if self._buffer is None:
            if self._reader is None:
                raise FormatError(f"storage {short_repr(self.key)} has no data")
            buffer = None
            try:
                buffer = self._reader(self, mmap)
            except MemoryError:
                pass
            if buffer is None:
                raise LimitError(
                    f"out of memory reading storage {short_repr(self.key)} ({self.nbytes} bytes)",
                    record=self.record,
                )
            if not self._cache:
                return buffer
            self._buffer = buffer
        return self._buffer

    def __repr__(self) -> str:
        dtype = self.dtype.name if self.dtype else "untyped"
        return (
            f"StorageInfo(key={short_repr(self.key)}, dtype={dtype}, numel={self.numel}, "
            f"nbytes={self.nbytes}, location={str(self.location)!r}, "
            f"record={None if self.record is None else quoted(self.record)})"
        )


class StorageType:
    """The value of a storage-class global: ``torch.FloatStorage`` or ``UntypedStorage``."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: DTypeInfo | None) -> None:
        self.name = name
        self.dtype = dtype  # None: untyped (numel counts bytes)

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class StorageSlice:
    """A legacy-format storage view: ``numel`` elements of ``base`` from element ``start``."""

    __slots__ = ("base", "numel", "start")

    def __init__(self, base: StorageInfo, start: int, numel: int) -> None:
        self.base, self.start, self.numel = base, start, numel


class StorageTable:
    def __init__(
        self, mapper: Callable[[str], Device], locate: Callable[[StorageInfo], None]
    ) -> None:
        self.infos: dict[str, StorageInfo] = {}
        self._locations: dict[str, Device] = {}
        self.mapper = mapper
        self.locate = locate
        #: the reader ``locate`` attaches to the storages lying uncompressed in the file, when
        #: the container has one (the tensor fast path copies small ones itself)
        self.stored: StoredReader | None = None

    def declare(self, key: Any, stype: Any, tag: Any, numel: Any) -> StorageInfo:
        """The storage of one persistent id: made and located on its first declaration."""
        if (
            type(key) is not str
            or type(stype) is not StorageType
            or type(tag) is not str
            or type(numel) is not int
            or numel < 0
        ):
            self._check(key, stype, tag, numel)
        return self.declare_typed(key, stype, tag, numel)

    def declare_typed(self, key: str, stype: StorageType, tag: str, numel: int) -> StorageInfo:
        """:meth:`declare` of fields whose types are already checked (``numel >= 0``)."""
        location = self._locations.get(tag)
        seen: StorageInfo | None
        if location is not None:  # (a known tag: the new storage made first, one table access)
            dtype = stype.dtype
            nbytes = numel * dtype.itemsize if dtype else numel
            info = StorageInfo(key, dtype, nbytes, tag, location, stype.name)
            seen = self.infos.setdefault(key, info)
            if seen is info:
                try:
                    self.locate(info)
                except BaseException:
                    del self.infos[key]
                    raise
                return info
        else:
            seen = self.infos.get(key)
        if seen is not None:
            if (
                seen.storage_class != stype.name
                or seen.tag != tag
                or seen.nbytes != numel * (stype.dtype.itemsize if stype.dtype else 1)
            ):
                raise FormatError(
                    f"storage {short_repr(key)} is declared twice, as {seen.storage_class}"
                    f"[{self._declared_numel(seen)}] on {seen.tag!r} and as "
                    f"{stype.name}[{numel}] on {tag!r}",
                    code="storage.redeclared",
                )
            return seen
        try:
            self._locations[tag] = self.mapper(tag)
        except ValueError as exc:
            raise FormatError(f"storage {short_repr(key)}: {exc}", code="device.invalid") from None
        return self.declare_typed(key, stype, tag, numel)  # (now a known tag)

    @staticmethod
    def _check(key: object, stype: object, tag: object, numel: object) -> None:
        """Refuse a persistent id whose fields have the wrong types."""
        if not isinstance(key, str):
            raise FormatError(
                f"storage key {short_repr(key)} is not a string", code="storage.declaration"
            )
        if not isinstance(stype, StorageType):
            raise FormatError(
                f"storage {short_repr(key)}: {short_repr(stype)} is not a storage class",
                code="storage.declaration",
            )
        if not isinstance(tag, str):
            raise FormatError(
                f"storage {short_repr(key)}: location {short_repr(tag)} is not a string",
                code="storage.declaration",
            )
        if type(numel) is not int or numel < 0:
            raise FormatError(
                f"storage {short_repr(key)}: size {short_repr(numel)} is not a non-negative int",
                code="storage.declaration",
            )

    def count_unit(self, key: str) -> int:
        """Bytes per element of ``key``'s declared storage class (1 for UntypedStorage)."""
        info = self.infos[key]
        return (
            1
            if info.storage_class == "UntypedStorage" or info.dtype is None
            else info.dtype.itemsize
        )

    def _declared_numel(self, info: StorageInfo) -> int:
        return info.nbytes // self.count_unit(info.key)

    @staticmethod
    def claim(info: StorageInfo, dtype: DTypeInfo) -> None:
        """Give an untyped storage its element type (``_rebuild_tensor_v3``); one per storage."""
        if info.dtype is None:
            info.dtype = dtype
        elif info.dtype is not dtype and info.dtype.name != dtype.name:
            raise FormatError(
                f"storage {short_repr(info.key)} holds {info.dtype.name} but a tensor "
                f"reads it as {dtype.name}",
                code="storage.dtype_conflict",
            )


def swap_to_native(buf: np.ndarray, dtype: DTypeInfo | None, key: str) -> None:
    """Byte-swap a big-endian storage in place, element by element (complex: per half)."""
    unit = dtype.swap if dtype else 1
    if unit <= 1:
        return
    if buf.nbytes % unit:
        raise CorruptError(
            f"storage {short_repr(key)}: {buf.nbytes} bytes is not a whole number of "
            f"{unit}-byte elements"
        )
    buf.view(f"u{unit}").byteswap(inplace=True)


class StoredReader:
    """The reader of every storage whose bytes lie uncompressed in ``src`` at ``info.offset``
    (one per container): zero copy when ``mmap``."""

    __slots__ = ("big_endian", "src")

    def __init__(self, src: Source, big_endian: bool) -> None:
        self.src = src
        self.big_endian = big_endian

    def __call__(self, info: StorageInfo, mmap: bool) -> np.ndarray:
        assert info.offset is not None
        if mmap and not self.big_endian:
            return self.src.array(info.offset, info.nbytes)
        buf = self.src.copy(info.offset, info.nbytes)
        if self.big_endian:
            swap_to_native(buf, info.dtype, info.key)
        return buf

    def copies_from(self) -> np.ndarray | None:
        """The file as one ``uint8`` array when a storage's copy (``mmap=False``) below
        :data:`SMALL_COPY` bytes is a plain slice of it copied (a local file in native byte
        order; the tensor fast path makes those copies itself), else ``None``."""
        if self.big_endian or type(self.src) is not Source:
            return None
        return self.src.whole

    def views_from(self) -> memoryview | None:
        """The file as one ``memoryview`` when a storage's zero-copy view (``mmap=True``) is
        ``np.frombuffer`` of a slice of it (a local file in native byte order; the tensor
        fast path makes those views itself), else ``None``."""
        if self.big_endian or type(self.src) is not Source:
            return None
        return self.src.view


#: Storages smaller than this are copied out of the file's mapping in one call (larger ones
#: are read into fresh pages: :meth:`Source.copy`).
SMALL_COPY = PREAD_FROM


def chunked_reader(chunks: Callable[[], Iterable[bytes]], big_endian: bool) -> Reader:
    """A reader for bytes that must be decoded first (compressed records): always a copy,
    written chunk by chunk into one buffer of the storage's size."""

    def read(info: StorageInfo, mmap: bool) -> np.ndarray:
        buf = np.empty(info.nbytes, np.uint8)  # (not populated: a lying size stays unpaid)
        pos = 0
        for chunk in chunks():
            if pos + len(chunk) > info.nbytes:
                raise CorruptError(
                    f"storage {short_repr(info.key)} decodes to more than {info.nbytes} bytes",
                    record=info.record,
                )
            buf[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
        if pos != info.nbytes:
            raise CorruptError(
                f"storage {short_repr(info.key)} decodes to {pos} bytes, expected {info.nbytes}",
                record=info.record,
            )
        if big_endian:
            swap_to_native(buf, info.dtype, info.key)
        return buf

    return read
