"""Sharded checkpoints: the Hugging Face layout of one index and several ``.bin`` shards.

``pytorch_model.bin.index.json`` holds ``{"metadata": {...}, "weight_map": {key: shard}}``;
each shard (``pytorch_model-00001-of-00003.bin``) is an ordinary ``torch.save`` state dict
beside the index.  :func:`load_sharded` opens every shard (metadata only, no tensor data),
checks that each key lives in exactly the shard the index names, and returns one mapping
whose values are read on access.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np

from . import reader
from .errors import FormatError
from .formats.sharding import open_shards, prefer_safetensors, shard_layout
from .model.device import MapLocation
from .model.tensor import TensorRef

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
            f"{path}: expected one *{suffixes[0]}, found {', '.join(found) or 'none'}"
        )
    return os.path.join(path, found[0])


def is_index(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a shard index (``*.bin.index.json``) or a folder holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(n.endswith(_INDEX_SUFFIXES) for n in os.listdir(path))
    return path.endswith(_INDEX_SUFFIXES)


class ShardedCheckpoint(Mapping[str, np.ndarray]):
    """All tensors of a sharded checkpoint as one mapping: every shard is opened for its
    metadata (its keys checked against the index), arrays are read on access.  Use as a
    context manager or call :meth:`close`."""

    shards: dict[str, reader.Checkpoint]
    refs: dict[str, TensorRef]
    weight_map: dict[str, str]
    metadata: dict[str, Any]

    def __init__(self, index: str, *, mmap: bool = False, map_location: MapLocation = None) -> None:
        layout = shard_layout(index)
        self.index_path, self.metadata, self.mmap = layout.index_path, layout.metadata, mmap
        self.shards, self.refs, self.weight_map = open_shards(layout, map_location)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.refs[key].numpy(mmap=self.mmap)

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

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load_sharded(
    index: str | os.PathLike[str], *, mmap: bool = False, map_location: MapLocation = None
) -> ShardedCheckpoint:
    """Open a sharded checkpoint: its ``*.bin.index.json`` or ``*.safetensors.index.json``,
    the folder holding one (the safetensors one if both), or a folder holding, or the path
    of, a single ``model.safetensors``/``pytorch_model.bin``."""
    return ShardedCheckpoint(os.fspath(index), mmap=mmap, map_location=map_location)
