"""The legacy format section by section (magic, protocol, sys_info, object pickle, storage
keys, storages) and the tar format's pickles, past the first error."""

from __future__ import annotations

import struct
from typing import Any

from ..errors import PthError
from ..formats.legacy import MAGIC_NUMBER, PROTOCOL_VERSION
from ..model.device import location_mapper
from ..model.storage import StorageInfo, StorageTable
from ..pickle.machine import Unpickler
from ..pickle.scan import scan_pickle
from ..text import short_repr
from ..torch.handlers import TorchHandlers
from .audit import Audit, Note
from .base import short, text_of
from .zip import ZipChecks


class LegacyChecks(ZipChecks):
    """The legacy and tar formats."""

    def legacy_value(self, pos: int, what: str) -> tuple[Any, int | None]:
        """Scan and evaluate one header pickle at ``pos``: ``(value, end)``."""
        scan = scan_pickle(self.buf, pos, self.size)
        self.report_scan(scan, what, 0, main=False)
        if scan.end is None:
            return None, None
        if scan.globals or scan.extensions or scan.unresolved:
            return None, scan.end
        handlers = TorchHandlers(
            StorageTable(location_mapper(None), lambda info: None), eager=False, mmap=False
        )
        try:
            return Unpickler(
                self.buf, handlers, start=pos, end=scan.end, record=what
            ).load(), scan.end
        except PthError as exc:
            self.add("pickle.malformed", exc.message, record=what, offset=exc.offset)
            return None, scan.end

    def check_legacy(self) -> None:
        """The legacy format's sections, in order: header, object pickle, storages."""
        pos = self.legacy_header()
        if pos is None:
            return
        self.add(
            "legacy.no_checksum",
            "the legacy format stores no checksums: damaged tensor bytes cannot be detected",
            record="legacy storages",
        )
        audit, end = self.legacy_objects(pos)
        if end is not None:
            self.legacy_storages(audit, end)

    def legacy_header(self) -> int | None:
        """Magic number, protocol version and sys_info; the offset after them."""
        magic, pos = self.legacy_value(0, "legacy magic number")
        if pos is None:
            return None
        if magic != MAGIC_NUMBER:
            self.format = "pickle"
            self.add(
                "legacy.header",
                f"a plain pickle of {short(magic)}, not a torch "
                "checkpoint: the legacy magic number is missing",
                record="legacy magic number",
                offset=0,
            )
            return None
        proto, nxt = self.legacy_value(pos, "legacy protocol version")
        if nxt is None:
            return None
        if proto != PROTOCOL_VERSION:
            self.add(
                "legacy.header",
                f"legacy protocol version {short(proto)}, expected {PROTOCOL_VERSION}",
                record="legacy protocol version",
                offset=pos,
            )
        pos = nxt
        sys_info, nxt = self.legacy_value(pos, "legacy sys_info")
        if nxt is not None:
            self.check_sys_info(sys_info, pos)
        return nxt

    def check_sys_info(self, sys_info: Any, pos: int) -> None:
        if not isinstance(sys_info, dict):
            self.add(
                "legacy.header",
                f"legacy sys_info is a {type(sys_info).__name__}, not a dict",
                record="legacy sys_info",
                offset=pos,
            )
            return
        odd = []
        if sys_info.get("little_endian") is not True:
            odd.append(
                f"little_endian={sys_info.get('little_endian')!r} (the data is "
                "little-endian regardless)"
            )
        version = sys_info.get("protocol_version")
        if type(version) is not int or version != PROTOCOL_VERSION:  # (no == on arrays)
            odd.append(f"protocol_version={short(sys_info.get('protocol_version'))}")
        sizes = sys_info.get("type_sizes")
        plain = isinstance(sizes, dict) and all(type(v) is int for v in sizes.values())
        if not plain or sizes not in (
            {"short": 2, "int": 4, "long": 4},
            {"short": 2, "int": 4, "long": 8},
        ):
            odd.append(f"type_sizes={short(sizes)}")
        if odd:
            self.add(
                "legacy.sys_info",
                "legacy sys_info: " + "; ".join(odd),
                record="legacy sys_info",
                offset=pos,
            )

    def legacy_objects(self, pos: int) -> tuple[Audit, int | None]:
        """Scan and audit the object pickle at ``pos``; the audit and where the pickle ends."""
        main = "legacy object pickle"
        scan = scan_pickle(self.buf, pos, self.size)
        budget = [self.size - pos]

        def locate(info: StorageInfo, at: int) -> list[Note]:
            info.record = f"storage {info.key}"
            budget[0] -= info.nbytes
            if budget[0] < 0:
                return [
                    Note(
                        "file.truncated",
                        f"storage {short_repr(info.key)} of {info.nbytes} bytes: "
                        "the storages declared so far need more than the file holds",
                        at,
                    )
                ]
            return []

        audit = Audit(
            legacy=True,
            big_endian=False,
            strict=self.strict,
            script=False,
            locate=locate,
            file_size=self.size,
        )
        paths = self.run_audit(audit, self.buf, pos, scan.end or self.size, main, base=0)
        self.report_scan(scan, main, 0, audit.refused, paths=paths)
        return audit, scan.end

    def legacy_storages(self, audit: Audit, pos: int) -> None:
        """The storage key list at ``pos`` and the storage sections after it."""
        keys, nxt = self.legacy_value(pos, "legacy storage keys")
        if nxt is None:
            return
        if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
            self.add(
                "legacy.keys",
                f"the storage key list is {short(keys)}, not a list of strings",
                record="legacy storage keys",
                offset=pos,
            )
            return
        at_keys = pos
        end: int | None = nxt
        listed: set[str] = set()
        for raw in keys:
            key = text_of(raw)
            if key in listed:
                self.add(
                    "legacy.keys",
                    f"storage {short_repr(key)} is listed twice",
                    record="legacy storage keys",
                    offset=at_keys,
                )
                return
            listed.add(key)
            assert end is not None
            end = self.legacy_storage(audit, key, end, at_keys)
            if end is None:
                return
        for key in audit.decl:
            if key not in listed:
                self.add(
                    "legacy.keys",
                    f"storage {short_repr(key)} is used but not in the key list (torch "
                    "leaves it uninitialised)",
                    record="legacy storage keys",
                    offset=at_keys,
                )
        if end is not None and end < self.size:
            self.add(
                "legacy.trailing_data",
                f"{self.size - end} bytes after the last storage",
                offset=end,
            )

    def legacy_storage(self, audit: Audit, key: str, pos: int, at_keys: int) -> int | None:
        """One storage section (element count, then data) at ``pos``; the offset after it,
        or ``None`` where the file cannot be followed further."""
        d = audit.decl.get(key)
        if d is None:
            self.add(
                "legacy.keys",
                f"storage {short_repr(key)} is listed but no object uses it "
                "(torch: AssertionError)",
                record="legacy storage keys",
                offset=at_keys,
            )
        unit = 1 if d is None else audit.storages.count_unit(key)
        record = f"storage {key}"
        if pos + 8 > self.size:
            self.add(
                "file.truncated",
                f"the file ends before the element count of storage {short_repr(key)}",
                record=record,
                offset=pos,
            )
            return None
        count: int = struct.unpack_from("<q", self.buf, pos)[0]
        if count < 0:
            self.add(
                "storage.size_mismatch",
                f"storage {short_repr(key)} has a negative element count {count}",
                record=record,
                offset=pos,
            )
            return None
        nbytes = count * unit
        if d is not None and nbytes != d.info.nbytes:
            self.add(
                "storage.size_mismatch",
                f"storage {short_repr(key)} holds {count} elements in the "
                f"file but {d.info.nbytes} bytes are declared",
                record=record,
                offset=pos,
            )
        if pos + 8 + nbytes > self.size:
            self.add(
                "file.truncated",
                f"storage {short_repr(key)} of {nbytes} bytes at offset "
                f"{pos + 8} runs past the end of the {self.size}-byte file",
                record=record,
                offset=pos + 8,
            )
            return None
        return pos + 8 + nbytes

    def check_tar(self) -> None:
        self.add(
            "format.tar",
            "the pre-0.4 tar format: torch.load refuses it with "
            "weights_only=True and runs several pickles with weights_only=False",
            offset=0,
        )
        try:
            from ..formats.tar import tar_members

            members = tar_members(self.src)
        except ImportError:  # pragma: no cover - tar support not installed
            return
        except PthError as exc:
            self.add(
                "file.truncated" if "past the end" in exc.message else "load.failed",
                exc.message,
                record=exc.record,
                offset=exc.offset,
            )
            return
        for m in members:
            if m.name in ("pickle", "sys_info") and m.regular:
                scan = scan_pickle(self.buf, m.offset, m.end)
                self.report_scan(scan, m.name, 0, main=False)
