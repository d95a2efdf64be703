"""safetensors files: the dtype table, the strict header reader, the readers and the writer.

- :func:`check_header` parses a header with every rule of the format and reports each broken
  rule as a :class:`HeaderProblem` (code, error class, message, file offset, tensor name):
  strict JSON (no ``NaN``, no key given twice, no text after the object, numbers of at most
  :data:`MAX_DIGITS` digits, nesting bounded), a ``__metadata__`` of strings to strings, known
  dtypes, shapes of ints whose non-zero dimensions fit in 2**63 - 1 bytes, sizes equal to
  shape x dtype, and data offsets in order with no overlap and no gap, covering the data to
  the end of the file.  :func:`read_safetensors_header` raises the first as a ``PthError``;
  ``pthfmt.validation.safetensors`` collects them all.  Nothing is evaluated.
- :func:`read_safetensors_source` reads a file as a checkpoint (``pthfmt.open``/``load``):
  one storage per tensor, each attached to its byte range (zero-copy views of the mapping
  with ``mmap=True``).
- :func:`read_safetensors` maps a file and adds its tensors (zero-copy views of the mapping)
  and ``pthfmt:`` metadata values to a :class:`~pthfmt.formats.tensordata.Content`
  (``convert``); :func:`read_sharded_safetensors` does so for a ``*.safetensors.index.json``
  and its shards, each key in exactly the shard the index names.
- :func:`write_safetensors` streams tensors into the layout safetensors reads (data in order
  of falling element size so that every tensor is aligned; the header in input order).

safetensors has no complex128, complex32, quantized or ``bits`` types.  ``float4_e2m1fn_x2``
is safetensors' ``F4`` with the last dimension counted in 4-bit elements (twice torch's).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np

from ..atomic import Write
from ..errors import CorruptError, FormatError, LimitError, PthError, UnsupportedError
from ..model.dtypes import DTypeInfo, by_name
from ..model.storage import StorageInfo, StoredReader
from ..model.tensor import INTP_MAX, MAX_NDIM, TensorRef, c_strides
from ..source import Source
from ..text import escape, is_unicode, short_repr
from . import strictjson
from .contract import Options, Parsed
from .strictjson import MAX_DIGITS, Rule, decoder_for
from .tensordata import (
    Content,
    Meta,
    TensorItem,
    Value,
    count,
    listing,
    little,
    map_file,
    write_tensor,
)

__all__ = [
    "SAFETENSORS_DTYPES",
    "SAFETENSORS_BITS",
    "MAX_HEADER",
    "MAX_DIGITS",
    "META_PREFIX",
    "HeaderProblem",
    "SafetensorsEntry",
    "check_header",
    "read_safetensors_header",
    "read_safetensors_source",
    "read_safetensors",
    "read_sharded_safetensors",
    "torch_view",
    "write_safetensors",
]

#: torch dtype -> safetensors dtype, for every dtype both have.
SAFETENSORS_DTYPES: Final[dict[str, str]] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0", "float4_e2m1fn_x2": "F4",
}  # fmt: skip
_FROM_SAFETENSORS: Final = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _bits() -> dict[str, int]:
    bits = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
    for name, code in SAFETENSORS_DTYPES.items():
        info = by_name(name)
        if code != "F4" and info is not None:
            bits[code] = 8 * info.itemsize
    return bits


#: Bits per element of every safetensors 0.8 dtype (F6_* have no torch dtype).
SAFETENSORS_BITS: Final[dict[str, int]] = _bits()
#: safetensors' own limit on the header.
MAX_HEADER: Final = 100_000_000
#: Prefix of the safetensors ``__metadata__`` keys that carry non-tensor values.
META_PREFIX: Final = "pthfmt:"
_MAX_BITS: Final = INTP_MAX * 8  # the bits of the largest array numpy can make


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors header."""

    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]  # safetensors shape (F4: 4-bit elements)
    begin: int  # absolute file offsets
    end: int
    where: int = 0  # file offset of the entry's name in the header


@dataclass(frozen=True)
class HeaderProblem:
    """One broken rule of a safetensors header: its validation code, the error the reader
    raises for it, the message, the file offset and the tensor it is about."""

    code: str
    error: type[PthError]
    message: str
    offset: int | None = None
    key: str | None = None

    def exception(self) -> PthError:
        return self.error(self.message, offset=self.offset, key_path=self.key, code=self.code)


#: Receives each problem: the reader's raises it, the validator's collects it.
Report = Callable[[HeaderProblem], None]


def _raise(problem: HeaderProblem) -> None:
    raise problem.exception()


# -- strict JSON with positions ------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class _Syntax(Exception):
    """The header is not strict JSON at character ``pos``."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message, self.pos = message, pos


class _Offsets:
    """File offsets of character positions in the header, for positions met in order."""

    def __init__(self, text: str, start: int) -> None:
        self.text, self.start = text, start
        self.ascii = text.isascii()
        self.char, self.byte = 0, start

    def __call__(self, pos: int) -> int:
        if self.ascii:
            return self.start + pos
        if pos < self.char:  # not in order (rare): count from the start
            self.char, self.byte = 0, self.start
        self.byte += len(self.text[self.char : pos].encode("utf-8", "surrogatepass"))
        self.char = pos
        return self.byte


def _value(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    """The JSON value at ``pos`` and where it ends (strict: see the hooks)."""
    try:
        value, end = decoder.scan_once(text, pos)  # type: ignore[attr-defined]
    except StopIteration as exc:
        raise _Syntax("expecting a value", exc.value) from None
    except json.JSONDecodeError as exc:
        raise _Syntax(exc.msg, exc.pos) from None
    except Rule as exc:
        raise _Syntax(str(exc), pos) from None
    except RecursionError:
        raise _Syntax("nested too deeply", pos) from None
    return value, end


def _members(text: str) -> Iterator[tuple[str, int, Any, int]]:
    """The top-level object's ``(key, key position, value, value position)`` in order."""
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if text[pos : pos + 1] != "{":
        raise _Syntax(f"expecting '{{', found {short_repr(text[pos : pos + 1])}", pos)
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    decoder = decoder_for(text)
    seen: set[str] = set()
    closed = text[pos : pos + 1] == "}"
    while not closed:
        if text[pos : pos + 1] != '"':
            raise _Syntax("expecting a key in double quotes", pos)
        try:
            key, end = _scanstring(text, pos + 1, True)
        except json.JSONDecodeError as exc:
            raise _Syntax(exc.msg, exc.pos) from None
        if key in seen:
            raise _Syntax(f"key '{escape(key)}' appears twice", pos)
        seen.add(key)
        key_pos = pos
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        if text[pos : pos + 1] != ":":
            raise _Syntax("expecting ':'", pos)
        pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        value, end = _value(text, pos, decoder)
        yield key, key_pos, value, pos
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        sep = text[pos : pos + 1]
        if sep == ",":
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        elif sep == "}":
            closed = True
        else:
            raise _Syntax("expecting ',' or '}'", pos)
    end = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if end != len(text):
        raise _Syntax("text after the JSON object", end)


# -- the rules -----------------------------------------------------------------------------------


_unicode = is_unicode


def _header_text(buf: Any, size: int, report: Report) -> tuple[str, int] | None:
    """The header's text and length, checked against the file (``None`` after a problem)."""
    if size < 8:
        report(
            HeaderProblem(
                "safetensors.header",
                CorruptError,
                f"a {size}-byte file is too short for a safetensors header",
                0,
            )
        )
        return None
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > MAX_HEADER:
        report(
            HeaderProblem(
                "safetensors.header",
                LimitError,
                f"safetensors header of {n} bytes (safetensors reads at most {MAX_HEADER})",
                0,
            )
        )
        return None
    if n > size - 8:
        report(
            HeaderProblem(
                "safetensors.header",
                CorruptError,
                f"safetensors header of {n} bytes runs past the end of the {size}-byte file",
                0,
            )
        )
        return None
    try:
        return bytes(buf[8 : 8 + n]).decode("utf-8"), n
    except UnicodeDecodeError as exc:
        report(
            HeaderProblem(
                "safetensors.header",
                FormatError,
                f"safetensors header is not UTF-8 ({exc.reason})",
                8 + exc.start,
            )
        )
        return None


def _metadata(value: Any, where: int, report: Report) -> dict[str, str]:
    """``__metadata__``: ``null`` or an object of strings to strings."""
    if value is None:
        return {}
    bad = None
    if not isinstance(value, dict):
        bad = f"it is {short_repr(value)}"
    else:
        for k, v in value.items():
            if not isinstance(v, str):
                bad = f"'{escape(k)}' is {short_repr(v)}"
            elif not (_unicode(k) and _unicode(v)):
                bad = f"'{escape(k)}' is not valid Unicode"
            if bad:
                break
    if bad:
        report(
            HeaderProblem(
                "safetensors.metadata",
                FormatError,
                f"safetensors __metadata__ must map strings to strings: {bad}",
                where,
            )
        )
        return {}
    return value  # type: ignore[no-any-return]


class _Bad(NamedTuple):
    """What is wrong with an entry: the code, the error, what follows the entry's name."""

    code: str
    error: type[PthError]
    what: str


def _shape(dtype: str, shape: Any) -> tuple[int, ...] | _Bad:
    """A shape of at most 64 non-negative ints whose non-zero dimensions fit numpy."""
    bits = SAFETENSORS_BITS[dtype]
    if type(shape) is list and len(shape) <= MAX_NDIM:
        for d in shape:
            if type(d) is not int or d < 0:
                break
            bits *= d or 1
        else:
            if bits <= _MAX_BITS:
                return tuple(shape)
            return _Bad(
                "safetensors.shape",
                FormatError,
                f": shape {short_repr(shape)} is too large: its non-zero dimensions of "
                f"{dtype} hold more than 2**63 - 1 bytes",
            )
    return _Bad("safetensors.shape", FormatError, f": bad shape {short_repr(shape)}")


def _check_entry(name: str, info: Any, data: int) -> tuple[str, tuple[int, ...], int, int] | _Bad:
    """``(dtype, shape, begin, end)`` of one tensor entry (offsets within the data), or what
    is wrong with it: fields, dtype, shape, offsets, size."""
    if not _unicode(name):
        return _Bad("safetensors.header", FormatError, ": the name is not valid Unicode")
    if type(info) is not dict:
        return _Bad("safetensors.header", FormatError, " is not an object")
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in info]
    if missing:
        return _Bad("safetensors.header", FormatError, f" has no '{missing[0]}'")
    dtype, offsets = info["dtype"], info["data_offsets"]
    if type(dtype) is not str or dtype not in SAFETENSORS_BITS:
        return _Bad("safetensors.dtype", UnsupportedError, f": unknown dtype {short_repr(dtype)}")
    shape = _shape(dtype, info["shape"])
    if isinstance(shape, _Bad):
        return shape
    if not (
        type(offsets) is list
        and len(offsets) == 2
        and type(offsets[0]) is int
        and type(offsets[1]) is int
        and 0 <= offsets[0] <= offsets[1]
    ):
        return _Bad("safetensors.offsets", FormatError, f": bad data_offsets {short_repr(offsets)}")
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if bits % 8:
        return _Bad(
            "safetensors.size",
            FormatError,
            f": {dtype} shape {list(shape)} is not a whole number of bytes",
        )
    if offsets[1] > data:
        return _Bad(
            "safetensors.offsets",
            CorruptError,
            f": data_offsets {offsets} run past the {data} data bytes of the file",
        )
    if offsets[1] - offsets[0] != bits // 8:
        return _Bad(
            "safetensors.size",
            CorruptError,
            f": {dtype} shape {list(shape)} needs {bits // 8} bytes, data_offsets "
            f"{offsets} hold {offsets[1] - offsets[0]}",
        )
    return dtype, shape, offsets[0], offsets[1]


def _entry(
    name: str, info: Any, where: int, start: int, data: int, report: Report
) -> SafetensorsEntry | None:
    """One tensor entry, checked (see :func:`_check_entry`); ``None`` after a problem."""
    checked = _check_entry(name, info, data)
    if not isinstance(checked, _Bad):
        dtype, shape, begin, end = checked
        return SafetensorsEntry(name, dtype, shape, start + begin, start + end, where)
    code, error, what = checked
    key = escape(name)
    report(HeaderProblem(code, error, f"safetensors entry '{key}'{what}", where, key))
    return None


def _layout(entries: list[SafetensorsEntry], start: int, data: int, report: Report) -> None:
    """Data offsets in order: from 0, no overlap, no gap, to the end of the file."""
    reach, last = 0, None
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        begin = e.begin - start
        if last is not None and begin < reach:
            a, b = escape(last.name), escape(e.name)
            report(
                HeaderProblem(
                    "safetensors.offsets",
                    FormatError,
                    f"safetensors entries '{a}' and '{b}' overlap (data_offsets "
                    f"[{last.begin - start}, {last.end - start}] and "
                    f"[{begin}, {e.end - start}])",
                    e.where,
                    b,
                )
            )
        elif begin > reach:
            report(
                HeaderProblem(
                    "safetensors.offsets",
                    FormatError,
                    f"safetensors data has a gap of {begin - reach} bytes before "
                    f"entry '{escape(e.name)}' (data_offsets [{begin}, "
                    f"{e.end - start}])",
                    start + reach,
                    escape(e.name),
                )
            )
        if last is None or e.end - start > reach:
            reach, last = e.end - start, e
    if reach != data:
        report(
            HeaderProblem(
                "safetensors.offsets",
                FormatError,
                f"safetensors data has {data - reach} bytes after the last tensor "
                f"(the tensors end at data offset {reach})",
                start + reach,
            )
        )


def check_header(
    buf: Any, size: int, report: Report = _raise
) -> tuple[list[SafetensorsEntry], dict[str, str]]:
    """Parse a safetensors header from ``buf`` (bytes or a mapping of a ``size``-byte file)
    and check every rule, handing each broken one to ``report`` (by default: raise it).
    Returns ``(entries in header order, __metadata__)``; after a problem that ends the parse
    (not JSON, too large...) both are empty."""
    parsed = _header_text(buf, size, report)
    if parsed is None:
        return [], {}
    text, n = parsed
    start, data = 8 + n, size - 8 - n
    offset = _Offsets(text, 8)
    entries: list[SafetensorsEntry] = []
    metadata: dict[str, str] = {}
    try:
        members = list(_members(text))  # the whole object first: syntax before content
    except _Syntax as exc:
        report(
            HeaderProblem(
                "safetensors.header",
                FormatError,
                f"safetensors header is not JSON: {exc.message}",
                offset(exc.pos),
            )
        )
        return [], {}
    for name, key_pos, value, value_pos in members:
        if name == "__metadata__":
            metadata = _metadata(value, offset(value_pos), report)
            continue
        entry = _entry(name, value, offset(key_pos), start, data, report)
        if entry is not None:
            entries.append(entry)
    _layout(entries, start, data, report)
    return entries, metadata


def read_safetensors_header(buf: Any, size: int) -> tuple[list[SafetensorsEntry], dict[str, str]]:
    """Parse and check a safetensors header from ``buf`` (bytes or a mapping of a
    ``size``-byte file): ``(entries in header order, __metadata__)``.  The first broken
    rule raises its ``PthError`` (see :func:`check_header`)."""
    return check_header(buf, size)


# -- reading a file as a checkpoint --------------------------------------------------------------


def torch_view(entry: SafetensorsEntry) -> tuple[DTypeInfo, tuple[int, ...]] | str:
    """The torch dtype and shape of ``entry``, or why torch has no such tensor."""
    name = _FROM_SAFETENSORS.get(entry.dtype)
    shape = entry.shape
    if name is None:
        return f"{escape(entry.name)} ({entry.dtype})"
    if name == "float4_e2m1fn_x2":
        if not shape or shape[-1] % 2:
            return (
                f"{escape(entry.name)} (F4 shape {list(shape)}: not whole bytes in the "
                "last dimension)"
            )
        shape = (*shape[:-1], shape[-1] // 2)
    info = by_name(name)
    assert info is not None
    return info, shape


def read_safetensors_source(src: Source, opts: Options) -> Parsed:
    """A safetensors file as a checkpoint: ``obj`` maps each name (in header order) to a
    :class:`TensorRef` (or, eagerly, its array) on a storage of its own that views the file's
    bytes; the header's ``__metadata__`` is ``metadata``.  A dtype torch lacks
    (``F6_*``) is an :class:`UnsupportedError`."""
    entries, metadata = check_header(src.buf, src.size)
    location = opts.mapper("cpu")
    read = StoredReader(src, big_endian=False)
    obj: dict[str, Any] = {}
    storages: dict[str, StorageInfo] = {}
    for i, entry in enumerate(entries):
        view = torch_view(entry)
        if isinstance(view, str):
            raise UnsupportedError(
                f"safetensors entry {view} has no torch dtype",
                offset=entry.where,
                key_path=escape(entry.name),
                code="safetensors.no_torch_dtype",
            )
        info, shape = view
        storage = StorageInfo(str(i), info, entry.end - entry.begin, "cpu", location)
        storage.offset = entry.begin
        storage.attach(read)
        storages[storage.key] = storage
        ref = TensorRef(storage, info, 0, shape, c_strides(shape), mmap=opts.mmap)
        obj[entry.name] = ref.numpy() if opts.eager else ref
    return Parsed("safetensors", obj, storages, [], metadata=metadata)


# -- convert's reader ----------------------------------------------------------------------------


def _item(entry: SafetensorsEntry, mm: Any) -> TensorItem | str:
    """The tensor of ``entry`` as a view of the mapping, or why torch has no such tensor."""
    view = torch_view(entry)
    if isinstance(view, str):
        return view
    info, shape = view
    dtype = little(info.numpy)
    n = math.prod(shape)

    def load() -> np.ndarray:
        return np.frombuffer(mm, dtype, count=n, offset=entry.begin).reshape(shape)

    return TensorItem(entry.name, info, shape, load, load)


def read_safetensors(
    path: str, content: Content, shard: str | None = None
) -> list[SafetensorsEntry]:
    """Add the tensors and values of a safetensors file to ``content``; returns its entries.
    Tensors with no torch dtype are left out and named in a warning (``shard``: the file's
    name in a sharded checkpoint, for that warning)."""
    mm, size = map_file(path, content)
    entries, metadata = read_safetensors_header(mm, size)
    no_torch = []
    for entry in entries:
        item = _item(entry, mm)
        if isinstance(item, str):
            no_torch.append(item)
        else:
            content.entries.append(item)
    if no_torch:
        content.warnings.append(
            f"left out {count(no_torch, 'tensor')}"
            f"{f' of {shard}' if shard else ''} with no torch dtype: "
            f"{listing(no_torch)}"
        )
    for k, v in metadata.items():
        if k.startswith(META_PREFIX):
            try:
                value = strictjson.loads(v)
            except FormatError:  # not JSON pthfmt wrote: carried as the string it is
                value = v
            content.entries.append(Value(k[len(META_PREFIX) :], value))
        else:
            content.metadata.setdefault(k, v)
    return entries


def read_sharded_safetensors(path: str, content: Content) -> Any:
    """Add every shard of a sharded safetensors checkpoint (its index, the folder holding it,
    or a folder holding one ``model.safetensors``) to ``content``; returns the index's
    ``metadata``."""
    from .sharding import shard_layout

    layout = shard_layout(path)
    weight_map = layout.weight_map
    if weight_map is None:  # one file
        read_safetensors(layout.index_path, content)
        return {}
    found: set[str] = set()
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = os.path.join(layout.folder, shard)
        if not os.path.isfile(shard_path):
            raise FormatError(f"shard '{escape(shard)}' named by the index is missing")
        try:
            entries = read_safetensors(shard_path, content, shard)
        except PthError as exc:
            raise type(exc)(f"shard {escape(shard)}: {exc}") from None
        for entry in entries:
            if weight_map.get(entry.name) != shard or entry.name in found:
                raise FormatError(
                    f"shard '{escape(shard)}' holds '{escape(entry.name)}', which the index "
                    f"puts in {short_repr(weight_map.get(entry.name))}"
                )
            found.add(entry.name)
    missing = [k for k in weight_map if k not in found]
    if missing:
        raise FormatError(
            f"key '{escape(missing[0])}' is not in its shard '{escape(weight_map[missing[0]])}'"
        )
    return layout.metadata


# -- the writer ----------------------------------------------------------------------------------


def _header(
    items: list[TensorItem], values: list[Value], metadata: Meta
) -> tuple[bytes, list[TensorItem]]:
    """The padded header and the order in which the data follows it."""
    meta = dict(metadata)
    meta.setdefault("format", "pt")
    for value in values:
        meta[META_PREFIX + value.name] = json.dumps(value.value)
    # Data in order of falling element size, so that every tensor is aligned in the file
    # (the header lists them in input order).
    order = sorted(items, key=lambda i: -i.dtype.itemsize)
    offsets: dict[int, tuple[int, int]] = {}
    pos = 0
    for item in order:
        offsets[id(item)] = (pos, pos + item.nbytes)
        pos += item.nbytes
    header: dict[str, Any] = {"__metadata__": meta}
    for item in items:
        shape = list(item.shape)
        if item.dtype.name == "float4_e2m1fn_x2":
            shape[-1] *= 2
        header[item.name] = {
            "dtype": SAFETENSORS_DTYPES[item.dtype.name],
            "shape": shape,
            "data_offsets": list(offsets[id(item)]),
        }
    text = json.dumps(header, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    return text, order


def write_safetensors(
    write: Write, items: list[TensorItem], values: list[Value], meta: Meta
) -> None:
    """Write a safetensors file through ``write``: ``meta`` (with ``"format": "pt"``
    unless given) and ``values`` as ``pthfmt:<key>`` JSON entries, then the tensors."""
    text, order = _header(items, values, meta)
    if len(text) > MAX_HEADER:
        raise LimitError(
            f"the safetensors header would be {len(text)} bytes; safetensors "
            f"reads at most {MAX_HEADER}"
        )
    write(struct.pack("<Q", len(text)))
    write(text)
    for item in order:
        write_tensor(write, item)
