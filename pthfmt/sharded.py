"""Sharded checkpoints: the Hugging Face layout of one index and several ``.bin`` shards.

``pytorch_model.bin.index.json`` holds ``{"metadata": {...}, "weight_map": {key: shard}}``;
each shard (``pytorch_model-00001-of-00003.bin``) is an ordinary ``torch.save`` state dict
beside the index.  :func:`load_sharded` opens every shard lazily (metadata only), checks that
each key lives in exactly the shard the index names, and returns one mapping whose values are
read on access.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from . import reader
from .errors import FormatError
from .model.device import MapLocation
from .model.tensor import TensorRef

__all__ = ["ShardedCheckpoint", "load_sharded", "find_index", "is_index", "shard_names"]

_INDEX_SUFFIXES = (".bin.index.json", ".pt.index.json", ".pth.index.json")


def find_index(path: str | os.PathLike[str], suffixes: tuple[str, ...] = _INDEX_SUFFIXES
               ) -> str:
    """The index file itself, or the one index (ending in one of ``suffixes``) in a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        return path
    found = sorted(n for n in os.listdir(path) if n.endswith(suffixes))
    if len(found) != 1:
        raise FormatError(f"{path}: expected one *{suffixes[0]}, found "
                          f"{', '.join(found) or 'none'}")
    return os.path.join(path, found[0])


def is_index(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a shard index (``*.bin.index.json``) or a folder holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(n.endswith(_INDEX_SUFFIXES) for n in os.listdir(path))
    return path.endswith(_INDEX_SUFFIXES)


def shard_names(index: str) -> list[str]:
    """The shard file names an index lists, in first-use order (empty if unreadable)."""
    try:
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return [s for s in dict.fromkeys(weight_map.values()) if isinstance(s, str)
            and os.path.basename(s) == s]


def unique_keys(where: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A ``json`` ``object_pairs_hook`` refusing a key given twice (``json`` keeps the last)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise FormatError(f"key {key!r} appears twice in {where}")
            out[key] = value
        return out

    return hook


class ShardedCheckpoint(Mapping[str, np.ndarray]):
    """All tensors of a sharded checkpoint as one mapping (arrays read on access)."""

    def __init__(self, index: str, *, mmap: bool = False,
                 map_location: MapLocation = None) -> None:
        self.index_path = find_index(index)
        folder = os.path.dirname(self.index_path)
        try:
            with open(self.index_path, encoding="utf-8") as fh:
                doc = json.load(fh, object_pairs_hook=unique_keys("the index"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"{self.index_path}: not a JSON index ({exc})") from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise FormatError(f"{self.index_path}: no 'weight_map' of key -> shard file")
        self.metadata: dict[str, Any] = doc.get("metadata") or {}
        self.mmap = mmap
        self.shards: dict[str, reader.Checkpoint] = {}
        self.refs: dict[str, TensorRef] = {}
        for shard in dict.fromkeys(weight_map.values()):
            if os.path.basename(shard) != shard:
                raise FormatError(f"{self.index_path}: shard name {shard!r} is a path")
            path = os.path.join(folder, shard)
            if not os.path.isfile(path):
                raise FormatError(f"shard {shard!r} named by the index is missing")
            ckpt = self.shards[shard] = reader.open(path, map_location=map_location)
            for key, ref in ckpt.tensors():
                owner = weight_map.get(key)
                if owner is None:
                    raise FormatError(f"shard {shard!r} holds {key!r}, which the index "
                                      "does not list")
                if owner != shard or key in self.refs:
                    raise FormatError(f"key {key!r} is in shard {shard!r} but the index "
                                      f"puts it in {owner!r}")
                self.refs[key] = ref
        missing = [k for k in weight_map if k not in self.refs]
        if missing:
            raise FormatError(f"key {missing[0]!r} is not in its shard "
                              f"{weight_map[missing[0]]!r}")
        self.weight_map: dict[str, str] = weight_map

    def __getitem__(self, key: str) -> np.ndarray:
        return self.refs[key].numpy(mmap=self.mmap)

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    def __repr__(self) -> str:
        return (f"<ShardedCheckpoint {self.index_path}: {len(self)} tensors in "
                f"{len(self.shards)} shards>")


def load_sharded(index: str | os.PathLike[str], *, mmap: bool = False,
                 map_location: MapLocation = None) -> ShardedCheckpoint:
    """Open a sharded checkpoint from its ``*.bin.index.json`` or the folder holding it."""
    return ShardedCheckpoint(os.fspath(index), mmap=mmap, map_location=map_location)
