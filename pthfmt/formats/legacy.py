"""The legacy (non-zip) format: ``torch.save(..., _use_new_zipfile_serialization=False)``.

Five pickles back to back, then the raw storages::

    magic number    0x1950a86a20f9469cfc6c
    protocol        1001
    sys_info        {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {...}}
    the object      persistent ids ('storage', cls, key, location, numel, view_metadata)
    storage keys    [key, ...] in the order the storages follow
    per key:        int64 little-endian element count, then count x itemsize bytes

Counts and data are little-endian whatever ``sys_info`` says (torch converts on big-endian
hosts and never reads ``sys_info``).  Storages follow the object pickle, so their offsets are
known only after it: the object pickle is run once lazily (declaring the storages), the
storages are located, and a load that wants arrays runs it a second time with every
storage's bytes in place.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import CorruptError, FormatError
from ..model.storage import StorageTable, StoredReader
from ..model.tensor import StorageInfo
from ..pickle.machine import Unpickler
from ..source import Source
from ..text import short_repr
from ..torch.handlers import TorchHandlers
from .contract import Options, Parsed, copy_budget

__all__ = ["read_legacy", "MAGIC_NUMBER", "PROTOCOL_VERSION"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_COUNT = struct.Struct("<q")


def _header(src: Source, pos: int, handlers: TorchHandlers, what: str) -> tuple[Any, int]:
    u = Unpickler(src.buf, handlers, start=pos, record=what)
    value = u.load()
    return value, u.pos


def _unpickle_main(
    src: Source, start: int, opts: Options, eager: bool, offsets: dict[str, int] | None
) -> tuple[Any, int, StorageTable]:
    budget = [src.size - start]
    reader = StoredReader(src, False)

    def locate(info: StorageInfo) -> None:
        budget[0] -= info.nbytes
        if budget[0] < 0:
            raise CorruptError(
                f"storage {short_repr(info.key)} of {info.nbytes} bytes: the storages "
                f"declared so far need more than the file holds"
            )
        info.record = f"storage {info.key}"
        if offsets is not None:
            info.offset = offsets[info.key]
            info.attach(reader)

    table = StorageTable(opts.mapper, locate)
    handlers = TorchHandlers(
        table,
        eager=eager,
        mmap=opts.mmap,
        unknown=opts.unknown,
        copy_budget=copy_budget(src.size),
        pid_length=6,
    )
    u = Unpickler(src.buf, handlers, start=start, record="legacy object pickle")
    obj = u.load()
    return obj, u.pos, table


def read_legacy(src: Source, opts: Options) -> Parsed:
    plain = TorchHandlers(StorageTable(opts.mapper, lambda info: None), eager=False, mmap=False)
    magic, pos = _header(src, 0, plain, "legacy magic number")
    if magic != MAGIC_NUMBER:
        raise FormatError("not a torch checkpoint: the legacy magic number is missing")
    proto, pos = _header(src, pos, plain, "legacy protocol version")
    if proto != PROTOCOL_VERSION:
        raise FormatError(f"legacy protocol version {proto!r}, expected {PROTOCOL_VERSION}")
    sys_info, pos = _header(src, pos, plain, "legacy sys_info")
    if not isinstance(sys_info, dict):
        raise FormatError(f"legacy sys_info is a {type(sys_info).__name__}, not a dict")
    main_start = pos
    obj, pos, table = _unpickle_main(src, main_start, opts, False, None)
    keys, pos = _header(src, pos, plain, "legacy storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise FormatError("legacy storage key list is not a list of strings")
    offsets: dict[str, int] = {}
    for raw_key in keys:
        key = raw_key.decode("ascii", "replace") if isinstance(raw_key, bytes) else raw_key
        info = table.infos.get(key)
        if info is None:
            raise FormatError(
                f"storage {short_repr(key)} is listed but no object uses it",
                record="legacy storage keys",
            )
        if key in offsets:
            raise FormatError(
                f"storage {short_repr(key)} is listed twice", record="legacy storage keys"
            )
        src.check(pos, 8, f"count of storage {short_repr(key)}", info.record)
        (count,) = _COUNT.unpack_from(src.buf, pos)
        if count < 0 or count * table.count_unit(key) != info.nbytes:
            raise CorruptError(
                f"storage {short_repr(key)} holds {count} elements in the file but "
                f"{info.nbytes} bytes are declared",
                record=info.record,
                offset=pos,
            )
        offsets[key] = pos + 8
        src.check(pos + 8, info.nbytes, f"storage {short_repr(key)}", info.record)
        pos += 8 + info.nbytes
    missing = [k for k in table.infos if k not in offsets]
    if missing:
        raise CorruptError(
            f"storage {missing[0]!r} has no data after the key list", record="legacy storage keys"
        )
    if opts.eager:
        obj, _, table = _unpickle_main(src, main_start, opts, True, offsets)
    else:
        reader = StoredReader(src, False)
        for key, info in table.infos.items():
            info.offset = offsets[key]
            info.attach(reader)
    return Parsed(
        format="legacy",
        obj=obj,
        storages=table.infos,
        records=[
            "magic number",
            "protocol version",
            "sys_info",
            "object",
            "storage keys",
            *(f"storage {k}" for k in offsets),
        ],
        byteorder="little",
        version=str(PROTOCOL_VERSION),
        sys_info=sys_info,
    )
