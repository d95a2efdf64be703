"""The ``pthfmt`` command line: ``pthfmt inspect FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import reader
from .errors import PthError
from .tensor import TensorRef

__all__ = ["main"]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def inspect(path: str, as_json: bool) -> int:
    with reader.open(path) as ck:
        rows = []
        storage_users: Counter[str] = Counter()
        tensors = list(ck.tensors())
        for _, ref in tensors:
            storage_users[ref.storage_key] += 1
        for key, ref in tensors:
            rows.append({
                "key": key, "dtype": ref.dtype, "shape": list(ref.shape),
                "device": str(ref.device), "nbytes": ref.nbytes, "storage": ref.storage_key,
                "shared": storage_users[ref.storage_key] > 1,
                "parameter": ref.is_parameter, "requires_grad": ref.requires_grad,
            })
        others = [(k, v) for k, v in reader.walk(ck.obj)
                  if k and not isinstance(v, (dict, list, tuple, TensorRef))]
        per_dtype: Counter[str] = Counter()
        for info in ck.storages.values():
            per_dtype[info.dtype.name if info.dtype else "untyped"] += info.nbytes
        summary = {
            "file": path, "format": ck.format, "version": ck.version,
            "byteorder": ck.byteorder, "archive": ck.archive_name,
            "tensors": rows, "values": {k: _plain(v) for k, v in others},
            "totals": {"tensors": len(rows),
                       "parameters": sum(r["parameter"] for r in rows),
                       "elements": sum(_numel(r["shape"]) for r in rows),
                       "storage_bytes": dict(per_dtype)},
        }
    if as_json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    print(f"{path}: {ck.format} checkpoint, version {ck.version}, {ck.byteorder}-endian"
          + (f", archive {ck.archive_name!r}" if ck.archive_name else ""))
    if rows:
        table = [("key", "dtype", "shape", "device", "size", "flags")]
        for r in rows:
            flags = " ".join(f for f, on in (("shared", r["shared"]), ("param", r["parameter"]),
                                             ("grad", r["requires_grad"])) if on)
            table.append((r["key"], r["dtype"], "x".join(map(str, r["shape"])) or "()",
                          r["device"], human_size(r["nbytes"]), flags))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    totals = summary["totals"]
    print(f"{totals['tensors']} tensors ({totals['parameters']} parameters), "
          f"{totals['elements']:,} elements; storage: "
          + ", ".join(f"{d} {human_size(n)}" for d, n in per_dtype.items()))
    for key, value in others:
        print(f"{key} = {_plain(value)!r}")
    return 0


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pthfmt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a checkpoint's tensors and values",
                       description="List a checkpoint's tensors (without reading their data) "
                       "and its other values. Example: pthfmt inspect model.pth")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="complete output as JSON")
    args = parser.parse_args(argv)
    try:
        return inspect(args.file, args.json)
    except PthError as exc:
        print(f"pthfmt: {args.file}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pthfmt: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
