"""Pickles inside a file: the static scan's findings and the lenient audit's notes turned
into problems, and what only a validator checks about them (storage bytes no tensor views)."""

from __future__ import annotations

from typing import Any

from ..errors import LimitError, PthError, UnsafePickleError
from ..formats.zip.reader import PICKLE_RATIO, STORED
from ..model.storage import StorageInfo
from ..model.tensor import TensorRef
from ..model.tree import walk
from ..pickle.scan import PickleScan, scan_pickle
from ..text import short_repr
from .audit import Audit, Poison, allowed, gadget
from .base import Rec, ValidatorBase


def _noted(value: Any) -> bool:
    """The values whose key paths the audit's notes need (only theirs are built)."""
    return isinstance(value, (Poison, TensorRef, StorageInfo))


class PickleChecks(ValidatorBase):
    """Report a pickle's scan and audit."""

    def looks_pickled(self, r: Rec) -> bool:
        head = self.record_bytes(r, 2)
        return head is not None and len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5

    def pickle_source(self, r: Rec) -> tuple[Any, int, int] | None:
        """``(data, start, end)`` of a record's bytes: the mapped file itself when stored."""
        e = r.entry
        if r.data < 0:
            return None
        if e.method == STORED:
            return self.buf, r.data, r.data + e.usize
        if e.usize > PICKLE_RATIO * e.csize + (1 << 20):
            return None  # a decompression bomb: the reader's LimitError reports it
        raw = self.record_bytes(r)
        return None if raw is None else (raw, 0, len(raw))

    def report_scan(
        self,
        scan: PickleScan,
        record: str,
        base: int,
        refused: dict[int, tuple[str, str]] | None = None,
        main: bool = True,
        paths: dict[int, str] | None = None,
    ) -> None:
        """Problems of a static scan; ``base`` turns data positions into reported offsets."""
        found: dict[int, tuple[str, str, str]] = {p: (m, n, op) for p, m, n, op in scan.globals}
        for p, (m, n) in (refused or {}).items():
            found.setdefault(p, (m, n, "STACK_GLOBAL"))
        for pos in scan.unresolved:
            if pos not in found:
                self.add(
                    "pickle.global",
                    "STACK_GLOBAL whose module and name are computed, not literal strings",
                    record=record,
                    offset=pos - base,
                )
        for pos in sorted(found):
            module, name, op = found[pos]
            if self.script and isinstance(module, str) and module.split(".")[0] == "__torch__":
                continue  # the archive's own TorchScript classes
            if (
                not isinstance(module, str)
                or not isinstance(name, str)
                or not allowed(module, name)
            ):
                self.static_global_seen = True
                danger = " (a known code-execution gadget)" if gadget(str(module)) else ""
                self.add(
                    "pickle.global",
                    f"{op} {module}.{name} is not in the allowlist{danger}",
                    record=record,
                    offset=pos - base,
                    key_path=(paths or {}).get(pos) or None,
                )
        for pos, code in scan.extensions:
            self.static_global_seen = True
            self.add(
                "pickle.extension",
                f"EXT opcode for copyreg extension code {code}",
                record=record,
                offset=pos - base,
            )
        if scan.error is not None:
            pos, msg = scan.error
            self.add("pickle.malformed", msg, record=record, offset=pos - base)
        if not main:
            return
        if scan.not_weights_only:
            ops = sorted(scan.not_weights_only, key=scan.not_weights_only.__getitem__)
            first = scan.not_weights_only[ops[0]]
            self.add(
                "pickle.weights_only",
                f"opcode{'s' if len(ops) > 1 else ''} "
                f"{', '.join(ops)} (first at offset {first - base}): "
                "torch.load(weights_only=True) fails with 'Unsupported operand'",
                record=record,
                offset=first - base,
            )
        if scan.proto != 2 and scan.error is None:
            what = "no PROTO opcode" if scan.proto is None else f"protocol {scan.proto}"
            self.add(
                "pickle.protocol", f"{what} (torch.save writes protocol 2)", record=record, offset=0
            )

    def scan_other_pickle(self, r: Rec, report_extra: bool) -> None:
        where = self.pickle_source(r)
        if where is None:
            return
        data, start, end = where
        scan = scan_pickle(data, start, end)
        if report_extra:
            self.add(
                "record.extra_pickle",
                "a pickle that torch.load never reads; other tools may load it",
                record=r.entry.name,
            )
        self.report_scan(scan, r.entry.name, start, main=False)

    def run_audit(
        self, audit: Audit, data: Any, start: int, end: int, record: str, base: int
    ) -> dict[int, str]:
        """Run the lenient VM with ``audit`` and turn its notes into problems; returns the
        key paths of the objects that failed, by the position of the failing opcode."""
        u = audit.run(data, start, end, record)
        root: Any = None
        failed: PthError | None = None
        try:
            root = u.load()
        except PthError as exc:
            failed = exc
        paths: dict[int, str] = {}
        users: dict[str, str] = {}
        by_info: dict[int, str] = {}
        bare: set[str] = set()
        if failed is None and (audit.noted or audit.refused or self.strict):
            for path, value in walk(root, leaves=(TensorRef, StorageInfo), want=_noted):
                if isinstance(value, Poison):
                    paths.setdefault(value.op_pos, path)
                elif isinstance(value, TensorRef):
                    users.setdefault(value.storage_key, path)
                    by_info.setdefault(id(value.storage), path)
                elif isinstance(value, StorageInfo):
                    bare.add(value.key)
                    by_info.setdefault(id(value), path)
        for n in audit.notes:
            key_path = paths.get(n.pos) if n.pos is not None else None
            if key_path is None and n.info is not None:
                key_path = by_info.get(id(n.info))
            if key_path is None and n.storage is not None:
                key_path = users.get(n.storage)
            self.add(
                n.code,
                n.message,
                record=n.record or record,
                offset=None if n.no_offset or n.pos is None else n.pos - base,
                key_path=key_path or None,
            )
        if failed is not None and not isinstance(failed, UnsafePickleError):
            offset = failed.offset if failed.offset is not None else u.op_pos
            code = "pickle.limit" if isinstance(failed, LimitError) else "pickle.malformed"
            self.add(code, failed.message, record=record, offset=offset - base)
        if self.strict and failed is None:
            self.check_unviewed(audit, bare, users, record)
        if failed is None:
            self.audited.append((audit, root))
        return paths

    def check_unviewed(
        self, audit: Audit, bare: set[str], users: dict[str, str], record: str
    ) -> None:
        for key, d in audit.decl.items():
            if key in bare or key in audit.partial or not d.info.nbytes:
                continue
            spans = sorted(audit.extents.get(key, []))
            covered, cursor = 0, 0
            for lo, hi in spans:
                lo = max(lo, cursor)
                if hi > lo:
                    covered += hi - lo
                    cursor = hi
            if covered < d.info.nbytes:
                self.add(
                    "storage.unviewed",
                    f"{d.info.nbytes - covered} of the {d.info.nbytes} "
                    f"bytes of storage {short_repr(key)} are not viewed by any tensor",
                    record=d.info.record or record,
                    key_path=users.get(key) or None,
                )
