"""The zip structure, record by record, past the first error: every local header against
its central-directory entry and data descriptor, the CRC-32 of every record, overlaps, gaps,
the end records, names.  The records come parsed from the zip reader
(:class:`~pthfmt.formats.zip.reader.ZipArchive`); layouts from
:mod:`pthfmt.formats.zip.structs`."""

from __future__ import annotations

import re
import zlib
from typing import Final

from ..errors import PthError
from ..formats.contract import is_tensor_record, not_a_checkpoint
from ..formats.torchzip import fold_case
from ..formats.zip import structs as zs
from ..formats.zip.reader import DEFLATED, STORED, ZipArchive, ZipEntry, check_claim
from ..formats.zip.structs import CENTRAL, EOCD, U32_MAX, ZIP64_EOCD, ZIP64_LOCATOR
from ..text import quoted
from .base import Rec
from .layout import LayoutChecks

_FOLDER: Final = re.compile(r"^[^\x00-\x1f\x7f/\\.][^\x00-\x1f\x7f/\\]*$")


class ZipChecks(LayoutChecks):
    """The zip container."""

    def check_unknown(self) -> None:
        self.format = "unknown"
        if self.find_directory() is not None:
            return  # check_hidden_zip reports the zip behind other bytes
        self.add("file.unknown_format", not_a_checkpoint(self.size), offset=0)

    def find_directory(self) -> tuple[int, int, int] | None:
        """Locate a zip central directory from the end of the file, the way tools that
        tolerate prepended data do: ``(directory offset, shift, entries)``, where ``shift``
        is how far the archive lies behind the offsets it records."""
        buf, size = self.buf, self.size
        eocd = buf.rfind(EOCD.signature, max(0, size - EOCD.size - zs.U16_MAX))
        if eocd < 0 or eocd + EOCD.size > size:
            return None
        end = EOCD.struct.unpack_from(buf, eocd)
        count, cd_size = end[zs.EOCD_ENTRIES], end[zs.EOCD_DIRECTORY_SIZE]
        cd_off = end[zs.EOCD_DIRECTORY_OFFSET]
        cd_end = eocd
        loc = eocd - ZIP64_LOCATOR.size
        z64 = loc - ZIP64_EOCD.size
        if (
            z64 >= 0
            and buf[loc : loc + 4] == ZIP64_LOCATOR.signature
            and buf[z64 : z64 + 4] == ZIP64_EOCD.signature
        ):
            fields = ZIP64_EOCD.struct.unpack_from(buf, z64)
            count, cd_size = fields[zs.Z64_ENTRIES], fields[zs.Z64_DIRECTORY_SIZE]
            cd_off = fields[zs.Z64_DIRECTORY_OFFSET]
            cd_end = z64
        start = cd_end - cd_size
        if start < 0 or buf[start : start + 4] != CENTRAL.signature:
            return None
        return start, start - cd_off, count

    def check_hidden_zip(self, kind: str) -> None:
        found = self.find_directory()
        if found is None:
            return
        start, shift, count = found
        if kind == "unknown":
            self.add(
                "zip.prepended_data",
                f"a zip archive of {count} members lies after "
                f"{shift} other bytes: torch takes the legacy path and fails, zip tools "
                "read the archive",
                offset=0,
            )
        else:
            self.add(
                "format.polyglot",
                f"the {kind} file also holds a zip archive of {count} "
                f"members (central directory at {start}): zip tools and scanners read "
                "that instead",
                offset=start,
            )

    def check_zip(self) -> None:
        if self.buf.rfind(EOCD.signature, max(0, self.size - EOCD.size - zs.U16_MAX)) < 0:
            self.add(
                "zip.eocd_missing",
                "no zip end-of-central-directory record: the file is "
                f"truncated or not a zip ({self.size} bytes)",
            )
            return
        try:
            z = ZipArchive(self.src)
        except PthError as exc:
            found = self.find_directory()
            if found is not None and found[1] > 0:
                self.add(
                    "zip.prepended_data",
                    f"the archive's offsets are {found[1]} bytes "
                    "short: data was put in front of it",
                    offset=0,
                )
            else:
                self.add("zip.directory", exc.message, offset=exc.offset)
            return
        if not z.entries:
            self.add("zip.directory", "the zip archive has no members")
            return
        recs = [self.scan_member(z, e) for e in z.entries]
        if self.zero_crc:
            n = len(self.zero_crc)
            self.add(
                "zip.crc_zero",
                f"{n} of {len(recs)} records have a zero CRC-32 (saved with "
                "compute_crc32=False or skip_data?): their integrity cannot be checked",
                record=self.zero_crc[0],
            )
        if self.data_skipped:
            n = len(self.data_skipped)
            self.add(
                "data.skipped",
                f"tensor data not read (data=False): the CRC-32 of {n} stored storage "
                f"record{'s' if n != 1 else ''} is not checked",
            )
        self.check_coverage(z, recs)
        folder = self.check_names(recs)
        if folder is None:
            return
        self.check_layout(recs, folder)

    def scan_member(self, z: ZipArchive, e: ZipEntry) -> Rec:
        rec = Rec(e)
        name, lho = e.name, e.header_offset
        try:
            local = z.local_header(e)
        except PthError as exc:
            self.add("zip.local_header", exc.message, record=name)
            return rec
        if local.name != name:
            self.add(
                "zip.header_mismatch",
                f"the local header names it {quoted(local.name)}",
                record=name,
                offset=lho,
            )
        if local.method != e.method:
            self.add(
                "zip.header_mismatch",
                f"compression method {local.method} in the local "
                f"header, {e.method} in the central directory",
                record=name,
                offset=lho,
            )
        if (local.flags ^ e.flags) & (zs.FLAG_ENCRYPTED | zs.FLAG_DESCRIPTOR):
            self.add(
                "zip.header_mismatch",
                f"flags 0x{local.flags:04x} in the local header, "
                f"0x{e.flags:04x} in the central directory",
                record=name,
                offset=lho,
            )
        if (e.flags | local.flags) & zs.FLAG_ENCRYPTED:
            self.add("zip.method", "encrypted record", record=name)
            return rec
        if e.method not in (STORED, DEFLATED):
            self.add(
                "zip.method",
                f"compression method {e.method} (torch reads only stored and deflated records)",
                record=name,
            )
        if e.method == STORED and e.csize != e.usize:
            self.add(
                "zip.stored_size",
                f"stored record of {e.csize} bytes that claims {e.usize} uncompressed",
                record=name,
            )
        data = local.data_offset
        if data + e.csize > self.size:
            self.add(
                "zip.local_header",
                f"its {e.csize} bytes at offset {data} run past the end "
                f"of the {self.size}-byte file",
                record=name,
                offset=lho,
            )
            return rec
        rec.data = data
        end = data + e.csize
        self.check_extra(local.extra, name, local.extra_offset)
        self.check_local_fields(
            e, local.crc, local.csize, local.usize, bool(local.flags & zs.FLAG_DESCRIPTOR)
        )
        if local.flags & zs.FLAG_DESCRIPTOR:
            end = self.check_descriptor(e, end)
        rec.end = end
        self.check_crc(z, rec)
        return rec

    def check_local_fields(
        self, e: ZipEntry, lcrc: int, lcs: int, lus: int, descriptor: bool
    ) -> None:
        """The local header's CRC and sizes against the central directory's.  With a data
        descriptor the local fields are zero (miniz: zero sizes even for zip64); anything
        else must agree."""
        if descriptor:
            agree = not (
                (lcrc and lcrc != e.crc) or (lcs and lcs != e.csize) or (lus and lus != e.usize)
            )
        else:
            agree = (lcrc, lcs, lus) == (e.crc, e.csize, e.usize)
        if not agree:
            self.add(
                "zip.header_mismatch",
                f"local header says crc {lcrc:08x}, sizes "
                f"{lcs}/{lus}; central directory crc {e.crc:08x}, sizes "
                f"{e.csize}/{e.usize}",
                record=e.name,
                offset=e.header_offset,
            )

    def check_extra(self, extra: bytes, name: str, at: int) -> None:
        """The local extra fields: well formed, and torch's alignment padding all 'Z'."""
        head = zs.EXTRA_HEADER.struct
        i = 0
        while i + head.size <= len(extra):
            tag, length = head.unpack_from(extra, i)
            body = extra[i + head.size : i + head.size + length]
            if len(body) < length:
                break
            if tag == zs.PADDING_TAG and body.strip(b"Z"):
                odd = len(body) - body.count(b"Z")
                self.add(
                    "zip.gap",
                    f"{odd} of the {length} bytes of alignment padding in the "
                    "local header are not 'Z' (hidden data?)",
                    record=name,
                    offset=at + i + head.size,
                )
            i += head.size + length
        if i != len(extra):
            self.add(
                "zip.header_mismatch",
                f"the local header's extra field is malformed at byte {i}",
                record=name,
                offset=at + i,
            )

    def check_descriptor(self, e: ZipEntry, at: int) -> int:
        buf = self.buf
        want = (e.crc, e.csize, e.usize)
        for form in zs.DESCRIPTORS:
            if at + form.size > self.size:
                continue
            vals = form.struct.unpack_from(buf, at)
            if form.signature is not None:
                if vals[0] != form.signature:
                    continue
                vals = vals[1:]
            if tuple(vals) == want:
                return at + form.size
        plain = zs.DESCRIPTOR32
        if at + plain.size <= self.size and buf[at : at + 4] == plain.signature:
            _, crc, cs, us = plain.struct.unpack_from(buf, at)
            self.add(
                "zip.header_mismatch",
                f"data descriptor says crc {crc:08x}, sizes "
                f"{cs}/{us}; central directory crc {e.crc:08x}, sizes {e.csize}/{e.usize}",
                record=e.name,
                offset=at,
            )
            return at + plain.size
        self.add(
            "zip.header_mismatch",
            "the local header announces a data descriptor but none "
            "matching the central directory follows the data",
            record=e.name,
            offset=at,
        )
        return at

    def check_crc(self, z: ZipArchive, rec: Rec) -> None:
        e = rec.entry
        if not self.data and e.method == STORED and is_tensor_record(e.name):
            self.data_skipped.append(e.name)
            return
        if e.method == STORED:
            crc = 0
            for chunk in self.chunks(rec.data, e.usize if e.csize == e.usize else e.csize):
                crc = zlib.crc32(chunk, crc)
        elif e.method == DEFLATED:
            if self.inflate_refused:
                return
            try:
                check_claim(e.csize, e.usize, e.name)
                z.charge(e)  # the reader's bound for the whole archive
            except PthError as exc:
                self.inflate_refused = exc.code == "zip.inflate_limit" and z.inflate_left < 0
                self.add(exc.code or "zip.bad_deflate", exc.message, record=e.name)
                return
            crc, _, err = self.inflate(rec.data, e.csize, e.usize, name=e.name)
            if err:
                self.add(err.code or "zip.bad_deflate", err.message, record=e.name)
                return
        else:
            return
        if crc == e.crc:
            return
        if e.crc == 0:
            self.zero_crc.append(e.name)
        else:
            self.add(
                "zip.crc_mismatch",
                f"CRC-32 of the data is {crc:08x}, the zip directory says {e.crc:08x}",
                record=e.name,
            )

    def check_coverage(self, z: ZipArchive, recs: list[Rec]) -> None:
        size = self.size
        spans: list[tuple[int, int, str]] = []
        for r in recs:
            if r.end >= 0:
                spans.append((r.entry.header_offset, r.end, f"member {quoted(r.entry.name)}"))
        spans.append((z.cd_offset, z.cd_offset + z.cd_size, "the central directory"))
        last = max(recs, key=lambda r: r.entry.central_offset).entry
        listed_end = last.central_offset + last.central_size
        if listed_end < z.cd_offset + z.cd_size:
            self.add(
                "zip.gap",
                f"{z.cd_offset + z.cd_size - listed_end} bytes at the end of the "
                "central directory belong to no listed entry (the entry count says "
                f"{len(recs)}; hidden entries?)",
                offset=listed_end,
            )
        eocd = z.eocd_offset
        clen = z.end_record[zs.EOCD_COMMENT_LENGTH]
        eocd_end = eocd + EOCD.size + clen
        if eocd_end > size:
            self.add(
                "zip.directory",
                f"the archive comment of {clen} bytes runs past the end of the file",
                offset=eocd,
            )
            eocd_end = size
        elif clen:
            self.add("zip.comment", f"archive comment of {clen} bytes", offset=eocd + EOCD.size)
        spans.append((eocd, eocd_end, "the end-of-central-directory record"))
        spans.extend(self.zip64_spans(z))
        self.check_spans(sorted(spans), eocd_end)

    def zip64_spans(self, z: ZipArchive) -> list[tuple[int, int, str]]:
        """The zip64 locator and end record as spans, and their agreement with the end record
        (a saturated field defers to the zip64 record)."""
        buf, size, eocd = self.buf, self.size, z.eocd_offset
        loc = eocd - ZIP64_LOCATOR.size
        if loc < 0 or buf[loc : loc + 4] != ZIP64_LOCATOR.signature:
            return []
        spans = [(loc, eocd, "the zip64 locator")]
        z64 = ZIP64_LOCATOR.struct.unpack_from(buf, loc)[zs.LOC_ZIP64_OFFSET]
        if z64 + ZIP64_EOCD.size > size or buf[z64 : z64 + 4] != ZIP64_EOCD.signature:
            return spans
        big = ZIP64_EOCD.struct.unpack_from(buf, z64)
        rest = big[zs.Z64_RECORD_SIZE]
        spans.append((z64, min(size, z64 + zs.Z64_RECORD_HEAD + rest), "the zip64 directory end"))
        small = z.end_record
        for what, field, wide, full in (
            ("disk number", zs.EOCD_DISK, None, zs.U16_MAX),
            ("directory's disk number", zs.EOCD_DIRECTORY_DISK, None, zs.U16_MAX),
            ("entries on this disk", zs.EOCD_DISK_ENTRIES, zs.Z64_DISK_ENTRIES, zs.U16_MAX),
            ("entries", zs.EOCD_ENTRIES, zs.Z64_ENTRIES, zs.U16_MAX),
            ("directory size", zs.EOCD_DIRECTORY_SIZE, zs.Z64_DIRECTORY_SIZE, U32_MAX),
            ("directory offset", zs.EOCD_DIRECTORY_OFFSET, zs.Z64_DIRECTORY_OFFSET, U32_MAX),
        ):
            value = small[field]
            other = 0 if wide is None else big[wide]
            if value != full and value != other:
                self.add(
                    "zip.header_mismatch",
                    f"the end-of-central-directory record "
                    f"says {value} for the {what}, its zip64 version {other}",
                    offset=eocd,
                )
        return spans

    def check_spans(self, spans: list[tuple[int, int, str]], eocd_end: int) -> None:
        """Overlaps and gaps between the sorted spans of the archive's parts."""
        buf, size = self.buf, self.size
        cursor, prev = 0, "the start of the file"
        for lo, hi, what in spans:
            if lo < cursor:
                self.add(
                    "zip.overlap",
                    f"{what} (bytes {lo}..{hi}) overlaps {prev} (ends at {cursor})",
                    offset=lo,
                )
            elif lo > cursor:
                hint = (
                    " (an unlisted local header)"
                    if buf[cursor : cursor + 4] == zs.LOCAL.signature
                    else ""
                )
                self.add(
                    "zip.gap",
                    f"{lo - cursor} bytes between {prev} and {what} belong to no member{hint}",
                    offset=cursor,
                )
            if hi > cursor:
                cursor, prev = hi, what
        if eocd_end < size:
            self.add(
                "zip.trailing_data",
                f"{size - eocd_end} bytes after the end of the archive",
                offset=eocd_end,
            )

    def check_names(self, recs: list[Rec]) -> str | None:
        first = recs[0].entry.name
        folder = first.split("/", 1)[0] if "/" in first else None
        if folder is None:
            self.add(
                "zip.outside_folder",
                f"the first member {first!r} is not inside a folder: torch refuses the archive",
                record=first,
            )
        elif not _FOLDER.match(folder) or not folder.isascii():
            self.add(
                "zip.archive_name",
                f"archive folder {quoted(folder)}: torch.save writes the file stem (ASCII) or "
                "'archive'",
                record=first,
            )
        seen: dict[str, Rec] = {}
        folded: dict[str, Rec] = {}
        for r in recs:
            name = r.entry.name
            head, sep, rel = name.partition("/")
            if folder is not None:
                if head != folder or not sep:
                    self.add(
                        "zip.outside_folder",
                        f"{quoted(name)} is outside the archive folder "
                        f"{quoted(folder + '/')}: torch refuses the archive",
                        record=name,
                    )
                else:
                    r.rel = rel
            parts = name.split("/")
            if (
                name.startswith("/")
                or ".." in parts
                or "\\" in name
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
                or "" in parts[1:-1]
            ):
                self.add(
                    "zip.unsafe_name",
                    f"member name {quoted(name)} could escape an extraction folder",
                    record=name,
                )
            if name in seen:
                self.add(
                    "zip.duplicate_name",
                    f"{quoted(name)} occurs twice (members {seen[name].entry.index} and "
                    f"{r.entry.index})",
                    record=name,
                )
            else:
                seen[name] = r
                other = folded.setdefault(fold_case(name), r)
                if other is not r:
                    self.add(
                        "zip.case_collision",
                        f"{quoted(name)} and {quoted(other.entry.name)} differ only "
                        "in case: torch's lookup may read either",
                        record=name,
                    )
        return folder
