"""A zip reader for checkpoints: central directory, zip64, local headers, stored/deflated.

Sizes and offsets come from the central directory (torch's miniz writer leaves them zero in
local headers and puts a non-standard zip64 extra there); the payload start comes from the
local header's own name and extra lengths, which differ from the central ones (the ``FB``
alignment padding lives only in the local header).  Every offset is checked against the file
size before it is used, and a deflated record never inflates past its declared size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, overload

import numpy as np

from ...errors import CorruptError, FormatError, LimitError, UnsupportedError
from ...source import Source
from ...text import escape
from . import structs as zs
from .structs import CENTRAL, DEFLATED, EOCD, LOCAL, STORED, U32_MAX, ZIP64_EOCD, ZIP64_LOCATOR

__all__ = [
    "ZipEntry",
    "Entries",
    "ZipArchive",
    "LocalHeader",
    "STORED",
    "DEFLATED",
    "inflate",
    "PICKLE_RATIO",
    "DATA_RATIO",
    "INFLATE_ALLOWANCE",
    "check_claim",
]

_MAX_COMMENT = zs.U16_MAX
_MAX_RATIO = 1032  # DEFLATE's best case: 258 bytes from one ~2-bit code
_PADDING_GUESS = 72  # torch's local extra field (alignment padding) is at most 4 + 63 bytes
#: Inflation bounds (see SECURITY.md): real pickles compress about 4:1 and real weights
#: barely at all; only constant-filled tensors approach DEFLATE's 1032:1.
PICKLE_RATIO = 64
DATA_RATIO = 256
#: Bytes beyond those ratios that a record, and a whole archive, may inflate to.
INFLATE_ALLOWANCE = 1 << 20


@dataclass(frozen=True)
class LocalHeader:
    """An entry's local header as written: its own flags, method, CRC and sizes (widened by
    its zip64 extra field where that holds them), name, extra field, and where the data
    starts."""

    offset: int
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    name: str
    extra: bytes
    extra_offset: int
    data_offset: int


class ZipEntry:
    """One central-directory entry (sizes and offsets already widened by zip64 fields)."""

    __slots__ = (
        "central_offset",
        "central_size",
        "crc",
        "csize",
        "flags",
        "header_offset",
        "index",
        "local",
        "method",
        "name",
        "usize",
    )

    def __init__(
        self,
        name: str,
        index: int,
        method: int,
        flags: int,
        crc: int,
        csize: int,
        usize: int,
        header_offset: int,
        central_offset: int,
        central_size: int = CENTRAL.size,
    ) -> None:
        self.name = name
        self.index = index
        self.method = method
        self.flags = flags
        self.crc = crc
        self.csize = csize
        self.usize = usize
        self.header_offset = header_offset
        self.central_offset = central_offset
        #: bytes of the directory entry with its name, extra field and comment
        self.central_size = central_size
        #: the local header, once :meth:`ZipArchive.local_header` has read it
        self.local: LocalHeader | None = None

    @property
    def stored(self) -> bool:
        return self.method == STORED

    def __repr__(self) -> str:
        return (
            f"ZipEntry({self.name!r}, method={self.method}, usize={self.usize}, "
            f"header_offset={self.header_offset})"
        )


def _signatures(buf: np.ndarray, sig: bytes) -> np.ndarray:
    """Every offset of ``buf`` (``uint8``) where the 4-byte ``sig`` starts, in order: one
    pass of 4-byte words per alignment (a zip signature cannot overlap itself)."""
    want = np.frombuffer(sig, "<u4")[0]
    found = []
    for phase in range(4):
        words = (len(buf) - phase) // 4
        at = np.flatnonzero(buf[phase : phase + 4 * words].view("<u4") == want)
        found.append(at * 4 + phase)
    return np.sort(np.concatenate(found))


class Entries(Sequence[ZipEntry]):
    """An archive's directory entries in order, each made on first use from the columns
    the directory was read into (a load finds the records it reads by name and makes only
    those few entries)."""

    __slots__ = ("_made", "_make")

    def __init__(self, made: list[ZipEntry | None], make: Callable[[int], ZipEntry]) -> None:
        self._made = made
        self._make = make

    def __len__(self) -> int:
        return len(self._made)

    @overload
    def __getitem__(self, i: int) -> ZipEntry: ...

    @overload
    def __getitem__(self, i: slice) -> list[ZipEntry]: ...

    def __getitem__(self, i: int | slice) -> ZipEntry | list[ZipEntry]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._made)))]
        entry = self._made[i]
        if entry is None:
            entry = self._made[i] = self._make(i % len(self._made))
        return entry

    def __iter__(self) -> Iterator[ZipEntry]:
        for i in range(len(self._made)):
            yield self[i]


class ZipArchive:
    """The entries of a zip file held by a :class:`Source`."""

    def __init__(self, src: Source) -> None:
        self.src = src
        #: the end record's fields (``EOCD``), and the zip64 end record's when there is one
        self.end_record: tuple[Any, ...] = ()
        self.zip64_offset: int | None = None
        self.zip64_record: tuple[Any, ...] | None = None
        self.eocd_offset, self.cd_offset, self.cd_size, count = self._find_directory()
        #: every entry's local header offset, compressed size and size as arrays, when the
        #: whole directory was read at once and all of them lie within the file (else
        #: ``None``)
        self._spans: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        #: every entry's name, and its size (the columns a load looks records up by)
        self.names: list[str] = []
        self.sizes: list[int] = []
        #: every entry's method and general-purpose flags
        self._methods: np.ndarray | list[int] = []
        self._flags: np.ndarray | list[int] = []
        self.entries: Entries = self._read_central(count)
        #: every entry's payload offset, from its local header (-1: not read yet, or bad)
        self._payload = np.full(count, -1, np.int64)
        #: :meth:`plain_offsets`, once made
        self._plain: list[int] | None = None
        self._scanned = False
        self._on_demand = hasattr(src, "ensure")  # a remote source (pthfmt.remote)
        #: bytes the deflated records may still inflate to, all of them together
        self.inflate_left = DATA_RATIO * src.size + INFLATE_ALLOWANCE
        self._charged: set[int] = set()  # the entries counted against it

    # -- end of central directory --------------------------------------------------------------
    def _find_directory(self) -> tuple[int, int, int, int]:
        buf, size = self.src.buf, self.src.size
        lo = max(0, size - EOCD.size - _MAX_COMMENT)
        pos = buf.rfind(EOCD.signature, lo)
        while pos >= 0 and pos + EOCD.size > size:
            pos = buf.rfind(EOCD.signature, lo, pos)
        if pos < 0:
            raise CorruptError("zip end-of-central-directory record not found (truncated file?)")
        end = self.end_record = EOCD.struct.unpack_from(buf, pos)
        disk, cd_disk = end[zs.EOCD_DISK], end[zs.EOCD_DIRECTORY_DISK]
        count, cd_size = end[zs.EOCD_ENTRIES], end[zs.EOCD_DIRECTORY_SIZE]
        cd_offset = end[zs.EOCD_DIRECTORY_OFFSET]
        loc = pos - ZIP64_LOCATOR.size
        if loc >= 0 and buf[loc : loc + 4] == ZIP64_LOCATOR.signature:
            z64_offset = ZIP64_LOCATOR.struct.unpack_from(buf, loc)[zs.LOC_ZIP64_OFFSET]
            self.src.check(z64_offset, ZIP64_EOCD.size, "zip64 end of central directory")
            fields = ZIP64_EOCD.struct.unpack_from(buf, z64_offset)
            if fields[zs.Z64_SIGNATURE] != ZIP64_EOCD.signature:
                raise CorruptError(
                    "zip64 end-of-central-directory signature missing", offset=z64_offset
                )
            self.zip64_offset, self.zip64_record = z64_offset, fields
            disk, cd_disk = fields[zs.Z64_DISK], fields[zs.Z64_DIRECTORY_DISK]
            count, cd_size = fields[zs.Z64_ENTRIES], fields[zs.Z64_DIRECTORY_SIZE]
            cd_offset = fields[zs.Z64_DIRECTORY_OFFSET]
        if disk != 0 or cd_disk != 0:
            raise UnsupportedError("multi-disk (spanned) zip archives")
        self.src.check(cd_offset, cd_size, "zip central directory")
        if count > cd_size // CENTRAL.size:
            raise CorruptError(
                f"zip directory claims {count} entries in {cd_size} bytes", offset=pos
            )
        return pos, cd_offset, cd_size, count

    # -- central directory ---------------------------------------------------------------------
    def _read_central(self, count: int) -> Entries:
        entries = self._scan_central(count)
        if entries is not None:
            return entries
        walked = self._walk_central(count)
        self.names = [e.name for e in walked]
        self.sizes = [e.usize for e in walked]
        self._methods = [e.method for e in walked]
        self._flags = [e.flags for e in walked]
        made: list[ZipEntry | None] = list(walked)
        return Entries(made, walked.__getitem__)

    def _scan_central(self, count: int) -> Entries | None:
        """The whole directory at once, column by column: for a well-formed directory only
        (its entries are made on first use, from the columns: what makes them holds no
        reference back to the archive).

        Every ``PK\\1\\2`` in it is a candidate entry; when the first is at the start, there
        are ``count`` of them and each one's lengths lead exactly to the next, the candidates
        are the entries (a signature inside a name or extra field would break the chain).
        Anything else returns ``None`` and :meth:`_walk_central` says what is wrong.
        """
        size = self.cd_size
        if count == 0 or size < CENTRAL.size * count:
            return None
        cd = self.src.whole[self.cd_offset : self.cd_offset + size]
        sig = CENTRAL.signature
        assert sig is not None
        at = _signatures(cd, sig)
        if len(at) != count or at[0] != 0 or at[-1] > size - CENTRAL.size:
            return None
        rows = np.lib.stride_tricks.sliding_window_view(cd, CENTRAL.size)[at]
        rows = rows.view(CENTRAL.dtype)[:, 0]
        names_at = at + CENTRAL.size
        ends = names_at + rows["name_length"]
        stop = ends + rows["extra_length"] + rows["comment_length"]
        if not (stop[:-1] == at[1:]).all() or stop[-1] > size:
            return None
        flags = rows["flags"]
        # ASCII reads the same in UTF-8 and cp437: slice one string decoded byte for byte
        # (straight from the file's buffer), and decode the names holding a byte >= 0x80
        # again, by their own flag.
        latin = str(self.src.view[self.cd_offset : self.cd_offset + size], "latin-1")
        names = [latin[a:b] for a, b in zip(names_at.tolist(), ends.tolist())]
        if not all(map(str.isascii, names)):
            for i, name in enumerate(names):
                if not name.isascii():
                    names[i] = _name(name.encode("latin-1"), int(flags[i]))
        # sizes as a list (what locating a record reads), the rest as columns (zip64 values
        # are 8-byte fields: uint64)
        usize = rows["uncompressed_size"].tolist()
        csize = rows["compressed_size"].astype(np.uint64)
        lho = rows["header_offset"].astype(np.uint64)
        base = self.cd_offset
        wide = (
            (rows["extra_length"] != 0)
            | (rows["uncompressed_size"] == U32_MAX)
            | (rows["compressed_size"] == U32_MAX)
            | (rows["header_offset"] == U32_MAX)
        )
        widened = np.flatnonzero(wide).tolist()
        for i in widened:
            extra = bytes(cd[ends[i] : ends[i] + rows["extra_length"][i]])
            usize[i], c, h = _zip64(
                extra, usize[i], int(csize[i]), int(lho[i]), i, base + int(at[i])
            )
            csize[i], lho[i] = c, h
        if all(max(usize[i], int(csize[i]), int(lho[i])) <= self.src.size for i in widened):
            full = rows["uncompressed_size"].astype(np.int64)
            for i in widened:
                full[i] = usize[i]
            self._spans = lho.astype(np.int64), csize.astype(np.int64), full
        self.names, self.sizes = names, usize
        methods, crcs, sizes = rows["method"], rows["crc"], stop - at
        self._methods, self._flags = methods, flags

        def make(i: int) -> ZipEntry:
            return ZipEntry(
                names[i],
                i,
                int(methods[i]),
                int(flags[i]),
                int(crcs[i]),
                int(csize[i]),
                usize[i],
                int(lho[i]),
                base + int(at[i]),
                int(sizes[i]),
            )

        return Entries([None] * count, make)

    def _walk_central(self, count: int) -> list[ZipEntry]:
        """The directory entry by entry, naming the first that is wrong."""
        buf = self.src.buf
        pos, end = self.cd_offset, self.cd_offset + self.cd_size
        entries: list[ZipEntry] = []
        for index in range(count):
            if pos + CENTRAL.size > end:
                raise CorruptError(f"zip central directory truncated at entry {index}", offset=pos)
            row = CENTRAL.struct.unpack_from(buf, pos)
            flags, method, crc = row[zs.CD_FLAGS], row[zs.CD_METHOD], row[zs.CD_CRC]
            csize, usize = row[zs.CD_COMPRESSED_SIZE], row[zs.CD_UNCOMPRESSED_SIZE]
            nlen, xlen = row[zs.CD_NAME_LENGTH], row[zs.CD_EXTRA_LENGTH]
            clen, lho = row[zs.CD_COMMENT_LENGTH], row[zs.CD_HEADER_OFFSET]
            if row[zs.CD_SIGNATURE] != CENTRAL.signature:
                raise CorruptError(
                    f"zip central directory entry {index} has a bad signature", offset=pos
                )
            stop = pos + CENTRAL.size + nlen + xlen + clen
            if stop > end:
                raise CorruptError(
                    f"zip central directory entry {index} runs past the directory", offset=pos
                )
            at = pos + CENTRAL.size
            if xlen or U32_MAX in (usize, csize, lho):
                usize, csize, lho = _zip64(
                    bytes(buf[at + nlen : at + nlen + xlen]), usize, csize, lho, index, pos
                )
            name = _name(buf[at : at + nlen], flags)
            entries.append(
                ZipEntry(name, index, method, flags, crc, csize, usize, lho, pos, stop - pos)
            )
            pos = stop
        return entries

    # -- payloads ------------------------------------------------------------------------------
    def _scan_local(self) -> None:
        """Every entry's payload offset at once, from the local headers.

        Entries whose local header is missing or wrong, or whose payload runs past the end,
        are left for :meth:`data_offset` to report.
        """
        self._scanned = True
        entries, size = self.entries, self.src.size
        n = len(entries)
        if size < LOCAL.size:
            return
        # (zip64 fields go up to 2**64 - 1: anything past the file is -1 before numpy sees it)
        last = size - LOCAL.size
        if self._spans is not None:
            lho = np.where(self._spans[0] <= last, self._spans[0], -1)
            csize = np.minimum(self._spans[1], size)
        else:
            lho = np.fromiter(
                (e.header_offset if e.header_offset <= last else -1 for e in entries), np.int64, n
            )
            csize = np.fromiter((min(e.csize, size) for e in entries), np.int64, n)
        heads = np.lib.stride_tricks.sliding_window_view(self.src.whole, LOCAL.size)[lho]
        heads = heads.view(LOCAL.dtype)[:, 0]
        start = lho + LOCAL.size + heads["name_length"] + heads["extra_length"]
        good = (lho >= 0) & (heads["signature"] == LOCAL.signature) & (start + csize <= size)
        payload = np.where(good, start, -1)
        known = self._payload >= 0  # (those read one by one before: the same offsets)
        payload[known] = self._payload[known]
        self._payload = payload
        if self._spans is not None:  # (plain_offsets from the same columns)
            plain = self._stored_clear() & (self._spans[1] == self._spans[2])
            self._plain = np.where(plain, payload, -1).tolist()

    def _stored_clear(self) -> np.ndarray:
        """Which entries are stored (not compressed) and not encrypted."""
        methods, flags = np.asarray(self._methods), np.asarray(self._flags)
        stored: np.ndarray = (methods == STORED) & (flags & zs.FLAG_ENCRYPTED == 0)
        return stored

    def plain_offsets(self) -> list[int]:
        """Each entry's payload offset where its bytes lie in the file as they are (stored,
        not encrypted, compressed size equal to its size, local header good), else -1: what
        a reader may slice without :meth:`check_readable` or :meth:`data_offset`.  Every
        local header is scanned first; a source that fetches on demand gets all -1."""
        if self._plain is None:
            if self._on_demand:
                self._plain = [-1] * len(self.entries)
                return self._plain
            if not self._scanned:
                self._scan_local()
        if self._plain is None:  # (not made by the scan: from the entries)
            stored = self._stored_clear()
            self._plain = [
                at if ok and e.csize == e.usize else -1
                for at, ok, e in zip(self._payload.tolist(), stored.tolist(), self.entries)
            ]
        return self._plain

    def data_offset(self, entry: ZipEntry) -> int:
        """Where the entry's (compressed) bytes start, from its local header (all entries'
        at once, the first time; one by one from a source that fetches on demand, whose
        unfetched bytes must not be scanned)."""
        if self._payload[entry.index] < 0 and not self._scanned and not self._on_demand:
            self._scan_local()
        return self.local_data_offset(entry)

    def local_data_offset(self, entry: ZipEntry) -> int:
        """:meth:`data_offset` from this entry's local header alone (a source that fetches
        on demand fetches the header, and the data after it, in one request)."""
        if self._payload[entry.index] < 0:
            fetch = getattr(self.src, "ensure", None)
            if fetch is not None:
                name = len(entry.name.encode("utf-8", "surrogateescape"))
                fetch([(entry.header_offset, LOCAL.size + name + _PADDING_GUESS + entry.csize)])
            self._read_local(entry)
        return int(self._payload[entry.index])

    def known_offset(self, entry: ZipEntry) -> int:
        """The entry's payload offset if its local header has been read, else -1."""
        return int(self._payload[entry.index])

    def forget_offset(self, entry: ZipEntry) -> None:
        """Drop what is known of the entry's payload offset (tests: the next
        :meth:`data_offset` reads its local header alone)."""
        self._payload[entry.index] = -1

    def _read_local(self, entry: ZipEntry) -> None:
        buf = self.src.buf
        self.src.check(entry.header_offset, LOCAL.size, "zip local header", entry.name)
        head = LOCAL.struct.unpack_from(buf, entry.header_offset)
        if head[zs.LH_SIGNATURE] != LOCAL.signature:
            raise CorruptError(
                "zip local header signature missing",
                record=entry.name,
                offset=entry.header_offset,
            )
        start = (
            entry.header_offset + LOCAL.size + head[zs.LH_NAME_LENGTH] + head[zs.LH_EXTRA_LENGTH]
        )
        self.src.check(start, entry.csize, "zip record data", entry.name)
        self._payload[entry.index] = start

    def local_header(self, entry: ZipEntry) -> LocalHeader:
        """The entry's local header, parsed (and kept on ``entry.local``): its fields as
        written, sizes widened by its zip64 extra field when saturated.  A header past the
        end of the file or without its signature is a :class:`CorruptError`."""
        if entry.local is not None:
            return entry.local
        buf, size, lho = self.src.buf, self.src.size, entry.header_offset
        if lho + LOCAL.size > size:
            raise CorruptError(
                f"local header at {lho} lies past the end of the {size}-byte file",
                record=entry.name,
            )
        head = LOCAL.struct.unpack_from(buf, lho)
        if head[zs.LH_SIGNATURE] != LOCAL.signature:
            raise CorruptError(f"no local header signature at offset {lho}", record=entry.name)
        flags, nlen, xlen = head[zs.LH_FLAGS], head[zs.LH_NAME_LENGTH], head[zs.LH_EXTRA_LENGTH]
        start = lho + LOCAL.size
        extra = bytes(buf[start + nlen : start + nlen + xlen])
        csize, usize = head[zs.LH_COMPRESSED_SIZE], head[zs.LH_UNCOMPRESSED_SIZE]
        if U32_MAX in (csize, usize):
            found = zs.zip64_values(extra, (usize, csize))
            if found is not None:
                usize, csize = found[0]
        entry.local = LocalHeader(
            lho,
            flags,
            head[zs.LH_METHOD],
            head[zs.LH_CRC],
            csize,
            usize,
            _name(bytes(buf[start : start + nlen]), flags),
            extra,
            start + nlen,
            start + nlen + xlen,
        )
        return entry.local

    def check_readable(self, entry: ZipEntry) -> None:
        if entry.flags & zs.FLAG_ENCRYPTED:
            raise UnsupportedError("encrypted zip record", record=entry.name)
        if entry.method not in (STORED, DEFLATED):
            raise UnsupportedError(f"zip compression method {entry.method}", record=entry.name)
        if entry.method == STORED and entry.csize != entry.usize:
            raise CorruptError(
                f"stored zip record with compressed size {entry.csize} and size {entry.usize}",
                record=entry.name,
            )

    def read(self, entry: ZipEntry, max_ratio: int = PICKLE_RATIO) -> bytes:
        """The entry's bytes, inflated if needed (never more than its declared size)."""
        self.check_readable(entry)
        start = self.data_offset(entry)
        if entry.method == STORED:
            return self.src.bytes(start, entry.usize)
        return b"".join(self.inflate(entry, max_ratio))

    def check_disjoint(self) -> None:
        """Refuse records whose bytes overlap (a local header and data at least, each): two
        directory entries aliasing one record would be read, and copied, once per entry, so
        a small file could cost memory quadratic in its size."""
        entries = self.entries
        if self._spans is not None:  # (offsets and sizes within the file: no overflow)
            lho, csize, _ = self._spans
            at = np.argsort(lho, kind="stable")
            starts = lho[at]
            clash = np.flatnonzero(starts[:-1] + LOCAL.size + csize[at[:-1]] > starts[1:])
            if not len(clash):
                return
            first = int(clash[0])
            order = [entries[int(at[first])], entries[int(at[first + 1])]]
        else:
            order = sorted(entries, key=lambda e: e.header_offset)
        for a, b in pairwise(order):
            if a.header_offset + LOCAL.size + a.csize > b.header_offset:
                raise CorruptError(
                    f"zip records {escape(a.name, 200)!r} and {escape(b.name, 200)!r} share "
                    f"bytes (record at {a.header_offset}, {a.csize} bytes of data, and record "
                    f"at {b.header_offset})",
                    record=b.name,
                    offset=b.header_offset,
                    code="zip.overlap",
                )

    def charge(self, entry: ZipEntry) -> None:
        """Count a deflated entry's size against the archive's inflation bound (once per
        entry): each record's own ratio bound allows a little more than its ratio, and many
        small records must not add those allowances up to a bomb."""
        if entry.index in self._charged:
            return
        self._charged.add(entry.index)
        self.inflate_left -= entry.usize
        if self.inflate_left < 0:
            raise LimitError(
                f"the deflated records inflate to more than {DATA_RATIO}:1 of the "
                f"{self.src.size}-byte file in all (a decompression bomb?)",
                record=entry.name,
                code="zip.inflate_limit",
            )

    def inflate(
        self, entry: ZipEntry, max_ratio: int = DATA_RATIO, chunk: int = 1 << 20
    ) -> Iterator[bytes]:
        """Inflate a deflated entry in chunks (see :func:`inflate`), within the archive's
        bound (:meth:`charge`)."""
        check_claim(entry.csize, entry.usize, entry.name, max_ratio)
        self.charge(entry)
        yield from inflate(
            self.src.buf,
            self.data_offset(entry),
            entry.csize,
            entry.usize,
            entry.name,
            max_ratio,
            chunk,
        )


def check_claim(csize: int, usize: int, name: str, max_ratio: int = DATA_RATIO) -> None:
    """Refuse a record's declared sizes before any work: beyond DEFLATE's maximum ratio
    (1032:1) as corrupt, beyond ``max_ratio`` (+ :data:`INFLATE_ALLOWANCE`) as a bomb."""
    if usize > _MAX_RATIO * csize + 1024:
        raise CorruptError(
            f"deflated record claims {usize} bytes from {csize}: more than DEFLATE can encode",
            record=name,
        )
    if usize > max_ratio * csize + INFLATE_ALLOWANCE:
        raise LimitError(
            f"deflated record inflates {usize // max(csize, 1)}:1 ({usize} bytes "
            f"from {csize}), over pthfmt's {max_ratio}:1 bound for such records "
            "(a decompression bomb?)",
            record=name,
            code="zip.inflate_limit",
        )


def inflate(
    buf: Any,
    start: int,
    csize: int,
    usize: int,
    name: str,
    max_ratio: int = DATA_RATIO,
    chunk: int = 1 << 20,
) -> Iterator[bytes]:
    """Inflate the raw DEFLATE stream ``buf[start:start + csize]`` in chunks of at most
    ``chunk`` bytes.

    A header can lie about the inflated size: output is produced piece by piece (a lying
    size never pre-allocates) and must stop at exactly ``usize`` bytes.  A size beyond
    DEFLATE's maximum ratio (1032:1) is refused as corrupt before any work, and one beyond
    ``max_ratio`` (+1 MiB) as a decompression bomb (:class:`LimitError`).
    """
    check_claim(csize, usize, name, max_ratio)
    inflater = zlib.decompressobj(-15)
    pending = buf[start : start + csize]
    produced = 0
    try:
        while True:
            out = inflater.decompress(pending, chunk)
            pending = inflater.unconsumed_tail
            produced += len(out)
            if produced > usize:
                break
            if out:
                yield out
            if inflater.eof or (not out and not pending):
                break
    except zlib.error as exc:
        raise CorruptError(f"bad deflate data: {exc}", record=name) from None
    if produced != usize or not inflater.eof:
        more = "more than " if produced > usize else ""
        raise CorruptError(
            f"record inflates to {more}{produced} bytes, its header says {usize}", record=name
        )


def _name(raw: bytes, flags: int) -> str:
    """An entry name: UTF-8 when general-purpose flag bit 11 says so, else cp437."""
    return str(raw, "utf-8" if flags & zs.FLAG_UTF8 else "cp437", "replace")


def _zip64(
    extra: bytes, usize: int, csize: int, lho: int, index: int, pos: int
) -> tuple[int, int, int]:
    found = zs.zip64_values(extra, (usize, csize, lho))
    if found is None:
        if U32_MAX in (usize, csize, lho):
            raise FormatError(f"zip entry {index} needs a zip64 extra field", offset=pos)
        return usize, csize, lho
    values, complete = found
    if not complete:
        raise CorruptError(f"zip64 extra field of entry {index} is too short", offset=pos)
    return values[0], values[1], values[2]
