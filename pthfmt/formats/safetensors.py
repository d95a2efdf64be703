"""safetensors files: the dtype table, the checked header reader, the reader and the writer.

- :func:`read_safetensors_header` parses and checks a header (every offset and size against
  the file; nothing is unpickled or evaluated); :func:`read_safetensors` maps a file and adds
  its tensors (zero-copy views of the mapping) and ``pthfmt:`` metadata values to a
  :class:`~pthfmt.formats.tensordata.Content`; :func:`read_sharded_safetensors` does so for
  a ``*.safetensors.index.json`` and its shards, each key in exactly the shard the index names.
- :func:`write_safetensors` streams tensors into the layout safetensors reads (data in order
  of falling element size so that every tensor is aligned; the header in input order).

safetensors has no complex128, complex32, quantized or ``bits`` types.  ``float4_e2m1fn_x2``
is safetensors' ``F4`` with the last dimension counted in 4-bit elements (twice torch's).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..atomic import Write
from ..errors import CorruptError, FormatError, LimitError, PthError, UnsupportedError
from ..model.dtypes import by_name
from ..model.tensor import MAX_NDIM
from ..sharded import unique_keys
from .detect import find_any_index
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
    "META_PREFIX",
    "SafetensorsEntry",
    "read_safetensors_header",
    "read_safetensors",
    "read_sharded_safetensors",
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


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors header."""

    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]  # safetensors shape (F4: 4-bit elements)
    begin: int  # absolute file offsets
    end: int


def _header_doc(buf: Any, size: int) -> tuple[dict[str, Any], int]:
    """The header's JSON object and its length, checked against the file."""
    if size < 8:
        raise CorruptError(f"a {size}-byte file is too short for a safetensors header")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > MAX_HEADER:
        raise LimitError(
            f"safetensors header of {n} bytes (safetensors reads at most {MAX_HEADER})"
        )
    if n > size - 8:
        raise CorruptError(
            f"safetensors header of {n} bytes runs past the end of the {size}-byte file"
        )
    try:
        doc = json.loads(
            bytes(buf[8 : 8 + n]).decode("utf-8"),
            object_pairs_hook=unique_keys("the safetensors header"),
        )
    except UnicodeDecodeError:
        raise FormatError("safetensors header is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"safetensors header is not JSON ({exc})") from None
    except RecursionError:
        raise FormatError("safetensors header is nested too deeply") from None
    if not isinstance(doc, dict):
        raise FormatError("safetensors header is not a JSON object")
    return doc, n


def _entry(name: str, info: Any, start: int, data: int) -> SafetensorsEntry:
    """One header entry, checked: dtype, shape, offsets within the ``data`` bytes."""
    if not isinstance(info, dict):
        raise FormatError(f"safetensors entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_BITS:
        raise UnsupportedError(f"safetensors entry {name!r}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(type(d) is int and 0 <= d < 2**62 for d in shape)
    ):
        raise FormatError(f"safetensors entry {name!r}: bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise FormatError(f"safetensors entry {name!r}: bad data_offsets {offsets!r}")
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if bits % 8:
        raise FormatError(
            f"safetensors entry {name!r}: {dtype} shape {shape} is not a whole number of bytes"
        )
    if offsets[1] > data:
        raise CorruptError(
            f"safetensors entry {name!r}: data_offsets {offsets} run past "
            f"the {data} data bytes of the file"
        )
    if offsets[1] - offsets[0] != bits // 8:
        raise CorruptError(
            f"safetensors entry {name!r}: {dtype} shape {shape} needs "
            f"{bits // 8} bytes, data_offsets {offsets} hold "
            f"{offsets[1] - offsets[0]}"
        )
    return SafetensorsEntry(name, dtype, tuple(shape), start + offsets[0], start + offsets[1])


def read_safetensors_header(buf: Any, size: int) -> tuple[list[SafetensorsEntry], dict[str, str]]:
    """Parse and check a safetensors header from ``buf`` (bytes or a mapping of a
    ``size``-byte file): ``(entries in header order, __metadata__)``.  Every offset and size
    is checked against the file; nothing is unpickled or evaluated."""
    doc, n = _header_doc(buf, size)
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("safetensors __metadata__ must map strings to strings")
    start, data = 8 + n, size - 8 - n
    entries = [_entry(name, info, start, data) for name, info in doc.items()]
    spans = sorted((e.begin, e.end, e.name) for e in entries if e.end > e.begin)
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise FormatError(f"safetensors entries {a!r} and {b!r} overlap")
    return entries, metadata


def _item(entry: SafetensorsEntry, mm: Any) -> TensorItem | str:
    """The tensor of ``entry`` as a view of the mapping, or why torch has no such tensor."""
    name = _FROM_SAFETENSORS.get(entry.dtype)
    shape = entry.shape
    if name == "float4_e2m1fn_x2":
        if not shape or shape[-1] % 2:
            return f"{entry.name} (F4 shape {list(shape)}: not whole bytes in the last dimension)"
        shape = (*shape[:-1], shape[-1] // 2)
    if name is None:
        return f"{entry.name} ({entry.dtype})"
    info = by_name(name)
    assert info is not None
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
                value = json.loads(v)
            except (json.JSONDecodeError, RecursionError):
                value = v
            content.entries.append(Value(k[len(META_PREFIX) :], value))
        else:
            content.metadata.setdefault(k, v)
    return entries


# SHIM: this index check repeats pthfmt/sharded.py's ShardedCheckpoint (which opens torch
# shards only); it goes once sharded.py exposes its index parsing and key placement check.
def _weight_map(index: str) -> tuple[dict[str, str], Any]:
    """The index's ``weight_map`` (key -> shard file) and its ``metadata``."""
    with open(index, "rb") as fh:
        text = fh.read(MAX_HEADER + 1)
    if len(text) > MAX_HEADER:
        raise LimitError(f"index larger than {MAX_HEADER} bytes")
    try:
        doc = json.loads(text.decode("utf-8"), object_pairs_hook=unique_keys("the index"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"not a JSON index ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError("no 'weight_map' of key -> shard file in the index")
    return weight_map, doc.get("metadata")


def read_sharded_safetensors(path: str, content: Content) -> Any:
    """Add every shard of a sharded safetensors checkpoint (its index or the folder holding
    it) to ``content``; returns the index's ``metadata``."""
    index = find_any_index(path)
    folder = os.path.dirname(index)
    weight_map, metadata = _weight_map(index)
    found: set[str] = set()
    for shard in dict.fromkeys(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"shard name {shard!r} is a path")
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FormatError(f"shard {shard!r} named by the index is missing")
        try:
            entries = read_safetensors(shard_path, content, shard)
        except PthError as exc:
            raise type(exc)(f"shard {shard}: {exc}") from None
        for entry in entries:
            if weight_map.get(entry.name) != shard or entry.name in found:
                raise FormatError(
                    f"shard {shard!r} holds {entry.name!r}, which the index "
                    f"puts in {weight_map.get(entry.name)!r}"
                )
            found.add(entry.name)
    missing = [k for k in weight_map if k not in found]
    if missing:
        raise FormatError(f"key {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}")
    return metadata


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
