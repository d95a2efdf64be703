"""The ``pthfmt`` command line: ``inspect``, ``validate`` and ``diff`` (``python -m pthfmt``).

Each command is one :class:`Command` in :data:`COMMANDS`: a parser builder and a runner that
returns the exit code.  A new command (``convert``) adds one more entry.  Bad input never
shows a traceback: the file and the problem go to stderr on one line.

Exit codes: 0 success (files sound, no differences), 1 a problem or a difference found,
2 usage error or unreadable file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__
from .errors import PthError
from .model.tensor import TensorRef

__all__ = ["main", "COMMANDS", "Command"]

OK, PROBLEM, USAGE = 0, 1, 2


class _Fail(Exception):
    """A per-file failure already worded for stderr, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _guard(path: str | None, func: Callable[[], int]) -> int:
    """Run ``func``; a bad file becomes one line on stderr and exit code 1 (2 if unreadable).
    ``path`` prefixes the message (``None``: the message names its file itself)."""
    where = f"{path}: " if path else ""
    try:
        return func()
    except _Fail as exc:
        _err(f"{where}{exc}")
        return exc.code
    except PthError as exc:
        _err(f"{where}{exc}")
        return PROBLEM
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"{where}{exc.strerror or exc}")
        return USAGE
    except (RecursionError, MemoryError) as exc:
        _err(f"{where}the file is too large or too deeply nested ({type(exc).__name__})")
        return PROBLEM


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _err(message: str) -> None:
    print(f"pthfmt: {message}", file=sys.stderr)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def _emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
    sys.stdout.write("\n")


def _table(rows: list[tuple[str, ...]], indent: str = "") -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()


# -- leaves of a checkpoint: tensors and plain values ------------------------------------------

_SCALARS = (bool, int, float, str, bytes, type(None))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS) or isinstance(value, np.generic)


def _module_weights(value: Any) -> Any:
    """A stubbed ``nn.Module`` / TorchScript module's ``state_dict()``, else ``None``."""
    try:
        from .model.modules import is_module, state_dict
    except ImportError:  # pragma: no cover - the module API is optional
        return None
    if not is_module(value):
        return None
    try:
        return state_dict(value)
    except (PthError, TypeError):
        return None


def leaves(root: Any) -> Iterator[tuple[str, Any]]:
    """``(key_path, value)`` of every tensor and plain value, in file order.

    Lists and tuples of scalars are one value (``params = [0, 1, 2]``); empty containers
    are values too; a pickled ``nn.Module`` or TorchScript module stands for its
    ``state_dict()``.  Each container is visited once (shared and cyclic references).
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, TensorRef) or _is_scalar(value):
            yield path, value
            continue
        weights = _module_weights(value)
        if weights is not None:
            value = weights
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if not value or (isinstance(value, (list, tuple)) and
                             all(_is_scalar(v) for v in value)):
                yield path, value
                continue
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            prefix = f"{path}." if path else ""
            stack.extend((f"{prefix}{k}", v) for k, v in reversed(items))
            continue
        yield path, value


def _subtree(root: Any, key: str | None) -> Any:
    """The value at dotted ``key`` (``model_state_dict``), for ``diff --key-a``."""
    if not key:
        return root
    node = root
    weights = _module_weights(node)
    if weights is not None:
        node = weights
    for part in key.split("."):
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            hits = [k for k in node if str(k) == part]
            if hits:
                node = node[hits[0]]
                continue
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        raise _Fail(f"no key {key!r} in the file", PROBLEM)
    return node


def _plain(value: Any) -> Any:
    """A JSON-safe rendering of a non-tensor value."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(_is_scalar(v) for v in value):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and not value:
        return {}
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    qualname = getattr(value, "qualname", None)
    if isinstance(qualname, str):
        return f"<{qualname}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _show(value: Any, limit: int = 100) -> str:
    plain = _plain(value)
    text = repr(plain) if not isinstance(plain, str) or isinstance(value, str) else plain
    if isinstance(plain, list) and len(text) > limit:
        head = ", ".join(repr(v) for v in plain[:3])
        text = f"[{head}, ... ({len(plain)} items)]"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) if shape else "()"


# -- inspect -----------------------------------------------------------------------------------

def _open(path: str) -> Any:
    from .reader import open as open_checkpoint
    try:
        return open_checkpoint(path, unknown="stub")
    except TypeError:  # pragma: no cover - a reader without stubs
        return open_checkpoint(path)


def _stub_classes(root: Any) -> list[str]:
    """The classes outside the allowlist that the file pickles (stubbed), in file order."""
    found: dict[str, None] = {}
    stack = [root]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        qualname = getattr(getattr(value, "type", None), "qualname", None)
        if isinstance(qualname, str) and type(value).__name__ == "Stub":
            found.setdefault(qualname)
            stack.extend(v for v in (value.state, value.args, value.listitems,
                                     value.dictitems) if v is not None)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return list(found)


def inspect_summary(path: str) -> dict[str, Any]:
    """Everything ``pthfmt inspect`` shows, as one JSON-ready dict (reads no tensor data)."""
    from .sharded import is_index
    if is_index(path):
        return _sharded_summary(path)
    with _open(path) as ck:
        entries = list(leaves(ck.obj))
        tensors = [(k, v) for k, v in entries if isinstance(v, TensorRef)]
        users: Counter[int] = Counter(id(ref.storage) for _, ref in tensors)
        rows = []
        for key, ref in tensors:
            info = ref.storage
            item = ref.dtype_info.itemsize
            rows.append({
                "key": key, "dtype": ref.dtype, "shape": list(ref.shape),
                "stride": list(ref.stride), "storage_offset": ref.storage_offset,
                "device": str(ref.device), "nbytes": ref.nbytes, "numel": ref.numel,
                "storage": ref.storage_key, "shared": users[id(info)] > 1,
                "parameter": ref.is_parameter, "requires_grad": ref.requires_grad,
                "file_offset": None if info.offset is None or info.compressed
                else info.offset + ref.storage_offset * item,
            })
        storages = []
        per_dtype: Counter[str] = Counter()
        for key, info in ck.storages.items():
            dtype = info.dtype.name if info.dtype else "untyped"
            per_dtype[dtype] += info.nbytes
            storages.append({"key": key, "dtype": dtype, "nbytes": info.nbytes,
                             "device": str(info.location), "tag": info.tag,
                             "record": info.record, "offset": info.offset,
                             "compressed": bool(info.compressed)})
        values = {k: _plain(v) for k, v in entries if not isinstance(v, TensorRef)}
        return {
            "file": path, "size": os.path.getsize(path), "format": ck.format,
            "version": ck.version, "byteorder": ck.byteorder, "archive": ck.archive_name,
            "classes": _stub_classes(ck.obj),
            "tensors": rows, "storages": storages, "values": values,
            "totals": {"tensors": len(rows),
                       "parameters": sum(r["parameter"] for r in rows),
                       "elements": sum(r["numel"] for r in rows),
                       "parameter_elements": sum(r["numel"] for r in rows if r["parameter"]),
                       "storages": len(storages),
                       "storage_bytes": sum(per_dtype.values()),
                       "bytes_per_dtype": dict(per_dtype)},
        }


def _sharded_summary(path: str) -> dict[str, Any]:
    """``inspect`` of a sharded checkpoint: the shards' summaries merged, in index order."""
    from .sharded import ShardedCheckpoint
    merged = ShardedCheckpoint(path)             # checks the index against the shards
    folder = os.path.dirname(merged.index_path)
    parts = [inspect_summary(os.path.join(folder, shard)) for shard in merged.shards]
    rows = [dict(r, shard=os.path.basename(p["file"])) for p in parts for r in p["tensors"]]
    totals: dict[str, Any] = {"bytes_per_dtype": Counter()}
    for p in parts:
        for k, v in p["totals"].items():
            if k == "bytes_per_dtype":
                totals[k].update(v)
            else:
                totals[k] = totals.get(k, 0) + v
    totals["bytes_per_dtype"] = dict(totals["bytes_per_dtype"])
    return {
        "file": merged.index_path, "size": sum(p["size"] for p in parts),
        "format": f"sharded ({len(parts)} shards: {parts[0]['format']})" if parts else "sharded",
        "version": parts[0]["version"] if parts else None,
        "byteorder": parts[0]["byteorder"] if parts else "little", "archive": None,
        "classes": sorted({c for p in parts for c in p["classes"]}),
        "tensors": rows, "storages": [s for p in parts for s in p["storages"]],
        "values": {"metadata": _plain(merged.metadata)} if merged.metadata else {},
        "shards": [os.path.basename(p["file"]) for p in parts], "totals": totals,
    }


def _print_inspect(s: dict[str, Any]) -> None:
    where = f", archive {s['archive']!r}" if s["archive"] else ""
    print(f"{s['file']}: {s['format']} checkpoint, version {s['version']}, "
          f"{s['byteorder']}-endian{where}, {human_size(s['size'])}")
    if s["classes"]:
        print(f"note: pickles {len(s['classes'])} classes outside the allowlist (shown as "
              f"stubs, never imported): {', '.join(s['classes'][:5])}"
              + (", ..." if len(s["classes"]) > 5 else ""))
    rows = s["tensors"]
    if rows:
        table = [("key", "dtype", "shape", "device", "size", "flags")]
        for r in rows:
            flags = [f for f, on in (("param", r["parameter"]), ("grad", r["requires_grad"]))
                     if on]
            if r["shared"]:
                flags.insert(0, f"shared:{r['storage']}")
            table.append((r["key"] or "<root>", r["dtype"], _shape(r["shape"]), r["device"],
                          human_size(r["nbytes"]), " ".join(flags)))
        print()
        for line in _table(table):
            print(line)
    t = s["totals"]
    params = f" ({t['parameters']} parameters)" if t["parameters"] else ""
    dtypes = ", ".join(f"{d} {human_size(n)}" for d, n in t["bytes_per_dtype"].items())
    print()
    print(f"{t['tensors']} tensors{params}, {t['elements']:,} elements; "
          f"{t['storages']} storages, {human_size(t['storage_bytes'])}"
          + (f" ({dtypes})" if dtypes else ""))
    if s["values"]:
        print()
        width = max(len(k or "<root>") for k in s["values"])
        for k, v in s["values"].items():
            print(f"{k or '<root>':<{width}} = {_show(v)}")


def _inspect_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="list a checkpoint's tensors and values (reads no tensor data)",
        description=_wrap("Show a checkpoint's format, version and byte order, a table of its "
        "tensors in file order (key path, dtype, shape, device, size, shared storages, "
        "Parameter and requires_grad), totals, and the other values (epoch, loss, "
        "optimizer hyper-parameters).  No tensor data is read."),
        epilog="example:\n  pthfmt inspect model.pth\n  pthfmt inspect --json model.pth "
        "| jq '.totals'", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="complete output as JSON")


def _inspect_run(args: argparse.Namespace) -> int:
    def run() -> int:
        summary = inspect_summary(args.file)
        if args.json:
            _emit_json(summary)
        else:
            _print_inspect(summary)
        return OK
    return _guard(args.file, run)


# -- validate ----------------------------------------------------------------------------------

def _validate_one(path: str, strict: bool) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker: ``(path, report dict, None)`` or ``(path, None, error text)``."""
    from .validation import validate
    try:
        return path, validate(path, strict=strict).to_dict(), None
    except OSError as exc:
        return path, None, str(exc.strerror or exc)


def _print_report(r: dict[str, Any], quiet: bool) -> None:
    problems = r["problems"]
    counts = r["counts"]
    if r["ok"]:
        if quiet:
            return
        notes = f", {counts['info']} notes" if counts["info"] else ""
        print(f"{r['path']}: ok ({r['format']}{', strict' if r['strict'] else ''}{notes})")
    else:
        parts = [f"{counts[s]} {s}{'s' if counts[s] != 1 else ''}"
                 for s in ("error", "warning") if counts[s]]
        print(f"{r['path']}: {', '.join(parts)} ({r['format']}"
              f"{', strict' if r['strict'] else ''})")
    if not problems:
        return
    code_width = max(len(p["code"]) for p in problems)
    for p in problems:
        where = []
        if p["record"] is not None:
            where.append(p["record"])
        if p["offset"] is not None:
            where.append(f"@{p['offset']}")
        if p["key_path"] is not None:
            where.append(f"[{p['key_path']}]")
        loc = f"{' '.join(where)}: " if where else ""
        print(f"  {p['severity']:<7}  {p['code']:<{code_width}}  {loc}{p['message']}")


def _validate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "validate", help="check files for damage, unsafe pickles and ambiguities",
        description=_wrap("Check checkpoint files without running anything from them: zip "
        "integrity (CRC-32 of every record, headers, overlaps, gaps), every pickle global "
        "outside the allowlist, storages and views, dtypes, devices, version and byteorder "
        "records, the legacy format, and what torch reads differently from a careful reader. "
        "Exit status: 0 all files sound, 1 a problem found, 2 usage error or unreadable file."),
        epilog="examples:\n  pthfmt validate model.pth\n  pthfmt validate --strict -j 4 "
        "checkpoints/*.pt\n  pthfmt validate --json model.pth\n  pthfmt validate --codes   "
        "(the table of problem codes)", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--json", action="store_true", help="all reports as one JSON document")
    p.add_argument("--strict", action="store_true",
                   help="also flag what torch accepts but a careful publisher would not ship "
                   "(compressed or unaligned data, extra records, unreferenced storages...)")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="check N files in parallel processes (0: one per CPU)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for sound files")
    p.add_argument("--codes", action="store_true",
                   help="print the table of problem codes (Markdown) and exit")


def _validate_run(args: argparse.Namespace) -> int:
    if args.codes:
        from .validation import codes_markdown
        sys.stdout.write(codes_markdown())
        return OK
    if not args.files:
        raise _Usage("validate: give at least one FILE (or --codes)")
    if args.jobs < 0:
        raise _Usage("validate: -j must be 0 or more")
    jobs = args.jobs or os.cpu_count() or 1
    files = list(args.files)
    if jobs > 1 and len(files) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=min(jobs, len(files))) as pool:
            results: Iterator[tuple[str, Any, Any]] = pool.map(
                _validate_one, files, [args.strict] * len(files))
            results = iter(list(_stream(results, args)))
    else:
        results = _stream((_validate_one(f, args.strict) for f in files), args)
    status = OK
    reports = []
    for path, report, error in results:
        if error is not None:
            status = max(status, USAGE)
            reports.append({"path": path, "ok": False, "error": error})
        else:
            reports.append(report)
            if not report["ok"]:
                status = max(status, PROBLEM)
    if args.json:
        _emit_json({"ok": status == OK, "strict": args.strict, "files": reports})
    elif len(files) > 1 and not args.quiet:
        bad = sum(1 for r in reports if "error" not in r and not r["ok"])
        unreadable = sum(1 for r in reports if "error" in r)
        print(f"{len(files)} files: {len(files) - bad - unreadable} sound, {bad} with problems"
              + (f", {unreadable} unreadable" if unreadable else ""))
    return status


def _stream(results: Iterator[tuple[str, Any, Any]],
            args: argparse.Namespace) -> Iterator[tuple[str, Any, Any]]:
    """Print each report as it arrives (text mode); pass results on."""
    for path, report, error in results:
        if error is not None:
            _err(f"{path}: {error}")
        elif not args.json:
            _print_report(report, args.quiet)
            sys.stdout.flush()
        yield path, report, error


# -- diff --------------------------------------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 20
_LIST_MAX = 20          # keys listed per section in text output


def _as_numbers(arr: np.ndarray, complex_: bool) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int8)
    return arr.astype(np.complex128 if complex_ else np.float64)


def _chunks(arr: np.ndarray) -> Iterator[np.ndarray]:
    if arr.ndim == 0 or arr.size <= _CHUNK_ELEMENTS:
        yield arr
        return
    row = max(1, arr.size // arr.shape[0])
    step = max(1, _CHUNK_ELEMENTS // row)
    for i in range(0, arr.shape[0], step):
        yield arr[i:i + step]


def compare_values(a: TensorRef, b: TensorRef) -> tuple[bool, float | None]:
    """``(equal, max |a - b|)`` of two equal-shaped tensors, chunk by chunk (bounded memory).

    NaNs at the same places count as equal; the difference is ``nan`` where a NaN meets a
    number, and ``None`` for packed or bits dtypes (compared bit for bit only)."""
    x, y = a.numpy(mmap=True), b.numpy(mmap=True)
    raw = bool(x.dtype.metadata or y.dtype.metadata)
    complex_ = "complex" in (a.dtype_info.kind, b.dtype_info.kind)
    equal, worst = True, 0.0
    for cx, cy in zip(_chunks(x), _chunks(y)):
        if raw:
            if not np.array_equal(cx, cy):
                equal = False
            continue
        if cx.dtype == cy.dtype and cx.dtype.kind in "iub" and np.array_equal(cx, cy):
            continue
        fx, fy = _as_numbers(np.asarray(cx), complex_), _as_numbers(np.asarray(cy), complex_)
        nx, ny = np.isnan(fx), np.isnan(fy)
        same = (fx == fy) | (nx & ny)
        if same.all():
            continue
        equal = False
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(fx[~same] - fy[~same])
        d = float(np.nan if np.isnan(diff).any() else diff.max())
        worst = d if math.isnan(d) or math.isnan(worst) else max(worst, d)
    return equal, (None if raw else (0.0 if equal else worst))


def _side(path: str, key: str | None, strips: list[str]) -> tuple[Any, dict[str, Any]]:
    ck = _open(path)
    root = _subtree(ck.obj, key)
    out: dict[str, Any] = {}
    for k, v in leaves(root):
        for prefix in strips:
            if prefix and k.startswith(prefix):
                k = k[len(prefix):]
                break
        out.setdefault(k, v)
    return ck, out


def diff_summary(a_path: str, b_path: str, *, key_a: str | None = None,
                 key_b: str | None = None, strip_a: Sequence[str] = (),
                 strip_b: Sequence[str] = (), values: bool = True) -> dict[str, Any]:
    """What ``load_state_dict(strict=True)`` would say about B loaded into a model like A,
    and for equal-shaped tensors whether their values are equal."""
    try:
        ck_a, a = _side(a_path, key_a, list(strip_a))
    except _Fail as exc:
        raise _Fail(f"{a_path}: {exc}", exc.code) from None
    except PthError as exc:
        raise _Fail(f"{a_path}: {exc}", PROBLEM) from None
    except OSError as exc:
        raise _Fail(f"{a_path}: {exc.strerror or exc}", USAGE) from None
    try:
        ck_b, b = _side(b_path, key_b, list(strip_b))
    except _Fail as exc:
        raise _Fail(f"{b_path}: {exc}", exc.code) from None
    except PthError as exc:
        raise _Fail(f"{b_path}: {exc}", PROBLEM) from None
    except OSError as exc:
        raise _Fail(f"{b_path}: {exc.strerror or exc}", USAGE) from None
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    shape, dtype, differ, kind = [], [], [], []
    equal: list[str] = []
    for k, va in a.items():
        if k not in b:
            continue
        vb = b[k]
        ta, tb = isinstance(va, TensorRef), isinstance(vb, TensorRef)
        if ta != tb:
            kind.append({"key": k, "a": "tensor" if ta else type(va).__name__,
                         "b": "tensor" if tb else type(vb).__name__})
            continue
        if not ta:
            pa, pb = _plain(va), _plain(vb)
            if pa == pb or (isinstance(va, float) and isinstance(vb, float) and
                            math.isnan(va) and math.isnan(vb)):
                equal.append(k)
            else:
                differ.append({"key": k, "a": pa, "b": pb})
            continue
        if va.shape != vb.shape:
            shape.append({"key": k, "a": list(va.shape), "b": list(vb.shape)})
            continue
        if va.dtype != vb.dtype:
            dtype.append({"key": k, "a": va.dtype, "b": vb.dtype})
        if not values:
            continue
        try:
            same, worst = compare_values(va, vb)
        except PthError as exc:
            raise _Fail(f"{a_path} / {b_path}: reading {k}: {exc}", PROBLEM) from None
        if same:
            equal.append(k)
        else:
            differ.append({"key": k, "max_abs_diff": _plain(worst), "dtype": va.dtype,
                           "shape": list(va.shape)})
    n_tensors = (sum(isinstance(v, TensorRef) for v in a.values()),
                 sum(isinstance(v, TensorRef) for v in b.values()))
    ck_a.close()
    ck_b.close()
    loadable = not (only_a or only_b or shape or kind)
    hints = [h for h in (_prefix_hint(only_a, only_b, "b", ck_b.obj if not key_b else None),
                         _prefix_hint(only_b, only_a, "a", ck_a.obj if not key_a else None))
             if h]
    return {
        "a": {"file": a_path, "key": key_a, "strip": list(strip_a), "tensors": n_tensors[0],
              "entries": len(a)},
        "b": {"file": b_path, "key": key_b, "strip": list(strip_b), "tensors": n_tensors[1],
              "entries": len(b)},
        "only_in_a": only_a, "only_in_b": only_b, "shape_mismatch": shape,
        "type_mismatch": kind, "dtype_mismatch": dtype, "values_differ": differ,
        "equal": len(equal), "values_compared": values,
        "load_state_dict_strict_ok": loadable,
        "identical": loadable and not dtype and not differ,
        "hints": hints,
    }


def _prefix_hint(mine: list[str], theirs: list[str], side: str, root: Any) -> str | None:
    """If most of ``mine`` appear in ``theirs`` under one prefix, the option that strips it."""
    if not mine or not theirs:
        return None
    wanted = set(mine)
    found: Counter[str] = Counter()
    for key in theirs:
        dot = key.find(".")
        while dot >= 0:
            if key[dot + 1:] in wanted:
                found[key[:dot + 1]] += 1
            dot = key.find(".", dot + 1)
    if not found:
        return None
    prefix, hits = found.most_common(1)[0]
    if hits * 2 < len(mine):
        return None
    option = f"--strip-{side} {prefix}"
    if root is not None:
        try:
            _subtree(root, prefix[:-1])
            option = f"--key-{side} {prefix[:-1]}"
        except _Fail:
            pass
    return f"{side.upper()}'s keys match under the prefix {prefix!r}: try {option}"


def _print_diff(d: dict[str, Any]) -> None:
    def side(s: dict[str, Any], name: str) -> str:
        extra = [f"key {s['key']!r}"] if s["key"] else []
        extra += [f"strip {p!r}" for p in s["strip"]]
        more = f" [{', '.join(extra)}]" if extra else ""
        return f"{name}: {s['file']}{more}: {s['tensors']} tensors, {s['entries']} entries"

    print(side(d["a"], "A"))
    print(side(d["b"], "B"))

    def listing(title: str, keys: list[str]) -> None:
        if keys:
            print(f"{title} ({len(keys)}):")
            for k in keys[:_LIST_MAX]:
                print(f"  {k}")
            if len(keys) > _LIST_MAX:
                print(f"  ... and {len(keys) - _LIST_MAX} more (--json lists all)")

    listing("only in A (missing keys when B is loaded into A)", d["only_in_a"])
    listing("only in B (unexpected keys)", d["only_in_b"])
    if d["shape_mismatch"]:
        print(f"shape mismatch ({len(d['shape_mismatch'])}):")
        for m in _table([(m["key"], _shape(m["a"]), "vs", _shape(m["b"]))
                         for m in d["shape_mismatch"]], "  "):
            print(m)
    if d["type_mismatch"]:
        print(f"tensor vs value ({len(d['type_mismatch'])}):")
        for m in d["type_mismatch"]:
            print(f"  {m['key']}: {m['a']} vs {m['b']}")
    if d["dtype_mismatch"]:
        print(f"dtype mismatch ({len(d['dtype_mismatch'])}, load_state_dict casts):")
        for m in _table([(m["key"], m["a"], "vs", m["b"]) for m in d["dtype_mismatch"]], "  "):
            print(m)
    if d["values_differ"]:
        print(f"values differ ({len(d['values_differ'])}):")
        rows = []
        for m in d["values_differ"]:
            if "max_abs_diff" in m:
                diff = m["max_abs_diff"]
                text = "bits differ" if diff is None else f"max |a-b| = {_num(diff)}"
                rows.append((m["key"], m["dtype"], _shape(m["shape"]), text))
            else:
                rows.append((m["key"], "value", _show(m["a"], 40), f"vs {_show(m['b'], 40)}"))
        for line in _table(rows, "  "):
            print(line)
    for hint in d["hints"]:
        print(f"hint: {hint}")
    verdict = ("load_state_dict(strict=True) would accept B" if d["load_state_dict_strict_ok"]
               else "load_state_dict(strict=True) would fail")
    if d["values_compared"]:
        tail = "; all values equal" if d["identical"] else ""
        print(f"{d['equal']} entries equal. {verdict}{tail}.")
    else:
        print(f"{verdict} (values not compared).")


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _diff_parser(sub: Any) -> None:
    p = sub.add_parser(
        "diff", help="compare two checkpoints like load_state_dict(strict=True)",
        description=_wrap("Compare two checkpoints the way model.load_state_dict(strict=True) "
        "would, without torch: keys only in A (missing), only in B (unexpected), shape and "
        "dtype mismatches, and for equal-shaped tensors whether the values are equal (max "
        "absolute difference).  Other values (epoch, loss) are compared too.  Exit status: "
        "0 identical, 1 differences found, 2 usage error or unreadable file."),
        epilog="examples:\n  pthfmt diff model.pth finetuned.pth\n"
        "  pthfmt diff --strip-a module. dataparallel.pth plain.pth\n"
        "  pthfmt diff --key-b model_state_dict weights.pth checkpoint.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true", help="complete output as JSON")
    p.add_argument("--strip", action="append", default=[], metavar="PREFIX",
                   help="remove a key prefix on both sides (repeatable), e.g. 'module.'")
    p.add_argument("--strip-a", action="append", default=[], metavar="PREFIX",
                   help="remove a key prefix from A's keys (repeatable)")
    p.add_argument("--strip-b", action="append", default=[], metavar="PREFIX",
                   help="remove a key prefix from B's keys (repeatable)")
    p.add_argument("--key-a", metavar="KEY", help="compare only this entry of A "
                   "(e.g. model_state_dict)")
    p.add_argument("--key-b", metavar="KEY", help="compare only this entry of B")
    p.add_argument("--no-values", action="store_true",
                   help="compare keys, shapes and dtypes only (reads no tensor data)")


def _diff_run(args: argparse.Namespace) -> int:
    def run() -> int:
        d = diff_summary(args.a, args.b, key_a=args.key_a, key_b=args.key_b,
                         strip_a=args.strip_a + args.strip, strip_b=args.strip_b + args.strip,
                         values=not args.no_values)
        if args.json:
            _emit_json(d)
        else:
            _print_diff(d)
        return OK if d["identical"] else PROBLEM
    return _guard(None, run)


# -- convert -----------------------------------------------------------------------------------

#: Bytes of tensor data from which ``convert`` shows a progress bar (when stderr is a terminal).
PROGRESS_MIN = 64 << 20


class _ProgressBar:
    """``label [#####     ]  42%  1.2 GiB / 2.9 GiB`` on stderr, redrawn at most 10 times
    a second; :meth:`clear` wipes it."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0
        self.width = 0

    def __call__(self, done: int, total: int) -> None:
        import time
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * 30)
        line = (f"{self.label} [{bar:<30}] {frac:4.0%}  {human_size(min(done, total))} / "
                f"{human_size(total)}")
        self.width = max(self.width, len(line))
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()

    def clear(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _convert_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert", help="convert between .pth/.pt/.bin, .safetensors and .npz",
        description=_wrap("Convert a checkpoint to the format OUT's extension names: torch "
        "(.pth, .pt, .bin, .ckpt), .safetensors or .npz.  IN may also be a sharded checkpoint "
        "(its *.index.json or the folder holding it).  Nested keys flatten with dots, as "
        "state_dict keys do; non-tensor values (epoch, loss, hyper-parameters) travel as JSON "
        "in the safetensors metadata or the npz sidecar.  Whatever OUT's format cannot hold "
        "is left out and named in a warning on stderr.  Tensors stream one by one; OUT is "
        "written to a temporary file and renamed into place when complete.  Exit status: 0 "
        "converted, 1 a problem with IN, 2 usage error or unreadable/unwritable file."),
        epilog="examples:\n  pthfmt convert model.pth model.safetensors\n"
        "  pthfmt convert model.safetensors model.pth\n"
        "  pthfmt convert --key model_state_dict checkpoint.pth model.safetensors\n"
        "  pthfmt convert ./sharded-model/ merged.safetensors   (folder with *.bin.index.json)"
        "\n  pthfmt convert weights.npz weights.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--format", choices=("pth", "safetensors", "npz"),
                   help="OUT's format, when its extension does not say")
    p.add_argument("--key", metavar="KEY", help="convert only the entries under KEY, without "
                   "the prefix (e.g. model_state_dict)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no summary and no progress bar (warnings are still shown)")


def _convert_run(args: argparse.Namespace) -> int:
    from .conversion import Conversion, UnknownFormatError, output_format

    def check_output() -> int:
        try:
            output_format(args.output, args.format)
        except UnknownFormatError as exc:
            raise _Fail(str(exc), USAGE) from None
        if os.path.isdir(args.output):
            raise _Fail("is a directory", USAGE)
        return OK

    job: list[Conversion] = []

    def read() -> int:
        try:
            job.append(Conversion(args.input, args.output, format=args.format, key=args.key))
        except UnknownFormatError as exc:
            raise _Fail(str(exc), USAGE) from None
        return OK

    def write() -> int:
        conv = job[0]
        bar = _ProgressBar(f"{args.input} -> {args.output}")
        show = not args.quiet and conv.nbytes >= PROGRESS_MIN and sys.stderr.isatty()
        try:
            conv.write(bar if show else None)
        except PthError as exc:            # bad data met while streaming: IN's problem
            _err(f"{args.input}: {exc}")
            return PROBLEM
        finally:
            bar.clear()
        for warning in conv.warnings:
            _err(f"warning: {warning}")
        if not args.quiet:
            def count(n: int, noun: str) -> str:
                return f"{n} {noun}{'' if n == 1 else 's'}"
            values = f", {count(len(conv.values), 'value')}" if conv.values else ""
            print(f"{args.input} -> {args.output} ({conv.format}): "
                  f"{count(len(conv.items), 'tensor')} "
                  f"({human_size(os.path.getsize(args.output))}){values}")
        return OK

    status = _guard(args.output, check_output) or _guard(args.input, read)
    if status:
        return status
    try:
        return _guard(args.output, write)     # OSError here: OUT cannot be written
    finally:
        job[0].close()


# -- the command table -------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    add_parser: Callable[[Any], None]
    run: Callable[[argparse.Namespace], int]


#: The subcommands, in ``--help`` order.  ``convert`` (the writer's) registers here too.
COMMANDS: list[Command] = [
    Command("inspect", _inspect_parser, _inspect_run),
    Command("validate", _validate_parser, _validate_run),
    Command("diff", _diff_parser, _diff_run),
    Command("convert", _convert_parser, _convert_run),
]


class _Usage(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pthfmt",
        description=_wrap("Read, check and compare PyTorch checkpoint files (.pt/.pth/.bin) "
        "without torch and without running code from them."),
        epilog="examples:\n  pthfmt inspect model.pth\n  pthfmt validate --strict *.pth\n"
        "  pthfmt diff --strip-a module. a.pth b.pth\n"
        "  pthfmt convert model.pth model.safetensors\n\n"
        "Run 'pthfmt COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pthfmt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (usage errors give 2, never raise)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:         # --help, --version, and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    runner = {c.name: c.run for c in COMMANDS}[args.command]
    try:
        return runner(args)
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        _err(str(exc))
        return USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:           # `pthfmt inspect big.pth | head`
        try:
            sys.stdout = open(os.devnull, "w")  # silence the interpreter's final flush
        except OSError:
            pass
        return OK
