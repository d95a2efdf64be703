"""A streaming zip writer that lays records out exactly as torch's miniz writer does.

``torch.save`` writes through ``caffe2::serialize::PyTorchStreamWriter`` (miniz, told
``MZ_ZIP_FLAG_WRITE_ZIP64``).  The layout, record by record::

    local header   50 4B 03 04 | need 0 | flags 0x0808 (0x0800 when empty) | method 0 (STORED)
                   | time 0 | date 0 | crc 0 | csize 0 | usize 0 | name length | extra length
    name           "<archive>/<record>" (UTF-8, flag bit 11)
    zip64 extra    only when size >= 0xFFFFFFFF or the header offset >= 0xFFFFFFFF:
                   01 00 | length | [usize u64, csize u64 = 0 when size is big] [offset u64]
    'FB' extra     46 42 | pad u16 | pad x 'Z'; pad makes the data start on a multiple of
                   the alignment (64), see :func:`data_offset` (``detail::getOffset``)
    data           the record's bytes
    descriptor     50 4B 07 08 | crc | csize | usize: u32 sizes, or u64 when the size or the
                   header offset passes 0xFFFFFFFF; none for an empty record

    central dir    one entry per record: 50 4B 01 02 | made-by 0 | need 0 | flags | method 0 |
                   time 0 | date 0 | crc | csize | usize (0xFFFFFFFF when >= 4 GiB) | name length |
                   extra length | comment 0 | disk 0 | attributes 0, 0 | header offset
                   (0xFFFFFFFF when >= 4 GiB) | name | zip64 extra with the saturated fields
    zip64 EOCD     always: 50 4B 06 06 | 44 | made-by 0x031E | need 45 | 0 | 0 | n | n | size |
                   offset
    zip64 locator  50 4B 06 07 | 0 | zip64 EOCD offset | 1
    EOCD           50 4B 05 06 | 0 | 0 | n, n (<= 0xFFFF) | size, offset (<= 0xFFFFFFFF) | 0

:meth:`ZipWriter.finish` then adds what ``writeEndOfFile`` adds: ``version`` (``3\\n``),
``byteorder`` when missing, and ``.data/serialization_id`` (:func:`serialization_id`).

Nothing is ever sought or re-read: sizes are known before a record starts and CRCs go into
the data descriptor, so the output may be a pipe.  Record data is streamed chunk by chunk.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final
from zlib import crc32

import numpy as np

from ...errors import UnserializableError
from .structs import (
    CENTRAL,
    DESCRIPTOR32,
    DESCRIPTOR64,
    EOCD,
    EXTRA_HEADER,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL,
    PADDING_TAG,
    U16_MAX,
    U32_MAX,
    Z64_RECORD_HEAD,
    ZIP64_EOCD,
    ZIP64_EXTRA_TAG,
    ZIP64_LOCATOR,
    ZIP64_VALUE,
)

__all__ = [
    "ZipWriter",
    "SMALL",
    "data_offset",
    "serialization_id",
    "archive_name_for_path",
    "std_hash",
    "std_hashes",
    "unordered_set_order",
    "hash_combine",
    "DEFAULT_ALIGNMENT",
    "FILE_FORMAT_VERSION",
]

DEFAULT_ALIGNMENT: Final = 64
#: What ``writeEndOfFile`` writes to ``version`` for a ``torch.save`` checkpoint.
FILE_FORMAT_VERSION: Final = 3
_U32_MAX: Final = U32_MAX
_FLAG_DESCRIPTOR, _FLAG_UTF8 = FLAG_DESCRIPTOR, FLAG_UTF8
_DESCRIPTOR_SIG: Final = DESCRIPTOR32.signature
#: miniz's version fields of the zip64 end record: made by 3.30 (UNIX), needs 4.5 (zip64)
_MADE_BY_UNIX_30, _NEEDS_ZIP64 = 0x031E, 45

Buffer = Any  # bytes, bytearray, memoryview or a contiguous uint8 numpy array


def _needs_zip64(size: int, offset: int) -> bool:
    return size >= _U32_MAX or offset >= _U32_MAX


def data_offset(
    header_offset: int, full_name_len: int, size: int, alignment: int = DEFAULT_ALIGNMENT
) -> int:
    """Where a record's data starts (``detail::getOffset``): after the 30-byte local header,
    the name, the zip64 extra (if any) and the 4-byte 'FB' header, rounded up to ``alignment``."""
    start = header_offset + LOCAL.size + full_name_len + EXTRA_HEADER.size
    if _needs_zip64(size, header_offset):
        start += EXTRA_HEADER.size
        start += 2 * ZIP64_VALUE.size if size >= _U32_MAX else 0
        start += ZIP64_VALUE.size if header_offset >= _U32_MAX else 0
    return start + (-start % alignment)


def _zip64_extra(fields: list[int]) -> bytes:
    if not fields:
        return b""
    return EXTRA_HEADER.struct.pack(ZIP64_EXTRA_TAG, ZIP64_VALUE.size * len(fields)) + b"".join(
        map(ZIP64_VALUE.pack, fields)
    )


#: A written record: full name, header offset, size, CRC-32.
_Entry = tuple[bytes, int, int, int]

_PARALLEL_CRC = 1 << 20
_POOL: ThreadPoolExecutor | None = None
#: Records up to this size, handed over as one ``bytes``, are copied into a batch ...
SMALL: Final = 1 << 16
#: ... which goes to ``write`` once it holds this much (and before any other write).
_BATCH: Final = 1 << 18
#: A record's bytes besides its name, padding and data (and descriptor).
_FIXED: Final = LOCAL.size + EXTRA_HEADER.size


def _crc_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pthfmt-crc")
    return _POOL


def _local_header(name_length: int, pad: int, data: bool) -> tuple[bytes, bytes]:
    """A small record's local header before and after its name (the 'FB' padding)."""
    flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if data else 0)
    before = LOCAL.struct.pack(
        LOCAL.signature, 0, flags, 0, 0, 0, 0, 0, 0, name_length, EXTRA_HEADER.size + pad
    )
    return before, EXTRA_HEADER.struct.pack(PADDING_TAG, pad) + b"Z" * pad


class ZipWriter:
    """Write records to ``write`` (a callable taking a buffer) one after the other."""

    def __init__(
        self,
        write: Callable[[Buffer], object],
        archive_name: str,
        alignment: int = DEFAULT_ALIGNMENT,
    ) -> None:
        if not 0 < alignment < 0x10000:
            raise ValueError(f"alignment {alignment} must be in 1..65535 (a u16 'FB' length)")
        self._write = write
        self.prefix = archive_name + "/"
        self.alignment = alignment
        self.pos = 0
        self.entries: list[_Entry] = []
        self.names: list[str] = []
        self._written: set[str] = set()
        self._crc_hash = 0
        self._finished = False
        self._batch = bytearray()
        self._prefix = self.prefix.encode("utf-8")
        self._heads: dict[tuple[int, int, bool], tuple[bytes, bytes]] = {}

    def _emit(self, data: Buffer) -> None:
        if self._batch:
            self._flush()
        self._write(data)
        self.pos += memoryview(data).nbytes

    def _flush(self) -> None:
        batch, self._batch = self._batch, bytearray()
        self._write(batch)

    # -- records -------------------------------------------------------------------------------
    def add(self, name: str, data: Buffer | Iterable[Buffer], size: int | None = None) -> None:
        """Write record ``name``: ``data`` is a buffer, or chunks totalling ``size`` bytes."""
        if self._finished:
            raise ValueError("the archive is already finished")
        if name in self._written:
            raise ValueError(f"record {name!r} written twice")
        if type(data) is bytes and len(data) <= SMALL and self.pos < _U32_MAX:
            self._add_small(name, data)
        else:
            self._add_chunks(name, data, size)
        self.names.append(name)
        self._written.add(name)

    def _add_small(self, name: str, data: bytes) -> None:
        """A small record (no zip64 field: its size and header offset are below 4 GiB),
        appended to the batch: header, name, padding, data, descriptor."""
        full = self._prefix + name.encode("utf-8")
        offset, size, batch = self.pos, len(data), self._batch
        pad = -(offset + _FIXED + len(full)) % self.alignment
        shape = (len(full), pad, size > 0)
        head = self._heads.get(shape)
        if head is None:
            head = self._heads[shape] = _local_header(*shape)
        batch += head[0]
        batch += full
        batch += head[1]
        batch += data
        crc = crc32(data)
        if size:
            if size >= 8 and data[:4] == _DESCRIPTOR_SIG:  # see _add_chunks
                self._crc_hash = hash_combine(self._crc_hash, int.from_bytes(data[4:8], "little"))
            seed = self._crc_hash  # hash_combine, inline
            self._crc_hash = seed ^ ((crc + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _M64)
            batch += DESCRIPTOR32.struct.pack(DESCRIPTOR32.signature, crc, size, size)
        self.pos = offset + _FIXED + len(full) + pad + size + (DESCRIPTOR32.size if size else 0)
        self.entries.append((full, offset, size, crc))
        if len(batch) >= _BATCH:
            self._flush()

    def _add_chunks(
        self, name: str, data: Buffer | Iterable[Buffer], size: int | None = None
    ) -> None:
        if size is None:
            size = memoryview(data).nbytes  # type: ignore[arg-type]
            data = (data,)
        full = (self.prefix + name).encode("utf-8")
        offset = self.pos
        zip64 = _needs_zip64(size, offset)
        # miniz's local zip64 extra: usize and a zero csize when the size is big, the header
        # offset when that is big; it precedes torch's 'FB' padding.
        z64 = _zip64_extra(
            ([size, 0] if size >= _U32_MAX else []) + ([offset] if offset >= _U32_MAX else [])
        )
        start = offset + LOCAL.size + len(full) + len(z64) + EXTRA_HEADER.size
        pad = data_offset(offset, len(full), size, self.alignment) - start
        extra = z64 + EXTRA_HEADER.struct.pack(PADDING_TAG, pad) + b"Z" * pad
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if size else 0)
        self._emit(
            LOCAL.struct.pack(LOCAL.signature, 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra))
            + full
            + extra
        )
        crc, written, head = 0, 0, b""
        pending: Future[int] | None = None
        for chunk in data:
            view = memoryview(chunk).cast("B")
            if len(head) < 8:
                head += bytes(view[: 8 - len(head)])
            written += len(view)
            if written > size:
                break
            if pending is not None:
                crc = pending.result()
                pending = None
            if len(view) >= _PARALLEL_CRC:
                # zlib.crc32 and the write both release the GIL: checksum one chunk on a
                # helper thread while the same chunk goes to the file.
                pending = _crc_pool().submit(crc32, view, crc)
            else:
                crc = crc32(view, crc)
            self._emit(view)
        if pending is not None:
            crc = pending.result()
        if written != size:
            raise UnserializableError(
                f"record {name!r} produced {written} bytes, expected "
                f"{size} (was an array resized while saving?)"
            )
        if size:
            if size >= 8 and head[:4] == _DESCRIPTOR_SIG:
                # miniz hands the whole record to one write call; torch's write callback takes
                # any write that starts with the descriptor signature for a descriptor.
                self._crc_hash = hash_combine(self._crc_hash, int.from_bytes(head[4:8], "little"))
            self._crc_hash = hash_combine(self._crc_hash, crc)
            descriptor = DESCRIPTOR64 if zip64 else DESCRIPTOR32
            self._emit(descriptor.struct.pack(descriptor.signature, crc, size, size))
        self.entries.append((full, offset, size, crc))

    # -- end of archive ------------------------------------------------------------------------
    def finish(self) -> None:
        """``writeEndOfFile``: ``version``, ``byteorder`` if missing, the serialization id,
        then the central directory and the end records."""
        if "version" not in self._written and ".data/version" not in self._written:
            self.add("version", f"{FILE_FORMAT_VERSION}\n".encode())
        if "byteorder" not in self._written:
            self.add("byteorder", b"little")
        self.add(".data/serialization_id", serialization_id(self.names, self._crc_hash))
        self._finished = True
        central = b"".join(map(_central_entry, self.entries))
        cd_offset, count = self.pos, len(self.entries)
        self._emit(central)
        zip64_offset = self.pos
        self._emit(
            ZIP64_EOCD.struct.pack(
                ZIP64_EOCD.signature,
                ZIP64_EOCD.size - Z64_RECORD_HEAD,
                _MADE_BY_UNIX_30,
                _NEEDS_ZIP64,
                0,
                0,
                count,
                count,
                len(central),
                cd_offset,
            )
        )
        self._emit(ZIP64_LOCATOR.struct.pack(ZIP64_LOCATOR.signature, 0, zip64_offset, 1))
        self._emit(
            EOCD.struct.pack(
                EOCD.signature,
                0,
                0,
                min(count, U16_MAX),
                min(count, U16_MAX),
                min(len(central), _U32_MAX),
                min(cd_offset, _U32_MAX),
                0,
            )
        )


def _central_entry(entry: _Entry) -> bytes:
    """One central directory entry, zip64 fields where needed."""
    full, offset, size, crc = entry
    big_size, big_offset = size >= _U32_MAX, offset >= _U32_MAX
    extra = _zip64_extra(([size, size] if big_size else []) + ([offset] if big_offset else []))
    size32 = _U32_MAX if big_size else size
    flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if size else 0)
    head = CENTRAL.struct.pack(
        CENTRAL.signature,
        0,
        0,
        flags,
        0,
        0,
        0,
        crc,
        size32,
        size32,
        len(full),
        len(extra),
        0,
        0,
        0,
        0,
        _U32_MAX if big_offset else offset,
    )
    return head + full + extra


def archive_name_for_path(path: str) -> str:
    """The folder ``torch.save(obj, path)`` uses: the file name without its last extension.

    As ``PyTorchStreamWriter``'s ``basename``: split at the last ``/`` or ``\\``, cut at the
    last ``.``.  Non-ASCII paths are written through a Python stream by torch, which names the
    folder ``archive``; so is a name with nothing left (``.hidden``, which torch refuses).
    """
    if not path.isascii():
        return "archive"
    base = path[max(path.rfind("/"), path.rfind("\\")) + 1 :]
    dot = base.rfind(".")
    stem = base[:dot] if dot >= 0 else base
    return stem or "archive"


# -- .data/serialization_id ------------------------------------------------------------------
#
# ``writeSerializationId`` formats two 64-bit numbers as ``%020u%020u``:
#   1. ``hash_combine`` over ``std::hash<std::string>`` of every record name written so far,
#      in the iteration order of the ``std::unordered_set`` holding them;
#   2. ``hash_combine`` over the CRC-32 of every data descriptor, in write order.
# ``std::hash`` is libstdc++'s ``_Hash_bytes`` (a MurmurHash2 variant, seed 0xc70f6907), and
# the iteration order is that of libstdc++'s hashtable: a singly linked list where a node is
# inserted at the front of its bucket, or at the list head when the bucket is empty; buckets
# grow through the prime sequence below (``_Prime_rehash_policy``, max load factor 1).
# Checked against torch 2.13: the ids of its files are reproduced digit for digit.

_M64: Final = (1 << 64) - 1
_MUL: Final = 0xC6A4A7935BD1E995
_SEED: Final = 0xC70F6907
_BUCKETS: Final = (
    13,
    29,
    59,
    127,
    257,
    541,
    1109,
    2357,
    5087,
    10273,
    20753,
    42043,
    85229,
    172933,
    351061,
    712697,
    1447153,
    2938679,
    5967347,
    12117689,
    24607243,
    49969847,
    101473717,
    206062531,
    418451333,
    849749479,
    1725587117,
    3504151727,
)


def hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit ``size_t``."""
    return seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _M64)


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def std_hash(data: bytes) -> int:
    """libstdc++'s ``std::hash<std::string>`` (``_Hash_bytes``) on a 64-bit platform."""
    n = len(data)
    whole = n & ~7
    h = (_SEED ^ (n * _MUL)) & _M64
    for (word,) in struct.iter_unpack("<Q", data[:whole]):
        h = ((h ^ ((_shift_mix((word * _MUL) & _M64) * _MUL) & _M64)) * _MUL) & _M64
    if n & 7:
        h = ((h ^ int.from_bytes(data[whole:], "little")) * _MUL) & _M64
    return _shift_mix((_shift_mix(h) * _MUL) & _M64)


def std_hashes(names: list[bytes]) -> list[int]:
    """:func:`std_hash` of every name, with numpy: the names of each length at once."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        by_length[len(name)].append(i)
    out = [0] * len(names)
    for n, where in by_length.items():
        rows = np.frombuffer(b"".join([names[i] for i in where]), np.uint8)
        for i, h in zip(where, _hash_rows(rows.reshape(len(where), n)).tolist()):
            out[i] = h
    return out


def _hash_rows(rows: np.ndarray) -> np.ndarray:
    """:func:`std_hash` of each row of a ``(k, n)`` uint8 array (uint64 arithmetic wraps
    as ``size_t`` does)."""
    k, n = rows.shape
    whole = n & ~7
    mul, shift = np.uint64(_MUL), np.uint64(47)
    h = np.full(k, (_SEED ^ (n * _MUL)) & _M64, np.uint64)
    if whole:
        words = np.ascontiguousarray(rows[:, :whole]).view("<u8").astype(np.uint64)
        for j in range(whole // 8):
            w = words[:, j] * mul
            w ^= w >> shift
            w *= mul
            h ^= w
            h *= mul
    if n & 7:
        tail = np.zeros((k, 8), np.uint8)
        tail[:, : n & 7] = rows[:, whole:]
        h ^= tail.view("<u8")[:, 0].astype(np.uint64)
        h *= mul
    h ^= h >> shift
    h *= mul
    h ^= h >> shift
    return h


def unordered_set_order(names: list[str], hashes: dict[str, int] | None = None) -> list[str]:
    """The iteration order of a ``std::unordered_set<std::string>`` filled with ``names``
    (``hashes``: each name's :func:`std_hash`, when the caller has them)."""
    if hashes is None:
        hashes = dict(zip(names, std_hashes([name.encode("utf-8") for name in names])))
    order = _set_order(np.array([hashes[name] for name in names], np.uint64))
    return [names[i] for i in order.tolist()]


def _set_order(hashes: np.ndarray) -> np.ndarray:
    """Indices of ``hashes`` (inserted in order) in the set's iteration order.

    The list is a run of nodes per non-empty bucket.  A bucket's run starts at the head of
    the list when the bucket gets its first node, and a node joins its bucket's run at the
    front; a rehash (when the count would pass the bucket count) re-inserts the nodes in list
    order the same way.  So between two rehashes the order is: buckets by when they got
    their first node, latest first; within a bucket, nodes latest first, where the nodes of
    the rehash arrive in their old list order and new nodes after them.
    """
    order = np.empty(0, np.intp)
    count, grow = 0, 0
    while count < len(hashes):
        if grow >= len(_BUCKETS):
            raise ValueError("too many records for the serialization id")
        buckets, grow = _BUCKETS[grow], grow + 1
        end = min(len(hashes), buckets)  # inserted before the next rehash
        nodes = np.concatenate([order, np.arange(count, end)])
        _, first, inverse = np.unique(
            hashes[nodes] % np.uint64(buckets), return_index=True, return_inverse=True
        )
        arrival = np.arange(len(nodes))
        order = nodes[np.lexsort((-arrival, -first[inverse.reshape(-1)]))]
        count = end
    return order


def serialization_id(names: list[str], crc_hash: int) -> bytes:
    """The 40 ASCII digits of ``.data/serialization_id`` for records ``names`` (in write order)."""
    hashes = np.array(std_hashes([name.encode("utf-8") for name in names]), np.uint64)
    name_hash = 0
    for h in hashes[_set_order(hashes)].tolist():  # hash_combine, inline
        name_hash ^= (h + 0x9E3779B9 + (name_hash << 6) + (name_hash >> 2)) & _M64
    return f"{name_hash:020d}{crc_hash:020d}".encode("ascii")
