"""``pthfmt diff A B``: the parser, and the text rendering of
:func:`pthfmt.engines.diff.diff_summary`."""

from __future__ import annotations

import argparse
from typing import Any

from ..engines.diff import diff_summary
from .output import OK, PROBLEM, command_parser, emit_json, guard, shape_text, show, table

__all__ = ["add_parser", "run", "print_diff"]

_LIST_MAX = 20  # keys listed per section in text output


def _side(s: dict[str, Any], name: str) -> str:
    extra = [f"key {s['key']!r}"] if s["key"] else []
    extra += [f"strip {p!r}" for p in s["strip"]]
    more = f" [{', '.join(extra)}]" if extra else ""
    return f"{name}: {s['file']}{more}: {s['tensors']} tensors, {s['entries']} entries"


def _listing(title: str, keys: list[str]) -> None:
    if keys:
        print(f"{title} ({len(keys)}):")
        for k in keys[:_LIST_MAX]:
            print(f"  {k}")
        if len(keys) > _LIST_MAX:
            print(f"  ... and {len(keys) - _LIST_MAX} more (--json lists all)")


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _print_mismatches(d: dict[str, Any]) -> None:
    if d["shape_mismatch"]:
        print(f"shape mismatch ({len(d['shape_mismatch'])}):")
        rows = [
            (m["key"], shape_text(m["a"]), "vs", shape_text(m["b"])) for m in d["shape_mismatch"]
        ]
        for line in table(rows, "  "):
            print(line)
    if d["type_mismatch"]:
        print(f"tensor vs value ({len(d['type_mismatch'])}):")
        for m in d["type_mismatch"]:
            print(f"  {m['key']}: {m['a']} vs {m['b']}")
    if d["dtype_mismatch"]:
        print(f"dtype mismatch ({len(d['dtype_mismatch'])}, load_state_dict casts):")
        for line in table([(m["key"], m["a"], "vs", m["b"]) for m in d["dtype_mismatch"]], "  "):
            print(line)


def _print_differ(found: list[dict[str, Any]]) -> None:
    print(f"values differ ({len(found)}):")
    rows = []
    for m in found:
        if "max_abs_diff" in m:
            diff = m["max_abs_diff"]
            text = "bits differ" if diff is None else f"max |a-b| = {_num(diff)}"
            rows.append((m["key"], m["dtype"], shape_text(m["shape"]), text))
        else:
            rows.append((m["key"], "value", show(m["a"], 40), f"vs {show(m['b'], 40)}"))
    for line in table(rows, "  "):
        print(line)


def print_diff(d: dict[str, Any]) -> None:
    """``diff``'s text output."""
    print(_side(d["a"], "A"))
    print(_side(d["b"], "B"))
    _listing("only in A (missing keys when B is loaded into A)", d["only_in_a"])
    _listing("only in B (unexpected keys)", d["only_in_b"])
    _print_mismatches(d)
    if d["values_differ"]:
        _print_differ(d["values_differ"])
    for hint in d["hints"]:
        print(f"hint: {hint}")
    verdict = (
        "load_state_dict(strict=True) would accept B"
        if d["load_state_dict_strict_ok"]
        else "load_state_dict(strict=True) would fail"
    )
    if d["values_compared"]:
        tail = "; all values equal" if d["identical"] else ""
        print(f"{d['equal']} entries equal. {verdict}{tail}.")
    else:
        print(f"{verdict} (values not compared).")


_SUMMARY = "compare two checkpoints like load_state_dict(strict=True)"
_DESCRIPTION = (
    "Compare two checkpoints the way model.load_state_dict(strict=True) "
    "would, without torch: keys only in A (missing), only in B (unexpected), shape and "
    "dtype mismatches, and for equal-shaped tensors whether the values are equal (max "
    "absolute difference).  Other values (epoch, loss) are compared too.  Exit status: "
    "0 identical, 1 differences found, 2 usage error or unreadable file."
)
_EXAMPLES = (
    "examples:\n  pthfmt diff model.pth finetuned.pth\n"
    "  pthfmt diff --strip-a module. dataparallel.pth plain.pth\n"
    "  pthfmt diff --key-b model_state_dict weights.pth checkpoint.pth"
)


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "diff", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true", help="complete output as JSON")
    p.add_argument(
        "--strip",
        action="append",
        default=[],
        metavar="PREFIX",
        help="remove a key prefix on both sides (repeatable), e.g. 'module.'",
    )
    p.add_argument(
        "--strip-a",
        action="append",
        default=[],
        metavar="PREFIX",
        help="remove a key prefix from A's keys (repeatable)",
    )
    p.add_argument(
        "--strip-b",
        action="append",
        default=[],
        metavar="PREFIX",
        help="remove a key prefix from B's keys (repeatable)",
    )
    p.add_argument(
        "--key-a", metavar="KEY", help="compare only this entry of A (e.g. model_state_dict)"
    )
    p.add_argument("--key-b", metavar="KEY", help="compare only this entry of B")
    p.add_argument(
        "--no-values",
        action="store_true",
        help="compare keys, shapes and dtypes only (reads no tensor data)",
    )


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        d = diff_summary(
            args.a,
            args.b,
            key_a=args.key_a,
            key_b=args.key_b,
            strip_a=args.strip_a + args.strip,
            strip_b=args.strip_b + args.strip,
            values=not args.no_values,
        )
        if args.json:
            emit_json(d)
        else:
            print_diff(d)
        return OK if d["identical"] else PROBLEM

    return guard(None, job)
