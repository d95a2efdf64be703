"""``pthfmt diff A B [--atol X] [--rtol X]``: the parser, and the text rendering of the
:class:`pthfmt.engines.diff.DiffResult` (as its ``to_dict()``).  Keys and values from the
files are printed escaped."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..engines.diff import diff_summary
from ..text import escape
from .output import OK, PROBLEM, Usage, command_parser, emit_json, guard, shape_text, show, table

__all__ = ["add_parser", "run", "print_diff"]

_LIST_MAX = 20  # keys listed per section in text output


def _k(key: str) -> str:
    return escape(key, 200) if key else "<root>"


def _side(s: dict[str, Any], name: str) -> str:
    extra = [f"key {escape(repr(s['key']), 200)}"] if s["key"] else []
    extra += [f"strip {escape(repr(p), 200)}" for p in s["strip"]]
    more = f" [{', '.join(extra)}]" if extra else ""
    return (
        f"{name}: {escape(s['file'], None)}{more}: {s['tensors']} tensors, {s['entries']} entries"
    )


def _listing(title: str, keys: list[str]) -> None:
    if keys:
        print(f"{title} ({len(keys)}):")
        for k in keys[:_LIST_MAX]:
            print(f"  {_k(k)}")
        if len(keys) > _LIST_MAX:
            print(f"  ... and {len(keys) - _LIST_MAX} more (--json lists all)")


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else escape(str(value), 40)


def _print_mismatches(d: dict[str, Any]) -> None:
    by_what: dict[str, list[dict[str, Any]]] = {"shape": [], "kind": [], "dtype": []}
    for m in d["mismatched"]:
        by_what[m["what"]].append(m)
    if by_what["shape"]:
        print(f"shape mismatch ({len(by_what['shape'])}):")
        rows = [
            (_k(m["key"]), shape_text(m["a"]), "vs", shape_text(m["b"])) for m in by_what["shape"]
        ]
        for line in table(rows, "  "):
            print(line)
    if by_what["kind"]:
        print(f"tensor vs value ({len(by_what['kind'])}):")
        for m in by_what["kind"]:
            print(f"  {_k(m['key'])}: {escape(m['a'], 60)} vs {escape(m['b'], 60)}")
    if by_what["dtype"]:
        print(f"dtype mismatch ({len(by_what['dtype'])}, load_state_dict casts):")
        for line in table([(_k(m["key"]), m["a"], "vs", m["b"]) for m in by_what["dtype"]], "  "):
            print(line)


def _tolerance(d: dict[str, Any]) -> str:
    parts = [f"{n}={d[n]:g}" for n in ("atol", "rtol") if d[n]]
    return f" beyond {', '.join(parts)}" if parts else ""


def _print_different(d: dict[str, Any]) -> None:
    found = d["different"]
    print(f"values differ{_tolerance(d)} ({len(found)}):")
    rows = []
    for m in found:
        if "max_abs_diff" in m:
            diff = m["max_abs_diff"]
            if diff is None:
                text = "bits differ"
            else:
                rel = m["max_rel_diff"]
                rel_text = _num(rel) if not (isinstance(rel, float) and math.isinf(rel)) else "inf"
                text = (
                    f"max |a-b| = {_num(diff)}, max |a-b|/|b| = {rel_text}, "
                    f"{m['not_close']} not close"
                )
            rows.append((_k(m["key"]), m["dtype"], shape_text(m["shape"]), text))
        else:
            rows.append((_k(m["key"]), "value", show(m["a"], 40), f"vs {show(m['b'], 40)}"))
    for line in table(rows, "  "):
        print(line)


def print_diff(d: dict[str, Any]) -> None:
    """``diff``'s text output."""
    print(_side(d["a"], "A"))
    print(_side(d["b"], "B"))
    _listing("only in A (missing keys when B is loaded into A)", d["only_a"])
    _listing("only in B (unexpected keys)", d["only_b"])
    _print_mismatches(d)
    if d["different"]:
        _print_different(d)
    for hint in d["hints"]:
        print(f"hint: {escape(hint, 400)}")
    verdict = (
        "load_state_dict(strict=True) would accept B"
        if d["load_state_dict_strict_ok"]
        else "load_state_dict(strict=True) would fail"
    )
    if d["values_compared"]:
        tail = f"; all values equal{_tolerance(d).replace('beyond', 'within')}" if d["ok"] else ""
        print(f"{d['equal']} entries equal. {verdict}{tail}.")
    else:
        print(f"{verdict} (values not compared).")


_SUMMARY = "compare two checkpoints like load_state_dict(strict=True)"
_DESCRIPTION = (
    "Compare two checkpoints the way model.load_state_dict(strict=True) "
    "would, without torch: keys only in A (missing), only in B (unexpected), shape and "
    "dtype mismatches, and for equal-shaped tensors whether the values are equal within "
    "--atol/--rtol (numpy isclose: |a-b| <= atol + rtol*|b|; compared in float64 when "
    "the dtypes differ), with the largest absolute and relative difference per key.  "
    "Other values (epoch, loss) are compared too.  Exit status: 0 B loads into A and "
    "all values are within tolerance (a dtype difference is listed, not failed: "
    "load_state_dict casts), 1 differences found, 2 usage error or unreadable file."
)
_EXAMPLES = (
    "examples:\n  pthfmt diff model.pth finetuned.pth\n"
    "  pthfmt diff --atol 1e-3 --rtol 1e-3 model-fp32.pth model-fp16.pth\n"
    "  pthfmt diff --strip-a module. dataparallel.pth plain.pth\n"
    "  pthfmt diff --key-b model_state_dict weights.pth checkpoint.pth"
)


def _tol(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "diff", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true", help="complete output as JSON")
    p.add_argument("--atol", type=_tol, default=0.0, metavar="X", help="absolute tolerance")
    p.add_argument(
        "--rtol", type=_tol, default=0.0, metavar="X", help="relative tolerance (of |B|)"
    )
    for flag, what in (
        ("--strip", "both sides"),
        ("--strip-a", "A's keys"),
        ("--strip-b", "B's keys"),
    ):
        p.add_argument(
            flag,
            action="append",
            default=[],
            metavar="PREFIX",
            help=f"remove a key prefix from {what} (repeatable), e.g. 'module.'",
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
    if args.no_values and (args.atol or args.rtol):
        raise Usage("diff: --atol/--rtol compare values: not with --no-values")

    def job() -> int:
        d = diff_summary(
            args.a,
            args.b,
            key_a=args.key_a,
            key_b=args.key_b,
            strip_a=args.strip_a + args.strip,
            strip_b=args.strip_b + args.strip,
            values=not args.no_values,
            atol=args.atol,
            rtol=args.rtol,
        )
        if args.json:
            emit_json(d)
        else:
            print_diff(d)
        return OK if d["ok"] else PROBLEM

    return guard(None, job, {"a": args.a, "b": args.b} if args.json else None)
