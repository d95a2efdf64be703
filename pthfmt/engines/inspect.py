"""``inspect`` as data: :func:`inspect_summary` (format, tensors, storages, values, totals).

Reads no tensor data.  A sharded checkpoint (its index or the folder holding it) is the
summaries of its shards merged in index order.
"""

from __future__ import annotations

import os
from collections import Counter
from fnmatch import fnmatchcase
from typing import Any

from ..gcpause import paused_gc
from ..model.tensor import StorageInfo, TensorRef
from ..reader import Checkpoint
from .kinds import describe
from .tree import Survey, leaves, open_stubbed, plain, survey

__all__ = ["inspect_summary", "stub_classes"]


def stub_classes(root: Any) -> list[str]:
    """The classes outside the allowlist that the file pickles (stubbed), in file order."""
    return survey(root)[0]


def _selected(key: str, pattern: str | None) -> bool:
    return pattern is None or fnmatchcase(key, pattern)


def _tensor_rows(tensors: list[tuple[str, TensorRef]]) -> list[dict[str, Any]]:
    users: Counter[int] = Counter(id(ref.storage) for _, ref in tensors)
    rows = []
    for key, ref in tensors:
        info = ref.storage
        item = ref.dtype_info.itemsize
        rows.append(
            {
                "key": key,
                "dtype": ref.dtype,
                "shape": list(ref.shape),
                "stride": list(ref.stride),
                "storage_offset": ref.storage_offset,
                "device": str(ref.device),
                "nbytes": ref.nbytes,
                "numel": ref.numel,
                "storage": ref.storage_key,
                "shared": users[id(info)] > 1,
                "parameter": ref.is_parameter,
                "requires_grad": ref.requires_grad,
                "file_offset": None
                if info.offset is None or info.compressed
                else info.offset + ref.storage_offset * item,
            }
        )
    return rows


def _kind_row(key: str, value: Any) -> dict[str, Any] | None:
    """A quantized, sparse, nested, jagged or meta tensor's row (its layout; no data read)."""
    described = describe(value)
    return None if described is None else {"key": key, **described}


def _storage_rows(storages: dict[str, StorageInfo]) -> tuple[list[dict[str, Any]], Counter[str]]:
    rows = []
    per_dtype: Counter[str] = Counter()
    for key, info in storages.items():
        dtype = info.dtype.name if info.dtype else "untyped"
        per_dtype[dtype] += info.nbytes
        rows.append(
            {
                "key": key,
                "dtype": dtype,
                "nbytes": info.nbytes,
                "device": str(info.location),
                "tag": info.tag,
                "record": info.record,
                "offset": info.offset,
                "compressed": bool(info.compressed),
            }
        )
    return rows, per_dtype


def inspect_summary(path: str, *, filter: str | None = None) -> dict[str, Any]:
    """Everything ``pthfmt inspect`` shows, as one JSON-ready dict (reads no tensor data).

    ``path`` may be a folder: its shard index or single checkpoint, as ``transformers`` picks.
    ``filter`` (a glob: ``*.weight``, ``model_state_dict.*``) keeps the tensors and values
    whose key path matches; ``totals`` count the tensors kept, ``storages`` are the file's.
    ``gadgets`` lists every code-execution gadget the file holds (whatever the filter), as
    :meth:`pthfmt.engines.tree.Gadget.to_dict`.
    """
    from ..formats.sharding import resolve_folder
    from ..sharded import is_index

    path = resolve_folder(path)
    if is_index(path):
        return _sharded_summary(path, filter)
    return _file_summary(path, filter)


def _file_summary(path: str, filter: str | None) -> dict[str, Any]:
    with open_stubbed(path) as ck:
        return _summary(ck, path, filter)


def _summary(ck: Checkpoint, path: str, filter: str | None) -> dict[str, Any]:
    """The summary of one opened checkpoint (``path``: where it was opened from)."""
    found = Survey()
    with paused_gc():
        entries = [(k, v) for k, v in leaves(ck.obj, found) if _selected(k, filter)]
        rows = _tensor_rows([(k, v) for k, v in entries if isinstance(v, TensorRef)])
        storages, per_dtype = _storage_rows(ck.storages)
        values = {k: plain(v) for k, v in entries if not isinstance(v, TensorRef)}
        kinds = [_kind_row(k, v) for k, v in entries if not isinstance(v, TensorRef)]
        classes, gadgets = list(found.classes), found.gadgets
        return {
            "file": path,
            "size": ck.size,
            "format": ck.format,
            "version": ck.version,
            "byteorder": ck.byteorder,
            "archive": ck.archive_name,
            "filter": filter,
            "classes": classes,
            "gadgets": [g.to_dict() for g in gadgets],
            "tensors": rows,
            "storages": storages,
            "values": values,
            "kinds": [row for row in kinds if row is not None],
            "totals": {
                "tensors": len(rows),
                "parameters": sum(r["parameter"] for r in rows),
                "elements": sum(r["numel"] for r in rows),
                "parameter_elements": sum(r["numel"] for r in rows if r["parameter"]),
                "storages": len(storages),
                "storage_bytes": sum(per_dtype.values()),
                "bytes_per_dtype": dict(per_dtype),
            },
        }


#: The counts of a summary's ``totals`` (beside ``bytes_per_dtype``).
_TOTALS = (
    "tensors",
    "parameters",
    "elements",
    "parameter_elements",
    "storages",
    "storage_bytes",
)


def _sharded_summary(path: str, filter: str | None) -> dict[str, Any]:
    """``inspect`` of a sharded checkpoint: the shards' summaries merged, in index order."""
    from ..sharded import ShardedCheckpoint

    # each shard opened once (classes as stubs, as for one file), and its keys checked
    # against the index
    with ShardedCheckpoint(path, unknown="stub") as merged:
        merged.open_all()
        shards = zip(merged.shard_paths(), merged.shards.values(), strict=True)
        parts = [_summary(ck, shard, filter) for shard, ck in shards]
    rows = [dict(r, shard=os.path.basename(p["file"])) for p in parts for r in p["tensors"]]
    totals: dict[str, Any] = dict.fromkeys(_TOTALS, 0)  # (an index of no tensors: zeros)
    totals["bytes_per_dtype"] = Counter()
    for p in parts:
        for k, v in p["totals"].items():
            if k == "bytes_per_dtype":
                totals[k].update(v)
            else:
                totals[k] = totals.get(k, 0) + v
    totals["bytes_per_dtype"] = dict(totals["bytes_per_dtype"])
    first = parts[0] if parts else None
    return {
        "file": merged.index_path,
        "size": sum(p["size"] for p in parts),
        "format": f"sharded ({len(parts)} shards: {first['format']})" if first else "sharded",
        "version": first["version"] if first else None,
        "byteorder": first["byteorder"] if first else "little",
        "archive": None,
        "filter": filter,
        "classes": sorted({c for p in parts for c in p["classes"]}),
        "gadgets": [
            dict(g, shard=os.path.basename(p["file"])) for p in parts for g in p["gadgets"]
        ],
        "tensors": rows,
        "storages": [s for p in parts for s in p["storages"]],
        "values": {"metadata": plain(merged.metadata)} if merged.metadata else {},
        "kinds": [dict(r, shard=os.path.basename(p["file"])) for p in parts for r in p["kinds"]],
        "shards": [os.path.basename(p["file"]) for p in parts],
        "totals": totals,
    }
