"""What a converter reads from a file and hands to a format writer: tensors and values.

- :class:`TensorItem`: one tensor to write (name, torch dtype, shape, and how to get its data);
  :class:`Value`: one non-tensor entry; :class:`Content`: everything read from an input, in
  order, with the file metadata carried as is, the warnings and what closes the input.
- :func:`write_tensor`: a tensor's bytes in C order, little-endian, in pieces of about
  :data:`pthfmt.writer.CHUNK` bytes (bounded memory); :func:`little` and :func:`map_file`.
- :func:`listing` and :func:`count`: how warnings name what they are about.

- The byte-level helpers :func:`pthfmt.save` shares: :data:`CHUNK`, :func:`array_chunks`,
  :func:`little_bytes`, :func:`is_big`, :func:`c_strides`.
"""

from __future__ import annotations

import json
import math
import mmap as _mmap
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ..errors import CorruptError, FormatError
from ..model.dtypes import DTypeInfo
from ..model.tensor import c_strides
from ..source import open_regular

__all__ = [
    "CHUNK",
    "Content",
    "Meta",
    "TensorItem",
    "Value",
    "array_chunks",
    "c_strides",
    "count",
    "index_metadata",
    "is_big",
    "listing",
    "little",
    "little_bytes",
    "map_file",
    "write_tensor",
]


#: File metadata carried as is (safetensors ``__metadata__``, the npz sidecar's ``metadata``).
Meta = dict[str, str]


#: Bytes handed to the output per write while streaming storages (pthfmt.writer.CHUNK).
CHUNK: Final = 16 << 20


def is_big(dtype: np.dtype[Any]) -> bool:
    return dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")


def little_bytes(raw: np.ndarray, swap: int, big: bool) -> np.ndarray:
    """``raw`` (contiguous uint8) in little-endian order: swapped per ``swap``-byte unit."""
    if big and swap > 1:
        return raw.view(f"u{swap}").byteswap().view(np.uint8)
    return raw


def array_chunks(array: np.ndarray, swap: int, big: bool) -> Iterator[np.ndarray]:
    """The C-order bytes of ``array`` in pieces of at most about CHUNK bytes (views where the
    array is contiguous, small copies where it is not), made little-endian when ``big``."""
    if array.ndim == 0 or array.nbytes <= CHUNK:
        flat = np.ascontiguousarray(array).reshape(-1)
        yield little_bytes(flat.view(np.uint8), swap, big)
        return
    rows = CHUNK // array[0].nbytes
    if rows:
        for start in range(0, array.shape[0], rows):
            yield from array_chunks(array[start : start + rows], swap, big)
    else:
        for row in array:
            yield from array_chunks(row, swap, big)


@dataclass(eq=False)
class TensorItem:
    """One tensor to write: its dtype and torch shape, and how to get its data."""

    name: str
    dtype: DTypeInfo
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]  # the data, any strides and byte order
    for_save: Callable[[], Any]  # what pthfmt.save is handed (TensorRef or array)
    storage: Any = None  # identity of the memory it views
    release: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(eq=False)
class Value:
    """One non-tensor entry (epoch, loss, a hyper-parameter) under its flattened key."""

    name: str
    value: Any


@dataclass
class Content:
    """Everything read from the input, in order, before anything is written."""

    entries: list[TensorItem | Value] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # raw, carried as is
    warnings: list[str] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)


def listing(names: list[str], limit: int | None = None) -> str:
    """Names joined by commas: all of them for what is left out (nothing is dropped
    unnamed), the first ``limit`` for notes."""
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def count(things: list[Any], one: str, many: str | None = None) -> str:
    """``"3 tensors"``, ``"1 entry"``: the number of ``things`` and the noun."""
    return f"{len(things)} {one if len(things) == 1 else many or one + 's'}"


def index_metadata(metadata: Any, content: Content) -> None:
    """A shard index's ``metadata`` as file metadata (JSON text where not a string)."""
    if not isinstance(metadata, dict):
        return
    for k, v in metadata.items():
        if k != "total_size":  # the shards' size: meaningless once merged
            content.metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)


def write_tensor(write: Callable[[Any], None], item: TensorItem) -> None:
    """A tensor's bytes in C order, little-endian, in pieces of about CHUNK bytes."""
    array = item.load()
    if array.shape != item.shape:
        raise CorruptError(f"{item.name}: data of shape {array.shape}, expected {item.shape}")
    written = 0
    for chunk in array_chunks(array, item.dtype.swap, is_big(array.dtype)):
        write(chunk)
        written += chunk.nbytes
    if written != item.nbytes:
        raise CorruptError(f"{item.name}: wrote {written} bytes, expected {item.nbytes}")
    if item.release is not None:
        item.release()


def little(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in little-endian order where it has a native multi-byte order."""
    if dtype.itemsize > 1 and dtype.byteorder == "=" and dtype.kind in "biufc":
        return dtype.newbyteorder("<")
    return dtype


def map_file(path: str, content: Content) -> tuple[Any, int]:
    """A read-only mapping of the whole file and its size (closed with ``content``)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise FormatError("empty file")
        mm = _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
    content.closers.append(mm.close)
    return mm, size
