"""Converting between torch checkpoints, safetensors and ``.npz``: :func:`convert`.

``convert(src, dst)`` reads ``src`` and writes ``dst`` in the format its extension names:

- ``.pth``, ``.pt``, ``.bin``, ``.ckpt``: a torch checkpoint (zip format, as ``torch.save``
  writes it; :func:`pthfmt.save` does the writing).  Input may also be a sharded checkpoint:
  its ``*.bin.index.json`` (or ``*.safetensors.index.json``) or the folder holding it.
- ``.safetensors``: written here, read here (the header is bounds-checked, nothing is
  unpickled, tensors are zero-copy views of the mapped file).
- ``.npz``: numpy's zip of ``.npy`` arrays (read without pickle; stored members are mapped,
  compressed ones are read one array at a time).

**Keys.**  Nested containers flatten to dotted key paths, as ``state_dict()`` keys are
(``model_state_dict.fc1.weight``, ``optimizer_state_dict.state.0.exp_avg``); a pickled
``nn.Module`` stands for its ``state_dict()``.  A torch output is that flat dict.

**Non-tensor values** (epoch, loss, optimizer hyper-parameters) that are ``None``, bools,
numbers, strings or lists of them travel as JSON: in safetensors as ``__metadata__`` entries
``"pthfmt:<key path>": "<JSON>"`` (beside ``"format": "pt"``, which Hugging Face loaders
expect); in ``.npz`` in the sidecar member ``__pthfmt__`` (a 0-d string array holding a JSON
object).  A torch output gets them back as entries of its dict.  What a format cannot hold
(a tensor dtype it lacks, a value that is not JSON, an object of an unknown class) is left
out and named in a warning: :func:`convert` returns the warnings, and never drops anything
without one.

**Dtypes.**  safetensors has no complex128, complex32, quantized or ``bits`` types; those
tensors are left out (warned).  ``float4_e2m1fn_x2`` is safetensors' ``F4`` with the last
dimension counted in 4-bit elements (twice torch's).  ``.npy`` cannot describe bfloat16,
float8, complex32, float4 or ``bits`` types: their raw bits are stored as unsigned integers
of the same width and the sidecar names the dtype, so that ``.npz`` to torch restores it.

**Aliasing.**  safetensors and ``.npz`` have no shared storages: tensors that share one
(tied weights, views) are written as separate copies (warned).  Every tensor is written
contiguous, in C order.

**Memory and atomicity.**  Tensors stream one by one from the mapped input into the output
in pieces of :data:`pthfmt.writer.CHUNK` bytes; the output is written to a temporary file
beside it and renamed into place only when complete (as :func:`pthfmt.save`), so a failed
conversion leaves no partial file and an existing output untouched.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import mmap as _mmap
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import numpy as np

from .errors import CorruptError, FormatError, LimitError, PthError, UnsupportedError
from .model.device import Device
from .model.dtypes import DTypeInfo, by_name, from_numpy
from .model.modules import is_module, state_dict
from .model.stub import Stub
from .model.tensor import MAX_NDIM, StorageInfo, TensorRef
from .sharded import find_index, unique_keys
from .writer import _array_chunks, _c_strides, _is_big, _write_atomically, save

__all__ = [
    "convert",
    "Conversion",
    "FORMATS",
    "SAFETENSORS_DTYPES",
    "NPZ_RAW_DTYPES",
    "META_PREFIX",
    "SIDECAR",
    "UnknownFormatError",
    "output_format",
    "read_safetensors_header",
]

#: The output formats, and the extensions that name them.
FORMATS: Final = ("pth", "safetensors", "npz")
EXTENSIONS: Final = {".pth": "pth", ".pt": "pth", ".bin": "pth", ".ckpt": "pth",
                     ".safetensors": "safetensors", ".npz": "npz"}

#: torch dtype -> safetensors dtype, for every dtype both have.
SAFETENSORS_DTYPES: Final[dict[str, str]] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0", "float4_e2m1fn_x2": "F4",
}
_FROM_SAFETENSORS: Final = {v: k for k, v in SAFETENSORS_DTYPES.items()}
#: Bits per element of every safetensors 0.8 dtype (F6_* have no torch dtype).
_SAFETENSORS_BITS: Final[dict[str, int]] = {
    **{v: 8 * by_name(k).itemsize for k, v in SAFETENSORS_DTYPES.items()  # type: ignore[union-attr]
       if v != "F4"},
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
#: torch dtypes whose ``.npy`` form is their raw bits as this unsigned integer type.
NPZ_RAW_DTYPES: Final[dict[str, str]] = {
    "bfloat16": "uint16", "complex32": "uint32", "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8", "float8_e4m3fnuz": "uint8", "float8_e5m2fnuz": "uint8",
    "float8_e8m0fnu": "uint8", "float4_e2m1fn_x2": "uint8", "bits8": "uint8",
    "bits16": "uint16", "bits1x8": "uint8", "bits2x4": "uint8", "bits4x2": "uint8",
}

#: Prefix of the safetensors ``__metadata__`` keys that carry non-tensor values.
META_PREFIX: Final = "pthfmt:"
#: Name of the ``.npz`` member holding dtypes, values and metadata (JSON).
SIDECAR: Final = "__pthfmt__"
#: safetensors' own limit on the header.
MAX_HEADER: Final = 100_000_000
#: Containers nested deeper than this are refused (a real checkpoint is a few levels deep).
MAX_DEPTH: Final = 1000
_LIST: Final = 8             # names listed per note (what is left out is listed in full)
_SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)
#: What zipfile raises for damaged archives besides OSError.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
               zlib.error, struct.error)


class UnknownFormatError(ValueError):
    """The format of a file cannot be told from its extension (a usage error)."""


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
            format: str | None = None, key: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Convert ``src`` to ``dst``; returns the warnings (what was left out, and why).

    ``format`` (``"pth"``, ``"safetensors"``, ``"npz"``) overrides ``dst``'s extension.
    ``key`` converts only the entries under that dotted key path, without the prefix
    (``key="model_state_dict"``).  ``progress(done, total)`` is called as bytes are written.
    Raises :class:`UnknownFormatError` when a format cannot be told, a
    :class:`~pthfmt.PthError` for a bad input, ``OSError`` for files that cannot be read
    or written; ``dst`` is then unchanged.
    """
    with Conversion(src, dst, format=format, key=key) as job:
        job.write(progress)
        return list(job.warnings)


def output_format(path: str, format: str | None = None) -> str:
    """``"pth"``, ``"safetensors"`` or ``"npz"``: ``format`` if given, else by extension."""
    if format is not None:
        if format not in FORMATS:
            raise UnknownFormatError(f"unknown format {format!r} (choose from "
                                     f"{', '.join(FORMATS)})")
        return format
    kind = EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        ext = os.path.splitext(path)[1]
        what = f"the extension {ext!r}" if ext else "a name without an extension"
        raise UnknownFormatError(f"cannot tell the output format from {what}: use .pth/.pt/"
                                 ".bin, .safetensors or .npz (or --format)")
    return kind


# -- what is converted -------------------------------------------------------------------------

@dataclass(eq=False)
class _Item:
    """One tensor to write: its dtype and torch shape, and how to get its data."""

    name: str
    dtype: DTypeInfo
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]        # the data, any strides and byte order
    for_save: Callable[[], Any]           # what pthfmt.save is handed (TensorRef or array)
    storage: Any = None                   # identity of the memory it views
    release: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(eq=False)
class _Value:
    name: str
    value: Any


@dataclass
class _Content:
    """Everything read from the input, in order, before anything is written."""

    entries: list[_Item | _Value] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)   # raw, carried as is
    warnings: list[str] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)


def _listing(names: list[str], limit: int | None = None) -> str:
    """Names joined by commas: all of them for what is left out (nothing is dropped
    unnamed), the first ``limit`` for notes."""
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def _n(things: list[Any], one: str, many: str | None = None) -> str:
    return f"{len(things)} {one if len(things) == 1 else many or one + 's'}"


def _kind(value: Any) -> str:
    if isinstance(value, Stub):
        return value.qualname
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


class Conversion:
    """A planned conversion: the input is read and checked on construction (nothing is
    written), :meth:`write` writes the output.  ``warnings`` lists what is left out."""

    def __init__(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 format: str | None = None, key: str | None = None) -> None:
        self.src = os.fspath(src)
        self.dst = os.fspath(dst)
        self.format = output_format(self.dst, format)
        self.source_format = _input_format(self.src)
        if os.path.isdir(self.dst):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.dst)
        self._content = _Content()
        try:
            _READERS[self.source_format](self.src, self._content)
            if key:
                _select(self._content, key)
            self._plan()
        except BaseException:
            self.close()
            raise

    # -- planning ------------------------------------------------------------------------------
    def _plan(self) -> None:
        """Decide what is written; name everything left out in a warning."""
        content, fmt = self._content, self.format
        carry = _pth_value if fmt == "pth" else _json_value
        names: set[str] = set()
        duplicate: list[str] = []
        no_dtype: list[str] = []
        reserved: list[str] = []
        lost: list[str] = []
        self.entries: list[_Item | _Value] = []
        for entry in content.entries:
            if entry.name == "" and isinstance(entry, _Item):
                entry.name = "tensor"
                content.warnings.append("the input is a single tensor: written under the key "
                                        "'tensor'")
            if entry.name in names:
                duplicate.append(entry.name)
                continue
            names.add(entry.name)
            if isinstance(entry, _Value):
                ok, plain = carry(entry.value)
                if ok:
                    self.entries.append(_Value(entry.name, plain))
                else:
                    lost.append(f"{entry.name or '<root>'} ({_kind(entry.value)})")
                continue
            why = _unwritable(entry, fmt)
            if why is None:
                self.entries.append(entry)
            elif why == "reserved":
                reserved.append(entry.name)
            else:
                no_dtype.append(f"{entry.name} ({why})")
        self.items = [e for e in self.entries if isinstance(e, _Item)]
        self.values = [e for e in self.entries if isinstance(e, _Value)]
        warn = content.warnings.append
        if duplicate:
            warn(f"left out {_n(duplicate, 'entry', 'entries')} whose flattened key an earlier "
                 f"entry already has: {_listing(duplicate)}")
        if reserved:
            warn(f"left out {_n(reserved, 'tensor')} with a name {fmt} reserves: "
                 f"{_listing(reserved)}")
        if no_dtype:
            what = "(pthfmt does not write quantized tensors)" if fmt == "pth" else \
                f"with a dtype {fmt} cannot hold"
            warn(f"left out {_n(no_dtype, 'tensor')} {what}: {_listing(no_dtype)}")
        if lost:
            where = {"pth": "a torch checkpoint", "safetensors": "safetensors metadata",
                     "npz": "the npz sidecar"}[fmt]
            warn(f"left out {_n(lost, 'value')} that {where} cannot carry: "
                 f"{_listing(lost)}")
        if fmt == "npz":
            raw = sorted({i.dtype.name for i in self.items if i.dtype.name in NPZ_RAW_DTYPES})
            if raw:
                warn(f"npz cannot describe {', '.join(raw)}: those tensors are stored as "
                     f"their raw bits (unsigned integers) and the {SIDECAR!r} member records "
                     "their dtype (pthfmt restores it; numpy alone sees integers)")
        if fmt != "pth":
            users: dict[int, list[str]] = {}
            for item in self.items:
                if item.storage is not None:
                    users.setdefault(id(item.storage), []).append(item.name)
            shared = [" = ".join(g) for g in users.values() if len(g) > 1]
            if shared:
                warn(f"{fmt} has no shared storage: wrote separate copies of "
                     f"{_n(shared, 'group')} of tensors sharing one: {_listing(shared, _LIST)}")
        self.metadata = dict(content.metadata)
        if fmt == "pth":
            extra = [k for k, v in self.metadata.items() if not (k == "format" and v == "pt")]
            if extra:
                warn(f"left out file metadata a torch checkpoint has no place for: "
                     f"{_listing(extra)}")
            self.metadata = {}

    @property
    def warnings(self) -> list[str]:
        return self._content.warnings

    @property
    def nbytes(self) -> int:
        """Tensor bytes to write (the progress total)."""
        if self.format != "pth":
            return sum(i.nbytes for i in self.items)
        seen: dict[int, int] = {}
        for item in self.items:
            size = item.storage.nbytes if isinstance(item.storage, StorageInfo) else item.nbytes
            seen[id(item.storage) if item.storage is not None else id(item)] = size
        return sum(seen.values())

    # -- writing -------------------------------------------------------------------------------
    def write(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Write the output atomically (a temporary file renamed into place)."""
        total = self.nbytes
        emit = {"pth": self._emit_pth, "safetensors": self._emit_safetensors,
                "npz": self._emit_npz}[self.format]

        def run(write: Callable[[Any], None]) -> None:
            if progress is None:
                emit(write)
                return
            done = 0

            def counted(data: Any) -> None:
                nonlocal done
                write(data)
                done += memoryview(data).nbytes
                progress(done, total)

            emit(counted)

        _write_atomically(self.dst, run)

    def _emit_pth(self, write: Callable[[Any], None]) -> None:
        from .formats.zip.writer import archive_name_for_path
        obj = {e.name: (e.for_save() if isinstance(e, _Item) else e.value)
               for e in self.entries}
        save(obj, _Sink(write), archive_name=archive_name_for_path(self.dst))

    def _emit_safetensors(self, write: Callable[[Any], None]) -> None:
        metadata = dict(self.metadata)
        metadata.setdefault("format", "pt")
        for value in self.values:
            metadata[META_PREFIX + value.name] = json.dumps(value.value)
        # Data in order of falling element size, so that every tensor is aligned in the file
        # (the header lists them in input order).
        order = sorted(self.items, key=lambda i: -i.dtype.itemsize)
        offsets: dict[int, tuple[int, int]] = {}
        pos = 0
        for item in order:
            offsets[id(item)] = (pos, pos + item.nbytes)
            pos += item.nbytes
        header: dict[str, Any] = {"__metadata__": metadata}
        for item in self.items:
            shape = list(item.shape)
            if item.dtype.name == "float4_e2m1fn_x2":
                shape[-1] *= 2
            header[item.name] = {"dtype": SAFETENSORS_DTYPES[item.dtype.name], "shape": shape,
                                 "data_offsets": list(offsets[id(item)])}
        text = json.dumps(header, separators=(",", ":")).encode("ascii")
        text += b" " * (-len(text) % 8)
        if len(text) > MAX_HEADER:
            raise LimitError(f"the safetensors header would be {len(text)} bytes; safetensors "
                             f"reads at most {MAX_HEADER}")
        write(struct.pack("<Q", len(text)))
        write(text)
        for item in order:
            _write_item(write, item)

    def _emit_npz(self, write: Callable[[Any], None]) -> None:
        dtypes: dict[str, str] = {}
        with zipfile.ZipFile(_Sink(write), "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for item in self.items:
                array = item.load()
                raw = NPZ_RAW_DTYPES.get(item.dtype.name)
                if raw is not None:
                    array = array.view(np.dtype(raw).newbyteorder(array.dtype.byteorder))
                    dtypes[item.name] = item.dtype.name
                if array.shape != item.shape:
                    raise CorruptError(f"{item.name}: data of shape {array.shape}, expected "
                                       f"{item.shape}")
                with zf.open(item.name + ".npy", "w", force_zip64=True) as fp:
                    np.lib.format.write_array(fp, array, allow_pickle=False)
                del array
                if item.release is not None:
                    item.release()
            sidecar: dict[str, Any] = {}
            if dtypes:
                sidecar["dtypes"] = dtypes
            if self.values:
                sidecar["values"] = {v.name: v.value for v in self.values}
            if self.metadata:
                sidecar["metadata"] = self.metadata
            if sidecar:
                text = json.dumps({"pthfmt": 1, **sidecar})
                with zf.open(SIDECAR + ".npy", "w", force_zip64=True) as fp:
                    np.lib.format.write_array(fp, np.array(text), allow_pickle=False)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        closers, self._content.closers = self._content.closers, []
        for close in reversed(closers):
            try:
                close()
            except (BufferError, OSError):      # an array still views a mapping: GC frees it
                pass

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _unwritable(item: _Item, fmt: str) -> str | None:
    """Why ``item`` cannot be written in ``fmt`` (``"reserved"`` for its name), else None."""
    if fmt == "pth":
        return item.dtype.name if item.dtype.kind == "quantized" else None
    if item.name == ("__metadata__" if fmt == "safetensors" else SIDECAR):
        return "reserved"
    if fmt == "safetensors":
        code = SAFETENSORS_DTYPES.get(item.dtype.name)
        if code is None:
            return item.dtype.name
        if code == "F4" and not item.shape:
            return "0-d float4_e2m1fn_x2: F4 needs a last dimension"
    elif item.dtype.kind == "quantized":
        return item.dtype.name
    return None


class _Sink:
    """A write-only, unseekable file object over a ``write`` function."""

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write

    def write(self, data: Any) -> int:
        self._write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass


def _write_item(write: Callable[[Any], None], item: _Item) -> None:
    """A tensor's bytes in C order, little-endian, in pieces of about CHUNK bytes."""
    array = item.load()
    if array.shape != item.shape:
        raise CorruptError(f"{item.name}: data of shape {array.shape}, expected {item.shape}")
    written = 0
    for chunk in _array_chunks(array, item.dtype.swap, _is_big(array.dtype)):
        write(chunk)
        written += chunk.nbytes
    if written != item.nbytes:
        raise CorruptError(f"{item.name}: wrote {written} bytes, expected {item.nbytes}")
    if item.release is not None:
        item.release()


# -- values --------------------------------------------------------------------------------------

def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json_value(value: Any) -> tuple[bool, Any]:
    """``(True, plain)`` for None, bools, numbers, strings, lists of them and ``{}``."""
    value = _scalar(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, (list, tuple)):
        items = [_scalar(v) for v in value]
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            return True, items
    if isinstance(value, dict) and not value:
        return True, {}
    return False, None


def _pth_value(value: Any) -> tuple[bool, Any]:
    """What :func:`pthfmt.save` writes for a leaf value: scalars, bytes, devices, dtypes,
    lists and tuples of them, empty containers.  Objects of unknown classes are not."""
    from .model.dtypes import DType

    def plain(v: Any) -> bool:
        return isinstance(v, (*_SCALARS, Device, DType))

    if plain(value):
        return True, value
    if isinstance(value, (list, tuple)) and all(plain(v) for v in value):
        return True, value
    if isinstance(value, dict) and not value:
        return True, {}
    return False, None


# -- input formats -------------------------------------------------------------------------------

def _input_format(path: str) -> str:
    """``pth``, ``safetensors``, ``npz``, ``sharded`` or ``sharded-safetensors``: by content
    where it is telling, else by extension."""
    if os.path.isdir(path) or path.endswith(".index.json"):
        index = _find_index(path)
        return "sharded-safetensors" if index.endswith(".safetensors.index.json") else "sharded"
    with open(path, "rb") as fh:
        head = fh.read(512)
        size = os.fstat(fh.fileno()).st_size
        names: list[str] = []
        if head[:4] == b"PK\x03\x04":
            fh.seek(0)
            try:
                with zipfile.ZipFile(fh) as zf:
                    names = zf.namelist()
            except Exception:             # a sniff: unreadable means "not told by content"
                names = []
    if len(head) >= 9 and head[8:9] == b"{" and \
            int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if names:
        if any(n == "data.pkl" or n.endswith("/data.pkl") or n.endswith("/constants.pkl")
               for n in names):
            return "pth"
        if all(n.endswith(".npy") for n in names):
            return "npz"
    ext = os.path.splitext(path)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if head[:1] == b"\x80" or (len(head) >= 262 and head[257:262] == b"ustar"):
        return "pth"
    raise UnknownFormatError(f"cannot tell the format from the extension "
                             f"{ext or '(none)'!r} or the content: expected a torch "
                             "checkpoint, a .safetensors or an .npz file")


def _find_index(path: str) -> str:
    return find_index(path, (".index.json",))


def _select(content: _Content, key: str) -> None:
    """Keep the entries under ``key`` (dotted), without the prefix."""
    prefix = key.rstrip(".") + "."
    kept, outside = [], []
    for entry in content.entries:
        if entry.name.startswith(prefix):
            entry.name = entry.name[len(prefix):]
            kept.append(entry)
        elif entry.name == key:
            kept.append(entry)
        else:
            outside.append(entry.name or "<root>")
    if not kept:
        raise FormatError(f"no entries under the key {key!r}")
    content.entries = kept
    if outside:
        groups: dict[str, int] = {}
        for name in outside:
            top = name.split(".", 1)[0]
            groups[top] = groups.get(top, 0) + 1
        shown = [f"{top} ({n} entries)" if n > 1 else top for top, n in groups.items()]
        content.warnings.append(f"converted only {key!r}: left out "
                                f"{_n(outside, 'other entry', 'other entries')}: "
                                f"{_listing(shown)}")


# torch checkpoints

def _read_torch(path: str, content: _Content) -> None:
    from .reader import open as open_checkpoint
    ck = open_checkpoint(path, map_location="cpu", unknown="stub")
    content.closers.append(ck.close)
    for name, value in _flatten(ck.obj, content.warnings):
        if isinstance(value, TensorRef):
            content.entries.append(_ref_item(name, value))
        else:
            content.entries.append(_Value(name, value))


def _ref_item(name: str, ref: TensorRef) -> _Item:
    def release() -> None:
        # A compressed storage is inflated into memory once and cached: drop it when its
        # last tensor is written, so that memory stays bounded.  (Mapped ones cost nothing.)
        storage = ref.storage
        if storage.compressed:
            storage._buffer = None

    return _Item(name, ref.dtype_info, ref.shape, lambda: ref.numpy(mmap=True), lambda: ref,
                 storage=ref.storage, release=release)


def _flatten(root: Any, warnings: list[str]) -> Iterator[tuple[str, Any]]:
    """``(dotted key path, leaf)`` in file order: tensors, and values (scalars, lists of
    scalars, empty containers, other objects).  A module stands for its ``state_dict()``;
    a container reached again is walked once (named in a warning)."""
    seen: dict[int, str] = {}
    again: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, (TensorRef, *_SCALARS)):
            yield path, value
            continue
        if isinstance(value, (dict, list, tuple, Stub)):
            if id(value) in seen:
                again.append(f"{path or '<root>'} (= {seen[id(value)] or '<root>'})")
                continue
            seen[id(value)] = path
        if isinstance(value, Stub) and is_module(value):
            try:
                value = state_dict(value)
            except (PthError, TypeError):
                yield path, value
                continue
        if isinstance(value, (dict, list, tuple)):
            if not value or (isinstance(value, (list, tuple)) and
                             all(isinstance(v, _SCALARS) for v in value)):
                yield path, value
                continue
            if depth >= MAX_DEPTH:
                raise FormatError(f"containers nested more than {MAX_DEPTH} levels deep",
                                  key_path=path)
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            prefix = f"{path}." if path else ""
            stack.extend((f"{prefix}{k}", v, depth + 1) for k, v in reversed(items))
            continue
        yield path, value
    if again:
        warnings.append(f"written once, under the first key: {_n(again, 'container')} the "
                        f"input reaches again: {_listing(again)}")


def _read_sharded(path: str, content: _Content) -> None:
    from .sharded import load_sharded
    sharded = load_sharded(_find_index(path), map_location="cpu")
    for ck in sharded.shards.values():
        content.closers.append(ck.close)
    for name, ref in sharded.refs.items():
        content.entries.append(_ref_item(name, ref))
    for ck in sharded.shards.values():        # anything besides tensors in a shard
        content.entries.extend(_Value(name, value) for name, value in
                               _flatten(ck.obj, content.warnings)
                               if not isinstance(value, TensorRef))
    _index_metadata(sharded.metadata, content)


def _index_metadata(metadata: Any, content: _Content) -> None:
    if not isinstance(metadata, dict):
        return
    for k, v in metadata.items():
        if k != "total_size":             # the shards' size: meaningless once merged
            content.metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)


# safetensors

@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str                 # safetensors code
    shape: tuple[int, ...]     # safetensors shape (F4: 4-bit elements)
    begin: int                 # absolute file offsets
    end: int


def read_safetensors_header(buf: Any, size: int) -> tuple[list[_Entry], dict[str, str]]:
    """Parse and check a safetensors header from ``buf`` (bytes or a mapping of a
    ``size``-byte file): ``(entries in header order, __metadata__)``.  Every offset and size
    is checked against the file; nothing is unpickled or evaluated."""
    if size < 8:
        raise CorruptError(f"a {size}-byte file is too short for a safetensors header")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > MAX_HEADER:
        raise LimitError(f"safetensors header of {n} bytes (safetensors reads at most "
                         f"{MAX_HEADER})")
    if n > size - 8:
        raise CorruptError(f"safetensors header of {n} bytes runs past the end of the "
                           f"{size}-byte file")
    try:
        doc = json.loads(bytes(buf[8:8 + n]).decode("utf-8"),
                         object_pairs_hook=unique_keys("the safetensors header"))
    except UnicodeDecodeError:
        raise FormatError("safetensors header is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"safetensors header is not JSON ({exc})") from None
    except RecursionError:
        raise FormatError("safetensors header is nested too deeply") from None
    if not isinstance(doc, dict):
        raise FormatError("safetensors header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str)
                                                 for v in metadata.values()):
        raise FormatError("safetensors __metadata__ must map strings to strings")
    start, data = 8 + n, size - 8 - n
    entries = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise FormatError(f"safetensors entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _SAFETENSORS_BITS:
            raise UnsupportedError(f"safetensors entry {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
                type(d) is int and 0 <= d < 2**62 for d in shape):
            raise FormatError(f"safetensors entry {name!r}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise FormatError(f"safetensors entry {name!r}: bad data_offsets {offsets!r}")
        bits = math.prod(shape) * _SAFETENSORS_BITS[dtype]
        if bits % 8:
            raise FormatError(f"safetensors entry {name!r}: {dtype} shape {shape} is not a "
                              "whole number of bytes")
        if offsets[1] > data:
            raise CorruptError(f"safetensors entry {name!r}: data_offsets {offsets} run past "
                               f"the {data} data bytes of the file")
        if offsets[1] - offsets[0] != bits // 8:
            raise CorruptError(f"safetensors entry {name!r}: {dtype} shape {shape} needs "
                               f"{bits // 8} bytes, data_offsets {offsets} hold "
                               f"{offsets[1] - offsets[0]}")
        entries.append(_Entry(name, dtype, tuple(shape), start + offsets[0], start + offsets[1]))
    spans = sorted((e.begin, e.end, e.name) for e in entries if e.end > e.begin)
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise FormatError(f"safetensors entries {a!r} and {b!r} overlap")
    return entries, metadata


def _map(path: str, content: _Content) -> tuple[Any, int]:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise FormatError("empty file")
        mm = _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
    content.closers.append(mm.close)
    return mm, size


def _little(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<") if dtype.itemsize > 1 and dtype.byteorder == "=" and \
        dtype.kind in "biufc" else dtype


def _safetensors_items(path: str, content: _Content,
                       shard: str | None = None) -> list[_Entry]:
    mm, size = _map(path, content)
    entries, metadata = read_safetensors_header(mm, size)
    no_torch = []
    for entry in entries:
        name = _FROM_SAFETENSORS.get(entry.dtype)
        shape = entry.shape
        if name == "float4_e2m1fn_x2":
            if not shape or shape[-1] % 2:
                no_torch.append(f"{entry.name} (F4 shape {list(shape)}: not whole bytes "
                                "in the last dimension)")
                continue
            shape = (*shape[:-1], shape[-1] // 2)
        if name is None:
            no_torch.append(f"{entry.name} ({entry.dtype})")
            continue
        info = by_name(name)
        assert info is not None
        dtype = _little(info.numpy)
        count = math.prod(shape)

        def load(e: _Entry = entry, dt: np.dtype = dtype, n: int = count,
                 s: tuple[int, ...] = shape) -> np.ndarray:
            return np.frombuffer(mm, dt, count=n, offset=e.begin).reshape(s)

        content.entries.append(_Item(entry.name, info, shape, load, load))
    if no_torch:
        content.warnings.append(f"left out {_n(no_torch, 'tensor')}"
                                f"{f' of {shard}' if shard else ''} with no torch dtype: "
                                f"{_listing(no_torch)}")
    for k, v in metadata.items():
        if k.startswith(META_PREFIX):
            try:
                value = json.loads(v)
            except (json.JSONDecodeError, RecursionError):
                value = v
            content.entries.append(_Value(k[len(META_PREFIX):], value))
        else:
            content.metadata.setdefault(k, v)
    return entries


def _read_safetensors(path: str, content: _Content) -> None:
    _safetensors_items(path, content)


def _read_sharded_safetensors(path: str, content: _Content) -> None:
    index = _find_index(path)
    folder = os.path.dirname(index)
    with open(index, "rb") as fh:
        text = fh.read(MAX_HEADER + 1)
    if len(text) > MAX_HEADER:
        raise LimitError(f"index larger than {MAX_HEADER} bytes")
    try:
        doc = json.loads(text.decode("utf-8"),
                         object_pairs_hook=unique_keys("the index"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"not a JSON index ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):
        raise FormatError("no 'weight_map' of key -> shard file in the index")
    found: set[str] = set()
    for shard in dict.fromkeys(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"shard name {shard!r} is a path")
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FormatError(f"shard {shard!r} named by the index is missing")
        try:
            entries = _safetensors_items(shard_path, content, shard)
        except PthError as exc:
            raise type(exc)(f"shard {shard}: {exc}") from None
        for entry in entries:
            if weight_map.get(entry.name) != shard or entry.name in found:
                raise FormatError(f"shard {shard!r} holds {entry.name!r}, which the index "
                                  f"puts in {weight_map.get(entry.name)!r}")
            found.add(entry.name)
    missing = [k for k in weight_map if k not in found]
    if missing:
        raise FormatError(f"key {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}")
    _index_metadata(doc.get("metadata"), content)


# npz

def _read_npz(path: str, content: _Content) -> None:
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise FormatError("not an npz file (no zip signature)")
    try:
        npz = np.load(path, allow_pickle=False)
    except _ZIP_ERRORS as exc:
        raise FormatError(f"not an npz file ({exc})") from None
    content.closers.append(npz.close)
    mm, size = _map(path, content)
    members = [i for i in npz.zip.infolist() if not i.is_dir()]
    sidecar: dict[str, Any] = {}
    if any(i.filename == SIDECAR + ".npy" for i in members):
        sidecar = _read_sidecar(npz, content)
    dtypes = sidecar.get("dtypes", {})
    skipped = []
    for info in members:
        if info.filename == SIDECAR + ".npy":
            continue
        if not info.filename.endswith(".npy"):
            skipped.append(f"{info.filename} (not an .npy array)")
            continue
        name = info.filename[:-4]
        try:
            item = _npz_item(npz, info, name, dtypes.get(name), mm, size)
        except PthError:
            raise
        except (ValueError, *_ZIP_ERRORS) as exc:      # numpy's header parser, zipfile
            raise FormatError(f"member {info.filename!r}: {exc}") from None
        if isinstance(item, str):
            skipped.append(f"{name} ({item})")
        else:
            content.entries.append(item)
    if skipped:
        content.warnings.append(f"left out {_n(skipped, 'npz member')} that cannot be a "
                                f"tensor: {_listing(skipped)}")
    values = sidecar.get("values", {})
    if isinstance(values, dict):
        content.entries.extend(_Value(str(k), v) for k, v in values.items())
    metadata = sidecar.get("metadata", {})
    if isinstance(metadata, dict):
        content.metadata.update({str(k): v if isinstance(v, str) else json.dumps(v)
                                 for k, v in metadata.items()})


def _npy_header(npz: Any, info: zipfile.ZipInfo
                ) -> tuple[tuple[int, ...], bool, np.dtype, int] | str:
    """``(shape, fortran_order, dtype, header length)`` of an ``.npy`` member, checked
    against the member's size (so that no reader allocates what the file does not hold),
    or why it cannot be read."""
    fmt = np.lib.format
    with npz.zip.open(info) as fp:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            return f".npy version {version[0]}.{version[1]}"
        header = fp.tell()
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if header + nbytes > info.file_size:
        raise CorruptError(f"member {info.filename!r}: {nbytes} bytes of {shape} {dtype} "
                           f"do not fit its {info.file_size} bytes")
    return shape, bool(fortran), dtype, header


def _read_sidecar(npz: Any, content: _Content) -> dict[str, Any]:
    info = npz.zip.getinfo(SIDECAR + ".npy")
    try:
        parsed = _npy_header(npz, info)
        if isinstance(parsed, str) or parsed[0] != () or parsed[2].kind != "U":
            raise ValueError("not a 0-d string array")
        with npz.zip.open(info) as fp:
            array = np.lib.format.read_array(fp, allow_pickle=False)
        doc = json.loads(str(array[()]))
        if not isinstance(doc, dict) or not isinstance(doc.get("dtypes", {}), dict):
            raise ValueError("not a JSON object")
        return doc
    except _ZIP_ERRORS as exc:
        raise CorruptError(f"member {info.filename!r}: {exc}") from None
    except (ValueError, RecursionError) as exc:     # PthError included: not our sidecar
        content.warnings.append(f"the {SIDECAR!r} member is not pthfmt's sidecar ({exc}): "
                                "ignored, so raw-bit dtypes and values are not restored")
        return {}


def _npz_item(npz: Any, info: zipfile.ZipInfo, name: str, torch_name: Any, mm: Any,
              size: int) -> _Item | str:
    """One array of an npz as an item, or why it cannot be one."""
    parsed = _npy_header(npz, info)
    if isinstance(parsed, str):
        return parsed
    shape, fortran, dtype, header = parsed
    if dtype.hasobject:
        return "object array: would need pickle"
    info_row: DTypeInfo | None
    if torch_name is not None:
        info_row = by_name(str(torch_name))
        raw = NPZ_RAW_DTYPES.get(info_row.name) if info_row else None
        if info_row is None or raw is None or np.dtype(raw) != dtype.newbyteorder("="):
            return f"sidecar dtype {torch_name!r} does not fit the stored {dtype}"
    else:
        info_row = from_numpy(dtype) if dtype.fields is None else None
        if info_row is None or info_row.numpy.metadata:
            return f"dtype {dtype} has no torch equivalent"
    nbytes = math.prod(shape) * dtype.itemsize
    target = info_row.numpy if torch_name is not None else dtype

    def restore(array: np.ndarray) -> np.ndarray:
        if torch_name is None:
            return array
        if array.dtype.itemsize > 1 and _is_big(array.dtype) != (sys.byteorder == "big"):
            array = array.byteswap().view(array.dtype.newbyteorder())   # raw bits: host order
        return array.view(target)

    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
    if stored:
        off = info.header_offset
        local = bytes(mm[off:off + 30]) if off + 30 <= size else b""
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise CorruptError(f"member {info.filename!r}: no local header at {off}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        begin = off + 30 + name_len + extra_len + header
        if begin + nbytes > size:
            raise CorruptError(f"member {info.filename!r}: {nbytes} bytes of {shape} "
                               f"{dtype} run past the end of the file")

        def load() -> np.ndarray:
            flat = np.frombuffer(mm, dtype, count=math.prod(shape), offset=begin)
            array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
            return restore(array)

        return _Item(name, info_row, shape, load, load)

    def load_member() -> np.ndarray:
        try:
            with npz.zip.open(info) as fp:  # this member (not another of the same name)
                array = np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, *_ZIP_ERRORS) as exc:
            raise CorruptError(f"member {info.filename!r}: {exc}") from None
        if array.shape != shape or array.dtype != dtype:
            raise CorruptError(f"member {info.filename!r} changed while read")
        return restore(array)

    return _Item(name, info_row, shape, load_member,
                 lambda: _lazy_ref(name, info_row, shape, load_member))


def _lazy_ref(name: str, info: DTypeInfo, shape: tuple[int, ...],
              load: Callable[[], np.ndarray]) -> TensorRef:
    """A TensorRef whose bytes are read (decompressed) only while save() writes them."""
    storage = StorageInfo(name, info, math.prod(shape) * info.itemsize, "cpu",
                           Device.parse("cpu"))

    def read(_: StorageInfo, mmap: bool) -> np.ndarray:
        array = np.ascontiguousarray(load())
        if _is_big(array.dtype) != (sys.byteorder == "big"):   # the reader's host order
            array = array.byteswap().view(array.dtype.newbyteorder())
        return array.reshape(-1).view(np.uint8)

    storage.attach(read, cache=False)     # read while save() writes it, not kept
    return TensorRef(storage, info, 0, shape, _c_strides(shape))


_READERS: Final[dict[str, Callable[[str, _Content], None]]] = {
    "pth": _read_torch,
    "sharded": _read_sharded,
    "safetensors": _read_safetensors,
    "sharded-safetensors": _read_sharded_safetensors,
    "npz": _read_npz,
}
