"""Validation: every problem of a checkpoint file, located, without running anything from it.

:func:`validate` never raises on bad content (only on I/O errors such as a missing file): it
returns a :class:`Report` whose :class:`Problem` s carry a stable code from :data:`CHECKS`, a
severity, a message and a location (record name, byte offset, key path).

It combines two views of the file:

- **independent static checks** that go on past the first error: the zip structure (every
  local header against the central directory and the data descriptor, CRC-32 of every record
  computed in chunks, overlaps, gaps, names), a scan of every pickle opcode that lists each
  global outside :data:`~pthfmt.torch.handlers.ALLOWLIST` with its offset, and a *lenient*
  run of pthfmt's pickle VM whose handlers record every storage declaration and tensor view
  instead of stopping at the first bad one (storage records, sizes, views, dtypes, devices);
- **the real reader** (:func:`pthfmt.open`): its first error becomes a ``load.*`` problem
  unless a static check already explains it.

Offsets: for a problem found in a zip member's pickle (``pickle.*``, ``storage.*``,
``tensor.*``, ``dtype.*``, ``device.*``) ``offset`` is the opcode's position inside that
pickle record; everywhere else (the zip structure, legacy and tar files, whose pickles are
sections of the file) it is a byte offset in the file.

Memory stays bounded: record data is read through the memory map in 1 MiB chunks and deflated
records are inflated chunk by chunk, never past their declared size.
"""

from __future__ import annotations

import gc
import math
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import CorruptError, FormatError, PthError, UnsafePickleError, UnsupportedError
from .formats.contract import Options
from .formats.legacy import MAGIC_NUMBER, PROTOCOL_VERSION
from .formats.torchzip import MAX_VERSION, fold_case
from .formats.zip.reader import (
    DEFLATED,
    PICKLE_RATIO,
    STORED,
    ZipArchive,
    ZipEntry,
    inflate,
)
from .formats.zip.writer import data_offset as miniz_data_offset
from .model.device import Device, location_mapper
from .model.dtypes import by_name
from .model.storage import StorageSlice, StorageTable, StorageType
from .model.tensor import StorageInfo, TensorRef, check_view
from .model.tree import walk
from .pickle.machine import Global, Unpickler, _Poison
from .pickle.opcodes import BY_CODE, OPCODES, read_arg
from .sharded import ShardedCheckpoint, find_index, is_index, shard_names
from .source import PathOrFile, Source
from .torch.allowlist import ALLOWLIST, MODULE_ALIASES
from .torch.handlers import TorchHandlers

__all__ = ["CHECKS", "Check", "Problem", "Report", "validate", "codes_markdown"]


# -- the table of problem codes ----------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One problem code: its severity, a title, and what torch 2.13 does with such a file.

    ``strict`` codes are checked only by ``validate(..., strict=True)``: torch accepts the
    file, but a careful publisher would not ship it.
    """

    code: str
    severity: str
    title: str
    torch: str
    strict: bool = False


def _c(code: str, severity: str, title: str, torch: str, strict: bool = False) -> Check:
    return Check(code, severity, title, torch, strict)


E, W = "error", "warning"

#: Every problem code: drives the checks, the JSON, ``pthfmt validate --codes`` and the docs.
CHECKS: Final[tuple[Check, ...]] = (
    # the file as a whole
    _c("file.empty", E, "the file is empty", "fails (EOFError)"),
    _c("file.unknown_format", E, "not a torch checkpoint (no zip, legacy or tar signature)",
       "fails"),
    _c("file.truncated", E, "data runs past the end of the file", "fails"),
    _c("format.torchscript", W, "a TorchScript archive (has constants.pkl), not a checkpoint",
       "torch.load hands it to torch.jit.load (weights_only=True refuses it)"),
    _c("format.tar", W, "the pre-0.4 tar format",
       "loads only with weights_only=False (CVE-2025-32434 path)"),
    _c("format.polyglot", W, "the file is also a valid archive of another kind",
       "reads one reading; zip/tar tools and scanners see another"),
    # zip structure
    _c("zip.eocd_missing", E, "no zip end-of-central-directory record (truncated file?)",
       "fails: failed finding central directory"),
    _c("zip.directory", E, "the central directory or zip64 records are damaged", "fails"),
    _c("zip.local_header", E, "a local header is missing, damaged or runs past the file",
       "fails reading that record"),
    _c("zip.header_mismatch", W,
       "a local header or data descriptor disagrees with the central directory",
       "uses the central directory; streaming zip readers use the local header"),
    _c("zip.crc_mismatch", E, "a record's CRC-32 does not match its data",
       "never checks CRCs: loads the damaged data silently"),
    _c("zip.crc_zero", W, "records carry a zero CRC-32, so their integrity cannot be checked",
       "accepts (written by compute_crc32=False or skip_data)"),
    _c("zip.bad_deflate", E,
       "a compressed record is corrupt or inflates to another size than declared",
       "fails, or allocates what the stream says (zip bomb)"),
    _c("zip.method", E, "a record uses encryption or a compression torch cannot read",
       "fails: unsupported method"),
    _c("zip.stored_size", E, "a stored record's compressed and uncompressed sizes differ",
       "reads the uncompressed size; other readers take the compressed one"),
    _c("zip.overlap", E, "two zip members (or a member and the directory) share bytes",
       "reads each member by its offset, unaware of the overlap"),
    _c("zip.gap", W, "bytes between zip members that belong to no listed member",
       "ignores them; they can hide an unlisted member or a payload"),
    _c("zip.trailing_data", W, "bytes after the end-of-central-directory record",
       "ignores them"),
    _c("zip.prepended_data", E, "a zip archive preceded by other bytes",
       "fails: the file does not start with PK, so torch takes the legacy path"),
    _c("zip.duplicate_name", W, "two members have the same name",
       "reads one copy, which one depends on the layout; Python's zipfile reads the last"),
    _c("zip.case_collision", W, "member names equal but for case",
       "looks records up case-insensitively: which one it reads is ambiguous"),
    _c("zip.outside_folder", E, "a member lies outside the archive folder",
       "fails: file in archive is not in a subdirectory"),
    _c("zip.unsafe_name", W, "a member name with '..', an absolute path, a backslash or a "
       "control character", "ignores it; extracting tools may write outside the target"),
    _c("zip.compressed_data", W, "a storage record is compressed (not STORED)",
       "reads it, but torch.load(mmap=True) silently returns garbage for it"),
    # records of torch's layout
    _c("record.missing", E, "a required record (data.pkl, version) is missing", "fails"),
    _c("record.case_mismatch", W, "a record is found only by a case-insensitive lookup",
       "reads it (miniz lookups ignore case); other readers do not find it"),
    _c("record.version", E, "the version record is not a number in 1..10",
       "fails: Couldn't parse the version / range error"),
    _c("record.version_text", W, "the version record is not plain digits",
       "parses the leading digits (std::stoull) and ignores the rest"),
    _c("record.byteorder", E, "the byteorder record is not exactly 'little' or 'big'",
       "fails: Unknown endianness type"),
    _c("record.big_endian_v3", W, "a big-endian file holds uint16/32/64, complex32 or bits16 "
       "tensors", "does not byte-swap _rebuild_tensor_v3 dtypes: wrong values"),
    _c("record.storage_alignment", E, ".storage_alignment is not a positive integer",
       "fails: invalid literal for int()"),
    _c("record.format_version", W, ".format_version is set but the storage offsets do not "
       "follow miniz's layout", "with calculate_storage_offsets or a meta map_location, "
       "reads the wrong bytes"),
    _c("record.extra_pickle", W, "a pickle record that torch.load never reads",
       "ignores it; other tools and scanners may load it"),
    # pickles
    _c("pickle.global", E, "the pickle names a global outside the allowlist",
       "weights_only=True refuses; weights_only=False imports and may run it"),
    _c("pickle.extension", E, "the pickle uses a copyreg extension code (EXT1/2/4)",
       "weights_only=True refuses; weights_only=False looks the code up in copyreg"),
    _c("pickle.malformed", E, "the pickle cannot be parsed", "fails"),
    _c("pickle.limit", E, "the pickle asks for more memory or work than its size justifies "
       "(memo amplification, hash flooding)", "has no limits: can exhaust memory or CPU"),
    _c("pickle.trailing_data", W, "bytes after the pickle's STOP opcode", "ignores them"),
    _c("pickle.weights_only", W, "an opcode torch's weights_only unpickler does not implement",
       "weights_only=True (the default) fails: Unsupported operand"),
    _c("pickle.persistent_id", E, "a persistent id that is not a storage reference of the "
       "right shape", "fails, or (module ids) imports a class"),
    # storages, tensors, dtypes, devices
    _c("storage.declaration", E, "a storage reference with an invalid class, key, size or "
       "location", "fails"),
    _c("storage.missing_record", E, "a storage has no data record",
       "fails: failed locating file data/<key>"),
    _c("storage.size_mismatch", E, "a storage's data size is not numel x itemsize",
       "fails: record size does not match expected size"),
    _c("storage.redeclared", W, "one storage key declared with two types, sizes or devices",
       "silently keeps the first declaration (can reinterpret the bytes)"),
    _c("storage.dtype_conflict", W, "tensors read one storage as different dtypes",
       "loads; torch.save never writes this"),
    _c("tensor.view", E, "a tensor view lies outside its storage or has invalid metadata",
       "fails: Trying to resize storage that is not resizable"),
    _c("tensor.metadata", E, "requires_grad or tensor metadata of the wrong type", "fails"),
    _c("dtype.invalid", E, "a dtype that is not a storable torch dtype", "fails"),
    _c("device.invalid", E, "a malformed device tag", "fails: Invalid device string"),
    _c("device.unknown", W, "a device tag torch cannot restore without map_location",
       "fails unless map_location remaps it; map_location='cpu' silently accepts anything"),
    # legacy format
    _c("legacy.header", E, "the legacy magic number, protocol or sys_info is wrong",
       "fails: Invalid magic number / Invalid protocol version"),
    _c("legacy.sys_info", W, "legacy sys_info says something torch ignores (big-endian, "
       "odd sizes)", "ignores sys_info: data is always read as little-endian"),
    _c("legacy.keys", E, "the legacy storage key list disagrees with the storages used",
       "fails (AssertionError), or leaves a storage uninitialised"),
    _c("legacy.v3_dtype", E, "a legacy-format file holds an UntypedStorage (v3 dtype)",
       "fails: UntypedStorage has no attribute 'dtype'"),
    _c("legacy.trailing_data", W, "bytes after the last legacy storage", "ignores them"),
    # sharded checkpoints (an index and its shards)
    _c("index.inconsistent", E, "a sharded checkpoint's index and its shards disagree "
       "(a missing shard, a key in two shards, a key the index does not list)",
       "transformers fails, or loads some weights from the wrong shard"),
    # the reader's verdict
    _c("load.failed", E, "pthfmt's reader refuses the file for a reason no other check names",
       "see the message"),
    _c("load.unsupported", W, "content pthfmt does not read (quantized, sparse, nested...), "
       "so it was only partly checked", "loads it"),
    _c("internal.error", E, "the validator itself failed (a pthfmt bug; please report it)",
       "-"),
    # --strict
    _c("zip.compressed", W, "a non-storage record is compressed", "reads it", True),
    _c("zip.unaligned", W, "storage data not aligned to .storage_alignment (64)",
       "reads it; mmap pointers are unaligned", True),
    _c("zip.comment", W, "the archive has a comment", "ignores it", True),
    _c("zip.archive_name", W, "an archive folder name torch.save never writes",
       "accepts any folder name", True),
    _c("record.extra", W, "a record torch.save never writes", "ignores it", True),
    _c("record.version_value", W, "version is not 3 (what torch.save writes)",
       "accepts 1..10", True),
    _c("record.no_byteorder", W, "no byteorder record",
       "assumes little-endian (torch < 2.1: native order)", True),
    _c("storage.unreferenced", W, "a data record that no storage reference names",
       "ignores it", True),
    _c("storage.key", W, "storage keys are not 0..N-1 as torch.save writes them",
       "accepts any key", True),
    _c("storage.unviewed", W, "storage bytes that no tensor views",
       "loads them (torch.save writes whole storages of small views)", True),
    _c("pickle.protocol", W, "the pickle protocol is not 2 (what torch.save writes)",
       "loads protocol 1..5 (weights_only=True only 2 and 3)", True),
)

CODES: Final[dict[str, Check]] = {c.code: c for c in CHECKS}
SEVERITIES: Final = ("error", "warning", "info")


def codes_markdown() -> str:
    """The problem-code table as Markdown (for the docs)."""
    lines = ["| code | severity | problem | what torch 2.13 does |", "|---|---|---|---|"]
    for c in CHECKS:
        sev = f"{c.severity} (--strict)" if c.strict else c.severity
        lines.append(f"| `{c.code}` | {sev} | {c.title} | {c.torch} |")
    return "\n".join(lines) + "\n"


# -- the report --------------------------------------------------------------------------------

@dataclass
class Problem:
    """One finding: a code of :data:`CHECKS`, its severity, a message and where it is:
    ``record`` (zip member or legacy section), ``offset`` (see the module docstring) and
    ``key_path`` (the object in the checkpoint, ``model_state_dict.fc1.weight``)."""

    code: str
    severity: str
    message: str
    record: str | None = None
    offset: int | None = None
    key_path: str | None = None

    def location(self) -> str:
        parts = []
        if self.record is not None:
            parts.append(self.record)
        if self.offset is not None:
            parts.append(f"@{self.offset}")
        where = " ".join(parts)
        if self.key_path is not None:
            where = f"{where} [{self.key_path}]" if where else f"[{self.key_path}]"
        return where

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "record": self.record, "offset": self.offset, "key_path": self.key_path}

    def __str__(self) -> str:
        where = self.location()
        return f"{self.severity} {self.code}: {self.message}" + (f" ({where})" if where else "")


@dataclass
class Report:
    """The result of :func:`validate`: ``ok`` when no problem is an error or a warning."""

    path: str | None
    format: str | None
    ok: bool
    problems: list[Problem] = field(default_factory=list)
    strict: bool = False
    #: The error pthfmt's reader raises for this file (``None`` when it opens).
    load_error: str | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        counts = Counter(p.severity for p in self.problems)
        return {"path": self.path, "format": self.format, "ok": self.ok, "strict": self.strict,
                "counts": {s: counts.get(s, 0) for s in SEVERITIES},
                "problems": [p.to_dict() for p in self.problems],
                "load_error": self.load_error}


# -- helpers -----------------------------------------------------------------------------------

CHUNK: Final = 1 << 20
MAX_PER_CODE: Final = 100           # problems listed per code and file; the rest are counted
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_U4 = struct.Struct("<I").unpack_from
_EOCD = struct.Struct("<4sHHHHIIH")
_U32 = 0xFFFFFFFF
_WEIGHTS_ONLY_OPS: Final = frozenset(
    "PROTO STOP MARK GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS TUPLE TUPLE1 "
    "TUPLE2 TUPLE3 NONE NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT "
    "BININT1 BININT2 BINFLOAT BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT "
    "LONG_BINPUT LONG1".split())
_STRING_OPS: Final = frozenset(["STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
                                "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"])
_GET_OPS: Final = frozenset(["GET", "BINGET", "LONG_BINGET"])
_PUT_OPS: Final = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
#: Modules whose globals are known code-execution gadgets (message only: all are refused).
_GADGETS: Final = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__",
                   "importlib", "runpy", "pty", "socket", "shutil", "pickle", "marshal",
                   "webbrowser", "code", "codeop", "ctypes", "multiprocessing", "operator",
                   "functools", "types", "pdb", "timeit", "torch.jit", "torch.hub",
                   "torch.serialization", "torch.utils", "torch._inductor", "numpy.testing")
_KNOWN_DEVICES: Final = frozenset(["cpu", "cuda", "mps", "meta", "hpu", "xpu", "mtia",
                                   "privateuseone", "xla", "ipu", "maia", "hip", "ve", "lazy",
                                   "vulkan", "mkldnn", "opengl", "opencl", "ideep", "fpga"])
_FOLDER = re.compile(r"^[^\x00-\x1f\x7f/\\.][^\x00-\x1f\x7f/\\]*$")
_UINT8 = by_name("uint8")


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - our own types always repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _count(recs: list[_Rec], what: str) -> str:
    """``"1 storage record is"`` / ``"3 storage records are (first shown)"``."""
    if len(recs) == 1:
        return f"{what} is"
    return f"{len(recs)} {what}s (the first shown) are"


def _text(value: Any) -> Any:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


# -- the static pickle scan ----------------------------------------------------------------------

@dataclass
class PickleScan:
    """What a pass over a pickle's opcodes found, without executing any of them."""

    globals: list[tuple[int, str, str, str]] = field(default_factory=list)  # pos, mod, name, op
    unresolved: list[int] = field(default_factory=list)    # STACK_GLOBALs of unknown operands
    extensions: list[tuple[int, int]] = field(default_factory=list)
    not_weights_only: dict[str, int] = field(default_factory=dict)  # opcode -> first offset
    proto: int | None = None
    end: int | None = None                                   # offset just after STOP
    error: tuple[int, str] | None = None


# What the scan does per opcode: skip a fixed argument, skip a length-prefixed one, or act.
_A_FIXED, _A_SIZED, _A_STR, _A_TEXT, _A_GET, _A_PUT, _A_MEMOIZE, _A_GLOBAL, _A_STACK_GLOBAL, \
    _A_EXT, _A_PROTO, _A_STOP, _A_NEUTRAL = range(13)
_SIZED_PREFIX: Final = {"uint1": (1, "<B"), "int4": (4, "<i"), "uint4": (4, "<I"),
                        "uint8": (8, "<Q")}
_PREFIX_OF: Final = {"long1": "uint1", "long4": "int4", "string1": "uint1", "string4": "int4",
                     "bytes1": "uint1", "bytes4": "uint4", "bytes8": "uint8",
                     "unicode1": "uint1", "unicode4": "uint4", "unicode8": "uint8"}
_FIXED: Final = {op.arg.name: op.arg.size for op in OPCODES if op.arg.size >= 0}


def _scan_table() -> list[tuple[int, Any, Any] | None]:
    table: list[tuple[int, Any, Any] | None] = [None] * 256
    for op in BY_CODE.values():
        kind = op.arg.name
        name = op.name
        if name in ("GLOBAL", "INST"):
            action: tuple[int, Any, Any] = (_A_GLOBAL, op, None)
        elif name == "STACK_GLOBAL":
            action = (_A_STACK_GLOBAL, op, 0)
        elif name in ("EXT1", "EXT2", "EXT4"):
            action = (_A_EXT, op, None)
        elif name == "PROTO":
            action = (_A_PROTO, op, 1)
        elif name == "STOP":
            action = (_A_STOP, op, 0)
        elif name == "FRAME":
            action = (_A_NEUTRAL, op, 8)
        elif name in _GET_OPS or name in _PUT_OPS:
            fixed = {"uint1": 1, "uint4": 4}.get(kind)
            action = (_A_GET if name in _GET_OPS else _A_PUT, op, fixed)
        elif name == "MEMOIZE":
            action = (_A_MEMOIZE, op, 0)
        elif name in _STRING_OPS and kind in _PREFIX_OF:
            action = (_A_STR, op, struct.Struct(_SIZED_PREFIX[_PREFIX_OF[kind]][1]))
        elif name in _STRING_OPS:
            action = (_A_TEXT, op, True)
        elif kind in _FIXED:
            action = (_A_FIXED, op, _FIXED[kind])
        elif kind in _PREFIX_OF:
            action = (_A_SIZED, op, struct.Struct(_SIZED_PREFIX[_PREFIX_OF[kind]][1]))
        else:
            action = (_A_TEXT, op, False)
        table[op.code] = action
    return table


_SCAN: Final = _scan_table()
_WO_OK: Final = [op is not None and op[1].name in _WEIGHTS_ONLY_OPS for op in _SCAN]


def scan_pickle(data: Any, start: int = 0, end: int | None = None) -> PickleScan:
    """Walk one pickle from ``start`` to its ``STOP`` like ``pickletools.genops``: every
    global (``GLOBAL``, ``INST``, and ``STACK_GLOBAL`` whose operands are literal strings or
    memoized ones) with its offset.  Offsets are positions in ``data``; nothing is built, and
    strings are decoded only when a ``STACK_GLOBAL`` needs them."""
    end = len(data) if end is None else end
    out = PickleScan()
    memo: dict[int, Any] = {}   # memo index -> a string value, or its opcode's position
    memo_len = 0
    recent: list[Any] = []      # values pushed by the last string/memo opcodes
    table, wo_ok, seen_ops = _SCAN, _WO_OK, out.not_weights_only
    pos = start
    try:
        while True:
            if pos >= end:
                out.error = (pos, "pickle truncated: no STOP opcode before the end")
                return out
            code = data[pos]
            action = table[code]
            if action is None:
                out.error = (pos, f"unknown pickle opcode 0x{code:02x}")
                return out
            kind, op, extra = action
            if not wo_ok[code] and op.name not in seen_ops:
                seen_ops[op.name] = pos
            if kind == _A_FIXED:
                nxt = pos + 1 + extra
                recent = []
            elif kind == _A_SIZED or kind == _A_STR:
                body = pos + 1 + extra.size
                if body > end:
                    raise CorruptError("pickle truncated in an opcode argument")
                (n,) = extra.unpack_from(data, pos + 1)
                nxt = body + n
                if n < 0 or nxt > end:
                    raise CorruptError(f"an argument of {n} bytes runs past the end")
                if kind == _A_STR:
                    recent.append(pos)
                else:
                    recent = []
            elif kind == _A_TEXT:
                arg, nxt = read_arg(op, data, pos + 1, end)
                if extra:
                    recent.append(arg if isinstance(arg, str) else None)
                else:
                    recent = []
            elif kind == _A_GET or kind == _A_PUT:
                if extra == 1:
                    arg, nxt = data[pos + 1], pos + 2
                elif extra == 4:
                    arg, nxt = _U4(data, pos + 1)[0], pos + 5
                else:
                    arg, nxt = read_arg(op, data, pos + 1, end)
                if kind == _A_GET:
                    recent.append(memo.get(arg) if type(arg) is int else None)
                else:
                    memo_len += 1
                    if type(arg) is int:
                        if recent and recent[-1] is not None:
                            memo[arg] = recent[-1]
                        else:
                            memo.pop(arg, None)
            elif kind == _A_MEMOIZE:
                nxt = pos + 1
                if recent and recent[-1] is not None:
                    memo[memo_len] = recent[-1]
                else:
                    memo.pop(memo_len, None)
                memo_len += 1
            elif kind == _A_GLOBAL:
                arg, nxt = read_arg(op, data, pos + 1, end)
                out.globals.append((pos, arg[0], arg[1], op.name))
                recent = []
            elif kind == _A_STACK_GLOBAL:
                nxt = pos + 1
                operands = [_string_at(data, v, end) for v in recent[-2:]]
                if len(operands) == 2 and all(isinstance(v, str) for v in operands):
                    out.globals.append((pos, operands[0], operands[1], op.name))
                else:
                    out.unresolved.append(pos)
                recent = []
            elif kind == _A_EXT:
                arg, nxt = read_arg(op, data, pos + 1, end)
                out.extensions.append((pos, arg))
                recent = []
            elif kind == _A_PROTO:
                nxt = pos + 2
                if pos == start and nxt <= end:
                    out.proto = data[pos + 1]
            elif kind == _A_STOP:
                out.end = pos + 1
                return out
            else:                                   # FRAME: transparent
                nxt = pos + 1 + extra
            if nxt > end:
                raise CorruptError("pickle truncated in an opcode argument")
            if len(recent) > 2:
                del recent[:-2]
            pos = nxt
    except PthError as exc:
        out.error = (pos, f"{BY_CODE[data[pos]].name}: {exc.message}")
        return out
    except (struct.error, IndexError):
        out.error = (pos, f"{BY_CODE[data[pos]].name}: pickle truncated")
        return out


def _string_at(data: Any, value: Any, end: int) -> Any:
    """A string pushed by the opcode at position ``value`` (decoded now), or ``value``."""
    if type(value) is not int:
        return value
    try:
        arg, _ = read_arg(BY_CODE[data[value]], data, value + 1, end)
    except PthError:
        return None
    return arg if isinstance(arg, str) else None


def _allowed(module: str, name: str) -> bool:
    return f"{MODULE_ALIASES.get(module, module)}.{name}" in ALLOWLIST


def _gadget(module: str) -> bool:
    return any(module == g or module.startswith(g + ".") for g in _GADGETS)


# -- the lenient audit of one object pickle ------------------------------------------------------

@dataclass
class _Decl:
    info: StorageInfo
    sig: tuple[str, int, str]
    at: int
    stype: StorageType


@dataclass
class _Note:
    code: str
    message: str
    pos: int | None            # absolute position in the unpickler's data (op position)
    storage: str | None = None
    record: str | None = None  # overrides the pickle record
    no_offset: bool = False
    info: StorageInfo | None = None   # the key path is that of the first tensor viewing it


class _Audit(TorchHandlers):
    """Handlers for a lenient run of the pickle VM that note every storage and view problem.

    A noted problem also raises (so the VM's lenient mode puts a poison in its place and goes
    on), except where torch itself would go on (a redeclared storage, a wrong record size):
    there the storage is kept so that the views on it are still checked.
    """

    def __init__(self, *, legacy: bool, big_endian: bool, strict: bool, script: bool,
                 locate: Callable[[StorageInfo, int], list[_Note]]) -> None:
        # TorchScript archives: the archive's own __torch__ classes become inert stubs, as in
        # the reader (they are flagged once as format.torchscript, not global by global).
        super().__init__(StorageTable(location_mapper(None), lambda info: None), eager=False,
                         mmap=False, script_classes={} if script else None)
        self.legacy = legacy
        self.big_endian = big_endian
        self.strict = strict
        self._locate = locate
        self.u: Unpickler | None = None
        self.notes: list[_Note] = []
        self.decl: dict[str, _Decl] = {}
        self.order: list[str] = []
        self.refused: dict[int, tuple[str, str]] = {}     # pos -> refused global
        self.claims: dict[str, str] = {}
        self.extents: dict[str, list[tuple[int, int]]] = {}
        self.clones: list[StorageInfo] = []
        self.partial: set[str] = set()      # storages with a view that was not checked
        self.noted = False
        self._once: set[tuple[str, str]] = set()

    # -- plumbing ------------------------------------------------------------------------------
    def lenient(self) -> TorchHandlers:
        return self

    def pos(self) -> int:
        return self.u.op_pos if self.u is not None else 0

    def note(self, code: str, message: str, *, storage: str | None = None,
             once: str | None = None, **kw: Any) -> None:
        if once is not None:
            if (code, once) in self._once:
                return
            self._once.add((code, once))
        self.notes.append(_Note(code, message, self.pos(), storage, **kw))
        self.noted = True

    # -- globals -------------------------------------------------------------------------------
    def resolve(self, module: str, name: str) -> Any:
        qualname = f"{MODULE_ALIASES.get(module, module)}.{name}"
        if ALLOWLIST.get(qualname) == "unsupported_rebuild":
            return Global(qualname, lambda *a: self._unsupported(qualname, a))
        try:
            return super().resolve(module, name)
        except UnsafePickleError:
            self.refused[self.pos()] = (module, name)
            raise

    def _unsupported(self, qualname: str, args: tuple[Any, ...]) -> Any:
        for arg in args:                    # its storages are not checked view by view
            for value in (arg if isinstance(arg, tuple) else (arg,)):
                if isinstance(value, StorageSlice):
                    value = value.base
                if isinstance(value, StorageInfo):
                    self.partial.add(value.key)
        what = {"torch._utils._rebuild_qtensor": "a quantized tensor",
                "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
                "torch._utils._rebuild_sparse_csr_tensor": "a sparse CSR tensor",
                "torch._utils._rebuild_nested_tensor": "a nested tensor",
                "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor"}.get(
                    qualname, f"a {qualname.rsplit('.', 1)[-1]} object")
        self.note("load.unsupported", f"{what} ({qualname}): pthfmt does not read it, so its "
                  "views were not checked", once=qualname)
        raise UnsupportedError(qualname)

    # -- storages ------------------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            self.note("pickle.persistent_id", f"persistent id {_short(pid)} is not a tuple")
            raise FormatError("persistent id")
        if any(isinstance(v, _Poison) for v in pid):
            raise FormatError("poisoned persistent id")     # its global is already reported
        kind = _text(pid[0])
        if kind == "module":
            self.note("pickle.persistent_id", f"persistent id of a pickled nn.Module class "
                      f"{_short(pid[1])}: torch.load(weights_only=False) imports it")
            raise FormatError("module persistent id")
        if kind != "storage" or len(pid) not in (5, 6):
            self.note("pickle.persistent_id", f"persistent id {_short(pid)} is not a storage "
                      "reference")
            raise FormatError("persistent id")
        want = 6 if self.legacy else 5
        if len(pid) != want:
            self.note("pickle.persistent_id", f"storage reference of {len(pid)} elements; "
                      f"torch.load expects {want} in the {'legacy' if self.legacy else 'zip'} "
                      "format", once="arity")
        _, stype, key, tag, numel = pid[:5]
        key, tag = _text(key), _text(tag)
        if not isinstance(key, str):
            self.note("storage.declaration", f"storage key {_short(key)} is not a string")
            raise FormatError("key")
        if not isinstance(stype, StorageType):
            self.note("storage.declaration", f"storage {key!r}: {_short(stype)} is not a "
                      "storage class", storage=key)
            raise FormatError("class")
        if not isinstance(tag, str):
            self.note("storage.declaration", f"storage {key!r}: location {_short(tag)} is not "
                      "a string", storage=key)
            raise FormatError("tag")
        if type(numel) is not int or numel < 0:
            self.note("storage.declaration", f"storage {key!r}: size {_short(numel)} is not a "
                      "non-negative int", storage=key)
            raise FormatError("numel")
        sig = (stype.name, numel, tag)
        seen = self.decl.get(key)
        if seen is not None:
            info = seen.info
            if seen.sig != sig:
                # torch keeps the first declaration; a copy of it lets the key path name the
                # tensor of the second one
                first = info
                info = StorageInfo(key, first.dtype, first.nbytes, first.tag, first.location)
                info.record = first.record
                self.clones.append(info)
                self.note("storage.redeclared",
                          f"storage {key!r} is declared as {seen.sig[0]}[{seen.sig[1]}] on "
                          f"{seen.sig[2]!r} and again as {sig[0]}[{sig[1]}] on {sig[2]!r}: "
                          "torch silently keeps the first", storage=key, info=info)
        else:
            device = self._device(tag)
            itemsize = stype.dtype.itemsize if stype.dtype else 1
            info = StorageInfo(key, stype.dtype, numel * itemsize, tag, device)
            self.decl[key] = _Decl(info, sig, self.pos(), stype)
            self.order.append(key)
            if self.legacy and stype.dtype is None:
                self.note("legacy.v3_dtype", f"storage {key!r} is an UntypedStorage in a "
                          "legacy-format file: torch saves it but cannot load it", storage=key)
            for n in self._locate(info, self.pos()):
                n.storage, n.info = key, info
                self.notes.append(n)
                self.noted = True
        if len(pid) == 6 and pid[5] is not None:
            try:
                return self._legacy_view(info, pid[5])
            except PthError as exc:
                self.note("tensor.view", exc.message, storage=key)
                raise
        return info

    def _device(self, tag: str) -> Device:
        try:
            device = Device.parse(tag)
        except ValueError:
            self.note("device.invalid", f"device tag {tag!r} is malformed", once=tag)
            return Device("cpu")
        odd = device.type not in _KNOWN_DEVICES or (device.type in ("cpu", "mps", "meta")
                                                      and device.index is not None)
        if odd:
            self.note("device.unknown", f"device tag {tag!r}: torch.load cannot restore it "
                      "unless map_location remaps it", once=tag)
        return device

    # -- tensors -------------------------------------------------------------------------------
    def make_tensor(self, storage: Any, dtype: Any, offset: Any, size: Any, stride: Any,
                    requires_grad: Any, metadata: Any = None) -> Any:
        start, limit = 0, None
        if isinstance(storage, StorageSlice):
            start, limit, storage = storage.start, storage.numel, storage.base
        elif not isinstance(storage, StorageInfo):
            if not isinstance(storage, _Poison):
                self.note("tensor.view", f"tensor storage is a {type(storage).__name__}, not a "
                          "persistent storage reference")
            raise FormatError("storage")
        if dtype is None:
            dtype = storage.dtype or _UINT8
        key = storage.key
        claimed = self.claims.setdefault(key, dtype.name)
        if claimed != dtype.name:
            self.note("storage.dtype_conflict", f"storage {key!r} is read as {claimed} by one "
                      f"tensor and as {dtype.name} by another", storage=key, once=key)
        if limit is None:
            nbytes = storage.nbytes
        else:
            nbytes = (start + limit) * dtype.itemsize
            if type(offset) is int:
                offset += start
        try:
            offset, shape, stride = check_view(dtype, nbytes, offset, size, stride, key)
        except PthError as exc:
            self.note("tensor.view", exc.message, storage=key)
            self.partial.add(key)
            raise
        if metadata is not None and not isinstance(metadata, dict):
            self.note("tensor.metadata", f"tensor metadata is a {type(metadata).__name__}, "
                      "not a dict")
            raise FormatError("metadata")
        if not isinstance(requires_grad, bool):
            self.note("tensor.metadata", f"requires_grad is {_short(requires_grad)}, not a bool")
            raise FormatError("requires_grad")
        if self.strict and math.prod(shape):
            size_ = dtype.itemsize
            hi = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
            self.extents.setdefault(key, []).append((offset * size_, hi * size_))
        return TensorRef(storage, dtype, offset, shape, stride, requires_grad)

    def rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any,
                          requires_grad: Any, backward_hooks: Any, dtype: Any,
                          metadata: Any = None) -> Any:
        if not hasattr(dtype, "info") or dtype.info is None:
            if not isinstance(dtype, _Poison):
                self.note("dtype.invalid", f"_rebuild_tensor_v3 dtype {_short(dtype)} is not a "
                          "storable torch dtype")
            raise FormatError("dtype")
        if self.big_endian and dtype.info.swap > 1:
            self.note("record.big_endian_v3", f"big-endian {dtype.name} tensor: torch does not "
                      "byte-swap _rebuild_tensor_v3 dtypes and loads wrong values",
                      once=dtype.name)
        return self.make_tensor(storage, dtype.info, offset, size, stride, requires_grad,
                                metadata)


# -- the validator -------------------------------------------------------------------------------

@dataclass
class _Rec:
    """A zip member as the scan saw it."""

    entry: ZipEntry
    rel: str | None = None        # name inside the archive folder
    data: int = -1                # absolute data offset (-1: not readable)
    end: int = -1                 # end of the member's bytes (data + descriptor)


class _Validator:
    def __init__(self, src: Source, strict: bool) -> None:
        self.src = src
        self.buf = src.buf
        self.size = src.size
        self.strict = strict
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self.format: str | None = None
        self.load_error: str | None = None
        self.static_global_seen = False
        self.zero_crc: list[str] = []
        self.audited: list[tuple[_Audit, Any]] = []
        self.script = False

    # -- recording -----------------------------------------------------------------------------
    def add(self, code: str, message: str, *, record: str | None = None,
            offset: int | None = None, key_path: str | None = None) -> None:
        check = CODES[code]
        if check.strict and not self.strict:
            return
        self.counts[code] += 1
        if self.counts[code] > MAX_PER_CODE:
            return
        self.problems.append(Problem(code, check.severity, message, record, offset, key_path))

    def name_tensors(self) -> None:
        """Give problems about a storage's data record the key path of a tensor using it."""
        for audit, root in self.audited:
            records = {d.info.record: d.info.key for d in audit.decl.values() if d.info.record}
            todo = [p for p in self.problems if p.key_path is None and p.record in records]
            if not todo:
                continue
            users: dict[str, str] = {}
            for path, ref in walk(root, leaves=(TensorRef,),
                                  want=lambda v: isinstance(v, TensorRef)):
                users.setdefault(ref.storage_key, path)
            for p in todo:
                p.key_path = users.get(records[p.record]) or None

    def finish(self) -> Report:
        try:
            self.name_tensors()
        except Exception:  # pragma: no cover - key paths are a courtesy
            pass
        for code, n in self.counts.items():
            if n > MAX_PER_CODE:
                check = CODES[code]
                self.problems.append(Problem(code, check.severity, f"... and {n - MAX_PER_CODE} "
                                             f"more {code} problems"))
        ok = not any(p.severity in ("error", "warning") for p in self.problems)
        return Report(self.src.path, self.format, ok, self.problems, self.strict,
                      self.load_error)

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> None:
        from .reader import detect_format
        kind = detect_format(bytes(self.buf[:512]))
        if kind == "zip":
            self.format = "zip"
            self.check_zip()
            if self.buf[257:262] == b"ustar":
                self.add("format.polyglot", "the zip's first bytes are also a tar header: tar "
                         "tools read another archive", offset=257)
        elif kind == "legacy":
            self.format = "legacy"
            self.check_legacy()
        elif kind == "tar":
            self.format = "tar"
            self.check_tar()
        else:
            self.check_unknown()
        if kind != "zip":
            self.check_hidden_zip(kind)
        self.run_reader()

    # -- bytes ---------------------------------------------------------------------------------
    def chunks(self, start: int, n: int) -> Iterator[bytes]:
        stop = start + n
        for a in range(start, stop, CHUNK):
            yield self.buf[a:min(a + CHUNK, stop)]

    def inflate(self, start: int, csize: int, usize: int,
                sink: Callable[[bytes], None] | None = None, name: str = "record"
                ) -> tuple[int, int, str | None]:
        """Inflate a raw deflate stream with the reader's bounds (never past ``usize`` bytes,
        never past its bomb ratio): ``(crc32, size, error)``."""
        crc = total = 0
        try:
            for out in inflate(self.buf, start, csize, usize, name):
                total += len(out)
                crc = zlib.crc32(out, crc)
                if sink is not None:
                    sink(out)
        except PthError as exc:
            return crc, total, exc.message
        return crc, total, None

    def record_bytes(self, rec: _Rec, limit: int | None = None) -> bytes | None:
        """A record's content (``limit``: at most that many bytes), or ``None`` if unreadable."""
        e = rec.entry
        if rec.data < 0:
            return None
        n = e.usize if limit is None else min(limit, e.usize)
        if e.method == STORED:
            return bytes(self.buf[rec.data:rec.data + n])
        if e.method != DEFLATED:
            return None
        if limit is not None:
            try:
                return zlib.decompressobj(-15).decompress(
                    bytes(self.buf[rec.data:rec.data + min(e.csize, 1 << 16)]), n)
            except zlib.error:
                return None
        parts: list[bytes] = []

        def sink(b: bytes) -> None:
            parts.append(b)

        _, _, err = self.inflate(rec.data, e.csize, e.usize, sink, e.name)
        return None if err else b"".join(parts)

    # -- unknown files and hidden archives ---------------------------------------------------------
    def check_unknown(self) -> None:
        self.format = "unknown"
        if self.find_directory() is not None:
            return                  # check_hidden_zip reports the zip behind other bytes
        head = bytes(self.buf[:8])
        if len(head) == 8 and int.from_bytes(head, "little") < self.size and \
                bytes(self.buf[8:9]) == b"{":
            self.add("file.unknown_format", "this is a safetensors file, not a torch checkpoint",
                     offset=0)
            return
        self.add("file.unknown_format", f"not a torch checkpoint: the file starts with {head!r}",
                 offset=0)

    def find_directory(self) -> tuple[int, int, int] | None:
        """Locate a zip central directory from the end of the file, the way tools that
        tolerate prepended data do: ``(directory offset, shift, entries)``, where ``shift``
        is how far the archive lies behind the offsets it records."""
        buf, size = self.buf, self.size
        eocd = buf.rfind(b"PK\x05\x06", max(0, size - 22 - 0xFFFF))
        if eocd < 0 or eocd + 22 > size:
            return None
        (_, _, _, _, count, cd_size, cd_off, _) = _EOCD.unpack_from(buf, eocd)
        cd_end = eocd
        z64 = eocd - 20 - 56
        if z64 >= 0 and buf[eocd - 20:eocd - 16] == b"PK\x06\x07" and \
                buf[z64:z64 + 4] == b"PK\x06\x06":
            count, cd_size, cd_off = struct.unpack_from("<QQQ", buf, z64 + 32)
            cd_end = z64
        start = cd_end - cd_size
        if start < 0 or buf[start:start + 4] != b"PK\x01\x02":
            return None
        return start, start - cd_off, count

    def check_hidden_zip(self, kind: str) -> None:
        found = self.find_directory()
        if found is None:
            return
        start, shift, count = found
        if kind == "unknown":
            self.add("zip.prepended_data", f"a zip archive of {count} members lies after "
                     f"{shift} other bytes: torch takes the legacy path and fails, zip tools "
                     "read the archive", offset=0)
        else:
            self.add("format.polyglot", f"the {kind} file also holds a zip archive of {count} "
                     f"members (central directory at {start}): zip tools and scanners read "
                     "that instead", offset=start)

    # -- zip -------------------------------------------------------------------------------------
    def check_zip(self) -> None:
        if self.buf.rfind(b"PK\x05\x06", max(0, self.size - 22 - 0xFFFF)) < 0:
            self.add("zip.eocd_missing", "no zip end-of-central-directory record: the file is "
                     f"truncated or not a zip ({self.size} bytes)")
            return
        try:
            z = ZipArchive(self.src)
        except PthError as exc:
            found = self.find_directory()
            if found is not None and found[1] > 0:
                self.add("zip.prepended_data", f"the archive's offsets are {found[1]} bytes "
                         "short: data was put in front of it", offset=0)
            else:
                self.add("zip.directory", exc.message, offset=exc.offset)
            return
        if not z.entries:
            self.add("zip.directory", "the zip archive has no members")
            return
        recs = [self.scan_member(z, e) for e in z.entries]
        if self.zero_crc:
            n = len(self.zero_crc)
            self.add("zip.crc_zero", f"{n} of {len(recs)} records have a zero CRC-32 (saved with "
                     "compute_crc32=False or skip_data?): their integrity cannot be checked",
                     record=self.zero_crc[0])
        self.check_coverage(z, recs)
        folder = self.check_names(recs)
        if folder is None:
            return
        self.check_layout(recs, folder)

    def scan_member(self, z: ZipArchive, e: ZipEntry) -> _Rec:
        rec = _Rec(e)
        name, lho = e.name, e.header_offset
        if lho + _LOCAL.size > self.size:
            self.add("zip.local_header", f"local header at {lho} lies past the end of the "
                     f"{self.size}-byte file", record=name)
            return rec
        (sig, _need, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = \
            _LOCAL.unpack_from(self.buf, lho)
        if sig != b"PK\x03\x04":
            self.add("zip.local_header", f"no local header signature at offset {lho}",
                     record=name)
            return rec
        start = lho + _LOCAL.size
        raw_name = bytes(self.buf[start:start + nlen])
        local_extra = bytes(self.buf[start + nlen:start + nlen + xlen])
        data = start + nlen + xlen
        local_name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if local_name != name:
            self.add("zip.header_mismatch", f"the local header names it {local_name!r}",
                     record=name, offset=lho)
        if method != e.method:
            self.add("zip.header_mismatch", f"compression method {method} in the local header, "
                     f"{e.method} in the central directory", record=name, offset=lho)
        if (flags ^ e.flags) & 0x9:
            self.add("zip.header_mismatch", f"flags 0x{flags:04x} in the local header, "
                     f"0x{e.flags:04x} in the central directory", record=name, offset=lho)
        if e.flags & 0x1 or flags & 0x1:
            self.add("zip.method", "encrypted record", record=name)
            return rec
        if e.method not in (STORED, DEFLATED):
            self.add("zip.method", f"compression method {e.method} (torch reads only stored "
                     "and deflated records)", record=name)
        if e.method == STORED and e.csize != e.usize:
            self.add("zip.stored_size", f"stored record of {e.csize} bytes that claims "
                     f"{e.usize} uncompressed", record=name)
        if data + e.csize > self.size:
            self.add("zip.local_header", f"its {e.csize} bytes at offset {data} run past the end "
                     f"of the {self.size}-byte file", record=name, offset=lho)
            return rec
        rec.data = data
        end = data + e.csize
        self.check_extra(local_extra, name, start + nlen)
        lcrc, lcs, lus = crc, csize, usize
        if _U32 in (lcs, lus):
            lus, lcs = _local_zip64(local_extra, lus, lcs)
        if flags & 0x8:
            end = self.check_descriptor(e, end)
            # with a data descriptor the local fields are zero (miniz: zero sizes even for
            # zip64); anything else must agree with the central directory
            if (lcrc and lcrc != e.crc) or (lcs and lcs != e.csize) or (lus and lus != e.usize):
                self.add("zip.header_mismatch", f"local header says crc {lcrc:08x}, sizes "
                         f"{lcs}/{lus}; central directory crc {e.crc:08x}, sizes "
                         f"{e.csize}/{e.usize}", record=name, offset=lho)
        else:
            if (lcrc, lcs, lus) != (e.crc, e.csize, e.usize):
                self.add("zip.header_mismatch", f"local header says crc {lcrc:08x}, sizes "
                         f"{lcs}/{lus}; central directory crc {e.crc:08x}, sizes "
                         f"{e.csize}/{e.usize}", record=name, offset=lho)
        rec.end = end
        self.check_crc(rec)
        return rec

    def check_extra(self, extra: bytes, name: str, at: int) -> None:
        """The local extra fields: well formed, and torch's alignment padding all 'Z'."""
        i = 0
        while i + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, i)
            body = extra[i + 4:i + 4 + length]
            if len(body) < length:
                break
            if tag == 0x4246 and body.strip(b"Z"):          # "FB": miniz alignment padding
                odd = len(body) - body.count(b"Z")
                self.add("zip.gap", f"{odd} of the {length} bytes of alignment padding in the "
                         "local header are not 'Z' (hidden data?)", record=name,
                         offset=at + i + 4)
            i += 4 + length
        if i != len(extra):
            self.add("zip.header_mismatch", f"the local header's extra field is malformed at "
                     f"byte {i}", record=name, offset=at + i)

    def check_descriptor(self, e: ZipEntry, at: int) -> int:
        buf = self.buf
        want = (e.crc, e.csize, e.usize)
        forms = (("<4sIII", True), ("<4sIQQ", True), ("<III", False), ("<IQQ", False))
        for fmt, signed in forms:
            n = struct.calcsize(fmt)
            if at + n > self.size:
                continue
            vals = struct.unpack_from(fmt, buf, at)
            if signed:
                if vals[0] != b"PK\x07\x08":
                    continue
                vals = vals[1:]
            if tuple(vals) == want:
                return at + n
        if at + 16 <= self.size and buf[at:at + 4] == b"PK\x07\x08":
            _, crc, cs, us = struct.unpack_from("<4sIII", buf, at)
            self.add("zip.header_mismatch", f"data descriptor says crc {crc:08x}, sizes "
                     f"{cs}/{us}; central directory crc {e.crc:08x}, sizes {e.csize}/{e.usize}",
                     record=e.name, offset=at)
            return at + 16
        self.add("zip.header_mismatch", "the local header announces a data descriptor but none "
                 "matching the central directory follows the data", record=e.name, offset=at)
        return at

    def check_crc(self, rec: _Rec) -> None:
        e = rec.entry
        if e.method == STORED:
            crc = 0
            for chunk in self.chunks(rec.data, e.usize if e.csize == e.usize else e.csize):
                crc = zlib.crc32(chunk, crc)
        elif e.method == DEFLATED:
            crc, _, err = self.inflate(rec.data, e.csize, e.usize, name=e.name)
            if err:
                self.add("zip.bad_deflate", err, record=e.name)
                return
        else:
            return
        if crc == e.crc:
            return
        if e.crc == 0:
            self.zero_crc.append(e.name)
        else:
            self.add("zip.crc_mismatch", f"CRC-32 of the data is {crc:08x}, the zip directory "
                     f"says {e.crc:08x}", record=e.name)

    def check_coverage(self, z: ZipArchive, recs: list[_Rec]) -> None:
        buf, size = self.buf, self.size
        spans: list[tuple[int, int, str]] = []
        for r in recs:
            if r.end >= 0:
                spans.append((r.entry.header_offset, r.end, f"member {r.entry.name!r}"))
        spans.append((z.cd_offset, z.cd_offset + z.cd_size, "the central directory"))
        last = max(recs, key=lambda r: r.entry.central_offset).entry.central_offset
        nlen, xlen, clen = struct.unpack_from("<HHH", buf, last + 28)
        listed_end = last + 46 + nlen + xlen + clen
        if listed_end < z.cd_offset + z.cd_size:
            self.add("zip.gap", f"{z.cd_offset + z.cd_size - listed_end} bytes at the end of the "
                     "central directory belong to no listed entry (the entry count says "
                     f"{len(recs)}; hidden entries?)", offset=listed_end)
        eocd = z.eocd_offset
        (_, _, _, _, _, _, _, clen) = _EOCD.unpack_from(buf, eocd)
        eocd_end = eocd + _EOCD.size + clen
        if eocd_end > size:
            self.add("zip.directory", f"the archive comment of {clen} bytes runs past the end of "
                     "the file", offset=eocd)
            eocd_end = size
        elif clen:
            self.add("zip.comment", f"archive comment of {clen} bytes", offset=eocd + 22)
        spans.append((eocd, eocd_end, "the end-of-central-directory record"))
        loc = eocd - 20
        if loc >= 0 and buf[loc:loc + 4] == b"PK\x06\x07":
            spans.append((loc, eocd, "the zip64 locator"))
            (z64,) = struct.unpack_from("<Q", buf, loc + 8)
            if z64 + 56 <= size and buf[z64:z64 + 4] == b"PK\x06\x06":
                (rest,) = struct.unpack_from("<Q", buf, z64 + 4)
                spans.append((z64, min(size, z64 + 12 + rest), "the zip64 directory end"))
                (_, disk, cd_disk, n_disk, count, cd_size, cd_off, _) = \
                    _EOCD.unpack_from(buf, eocd)
                z_n_disk, z_count, z_size, z_off = struct.unpack_from("<QQQQ", buf, z64 + 24)
                for what, small, big, full in (
                        ("disk number", disk, 0, 0xFFFF),
                        ("directory's disk number", cd_disk, 0, 0xFFFF),
                        ("entries on this disk", n_disk, z_n_disk, 0xFFFF),
                        ("entries", count, z_count, 0xFFFF),
                        ("directory size", cd_size, z_size, _U32),
                        ("directory offset", cd_off, z_off, _U32)):
                    if small != full and small != big:
                        self.add("zip.header_mismatch", f"the end-of-central-directory record "
                                 f"says {small} for the {what}, its zip64 version {big}",
                                 offset=eocd)
        spans.sort()
        cursor, prev = 0, "the start of the file"
        overlaps = 0
        for lo, hi, what in spans:
            if lo < cursor:
                overlaps += 1
                self.add("zip.overlap", f"{what} (bytes {lo}..{hi}) overlaps {prev} (ends at "
                         f"{cursor})", offset=lo)
            elif lo > cursor:
                hint = " (an unlisted local header)" if buf[cursor:cursor + 4] == b"PK\x03\x04" \
                    else ""
                self.add("zip.gap", f"{lo - cursor} bytes between {prev} and {what} belong to no "
                         f"member{hint}", offset=cursor)
            if hi > cursor:
                cursor, prev = hi, what
        if eocd_end < size:
            self.add("zip.trailing_data", f"{size - eocd_end} bytes after the end of the "
                     "archive", offset=eocd_end)

    def check_names(self, recs: list[_Rec]) -> str | None:
        first = recs[0].entry.name
        folder = first.split("/", 1)[0] if "/" in first else None
        if folder is None:
            self.add("zip.outside_folder", f"the first member {first!r} is not inside a folder: "
                     "torch refuses the archive", record=first)
        elif not _FOLDER.match(folder) or not folder.isascii():
            self.add("zip.archive_name", f"archive folder {folder!r}: torch.save writes the file "
                     "stem (ASCII) or 'archive'", record=first)
        seen: dict[str, _Rec] = {}
        folded: dict[str, _Rec] = {}
        for r in recs:
            name = r.entry.name
            head, sep, rel = name.partition("/")
            if folder is not None:
                if head != folder or not sep:
                    self.add("zip.outside_folder", f"{name!r} is outside the archive folder "
                             f"{folder + '/'!r}: torch refuses the archive", record=name)
                else:
                    r.rel = rel
            parts = name.split("/")
            if name.startswith("/") or ".." in parts or "\\" in name or \
                    any(ord(ch) < 32 or ord(ch) == 127 for ch in name) or "" in parts[1:-1]:
                self.add("zip.unsafe_name", f"member name {name!r} could escape an extraction "
                         "folder", record=name)
            if name in seen:
                self.add("zip.duplicate_name", f"{name!r} occurs twice (members "
                         f"{seen[name].entry.index} and {r.entry.index})", record=name)
            else:
                seen[name] = r
                other = folded.setdefault(fold_case(name), r)
                if other is not r:
                    self.add("zip.case_collision", f"{name!r} and {other.entry.name!r} differ only "
                             "in case: torch's lookup may read either", record=name)
        return folder

    # -- torch's layout --------------------------------------------------------------------------
    def check_layout(self, recs: list[_Rec], folder: str) -> None:
        exact: dict[str, _Rec] = {}
        folded: dict[str, _Rec] = {}
        for r in recs:
            if r.rel is not None:
                exact.setdefault(r.rel, r)
                folded.setdefault(fold_case(r.rel), r)
        warned: set[str] = set()

        def find(rel: str) -> _Rec | None:
            r = exact.get(rel)
            if r is None:
                r = folded.get(fold_case(rel))
                if r is not None and rel not in warned:
                    warned.add(rel)
                    self.add("record.case_mismatch", f"record {folder}/{rel} is found only as "
                             f"{r.entry.name!r} (torch ignores case, other readers do not)",
                             record=r.entry.name)
            return r

        used: set[str] = set()
        torchscript = self.script = find("constants.pkl") is not None
        if torchscript:
            self.format = "torchscript"
            self.add("format.torchscript", "the archive has a constants.pkl record: torch.load "
                     "treats it as a TorchScript program (torch.jit.load), not a checkpoint",
                     record=f"{folder}/constants.pkl")
        # version
        vrec = find(".data/version") or find("version")
        if vrec is None:
            self.add("record.missing", f"record {folder}/version is missing")
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
                self.add("record.byteorder", f"byteorder record is {raw!r}, not b'little' or "
                         "b'big'", record=brec.entry.name)
            big = raw == b"big"
        # alignment and format version
        alignment = 64
        arec = find(".storage_alignment")
        if arec is not None:
            used.add(arec.entry.name)
            raw = self.record_bytes(arec, 32)
            text = (raw or b"").decode("ascii", "replace").strip()
            if not text.isdigit() or int(text) <= 0:
                self.add("record.storage_alignment", f".storage_alignment is {raw!r}, not a "
                         "positive integer", record=arec.entry.name)
            else:
                alignment = int(text)
        frec = find(".format_version")
        calc = False
        if frec is not None:
            used.add(frec.entry.name)
            calc = (self.record_bytes(frec, 32) or b"") >= b"1"
        for rel in (".data/serialization_id", ".data/version", "version"):
            r = exact.get(rel)
            if r is not None:
                used.add(r.entry.name)
        # the object pickle and its storages
        pkl = find("data.pkl")
        audit: _Audit | None = None
        if pkl is None:
            self.add("record.missing", f"record {folder}/data.pkl is missing")
        else:
            used.add(pkl.entry.name)
            audit = self.audit_zip_pickle(pkl, "data", find, used, big)
        if torchscript:
            for name in ("constants.pkl", "traced_inputs.pkl"):
                r = find(name)
                if r is not None:
                    used.add(r.entry.name)
                    self.audit_zip_pickle(r, name[:-len(".pkl")], find, used, big)
        # every other record
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
                self.add("storage.unreferenced", f"data record {name!r} is not used by any "
                         "storage reference", record=name)
            elif not pickled:
                self.add("record.extra", f"record {name!r} is not part of torch's layout",
                         record=name)
        # compression and alignment of storage records
        unaligned: list[_Rec] = []
        packed: list[_Rec] = []
        packed_meta: list[_Rec] = []
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
            self.add("zip.compressed_data", f"{_count(packed, 'storage record')} compressed "
                     "(not STORED): torch.load(mmap=True) returns garbage for "
                     f"{'them' if len(packed) > 1 else 'it'}", record=packed[0].entry.name)
        if packed_meta:
            self.add("zip.compressed", f"{_count(packed_meta, 'record')} compressed (not STORED)",
                     record=packed_meta[0].entry.name)
        if unaligned:
            r = unaligned[0]
            self.add("zip.unaligned", f"{_count(unaligned, 'storage record')} not aligned: "
                     f"data at offset {r.data} is not a multiple of {alignment}",
                     record=r.entry.name)
        if audit is not None and calc:
            self.check_computed_offsets(audit, find, folder, alignment)

    def check_version(self, rec: _Rec) -> None:
        raw = self.record_bytes(rec, 32)
        if raw is None:
            return
        text = raw.decode("ascii", "replace")
        body = text.lstrip(" \t\n\r\f\v")
        digits = body[:len(body) - len(body.lstrip("0123456789"))]
        if not digits:
            self.add("record.version", f"version record {raw!r} is not a number",
                     record=rec.entry.name)
            return
        value = int(digits)
        if not 1 <= value <= MAX_VERSION:
            self.add("record.version", f"version {value} is outside the supported "
                     f"1..{MAX_VERSION}", record=rec.entry.name)
            return
        if not re.fullmatch(rb"\d+\n?", raw):
            self.add("record.version_text", f"version record {raw!r}: torch reads it as "
                     f"{value}", record=rec.entry.name)
        elif value != 3 and self.format != "torchscript":
            self.add("record.version_value", f"version {value} (torch.save writes 3)",
                     record=rec.entry.name)

    def looks_pickled(self, r: _Rec) -> bool:
        head = self.record_bytes(r, 2)
        return bool(head) and len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5

    def pickle_source(self, r: _Rec) -> tuple[Any, int, int] | None:
        """``(data, start, end)`` of a record's bytes: the mapped file itself when stored."""
        e = r.entry
        if r.data < 0:
            return None
        if e.method == STORED:
            return self.buf, r.data, r.data + e.usize
        if e.usize > PICKLE_RATIO * e.csize + (1 << 20):
            return None         # a decompression bomb: the reader's LimitError reports it
        raw = self.record_bytes(r)
        return None if raw is None else (raw, 0, len(raw))

    def report_scan(self, scan: PickleScan, record: str, base: int,
                    refused: dict[int, tuple[str, str]] | None = None,
                    main: bool = True, paths: dict[int, str] | None = None) -> None:
        """Problems of a static scan; ``base`` turns data positions into reported offsets."""
        found: dict[int, tuple[str, str, str]] = {p: (m, n, op) for p, m, n, op in scan.globals}
        for p, (m, n) in (refused or {}).items():
            found.setdefault(p, (m, n, "STACK_GLOBAL"))
        for pos in scan.unresolved:
            if pos not in found:
                self.add("pickle.global", "STACK_GLOBAL whose module and name are computed, not "
                         "literal strings", record=record, offset=pos - base)
        for pos in sorted(found):
            module, name, op = found[pos]
            if self.script and isinstance(module, str) and module.split(".")[0] == "__torch__":
                continue                    # the archive's own TorchScript classes
            if not isinstance(module, str) or not isinstance(name, str) or \
                    not _allowed(module, name):
                self.static_global_seen = True
                danger = " (a known code-execution gadget)" if _gadget(str(module)) else ""
                self.add("pickle.global", f"{op} {module}.{name} is not in the allowlist{danger}",
                         record=record, offset=pos - base, key_path=(paths or {}).get(pos) or None)
        for pos, code in scan.extensions:
            self.static_global_seen = True
            self.add("pickle.extension", f"EXT opcode for copyreg extension code {code}",
                     record=record, offset=pos - base)
        if scan.error is not None:
            pos, msg = scan.error
            self.add("pickle.malformed", msg, record=record, offset=pos - base)
        if not main:
            return
        if scan.not_weights_only:
            ops = sorted(scan.not_weights_only, key=scan.not_weights_only.__getitem__)
            first = scan.not_weights_only[ops[0]]
            self.add("pickle.weights_only", f"opcode{'s' if len(ops) > 1 else ''} "
                     f"{', '.join(ops)} (first at offset {first - base}): "
                     "torch.load(weights_only=True) fails with 'Unsupported operand'",
                     record=record, offset=first - base)
        if scan.proto != 2 and scan.error is None:
            what = "no PROTO opcode" if scan.proto is None else f"protocol {scan.proto}"
            self.add("pickle.protocol", f"{what} (torch.save writes protocol 2)", record=record,
                     offset=0)

    def scan_other_pickle(self, r: _Rec, report_extra: bool) -> None:
        where = self.pickle_source(r)
        if where is None:
            return
        data, start, end = where
        scan = scan_pickle(data, start, end)
        if report_extra:
            self.add("record.extra_pickle", "a pickle that torch.load never reads; other tools "
                     "may load it", record=r.entry.name)
        self.report_scan(scan, r.entry.name, start, main=False)

    def audit_zip_pickle(self, pkl: _Rec, folder: str, find: Callable[[str], _Rec | None],
                         used: set[str], big: bool) -> _Audit | None:
        """Scan and audit an object pickle whose storages are the records ``folder/<key>``."""
        where = self.pickle_source(pkl)
        if where is None:
            return None
        data, start, end = where
        record = pkl.entry.name
        scan = scan_pickle(data, start, end)
        if scan.end is not None and scan.end < end:
            self.add("pickle.trailing_data", f"{end - scan.end} bytes after the STOP opcode",
                     record=record, offset=scan.end - start)

        def locate(info: StorageInfo, at: int) -> list[_Note]:
            r = find(f"{folder}/{info.key}")
            if r is None:
                return [_Note("storage.missing_record", f"storage {info.key!r} has no record "
                              f"{folder}/{info.key}", at)]
            used.add(r.entry.name)
            info.record = r.entry.name
            if r.entry.usize != info.nbytes:
                return [_Note("storage.size_mismatch", f"record holds {r.entry.usize} bytes but "
                              f"storage {info.key!r} needs {info.nbytes}", at,
                              record=r.entry.name, no_offset=True)]
            return []

        audit = _Audit(legacy=False, big_endian=big, strict=self.strict, script=self.script,
                       locate=locate)
        paths = self.run_audit(audit, data, start, end, record, base=start)
        main = folder == "data"
        self.report_scan(scan, record, start, audit.refused, main=main, paths=paths)
        keys = audit.order
        if main and keys and keys != [str(i) for i in range(len(keys))]:
            self.add("storage.key", f"storage keys {_short(keys[:8])} are not 0..{len(keys) - 1} "
                     "in order of first use", record=record)
        return audit

    def run_audit(self, audit: _Audit, data: Any, start: int, end: int, record: str,
                  base: int) -> dict[int, str]:
        """Run the lenient VM with ``audit`` and turn its notes into problems; returns the
        key paths of the objects that failed, by the position of the failing opcode."""
        u = Unpickler(data, audit, start=start, end=end, record=record)
        u.lenient = True
        audit.u = u
        root: Any = None
        failed: PthError | None = None
        try:
            root = u.load()
        except PthError as exc:
            failed = exc
        except Exception as exc:  # a bug in a handler must not stop the validation
            failed = FormatError(f"{type(exc).__name__}: {exc}", offset=u.op_pos)
        paths: dict[int, str] = {}
        users: dict[str, str] = {}
        by_info: dict[int, str] = {}
        bare: set[str] = set()
        if failed is None and (audit.noted or audit.refused or self.strict):
            for path, value in walk(root, leaves=(TensorRef, StorageInfo)):
                if isinstance(value, _Poison):
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
            self.add(n.code, n.message, record=n.record or record,
                     offset=None if n.no_offset or n.pos is None else n.pos - base,
                     key_path=key_path or None)
        if failed is not None and not isinstance(failed, UnsafePickleError):
            offset = failed.offset if failed.offset is not None else u.op_pos
            code = "pickle.limit" if type(failed).__name__ == "LimitError" else \
                "pickle.malformed"
            self.add(code, failed.message, record=record, offset=offset - base)
        if self.strict and failed is None:
            self.check_unviewed(audit, bare, users, record)
        if failed is None:
            self.audited.append((audit, root))
        return paths

    def check_unviewed(self, audit: _Audit, bare: set[str], users: dict[str, str],
                       record: str) -> None:
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
                self.add("storage.unviewed", f"{d.info.nbytes - covered} of the {d.info.nbytes} "
                         f"bytes of storage {key!r} are not viewed by any tensor",
                         record=d.info.record or record, key_path=users.get(key) or None)

    def check_computed_offsets(self, audit: _Audit, find: Callable[[str], _Rec | None],
                               folder: str, alignment: int) -> None:
        """torch's ``calculate_storage_offsets``: offsets computed from miniz's layout."""
        cursor: int | None = None
        for key in audit.order:
            r = find(f"data/{key}")
            nbytes = audit.decl[key].info.nbytes
            if r is None or r.data < 0:
                return
            if cursor is None:
                if key != "0":
                    self.add("record.format_version", f"the first storage loaded is {key!r}, "
                             "not '0': torch's offset calculation asserts", record=r.entry.name)
                    return
                expected, lho = r.data, r.entry.header_offset
            else:
                name_len = len(f"{folder}/data/{key}".encode())
                expected = miniz_data_offset(cursor, name_len, nbytes, alignment)
                lho = cursor
            if expected != r.data:
                self.add("record.format_version", f"torch would compute its data offset as "
                         f"{expected}, but the data starts at {r.data}", record=r.entry.name)
                return
            cursor = expected + nbytes
            if nbytes:
                cursor += 24 if lho >= _U32 or nbytes >= _U32 else 16

    # -- legacy ----------------------------------------------------------------------------------
    def legacy_value(self, pos: int, what: str) -> tuple[Any, int | None]:
        """Scan and evaluate one header pickle at ``pos``: ``(value, end)``."""
        scan = scan_pickle(self.buf, pos, self.size)
        self.report_scan(scan, what, 0, main=False)
        if scan.end is None:
            return None, None
        if scan.globals or scan.extensions or scan.unresolved:
            return None, scan.end
        handlers = TorchHandlers(StorageTable(location_mapper(None), lambda info: None),
                                 eager=False, mmap=False)
        try:
            return Unpickler(self.buf, handlers, start=pos, end=scan.end,
                             record=what).load(), scan.end
        except PthError as exc:
            self.add("pickle.malformed", exc.message, record=what, offset=exc.offset)
            return None, scan.end

    def check_legacy(self) -> None:
        magic, pos = self.legacy_value(0, "legacy magic number")
        if pos is None:
            return
        if magic != MAGIC_NUMBER:
            self.format = "pickle"
            self.add("legacy.header", f"a plain pickle of {_short(magic)}, not a torch "
                     "checkpoint: the legacy magic number is missing", record="legacy magic "
                     "number", offset=0)
            return
        proto, nxt = self.legacy_value(pos, "legacy protocol version")
        if nxt is None:
            return
        if proto != PROTOCOL_VERSION:
            self.add("legacy.header", f"legacy protocol version {_short(proto)}, expected "
                     f"{PROTOCOL_VERSION}", record="legacy protocol version", offset=pos)
        pos = nxt
        sys_info, nxt = self.legacy_value(pos, "legacy sys_info")
        if nxt is None:
            return
        if not isinstance(sys_info, dict):
            self.add("legacy.header", f"legacy sys_info is a {type(sys_info).__name__}, not a "
                     "dict", record="legacy sys_info", offset=pos)
        else:
            odd = []
            if sys_info.get("little_endian") is not True:
                odd.append(f"little_endian={sys_info.get('little_endian')!r} (the data is "
                           "little-endian regardless)")
            if sys_info.get("protocol_version") != PROTOCOL_VERSION:
                odd.append(f"protocol_version={_short(sys_info.get('protocol_version'))}")
            sizes = sys_info.get("type_sizes")
            if sizes != {"short": 2, "int": 4, "long": 4} and sizes != {"short": 2, "int": 4,
                                                                          "long": 8}:
                odd.append(f"type_sizes={_short(sizes)}")
            if odd:
                self.add("legacy.sys_info", "legacy sys_info: " + "; ".join(odd),
                         record="legacy sys_info", offset=pos)
        pos = nxt
        main = "legacy object pickle"
        scan = scan_pickle(self.buf, pos, self.size)
        budget = [self.size - pos]

        def locate(info: StorageInfo, at: int) -> list[_Note]:
            info.record = f"storage {info.key}"
            budget[0] -= info.nbytes
            if budget[0] < 0:
                return [_Note("file.truncated", f"storage {info.key!r} of {info.nbytes} bytes: "
                              "the storages declared so far need more than the file holds", at)]
            return []

        audit = _Audit(legacy=True, big_endian=False, strict=self.strict, script=False,
                       locate=locate)
        paths = self.run_audit(audit, self.buf, pos, scan.end or self.size, main, base=0)
        self.report_scan(scan, main, 0, audit.refused, paths=paths)
        if scan.end is None:
            return
        pos = scan.end
        keys, nxt = self.legacy_value(pos, "legacy storage keys")
        if nxt is None:
            return
        if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
            self.add("legacy.keys", f"the storage key list is {_short(keys)}, not a list of "
                     "strings", record="legacy storage keys", offset=pos)
            return
        at_keys = pos
        pos = nxt
        listed: set[str] = set()
        for raw in keys:
            key = _text(raw)
            d = audit.decl.get(key)
            if key in listed:
                self.add("legacy.keys", f"storage {key!r} is listed twice",
                         record="legacy storage keys", offset=at_keys)
                return
            listed.add(key)
            if d is None:
                self.add("legacy.keys", f"storage {key!r} is listed but no object uses it (torch: "
                         "AssertionError)", record="legacy storage keys", offset=at_keys)
                unit = 1
            else:
                unit = d.stype.dtype.itemsize if d.stype.dtype else 1
            record = f"storage {key}"
            if pos + 8 > self.size:
                self.add("file.truncated", f"the file ends before the element count of storage "
                         f"{key!r}", record=record, offset=pos)
                return
            (count,) = struct.unpack_from("<q", self.buf, pos)
            if count < 0:
                self.add("storage.size_mismatch", f"storage {key!r} has a negative element count "
                         f"{count}", record=record, offset=pos)
                return
            nbytes = count * unit
            if d is not None and nbytes != d.info.nbytes:
                self.add("storage.size_mismatch", f"storage {key!r} holds {count} elements in the "
                         f"file but {d.info.nbytes} bytes are declared", record=record, offset=pos)
            if pos + 8 + nbytes > self.size:
                self.add("file.truncated", f"storage {key!r} of {nbytes} bytes at offset "
                         f"{pos + 8} runs past the end of the {self.size}-byte file",
                         record=record, offset=pos + 8)
                return
            pos += 8 + nbytes
        for key in audit.decl:
            if key not in listed:
                self.add("legacy.keys", f"storage {key!r} is used but not in the key list (torch "
                         "leaves it uninitialised)", record="legacy storage keys", offset=at_keys)
        if pos < self.size:
            self.add("legacy.trailing_data", f"{self.size - pos} bytes after the last storage",
                     offset=pos)

    # -- tar -------------------------------------------------------------------------------------
    def check_tar(self) -> None:
        self.add("format.tar", "the pre-0.4 tar format: torch.load refuses it with "
                 "weights_only=True and runs several pickles with weights_only=False", offset=0)
        try:
            from .formats.tar import tar_members
            members = tar_members(self.src)
        except ImportError:  # pragma: no cover - tar support not installed
            return
        except PthError as exc:
            self.add("file.truncated" if "past the end" in exc.message else "load.failed",
                     exc.message, record=exc.record, offset=exc.offset)
            return
        for m in members:
            if m.name in ("pickle", "sys_info") and m.regular:
                scan = scan_pickle(self.buf, m.offset, m.end)
                self.report_scan(scan, m.name, 0, main=False)

    # -- the reader's verdict --------------------------------------------------------------------
    def run_reader(self) -> None:
        from .reader import Checkpoint, _parse
        try:
            opts = Options(location_mapper(None), eager=False, mmap=self.src.mapped)
            Checkpoint(self.src, _parse(self.src, opts))
            return
        except PthError as exc:
            self.load_error = str(exc)
            if self.explained(exc):
                return
            code = "load.unsupported" if isinstance(exc, UnsupportedError) else "load.failed"
            self.add(code, exc.message, record=exc.record, offset=exc.offset,
                     key_path=exc.key_path)
        except (RecursionError, MemoryError) as exc:
            self.load_error = f"{type(exc).__name__}"
            self.add("load.failed", f"the reader ran out of resources ({type(exc).__name__})")
        except Exception as exc:    # a reader bug: report it, keep what was found
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.add("internal.error", f"pthfmt's reader failed: {type(exc).__name__}: {exc}")

    def explained(self, exc: PthError) -> bool:
        """Does a problem already reported stand for the reader's error?"""
        serious = [p for p in self.problems if p.severity in ("error", "warning")]
        if isinstance(exc, UnsafePickleError) and self.static_global_seen:
            return True
        for p in serious:
            if p.record is not None and re.search(
                    rf"(?<![\w/.]){re.escape(p.record)}(?![\w/.])", exc.message):
                return True
            if exc.record is not None and p.record == exc.record and (
                    exc.offset is None or p.offset is None or p.offset == exc.offset):
                return True
            if exc.key_path is not None and p.key_path == exc.key_path:
                return True
        if exc.record is None and exc.offset is None:
            return any(p.code.split(".")[0] in ("zip", "record", "format", "file", "legacy")
                       for p in serious)
        return False


def _local_zip64(extra: bytes, usize: int, csize: int) -> tuple[int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            body = extra[i + 4:i + 4 + length]
            vals = []
            j = 0
            for v in (usize, csize):
                if v == _U32 and j + 8 <= len(body):
                    v = struct.unpack_from("<Q", body, j)[0]
                    j += 8
                vals.append(v)
            return vals[0], vals[1]
        i += 4 + length
    return usize, csize


def validate(f: PathOrFile, *, strict: bool = False) -> Report:
    """Check a checkpoint file and return a :class:`Report` of every problem found.

    Never raises on bad content; only I/O errors (a missing or unreadable file) propagate as
    ``OSError``.  ``strict`` adds what torch accepts but a careful publisher would not ship
    (compressed or unaligned data, extra records, unreferenced storages, odd names).
    """
    if isinstance(f, (str, os.PathLike)) and is_index(f):
        return _validate_index(os.fspath(f), strict)
    try:
        src = Source(f)
    except PthError as exc:
        path = f if isinstance(f, str) else getattr(f, "name", None)
        code = "file.empty" if isinstance(exc, FormatError) else "load.failed"
        problem = Problem(code, "error", exc.message)
        return Report(str(path) if path is not None else None, None, False, [problem], strict,
                      exc.message)
    v = _Validator(src, strict)
    enabled = gc.isenabled()
    gc.disable()                # as in the reader: many small objects, no cycles to collect
    try:
        v.run()
    except OSError:
        raise
    except MemoryError:
        v.add("load.failed", f"out of memory validating the {src.size}-byte file")
    except Exception as exc:  # never raise on content: report our own failure
        v.add("internal.error", f"validation stopped: {type(exc).__name__}: {exc}")
    finally:
        if enabled:
            gc.enable()
    return v.finish()


def _validate_index(path: str, strict: bool) -> Report:
    """A sharded checkpoint: the index against the shards, then every shard, in one report
    (a shard's problems carry ``<shard>/`` before their record)."""
    index = find_index(path)
    problems: list[Problem] = []
    ok = True
    try:
        ShardedCheckpoint(index)
    except PthError as exc:
        problems.append(Problem("index.inconsistent", "error", exc.message,
                                os.path.basename(index)))
        ok = False
    folder = os.path.dirname(index)
    for shard in shard_names(index):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            continue                        # reported as index.inconsistent above
        report = validate(shard_path, strict=strict)
        ok = ok and report.ok
        for p in report.problems:
            problems.append(Problem(p.code, p.severity, p.message,
                                    f"{shard}/{p.record}" if p.record else shard, p.offset,
                                    p.key_path))
    return Report(index, "sharded", ok and not problems, problems, strict)

