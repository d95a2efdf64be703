"""``pthfmt inspect FILE [--json]``: the parser, and the text rendering of
:func:`pthfmt.engines.inspect.inspect_summary`."""

from __future__ import annotations

import argparse
from typing import Any

from ..engines.inspect import inspect_summary
from .output import OK, command_parser, emit_json, guard, human_size, shape_text, show, table

__all__ = ["add_parser", "run", "print_summary"]


def _tensor_table(rows: list[dict[str, Any]]) -> None:
    lines = [("key", "dtype", "shape", "device", "size", "flags")]
    for r in rows:
        flags = [f for f, on in (("param", r["parameter"]), ("grad", r["requires_grad"])) if on]
        if r["shared"]:
            flags.insert(0, f"shared:{r['storage']}")
        lines.append(
            (
                r["key"] or "<root>",
                r["dtype"],
                shape_text(r["shape"]),
                r["device"],
                human_size(r["nbytes"]),
                " ".join(flags),
            )
        )
    print()
    for line in table(lines):
        print(line)


def print_summary(s: dict[str, Any]) -> None:
    """``inspect``'s text output."""
    where = f", archive {s['archive']!r}" if s["archive"] else ""
    print(
        f"{s['file']}: {s['format']} checkpoint, version {s['version']}, "
        f"{s['byteorder']}-endian{where}, {human_size(s['size'])}"
    )
    if s["classes"]:
        print(
            f"note: pickles {len(s['classes'])} classes outside the allowlist (shown as "
            f"stubs, never imported): {', '.join(s['classes'][:5])}"
            + (", ..." if len(s["classes"]) > 5 else "")
        )
    if s["tensors"]:
        _tensor_table(s["tensors"])
    t = s["totals"]
    params = f" ({t['parameters']} parameters)" if t["parameters"] else ""
    dtypes = ", ".join(f"{d} {human_size(n)}" for d, n in t["bytes_per_dtype"].items())
    print()
    print(
        f"{t['tensors']} tensors{params}, {t['elements']:,} elements; "
        f"{t['storages']} storages, {human_size(t['storage_bytes'])}"
        + (f" ({dtypes})" if dtypes else "")
    )
    if s["values"]:
        print()
        width = max(len(k or "<root>") for k in s["values"])
        for k, v in s["values"].items():
            print(f"{k or '<root>':<{width}} = {show(v)}")


_SUMMARY = "list a checkpoint's tensors and values (reads no tensor data)"
_DESCRIPTION = (
    "Show a checkpoint's format, version and byte order, a table of its "
    "tensors in file order (key path, dtype, shape, device, size, shared storages, "
    "Parameter and requires_grad), totals, and the other values (epoch, loss, "
    "optimizer hyper-parameters).  No tensor data is read."
)
_EXAMPLES = "example:\n  pthfmt inspect model.pth\n  pthfmt inspect --json model.pth | jq '.totals'"


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "inspect", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="complete output as JSON")


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        summary = inspect_summary(args.file)
        if args.json:
            emit_json(summary)
        else:
            print_summary(summary)
        return OK

    return guard(args.file, job)
