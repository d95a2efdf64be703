"""``pthfmt inspect FILE [--json] [--filter GLOB]``: the parser, and the text rendering of
:func:`pthfmt.engines.inspect.inspect_summary`.

Everything the file decides (keys, class names, values, record names) is printed through
:func:`pthfmt.text.escape`.  A file holding a code-execution gadget gets a ``SECURITY`` block
naming each call and exit status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..engines.inspect import inspect_summary
from ..text import escape
from .output import (
    OK,
    PROBLEM,
    command_parser,
    emit_json,
    guard,
    human_size,
    shape_text,
    show,
    table,
)

__all__ = ["add_parser", "run", "print_summary"]


def _key(key: str) -> str:
    return escape(key, None) if key else "<root>"


def _tensor_table(rows: list[dict[str, Any]]) -> None:
    lines = [("key", "dtype", "shape", "device", "size", "flags")]
    for r in rows:
        flags = [f for f, on in (("param", r["parameter"]), ("grad", r["requires_grad"])) if on]
        if r["shared"]:
            flags.insert(0, f"shared:{escape(r['storage'], 40)}")
        lines.append(
            (
                _key(r["key"]),
                r["dtype"],
                shape_text(r["shape"]),
                escape(r["device"], 40),
                human_size(r["nbytes"]),
                " ".join(flags),
            )
        )
    print()
    for line in table(lines):
        print(line)


def _security(s: dict[str, Any]) -> None:
    gadgets = s["gadgets"]
    if not gadgets:
        return
    n = len(gadgets)
    print(
        f"SECURITY: the file calls {n} known code-execution gadget{'s' if n != 1 else ''}; "
        "torch.load(weights_only=False) would run "
        f"{'them' if n != 1 else 'it'} (pthfmt never does):"
    )
    for g in gadgets:
        name = escape(g["qualname"], 120)
        call = name if g["args"] is None else f"{name}({g['args']})"
        print(f"  {_key(g['key'])}: {call}")


def print_summary(s: dict[str, Any]) -> None:
    """``inspect``'s text output."""
    where = f", archive {escape(s['archive'], 80)!r}" if s["archive"] else ""
    version = "" if s["version"] is None else f", version {escape(str(s['version']), 40)}"
    print(
        f"{escape(s['file'], None)}: {s['format']} checkpoint{version}, "
        f"{s['byteorder']}-endian{where}, {human_size(s['size'])}"
    )
    _security(s)
    if s["classes"]:
        shown = ", ".join(escape(c, 120) for c in s["classes"][:5])
        print(
            f"note: pickles {len(s['classes'])} classes outside the allowlist (shown as "
            f"stubs, never imported): {shown}" + (", ..." if len(s["classes"]) > 5 else "")
        )
    if s.get("filter") is not None:
        print(f"filter: {escape(s['filter'], None)}")
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
        keys = {k: _key(k) for k in s["values"]}
        width = min(max(len(k) for k in keys.values()), 60)
        described = {g["key"] for g in s["gadgets"]}  # already a description, not a string
        for k, v in s["values"].items():
            text = escape(v, 160) if k in described and isinstance(v, str) else show(v)
            print(f"{keys[k]:<{width}} = {text}")


_SUMMARY = "list a checkpoint's tensors and values (reads no tensor data)"
_DESCRIPTION = (
    "Show a checkpoint's format, version and byte order, a table of its "
    "tensors in file order (key path, dtype, shape, device, size, shared storages, "
    "Parameter and requires_grad), totals, and the other values (epoch, loss, "
    "optimizer hyper-parameters, the fields of pickled objects such as an "
    "argparse.Namespace).  No tensor data is read and nothing from the file runs; "
    "every string from the file is printed escaped.  Exit status: 0 read, 1 the file "
    "is damaged or calls a known code-execution gadget (os.system, eval...: listed "
    "with their arguments), 2 usage error or unreadable file."
)
_EXAMPLES = (
    "examples:\n  pthfmt inspect model.pth\n  pthfmt inspect --filter '*.weight' model.pth\n"
    "  pthfmt inspect --json model.pth | jq '.totals'"
)


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "inspect", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="complete output as JSON")
    p.add_argument(
        "--filter",
        metavar="GLOB",
        help="only the tensors and values whose key path matches GLOB ('*.weight')",
    )


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        summary = inspect_summary(args.file, filter=args.filter)
        if args.json:
            emit_json(summary)
        else:
            print_summary(summary)
        return PROBLEM if summary["gadgets"] else OK

    return guard(args.file, job, {"file": args.file} if args.json else None)
