"""Sharded checkpoints: the Hugging Face layout of one index and several ``.bin`` shards.

``pytorch_model.bin.index.json`` holds ``{"metadata": {...}, "weight_map": {key: shard}}``;
each shard (``pytorch_model-00001-of-00003.bin``) is an ordinary ``torch.save`` state dict
beside the index.  :func:`load_sharded` opens every shard (metadata only, no tensor data),
checks that each key lives in exactly the shard the index names, and returns one mapping
whose values are read on access.

An index given by URL (``https://.../pytorch_model.bin.index.json``, any fsspec URL) is read
first, alone; each shard beside it is opened (its directory and pickle fetched, nothing
else) only when one of its keys is first touched, and checked against the index then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from . import reader
from .closing import Closing
from .errors import FormatError, LimitError, PthError
from .formats.contract import Unknown
from .formats.sharding import (
    ShardLayout,
    open_shard,
    open_shards,
    prefer_safetensors,
    shard_layout,
)
from .model.device import MapLocation
from .model.tensor import TensorRef
from .remote import is_url
from .text import escape, is_unicode

__all__ = ["ShardedCheckpoint", "load_sharded", "find_index", "is_index"]

_INDEX_SUFFIXES = (
    ".bin.index.json",
    ".pt.index.json",
    ".pth.index.json",
    ".safetensors.index.json",
)


def find_index(path: str | os.PathLike[str], suffixes: tuple[str, ...] = _INDEX_SUFFIXES) -> str:
    """The index file itself, or the one index (ending in one of ``suffixes``) in a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        return path
    found = prefer_safetensors(sorted(n for n in os.listdir(path) if n.endswith(suffixes)))
    if len(found) != 1:
        raise FormatError(
            f"{escape(path, None)}: expected one *{suffixes[0]}, found "
            f"{', '.join(escape(n) for n in found) or 'none'}"
        )
    return os.path.join(path, found[0])


def is_index(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a shard index (``*.bin.index.json``) or a folder holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(n.endswith(_INDEX_SUFFIXES) for n in os.listdir(path))
    return path.endswith(_INDEX_SUFFIXES)


def _remote_index(url: str) -> tuple[dict[str, str], dict[str, Any]]:
    """A remote index's weight map and metadata, read within the local index's bound and
    checked by the same rules; a shard name must also read as itself in a URL (no ``%``,
    ``?``, ``#`` or backslash, and valid Unicode: a URL drops a lone surrogate), so that
    shards come from beside the index only."""
    from .formats.sharding import MAX_INDEX, checked_index, parse_index_document
    from .remote import RemoteSource

    src = RemoteSource(url, lazy=True)
    if src.size > MAX_INDEX:
        raise LimitError(f"{escape(url)}: a shard index larger than {MAX_INDEX} bytes")
    weight_map, metadata = checked_index(parse_index_document(src.bytes(0, src.size), url), url)
    for shard in dict.fromkeys(weight_map.values()):
        if any(c in shard for c in "%?#\\") or not is_unicode(shard):
            raise FormatError(f"{escape(url)}: shard name '{escape(shard)}' is not a plain name")
    return weight_map, metadata


class ShardedCheckpoint(Mapping[str, np.ndarray], Closing):
    """All tensors of a sharded checkpoint as one mapping: every shard is opened for its
    metadata (its keys checked against the index), arrays are read on access.  Use as a
    context manager or call :meth:`close`.  ``unknown`` is :func:`pthfmt.open`'s, for every
    shard."""

    shards: dict[str, reader.Checkpoint]
    refs: dict[str, TensorRef]
    weight_map: dict[str, str]
    metadata: dict[str, Any]

    def __init__(
        self,
        index: str,
        *,
        mmap: bool = False,
        map_location: MapLocation = None,
        unknown: Unknown = "error",
    ) -> None:
        self.mmap, self._location, self._unknown = mmap, map_location, unknown
        self._base: str | None = None  # the folder URL of a remote index's shards
        if is_url(index) and index.endswith(_INDEX_SUFFIXES):
            self.index_path, self._base = index, index.rsplit("/", 1)[0] + "/"
            self.weight_map, self.metadata = _remote_index(index)
            self.shards, self.refs = {}, {}
            return
        layout = shard_layout(index) if not is_url(index) else ShardLayout(index, "", None)
        self.index_path, self.metadata = layout.index_path, layout.metadata
        self.shards, self.refs, self.weight_map = open_shards(layout, map_location, unknown)

    def open_all(self, errors: dict[str, PthError] | None = None) -> None:
        """Open every shard not opened yet (a remote index opens its shards as keys are
        read); afterwards :attr:`shards` and :attr:`refs` are complete.  With ``errors``,
        a shard that fails is entered there by name and the others are still opened (else
        the first failure raises)."""
        if self._base is not None:
            for shard in dict.fromkeys(self.weight_map.values()):
                if shard not in self.shards:
                    try:
                        self._open_shard(shard)
                    except PthError as exc:
                        if errors is None:
                            raise
                        errors[shard] = exc

    def shard_paths(self) -> list[str]:
        """Where each shard is (a path, or a URL for a remote index), in the index's order."""
        if self._base is not None:
            return [self._base + shard for shard in dict.fromkeys(self.weight_map.values())]
        folder = os.path.dirname(self.index_path)
        return [os.path.join(folder, shard) for shard in self.shards]

    def __getitem__(self, key: str) -> np.ndarray:
        if self._base is not None and key not in self.refs:
            self._open_shard(self.weight_map[key])
        return self.refs[key].numpy(mmap=self.mmap)

    def _open_shard(self, shard: str) -> None:
        """Open one shard of a remote index and check its keys against the index."""
        assert self._base is not None
        url = self._base + shard
        ckpt = self.shards[shard] = open_shard(url, shard, self._location, self._unknown)
        for key, ref in ckpt.tensors():
            owner = self.weight_map.get(key)
            if owner is None:
                raise FormatError(
                    f"shard '{escape(shard)}' holds '{escape(key)}', which the index does not list"
                )
            if owner != shard or key in self.refs:
                raise FormatError(
                    f"key '{escape(key)}' is in shard '{escape(shard)}' but the index puts "
                    f"it in '{escape(owner)}'"
                )
            self.refs[key] = ref
        missing = [k for k, s in self.weight_map.items() if s == shard and k not in self.refs]
        if missing:
            raise FormatError(f"key '{escape(missing[0])}' is not in its shard '{escape(shard)}'")

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    def __repr__(self) -> str:
        return (
            f"<ShardedCheckpoint {self.index_path}: {len(self)} tensors in "
            f"{len(self.shards)} shards>"
        )

    def close(self) -> None:
        """Close every shard (arrays already read stay valid)."""
        for shard in self.shards.values():
            shard.close()


def load_sharded(
    index: str | os.PathLike[str], *, mmap: bool = False, map_location: MapLocation = None
) -> ShardedCheckpoint:
    """Open a sharded checkpoint: its ``*.bin.index.json`` or ``*.safetensors.index.json``,
    the folder holding one (the safetensors one if both), or a folder holding, or the path
    of, a single ``model.safetensors``/``pytorch_model.bin``."""
    return ShardedCheckpoint(os.fspath(index), mmap=mmap, map_location=map_location)
