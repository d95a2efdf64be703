"""A zip reader for checkpoints: central directory, zip64, local headers, stored/deflated.

Sizes and offsets come from the central directory (torch's miniz writer leaves them zero in
local headers and puts a non-standard zip64 extra there); the payload start comes from the
local header's own name and extra lengths, which differ from the central ones (the ``FB``
alignment padding lives only in the local header).  Every offset is checked against the file
size before it is used, and a deflated record never inflates past its declared size.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import CorruptError, FormatError, LimitError, UnsupportedError
from ...source import Source

__all__ = ["ZipEntry", "ZipArchive"]

_EOCD = struct.Struct("<4sHHHHIIH")              # 22 bytes
_Z64_LOCATOR = struct.Struct("<4sIQI")           # 20 bytes
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")        # 56 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")          # 30 bytes
#: ``_CENTRAL`` as a numpy record, for reading a whole directory at once
_CENTRAL_ROW = np.dtype([(name, "<" + code) for name, code in (
    ("sig", "u4"), ("made", "u2"), ("need", "u2"), ("flags", "u2"), ("method", "u2"),
    ("time", "u2"), ("date", "u2"), ("crc", "u4"), ("csize", "u4"), ("usize", "u4"),
    ("nlen", "u2"), ("xlen", "u2"), ("clen", "u2"), ("disk", "u2"), ("iattr", "u2"),
    ("xattr", "u4"), ("lho", "u4"))])
_LOCAL_ROW = np.dtype([(name, "<" + code) for name, code in (
    ("sig", "u4"), ("need", "u2"), ("flags", "u2"), ("method", "u2"), ("time", "u2"),
    ("date", "u2"), ("crc", "u4"), ("csize", "u4"), ("usize", "u4"), ("nlen", "u2"),
    ("xlen", "u2"))])
_SIG_LOCAL = int.from_bytes(b"PK\x03\x04", "little")
_MAX_COMMENT = 0xFFFF
STORED, DEFLATED = 0, 8
_MAX_RATIO = 1032          # DEFLATE's best case: 258 bytes from one ~2-bit code
#: Inflation bounds (see SECURITY.md): real pickles compress about 4:1 and real weights
#: barely at all; only constant-filled tensors approach DEFLATE's 1032:1.
PICKLE_RATIO = 64
DATA_RATIO = 256


class ZipEntry:
    """One central-directory entry (sizes and offsets already widened by zip64 fields)."""

    __slots__ = (
        "central_offset",
        "crc",
        "csize",
        "data_offset",
        "flags",
        "header_offset",
        "index",
        "method",
        "name",
        "usize",
    )

    def __init__(self, name: str, index: int, method: int, flags: int, crc: int, csize: int,
                 usize: int, header_offset: int, central_offset: int) -> None:
        self.name = name
        self.index = index
        self.method = method
        self.flags = flags
        self.crc = crc
        self.csize = csize
        self.usize = usize
        self.header_offset = header_offset
        self.central_offset = central_offset
        self.data_offset = -1               # from the local header, on first use

    @property
    def stored(self) -> bool:
        return self.method == STORED

    def __repr__(self) -> str:
        return (f"ZipEntry({self.name!r}, method={self.method}, usize={self.usize}, "
                f"header_offset={self.header_offset})")


class ZipArchive:
    """The entries of a zip file held by a :class:`Source`."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.eocd_offset, self.cd_offset, self.cd_size, count = self._find_directory()
        self.entries = self._read_central(count)
        self._scanned = False

    # -- end of central directory --------------------------------------------------------------
    def _find_directory(self) -> tuple[int, int, int, int]:
        buf, size = self.src.buf, self.src.size
        lo = max(0, size - _EOCD.size - _MAX_COMMENT)
        pos = buf.rfind(b"PK\x05\x06", lo)
        while pos >= 0 and pos + _EOCD.size > size:
            pos = buf.rfind(b"PK\x05\x06", lo, pos)
        if pos < 0:
            raise CorruptError("zip end-of-central-directory record not found (truncated file?)")
        (_, disk, cd_disk, _n_disk, count, cd_size, cd_offset, _clen) = \
            _EOCD.unpack_from(buf, pos)
        loc = pos - _Z64_LOCATOR.size
        if loc >= 0 and buf[loc:loc + 4] == b"PK\x06\x07":
            _, _, z64_offset, _ = _Z64_LOCATOR.unpack_from(buf, loc)
            self.src.check(z64_offset, _Z64_EOCD.size, "zip64 end of central directory")
            fields = _Z64_EOCD.unpack_from(buf, z64_offset)
            if fields[0] != b"PK\x06\x06":
                raise CorruptError("zip64 end-of-central-directory signature missing",
                                   offset=z64_offset)
            disk, cd_disk, count, cd_size, cd_offset = (fields[4], fields[5], fields[7],
                                                        fields[8], fields[9])
        if disk != 0 or cd_disk != 0:
            raise UnsupportedError("multi-disk (spanned) zip archives")
        self.src.check(cd_offset, cd_size, "zip central directory")
        if count > cd_size // _CENTRAL.size:
            raise CorruptError(f"zip directory claims {count} entries in {cd_size} bytes",
                               offset=pos)
        return pos, cd_offset, cd_size, count

    # -- central directory ---------------------------------------------------------------------
    def _read_central(self, count: int) -> list[ZipEntry]:
        entries = self._scan_central(count)
        return entries if entries is not None else self._walk_central(count)

    def _scan_central(self, count: int) -> list[ZipEntry] | None:
        """The whole directory at once, column by column: for a well-formed directory only.

        Every ``PK\\1\\2`` in it is a candidate entry; when the first is at the start, there
        are ``count`` of them and each one's lengths lead exactly to the next, the candidates
        are the entries (a signature inside a name or extra field would break the chain).
        Anything else returns ``None`` and :meth:`_walk_central` says what is wrong.
        """
        size = self.cd_size
        if count == 0 or size < _CENTRAL.size * count:
            return None
        cd = self.src.whole[self.cd_offset:self.cd_offset + size]
        at = np.flatnonzero(cd[:size - _CENTRAL.size + 1] == 0x50)
        at = at[(cd[at + 1] == 0x4B) & (cd[at + 2] == 1) & (cd[at + 3] == 2)]
        if len(at) != count or at[0] != 0:
            return None
        rows = np.lib.stride_tricks.sliding_window_view(cd, _CENTRAL.size)[at]
        rows = rows.view(_CENTRAL_ROW)[:, 0]
        names_at = at + _CENTRAL.size
        ends = names_at + rows["nlen"]
        stop = ends + rows["xlen"] + rows["clen"]
        if not (stop[:-1] == at[1:]).all() or stop[-1] > size:
            return None
        text = bytes(cd)
        flags = rows["flags"].tolist()
        # ASCII reads the same in UTF-8 and cp437: slice one string decoded byte for byte,
        # and decode the names holding a byte >= 0x80 again, by their own flag.
        latin = str(text, "latin-1")
        names = [latin[a:b] for a, b in zip(names_at.tolist(), ends.tolist())]
        if not all(map(str.isascii, names)):
            for i, name in enumerate(names):
                if not name.isascii():
                    names[i] = _name(name.encode("latin-1"), flags[i])
        usize, csize, lho = rows["usize"].tolist(), rows["csize"].tolist(), rows["lho"].tolist()
        central = (at + self.cd_offset).tolist()
        wide = (rows["xlen"] != 0) | (rows["usize"] == 0xFFFFFFFF) | \
            (rows["csize"] == 0xFFFFFFFF) | (rows["lho"] == 0xFFFFFFFF)
        for i in np.flatnonzero(wide).tolist():
            extra = text[ends[i]:ends[i] + rows["xlen"][i]]
            usize[i], csize[i], lho[i] = _zip64(extra, usize[i], csize[i], lho[i], i,
                                                central[i])
        return list(map(ZipEntry, names, range(count), rows["method"].tolist(), flags,
                        rows["crc"].tolist(), csize, usize, lho, central))

    def _walk_central(self, count: int) -> list[ZipEntry]:
        """The directory entry by entry, naming the first that is wrong."""
        buf = self.src.buf
        pos, end = self.cd_offset, self.cd_offset + self.cd_size
        entries: list[ZipEntry] = []
        for index in range(count):
            if pos + _CENTRAL.size > end:
                raise CorruptError(f"zip central directory truncated at entry {index}",
                                   offset=pos)
            (sig, _made, _need, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen,
             _dstart, _iattr, _xattr, lho) = _CENTRAL.unpack_from(buf, pos)
            if sig != b"PK\x01\x02":
                raise CorruptError(f"zip central directory entry {index} has a bad signature",
                                   offset=pos)
            stop = pos + _CENTRAL.size + nlen + xlen + clen
            if stop > end:
                raise CorruptError(f"zip central directory entry {index} runs past the "
                                   "directory", offset=pos)
            at = pos + _CENTRAL.size
            if xlen or 0xFFFFFFFF in (usize, csize, lho):
                usize, csize, lho = _zip64(bytes(buf[at + nlen:at + nlen + xlen]), usize, csize,
                                           lho, index, pos)
            name = _name(buf[at:at + nlen], flags)
            entries.append(ZipEntry(name, index, method, flags, crc, csize, usize, lho, pos))
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
        if size < _LOCAL.size:
            return
        # (zip64 fields go up to 2**64 - 1: anything past the file is -1 before numpy sees it)
        last = size - _LOCAL.size
        lho = np.fromiter((e.header_offset if e.header_offset <= last else -1
                           for e in entries), np.int64, n)
        csize = np.fromiter((min(e.csize, size) for e in entries), np.int64, n)
        heads = np.lib.stride_tricks.sliding_window_view(self.src.whole, _LOCAL.size)[lho]
        heads = heads.view(_LOCAL_ROW)[:, 0]
        start = lho + _LOCAL.size + heads["nlen"] + heads["xlen"]
        good = (lho >= 0) & (heads["sig"] == _SIG_LOCAL) & (start + csize <= size)
        for entry, at in zip(entries, np.where(good, start, -1).tolist()):
            entry.data_offset = at

    def data_offset(self, entry: ZipEntry) -> int:
        """Where the entry's (compressed) bytes start, from its local header."""
        if entry.data_offset < 0 and not self._scanned:
            self._scan_local()
        if entry.data_offset < 0:
            buf = self.src.buf
            self.src.check(entry.header_offset, _LOCAL.size, "zip local header", entry.name)
            (sig, _need, _flags, _method, _t, _d, _crc, _cs, _us, nlen, xlen) = \
                _LOCAL.unpack_from(buf, entry.header_offset)
            if sig != b"PK\x03\x04":
                raise CorruptError("zip local header signature missing", record=entry.name,
                                   offset=entry.header_offset)
            entry.data_offset = entry.header_offset + _LOCAL.size + nlen + xlen
            self.src.check(entry.data_offset, entry.csize, "zip record data", entry.name)
        return entry.data_offset

    def check_readable(self, entry: ZipEntry) -> None:
        if entry.flags & 0x1:
            raise UnsupportedError("encrypted zip record", record=entry.name)
        if entry.method not in (STORED, DEFLATED):
            raise UnsupportedError(f"zip compression method {entry.method}", record=entry.name)
        if entry.method == STORED and entry.csize != entry.usize:
            raise CorruptError(f"stored zip record with compressed size {entry.csize} and "
                               f"size {entry.usize}", record=entry.name)

    def read(self, entry: ZipEntry, max_ratio: int = PICKLE_RATIO) -> bytes:
        """The entry's bytes, inflated if needed (never more than its declared size)."""
        self.check_readable(entry)
        start = self.data_offset(entry)
        if entry.method == STORED:
            return self.src.bytes(start, entry.usize)
        return b"".join(self.inflate(entry, max_ratio))

    def inflate(self, entry: ZipEntry, max_ratio: int = DATA_RATIO,
                chunk: int = 1 << 20) -> Iterator[bytes]:
        """Inflate a deflated entry in chunks (see :func:`inflate`)."""
        yield from inflate(self.src.buf, self.data_offset(entry), entry.csize, entry.usize,
                           entry.name, max_ratio, chunk)


def inflate(buf: Any, start: int, csize: int, usize: int, name: str,
            max_ratio: int = DATA_RATIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Inflate the raw DEFLATE stream ``buf[start:start + csize]`` in chunks of at most
    ``chunk`` bytes.

    A header can lie about the inflated size: output is produced piece by piece (a lying
    size never pre-allocates) and must stop at exactly ``usize`` bytes.  A size beyond
    DEFLATE's maximum ratio (1032:1) is refused as corrupt before any work, and one beyond
    ``max_ratio`` (+1 MiB) as a decompression bomb (:class:`LimitError`).
    """
    if usize > _MAX_RATIO * csize + 1024:
        raise CorruptError(f"deflated record claims {usize} bytes from {csize}: more than "
                           "DEFLATE can encode", record=name)
    if usize > max_ratio * csize + (1 << 20):
        raise LimitError(f"deflated record inflates {usize // max(csize, 1)}:1 ({usize} bytes "
                         f"from {csize}), over pthfmt's {max_ratio}:1 bound for such records "
                         "(a decompression bomb?)", record=name)
    inflater = zlib.decompressobj(-15)
    pending = buf[start:start + csize]
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
        raise CorruptError(f"record inflates to {more}{produced} bytes, its header says "
                           f"{usize}", record=name)


def _name(raw: bytes, flags: int) -> str:
    """An entry name: UTF-8 when general-purpose flag bit 11 says so, else cp437."""
    return str(raw, "utf-8" if flags & 0x800 else "cp437", "replace")


def _zip64(extra: bytes, usize: int, csize: int, lho: int, index: int,
           pos: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4:i + 4 + length]
        if tag == 1:
            j = 0
            values = []
            for v in (usize, csize, lho):
                if v == 0xFFFFFFFF:
                    if j + 8 > len(body):
                        raise CorruptError(f"zip64 extra field of entry {index} is too short",
                                           offset=pos)
                    v = struct.unpack_from("<Q", body, j)[0]
                    j += 8
                values.append(v)
            return values[0], values[1], values[2]
        i += 4 + length
    if 0xFFFFFFFF in (usize, csize, lho):
        raise FormatError(f"zip entry {index} needs a zip64 extra field", offset=pos)
    return usize, csize, lho
