"""The problem codes of :func:`pthfmt.validate` and the report it returns.

:data:`CHECKS` is the one table of codes (severity, title, what torch 2.13 does); it drives
the checks, the JSON, ``pthfmt validate --codes`` and the docs (:func:`codes_markdown`).
A :class:`Report` holds :class:`Problem` s, each a code, a message and a location.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "Check",
    "CHECKS",
    "CODES",
    "SEVERITIES",
    "MAX_PER_CODE",
    "Problem",
    "Report",
    "codes_markdown",
]

#: problems listed per code and file; the rest are counted
MAX_PER_CODE: Final = 100


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


E, W, N = "error", "warning", "info"  # N: an info note (nothing is wrong)

#: Every problem code: drives the checks, the JSON, ``pthfmt validate --codes`` and the docs.
CHECKS: Final[tuple[Check, ...]] = (
    # the file as a whole
    _c("file.empty", E, "the file is empty", "fails (EOFError)"),
    _c(
        "file.unknown_format",
        E,
        "not a torch checkpoint (no zip, legacy or tar signature)",
        "fails",
    ),
    _c("file.truncated", E, "data runs past the end of the file", "fails"),
    _c(
        "file.unreadable",
        E,
        "the file cannot be read (missing, no permission, an I/O error, a URL that cannot be "
        "fetched); not checked",
        "fails",
    ),
    _c(
        "file.not_regular",
        E,
        "not a regular file (a FIFO, device or socket): skipped, never opened",
        "reads what the pipe or device delivers",
    ),
    _c(
        "format.torchscript",
        N,
        "a TorchScript archive (has constants.pkl), not a checkpoint (a note: nothing is wrong)",
        "torch.load hands it to torch.jit.load (weights_only=True refuses it)",
    ),
    _c(
        "format.tar",
        W,
        "the pre-0.4 tar format",
        "loads only with weights_only=False (CVE-2025-32434 path)",
    ),
    _c(
        "format.polyglot",
        W,
        "the file is also a valid archive of another kind",
        "reads one reading; zip/tar tools and scanners see another",
    ),
    # zip structure
    _c(
        "zip.eocd_missing",
        E,
        "no zip end-of-central-directory record (truncated file?)",
        "fails: failed finding central directory",
    ),
    _c("zip.directory", E, "the central directory or zip64 records are damaged", "fails"),
    _c(
        "zip.local_header",
        E,
        "a local header is missing, damaged or runs past the file",
        "fails reading that record",
    ),
    _c(
        "zip.header_mismatch",
        W,
        "a local header or data descriptor disagrees with the central directory",
        "uses the central directory; streaming zip readers use the local header",
    ),
    _c(
        "zip.crc_mismatch",
        E,
        "a record's CRC-32 does not match its data",
        "never checks CRCs: loads the damaged data silently",
    ),
    _c(
        "zip.crc_zero",
        W,
        "records carry a zero CRC-32, so their integrity cannot be checked",
        "accepts (written by compute_crc32=False or skip_data)",
    ),
    _c(
        "zip.bad_deflate",
        E,
        "a compressed record is corrupt or inflates to another size than declared",
        "fails, or allocates what the stream says (zip bomb)",
    ),
    _c(
        "zip.inflate_limit",
        E,
        "compressed records inflate past pthfmt's bound (256:1 of the record, and of the "
        "whole file in all): a decompression bomb",
        "inflates them all",
    ),
    _c(
        "zip.method",
        E,
        "a record uses encryption or a compression torch cannot read",
        "fails: unsupported method",
    ),
    _c(
        "zip.stored_size",
        E,
        "a stored record's compressed and uncompressed sizes differ",
        "reads the uncompressed size; other readers take the compressed one",
    ),
    _c(
        "zip.overlap",
        E,
        "two zip members (or a member and the directory) share bytes",
        "reads each member by its offset, unaware of the overlap",
    ),
    _c(
        "zip.gap",
        W,
        "bytes between zip members that belong to no listed member",
        "ignores them; they can hide an unlisted member or a payload",
    ),
    _c("zip.trailing_data", W, "bytes after the end-of-central-directory record", "ignores them"),
    _c(
        "zip.prepended_data",
        E,
        "a zip archive preceded by other bytes",
        "fails: the file does not start with PK, so torch takes the legacy path",
    ),
    _c(
        "zip.duplicate_name",
        W,
        "two members have the same name",
        "reads one copy, which one depends on the layout; Python's zipfile reads the last",
    ),
    _c(
        "zip.case_collision",
        W,
        "member names equal but for case",
        "looks records up case-insensitively: which one it reads is ambiguous",
    ),
    _c(
        "zip.outside_folder",
        E,
        "a member lies outside the archive folder",
        "fails: file in archive is not in a subdirectory",
    ),
    _c(
        "zip.unsafe_name",
        W,
        "a member name with '..', an absolute path, a backslash or a control character",
        "ignores it; extracting tools may write outside the target",
    ),
    _c(
        "zip.compressed_data",
        W,
        "a storage record is compressed (not STORED)",
        "reads it, but torch.load(mmap=True) silently returns garbage for it",
    ),
    # records of torch's layout
    _c("record.missing", E, "a required record (data.pkl, version) is missing", "fails"),
    _c(
        "record.case_mismatch",
        W,
        "a record is found only by a case-insensitive lookup",
        "reads it (miniz lookups ignore case); other readers do not find it",
    ),
    _c(
        "record.version",
        E,
        "the version record is not a number in 1..10",
        "fails: Couldn't parse the version / range error",
    ),
    _c(
        "record.version_text",
        W,
        "the version record is not plain digits",
        "parses the leading digits (std::stoull) and ignores the rest",
    ),
    _c(
        "record.byteorder",
        E,
        "the byteorder record is not exactly 'little' or 'big'",
        "fails: Unknown endianness type",
    ),
    _c(
        "record.big_endian_v3",
        W,
        "a big-endian file holds uint16/32/64, complex32 or bits16 tensors",
        "does not byte-swap _rebuild_tensor_v3 dtypes: wrong values",
    ),
    _c(
        "record.storage_alignment",
        E,
        ".storage_alignment is not a positive integer",
        "fails: invalid literal for int()",
    ),
    _c(
        "record.format_version",
        W,
        ".format_version is set but the storage offsets do not follow miniz's layout",
        "with calculate_storage_offsets or a meta map_location, reads the wrong bytes",
    ),
    _c(
        "record.extra_pickle",
        W,
        "a pickle record that torch.load never reads",
        "ignores it; other tools and scanners may load it",
    ),
    # pickles
    _c(
        "pickle.global",
        E,
        "the pickle names a global outside the allowlist",
        "weights_only=True refuses; weights_only=False imports and may run it",
    ),
    _c(
        "pickle.extension",
        E,
        "the pickle uses a copyreg extension code (EXT1/2/4)",
        "weights_only=True refuses; weights_only=False looks the code up in copyreg",
    ),
    _c("pickle.malformed", E, "the pickle cannot be parsed", "fails"),
    _c(
        "pickle.limit",
        E,
        "the pickle asks for more memory or work than its size justifies "
        "(memo amplification, hash flooding)",
        "has no limits: can exhaust memory or CPU",
    ),
    _c("pickle.trailing_data", W, "bytes after the pickle's STOP opcode", "ignores them"),
    _c(
        "pickle.weights_only",
        W,
        "an opcode torch's weights_only unpickler does not implement",
        "weights_only=True (the default) fails: Unsupported operand",
    ),
    _c(
        "pickle.persistent_id",
        E,
        "a persistent id that is not a storage reference of the right shape",
        "fails, or (module ids) imports a class",
    ),
    # storages, tensors, dtypes, devices
    _c(
        "storage.declaration",
        E,
        "a storage reference with an invalid class, key, size or location",
        "fails",
    ),
    _c(
        "storage.missing_record",
        E,
        "a storage has no data record",
        "fails: failed locating file data/<key>",
    ),
    _c(
        "storage.size_mismatch",
        E,
        "a storage's data size is not numel x itemsize",
        "fails: record size does not match expected size",
    ),
    _c(
        "storage.redeclared",
        W,
        "one storage key declared with two types, sizes or devices",
        "silently keeps the first declaration (can reinterpret the bytes)",
    ),
    _c(
        "storage.dtype_conflict",
        W,
        "tensors read one storage as different dtypes",
        "loads; torch.save never writes this",
    ),
    _c(
        "tensor.view",
        E,
        "a tensor view lies outside its storage or has invalid metadata",
        "fails: Trying to resize storage that is not resizable",
    ),
    _c("tensor.metadata", E, "requires_grad or tensor metadata of the wrong type", "fails"),
    # quantized, sparse and nested tensors (pthfmt.validation.kinds)
    _c(
        "sparse.indices",
        E,
        "sparse tensor indices outside its shape, or compressed indices that are not a "
        "valid pointer array",
        "loads without checking (unless check_sparse_tensor_invariants is enabled); "
        "to_dense() and other operations then read or write out of bounds",
    ),
    _c(
        "sparse.order",
        W,
        "sparse indices unsorted or repeated where the layout requires them sorted (a "
        "COO tensor flagged coalesced; the plain indices of each compressed row or column)",
        "loads without checking; operations silently give wrong results",
    ),
    _c(
        "quantized.qparams",
        E,
        "quantization scales or zero points that are not finite, scales that are not "
        "positive, or a per-channel axis out of range",
        "loads (the axis is checked); dequantize() gives inf or nan",
    ),
    _c(
        "nested.view",
        E,
        "a nested tensor component lies outside its buffer",
        "fails or reads out of bounds",
    ),
    _c(
        "nested.jagged",
        E,
        "a jagged nested tensor (NJT) whose offsets decrease or lie outside its values, or "
        "whose lengths reach past them",
        "loads without checking; unbind() and operations fail or read out of bounds",
    ),
    _c(
        "nested.jagged_span",
        W,
        "a jagged nested tensor without lengths whose offsets do not run from 0 to the "
        "length of the values' ragged axis",
        "loads; unbind() fails (it splits the whole ragged axis by the offsets' steps)",
    ),
    _c("dtype.invalid", E, "a dtype that is not a storable torch dtype", "fails"),
    _c("device.invalid", E, "a malformed device tag", "fails: Invalid device string"),
    _c(
        "device.unknown",
        W,
        "a device tag torch cannot restore without map_location",
        "fails unless map_location remaps it; map_location='cpu' silently accepts anything",
    ),
    # legacy format
    _c(
        "legacy.header",
        E,
        "the legacy magic number, protocol or sys_info is wrong",
        "fails: Invalid magic number / Invalid protocol version",
    ),
    _c(
        "legacy.sys_info",
        W,
        "legacy sys_info says something torch ignores (big-endian, odd sizes)",
        "ignores sys_info: data is always read as little-endian",
    ),
    _c(
        "legacy.keys",
        E,
        "the legacy storage key list disagrees with the storages used",
        "fails (AssertionError), or leaves a storage uninitialised",
    ),
    _c(
        "legacy.v3_dtype",
        E,
        "a legacy-format file holds an UntypedStorage (v3 dtype)",
        "fails: UntypedStorage has no attribute 'dtype'",
    ),
    _c("legacy.trailing_data", W, "bytes after the last legacy storage", "ignores them"),
    _c(
        "legacy.no_checksum",
        N,
        "the legacy format has no checksums: damaged tensor data cannot be detected "
        "(a note: nothing is wrong)",
        "loads damaged data silently",
    ),
    _c(
        "data.skipped",
        N,
        "tensor data was not read (validate(data=False), --no-data): the CRC-32 of storage "
        "records is not checked (a note: nothing is wrong)",
        "reads the data when a tensor is used",
    ),
    # safetensors files (pthfmt.validation.safetensors)
    _c(
        "safetensors.header",
        E,
        "a safetensors header that is not strict JSON or runs past the file: too large, "
        "not UTF-8, a key given twice, NaN, a number of more than 40 digits, deep nesting, "
        "text after the object, an entry that is not an object of dtype, shape, data_offsets",
        "torch.load cannot read safetensors; the safetensors package refuses it",
    ),
    _c(
        "safetensors.metadata",
        E,
        "__metadata__ is not an object of strings to strings",
        "the safetensors package refuses it",
    ),
    _c(
        "safetensors.dtype",
        E,
        "a tensor entry whose dtype safetensors does not define",
        "the safetensors package refuses it",
    ),
    _c(
        "safetensors.shape",
        E,
        "a shape that is not a list of at most 64 non-negative ints, or whose non-zero "
        "dimensions hold more than 2**63 - 1 bytes",
        "the safetensors package refuses it (or numpy cannot make the array)",
    ),
    _c(
        "safetensors.size",
        E,
        "data_offsets hold a different number of bytes than shape x dtype",
        "the safetensors package refuses it",
    ),
    _c(
        "safetensors.offsets",
        E,
        "data_offsets out of order: overlapping, leaving a gap, past the end of the file, "
        "or bytes after the last tensor",
        "the safetensors package refuses it",
    ),
    _c(
        "safetensors.no_torch_dtype",
        W,
        "a tensor of a safetensors dtype torch does not have (F6_E2M3, F6_E3M2)",
        "safetensors loads it with numpy or ml_dtypes; no torch checkpoint can hold it",
    ),
    # sharded checkpoints (an index and its shards)
    _c(
        "index.inconsistent",
        E,
        "a sharded checkpoint's index and its shards disagree "
        "(a missing shard, a key in two shards, a key the index does not list)",
        "transformers fails, or loads some weights from the wrong shard",
    ),
    # the reader's verdict
    _c(
        "load.failed",
        E,
        "pthfmt's reader refuses the file for a reason no other check names",
        "see the message",
    ),
    _c(
        "load.unsupported",
        W,
        "content pthfmt does not read (quantized, sparse, nested...), "
        "so it was only partly checked",
        "loads it",
    ),
    _c("internal.error", E, "the validator itself failed (a pthfmt bug; please report it)", "-"),
    # --strict
    _c("zip.compressed", W, "a non-storage record is compressed", "reads it", True),
    _c(
        "zip.unaligned",
        W,
        "storage data not aligned to .storage_alignment (64)",
        "reads it; mmap pointers are unaligned",
        True,
    ),
    _c("zip.comment", W, "the archive has a comment", "ignores it", True),
    _c(
        "zip.archive_name",
        W,
        "an archive folder name torch.save never writes",
        "accepts any folder name",
        True,
    ),
    _c("record.extra", W, "a record torch.save never writes", "ignores it", True),
    _c(
        "record.version_value",
        W,
        "version is not 3 (what torch.save writes)",
        "accepts 1..10",
        True,
    ),
    _c(
        "record.no_byteorder",
        W,
        "no byteorder record",
        "assumes little-endian (torch < 2.1: native order)",
        True,
    ),
    _c(
        "storage.unreferenced",
        W,
        "a data record that no storage reference names",
        "ignores it",
        True,
    ),
    _c(
        "storage.key",
        W,
        "storage keys are not 0..N-1 as torch.save writes them",
        "accepts any key",
        True,
    ),
    _c(
        "storage.unviewed",
        W,
        "storage bytes that no tensor views",
        "loads them (torch.save writes whole storages of small views)",
        True,
    ),
    _c(
        "pickle.protocol",
        W,
        "the pickle protocol is not 2 (what torch.save writes)",
        "loads protocol 1..5 (weights_only=True only 2 and 3)",
        True,
    ),
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
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "record": self.record,
            "offset": self.offset,
            "key_path": self.key_path,
        }

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
        return {
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "strict": self.strict,
            "counts": {s: counts.get(s, 0) for s in SEVERITIES},
            "problems": [p.to_dict() for p in self.problems],
            "load_error": self.load_error,
        }
