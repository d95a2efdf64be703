"""``pthfmt validate FILE... [--json] [--strict] [-j N] [-q] [--codes]``: the parser, the
parallel runner over :func:`pthfmt.validate`, and the text rendering of its reports."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

from .output import OK, PROBLEM, USAGE, Usage, command_parser, emit_json, err

__all__ = ["add_parser", "run", "validate_one", "print_report"]

_Result = tuple[str, Any, Any]


def validate_one(path: str, strict: bool) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker: ``(path, report dict, None)`` or ``(path, None, error text)``."""
    from ..validation import validate

    try:
        return path, validate(path, strict=strict).to_dict(), None
    except OSError as exc:
        return path, None, str(exc.strerror or exc)


def _headline(r: dict[str, Any]) -> str:
    counts = r["counts"]
    strict = ", strict" if r["strict"] else ""
    if r["ok"]:
        notes = f", {counts['info']} notes" if counts["info"] else ""
        return f"{r['path']}: ok ({r['format']}{strict}{notes})"
    parts = [
        f"{counts[s]} {s}{'s' if counts[s] != 1 else ''}" for s in ("error", "warning") if counts[s]
    ]
    return f"{r['path']}: {', '.join(parts)} ({r['format']}{strict})"


def print_report(r: dict[str, Any], quiet: bool) -> None:
    """One file's report: the headline, then a line per problem."""
    problems = r["problems"]
    if r["ok"] and quiet:
        return
    print(_headline(r))
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


_SUMMARY = "check files for damage, unsafe pickles and ambiguities"
_DESCRIPTION = (
    "Check checkpoint files without running anything from them: zip "
    "integrity (CRC-32 of every record, headers, overlaps, gaps), every pickle global "
    "outside the allowlist, storages and views, dtypes, devices, version and byteorder "
    "records, the legacy format, and what torch reads differently from a careful "
    "reader. Exit status: 0 all files sound, 1 a problem found, 2 usage error or "
    "unreadable file."
)
_EXAMPLES = (
    "examples:\n  pthfmt validate model.pth\n  pthfmt validate --strict -j 4 "
    "checkpoints/*.pt\n  pthfmt validate --json model.pth\n  pthfmt validate --codes   "
    "(the table of problem codes)"
)


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "validate", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--json", action="store_true", help="all reports as one JSON document")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also flag what torch accepts but a careful publisher would not ship "
        "(compressed or unaligned data, extra records, unreferenced storages...)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="check N files in parallel processes (0: one per CPU)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for sound files")
    p.add_argument(
        "--codes", action="store_true", help="print the table of problem codes (Markdown) and exit"
    )


def _results(files: list[str], args: argparse.Namespace) -> Iterator[_Result]:
    jobs = args.jobs or os.cpu_count() or 1
    if jobs > 1 and len(files) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(files))) as pool:
            results: Iterator[_Result] = pool.map(validate_one, files, [args.strict] * len(files))
            return iter(list(_stream(results, args)))
    return _stream((validate_one(f, args.strict) for f in files), args)


def run(args: argparse.Namespace) -> int:
    if args.codes:
        from ..validation import codes_markdown

        sys.stdout.write(codes_markdown())
        return OK
    if not args.files:
        raise Usage("validate: give at least one FILE (or --codes)")
    if args.jobs < 0:
        raise Usage("validate: -j must be 0 or more")
    files = list(args.files)
    status = OK
    reports = []
    for path, report, error in _results(files, args):
        if error is not None:
            status = max(status, USAGE)
            reports.append({"path": path, "ok": False, "error": error})
        else:
            reports.append(report)
            if not report["ok"]:
                status = max(status, PROBLEM)
    if args.json:
        emit_json({"ok": status == OK, "strict": args.strict, "files": reports})
    elif len(files) > 1 and not args.quiet:
        bad = sum(1 for r in reports if "error" not in r and not r["ok"])
        unreadable = sum(1 for r in reports if "error" in r)
        print(
            f"{len(files)} files: {len(files) - bad - unreadable} sound, {bad} with problems"
            + (f", {unreadable} unreadable" if unreadable else "")
        )
    return status


def _stream(results: Iterator[_Result], args: argparse.Namespace) -> Iterator[_Result]:
    """Print each report as it arrives (text mode); pass results on."""
    for path, report, error in results:
        if error is not None:
            err(f"{path}: {error}")
        elif not args.json:
            print_report(report, args.quiet)
            sys.stdout.flush()
        yield path, report, error
