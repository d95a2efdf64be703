"""torch's record layout inside a zip archive: the required records, their values, the
object pickle and its storages, compression and alignment of storage records."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..formats.torchzip import MAX_VERSION, fold_case
from ..formats.zip.reader import STORED
from ..formats.zip.structs import DESCRIPTOR32, DESCRIPTOR64, U32_MAX
from ..formats.zip.writer import data_offset as miniz_data_offset
from ..model.storage import StorageInfo
from ..pickle.scan import scan_pickle
from ..text import NAME_LIMIT, escape, quoted, short_repr
from .audit import Audit, Note
from .base import Rec, count_text, short
from .pickles import PickleChecks


class LayoutChecks(PickleChecks):
    """The records of torch's layout in an archive folder."""

    def check_layout(self, recs: list[Rec], folder: str) -> None:
        """torch's record layout inside the archive folder: metadata records, the object
        pickle(s) and their storages, records torch does not know, packing of the data."""
        exact, find = self.record_finder(recs, folder)
        used: set[str] = set()
        torchscript = self.script = find("constants.pkl") is not None
        if torchscript:
            self.format = "torchscript"
            self.add(
                "format.torchscript",
                "the archive has a constants.pkl record: torch.load "
                "treats it as a TorchScript program (torch.jit.load), not a checkpoint",
                record=f"{folder}/constants.pkl",
            )
        big, alignment, calc = self.layout_metadata(find, exact, used, folder)
        # the object pickle and its storages
        pkl = find("data.pkl")
        audit: Audit | None = None
        if pkl is None:
            self.add("record.missing", f"record {escape(folder, NAME_LIMIT)}/data.pkl is missing")
        else:
            used.add(pkl.entry.name)
            audit = self.audit_zip_pickle(pkl, "data", find, used, big)
        if torchscript:
            for name in ("constants.pkl", "traced_inputs.pkl"):
                other = find(name)
                if other is not None:
                    used.add(other.entry.name)
                    self.audit_zip_pickle(other, name[: -len(".pkl")], find, used, big)
        self.check_other_records(recs, used, audit, torchscript)
        self.check_packing(recs, alignment, torchscript)
        if audit is not None and calc:
            self.check_computed_offsets(audit, find, folder, alignment)

    def record_finder(
        self, recs: list[Rec], folder: str
    ) -> tuple[dict[str, Rec], Callable[[str], Rec | None]]:
        """The records by exact name, and a finder that also matches names as torch does
        (ignoring case), reporting each such match once."""
        exact: dict[str, Rec] = {}
        folded: dict[str, Rec] = {}
        for r in recs:
            if r.rel is not None:
                exact.setdefault(r.rel, r)
                folded.setdefault(fold_case(r.rel), r)
        warned: set[str] = set()

        def find(rel: str) -> Rec | None:
            r = exact.get(rel)
            if r is None:
                r = folded.get(fold_case(rel))
                if r is not None and rel not in warned:
                    warned.add(rel)
                    self.add(
                        "record.case_mismatch",
                        f"record {escape(folder, NAME_LIMIT)}/{escape(rel)} is found only as "
                        f"{quoted(r.entry.name)} (torch ignores case, other readers do not)",
                        record=r.entry.name,
                    )
            return r

        return exact, find

    def layout_metadata(
        self,
        find: Callable[[str], Rec | None],
        exact: dict[str, Rec],
        used: set[str],
        folder: str,
    ) -> tuple[bool, int, bool]:
        """version, byteorder, .storage_alignment, .format_version: (big-endian, alignment,
        whether torch computes the data offsets)."""
        # version
        vrec = find(".data/version") or find("version")
        if vrec is None:
            self.add("record.missing", f"record {escape(folder, NAME_LIMIT)}/version is missing")
        else:
            used.add(vrec.entry.name)
            self.check_version(vrec)
        # byteorder
        big = False
        brec = find("byteorder")
        if brec is None:
            self.add("record.no_byteorder", "no byteorder record: little-endian is assumed")
        else:
            used.add(brec.entry.name)
            raw = self.record_bytes(brec, 16)
            if raw is not None and raw not in (b"little", b"big"):
                self.add(
                    "record.byteorder",
                    f"byteorder record is {raw!r}, not b'little' or b'big'",
                    record=brec.entry.name,
                )
            big = raw == b"big"
        # alignment and format version
        alignment = 64
        arec = find(".storage_alignment")
        if arec is not None:
            used.add(arec.entry.name)
            raw = self.record_bytes(arec, 32)
            text = (raw or b"").decode("ascii", "replace").strip()
            if not text.isdigit() or int(text) <= 0:
                self.add(
                    "record.storage_alignment",
                    f".storage_alignment is {raw!r}, not a positive integer",
                    record=arec.entry.name,
                )
            else:
                alignment = int(text)
        frec = find(".format_version")
        calc = False
        if frec is not None:
            used.add(frec.entry.name)
            calc = (self.record_bytes(frec, 32) or b"") >= b"1"
        for rel in (".data/serialization_id", ".data/version", "version"):
            found = exact.get(rel)
            if found is not None:
                used.add(found.entry.name)
        return big, alignment, calc

    def check_other_records(
        self, recs: list[Rec], used: set[str], audit: Audit | None, torchscript: bool
    ) -> None:
        """Records no part of torch's layout used: extra pickles, unreferenced data."""
        data_prefix = "data/"
        for r in recs:
            if r.entry.name in used or r.rel is None:
                continue
            name = r.entry.name
            pickled = r.rel.endswith(".pkl") or self.looks_pickled(r)
            if pickled:
                self.scan_other_pickle(r, report_extra=not torchscript)
            if torchscript:
                continue
            if r.rel.startswith(data_prefix) and not pickled:
                if audit is not None and audit.refused_storage:
                    continue  # a storage reference was refused: already reported
                self.add(
                    "storage.unreferenced",
                    f"data record {quoted(name)} is not used by any storage reference",
                    record=name,
                )
            elif not pickled:
                self.add(
                    "record.extra",
                    f"record {quoted(name)} is not part of torch's layout",
                    record=name,
                )

    def check_packing(self, recs: list[Rec], alignment: int, torchscript: bool) -> None:
        """Compression and alignment of the storage records."""
        data_prefix = "data/"
        unaligned: list[Rec] = []
        packed: list[Rec] = []
        packed_meta: list[Rec] = []
        for r in recs:
            if r.rel is None or r.data < 0:
                continue
            is_data = r.rel.startswith(data_prefix)
            if r.entry.method != STORED:
                if is_data:
                    packed.append(r)
                elif not torchscript:
                    packed_meta.append(r)
            elif is_data and r.entry.usize and r.data % alignment:
                unaligned.append(r)
        if packed:
            self.add(
                "zip.compressed_data",
                f"{count_text(packed, 'storage record')} compressed "
                "(not STORED): torch.load(mmap=True) returns garbage for "
                f"{'them' if len(packed) > 1 else 'it'}",
                record=packed[0].entry.name,
            )
        if packed_meta:
            self.add(
                "zip.compressed",
                f"{count_text(packed_meta, 'record')} compressed (not STORED)",
                record=packed_meta[0].entry.name,
            )
        if unaligned:
            r = unaligned[0]
            self.add(
                "zip.unaligned",
                f"{count_text(unaligned, 'storage record')} not aligned: "
                f"data at offset {r.data} is not a multiple of {alignment}",
                record=r.entry.name,
            )

    def check_version(self, rec: Rec) -> None:
        raw = self.record_bytes(rec, 32)
        if raw is None:
            return
        text = raw.decode("ascii", "replace")
        body = text.lstrip(" \t\n\r\f\v")
        digits = body[: len(body) - len(body.lstrip("0123456789"))]
        if not digits:
            self.add(
                "record.version", f"version record {raw!r} is not a number", record=rec.entry.name
            )
            return
        value = int(digits)
        if not 1 <= value <= MAX_VERSION:
            self.add(
                "record.version",
                f"version {value} is outside the supported 1..{MAX_VERSION}",
                record=rec.entry.name,
            )
            return
        if not re.fullmatch(rb"\d+\n?", raw):
            self.add(
                "record.version_text",
                f"version record {raw!r}: torch reads it as {value}",
                record=rec.entry.name,
            )
        elif value != 3 and self.format != "torchscript":
            self.add(
                "record.version_value",
                f"version {value} (torch.save writes 3)",
                record=rec.entry.name,
            )

    def audit_zip_pickle(
        self, pkl: Rec, folder: str, find: Callable[[str], Rec | None], used: set[str], big: bool
    ) -> Audit | None:
        """Scan and audit an object pickle whose storages are the records ``folder/<key>``."""
        where = self.pickle_source(pkl)
        if where is None:
            return None
        data, start, end = where
        record = pkl.entry.name
        scan = scan_pickle(data, start, end)
        if scan.end is not None and scan.end < end:
            self.add(
                "pickle.trailing_data",
                f"{end - scan.end} bytes after the STOP opcode",
                record=record,
                offset=scan.end - start,
            )

        def locate(info: StorageInfo, at: int) -> list[Note]:
            r = find(f"{folder}/{info.key}")
            if r is None:
                return [
                    Note(
                        "storage.missing_record",
                        f"storage {short_repr(info.key)} has no record "
                        f"{escape(folder, NAME_LIMIT)}/{escape(info.key)}",
                        at,
                    )
                ]
            used.add(r.entry.name)
            info.record = r.entry.name
            if r.entry.usize != info.nbytes:
                return [
                    Note(
                        "storage.size_mismatch",
                        f"record holds {r.entry.usize} bytes but "
                        f"storage {short_repr(info.key)} needs {info.nbytes}",
                        at,
                        record=r.entry.name,
                        no_offset=True,
                    )
                ]
            return []

        audit = Audit(
            legacy=False,
            big_endian=big,
            strict=self.strict,
            script=self.script,
            locate=locate,
            file_size=self.size,
        )
        paths = self.run_audit(audit, data, start, end, record, base=start)
        main = folder == "data"
        self.report_scan(scan, record, start, audit.refused, main=main, paths=paths)
        keys = audit.order
        if main and keys and keys != [str(i) for i in range(len(keys))]:
            self.add(
                "storage.key",
                f"storage keys {short(keys[:8])} are not 0..{len(keys) - 1} in order of first use",
                record=record,
            )
        return audit

    def check_computed_offsets(
        self, audit: Audit, find: Callable[[str], Rec | None], folder: str, alignment: int
    ) -> None:
        """torch's ``calculate_storage_offsets``: offsets computed from miniz's layout."""
        cursor: int | None = None
        for key in audit.order:
            r = find(f"data/{key}")
            nbytes = audit.decl[key].info.nbytes
            if r is None or r.data < 0:
                return
            if cursor is None:
                if key != "0":
                    self.add(
                        "record.format_version",
                        f"the first storage loaded is {short_repr(key)}, "
                        "not '0': torch's offset calculation asserts",
                        record=r.entry.name,
                    )
                    return
                expected, lho = r.data, r.entry.header_offset
            else:
                name_len = len(f"{folder}/data/{key}".encode())
                expected = miniz_data_offset(cursor, name_len, nbytes, alignment)
                lho = cursor
            if expected != r.data:
                self.add(
                    "record.format_version",
                    f"torch would compute its data offset as "
                    f"{expected}, but the data starts at {r.data}",
                    record=r.entry.name,
                )
                return
            cursor = expected + nbytes
            if nbytes:
                descriptor = DESCRIPTOR64 if lho >= U32_MAX or nbytes >= U32_MAX else DESCRIPTOR32
                cursor += descriptor.size
