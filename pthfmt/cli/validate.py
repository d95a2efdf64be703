"""``pthfmt validate PATH... [--files-from FILE|-] [--json] [--strict] [--no-data]
[--fail-on LEVEL] [-j N] [-q]``: the parser, the file list (folders recurse by extension),
the parallel runner over :func:`pthfmt.validate`, and the text and JSON renderings of its
reports.

Every file gets one entry of the same shape whatever happened to it (:func:`validate_one`):
a file that cannot be read, or is not a regular file (a FIFO or a device, which is never
opened, so that nothing blocks), is a report with one ``file.unreadable`` or
``file.not_regular`` problem.  ``-j N`` runs a pool of N worker processes that import pthfmt
once (forked from this one where the platform allows) and take the files in batches.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..remote import is_url
from ..source import file_kind
from ..text import NAME_LIMIT, escape
from .output import OK, PROBLEM, USAGE, Usage, command_parser, emit_json, err

__all__ = [
    "add_parser",
    "run",
    "validate_one",
    "print_report",
    "collect",
    "summarize",
    "EXTENSIONS",
    "FailOn",
]

#: The files a folder contributes (by name ending, case-insensitive); shard indexes too.
EXTENSIONS: Final = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors", ".index.json")

FailOn = Literal["error", "warning", "never"]


@dataclass(frozen=True)
class Checks:
    """What to check of each file: ``--strict``, and tensor data unless ``--no-data``."""

    strict: bool = False
    data: bool = True


def _entry(
    path: str,
    fmt: str | None,
    problems: list[dict[str, Any]],
    strict: bool,
    load_error: str | None = None,
    unreadable: bool = False,
) -> dict[str, Any]:
    """One file's JSON entry: the same keys for every file."""
    counts = {s: sum(p["severity"] == s for p in problems) for s in ("error", "warning", "info")}
    ok = not unreadable and not counts["error"] and not counts["warning"]
    if unreadable:
        status = "unreadable"
    else:
        status = next((s for s in ("error", "warning", "info") if counts[s]), "ok")
    return {
        "path": path,
        "status": status,
        "ok": ok,
        "format": fmt,
        "strict": strict,
        "counts": counts,
        "problems": problems,
        "load_error": load_error,
    }


def _problem(code: str, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "severity": "error",
        "message": message,
        "record": None,
        "offset": None,
        "key_path": None,
    }


def _unreadable(path: str, code: str, message: str, strict: bool) -> dict[str, Any]:
    return _entry(path, None, [_problem(code, message)], strict, message, unreadable=True)


def validate_one(path: str, checks: Checks) -> dict[str, Any]:
    """One file's entry (see :func:`_entry`); never raises for anything the file holds."""
    from ..validation import validate

    strict = checks.strict
    try:
        mode = stat.S_IFREG if is_url(path) else os.stat(path).st_mode
    except OSError as exc:
        return _unreadable(path, "file.unreadable", str(exc.strerror or exc), strict)
    if not stat.S_ISREG(mode):
        what = file_kind(mode)
        return _unreadable(path, "file.not_regular", f"{what}: skipped, not opened", strict)
    try:
        report = validate(path, strict=strict, data=checks.data).to_dict()
    except OSError as exc:
        return _unreadable(path, "file.unreadable", str(exc.strerror or exc), strict)
    except (RecursionError, MemoryError) as exc:
        message = f"the file is too large or too deeply nested to check ({type(exc).__name__})"
        return _entry(path, None, [_problem("load.failed", message)], strict, message)
    except Exception as exc:  # a validator bug: one entry, never a traceback
        message = f"validation stopped: {type(exc).__name__}: {escape(str(exc), 200)}"
        return _entry(path, None, [_problem("internal.error", message)], strict, message)
    problems = report["problems"]
    unreadable = [p["code"] for p in problems] == ["file.unreadable"]  # (a URL not fetched)
    return _entry(
        path, report["format"], problems, strict, report.get("load_error"), unreadable=unreadable
    )


def _batch(paths: list[str], checks: Checks) -> list[dict[str, Any]]:
    return [validate_one(p, checks) for p in paths]


# -- the file list ------------------------------------------------------------------------------


def _wanted(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _folder(top: str) -> Iterator[str]:
    """The checkpoint files under ``top``, sorted, without following symlinked folders."""
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            if _wanted(name):
                yield os.path.join(folder, name)


def _read_list(source: str) -> list[str]:
    """``--files-from``: one path a line (blank lines skipped); ``-`` is stdin."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read()
    except OSError as exc:
        raise Usage(f"validate: --files-from {escape(source)}: {exc.strerror or exc}") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def collect(paths: Iterable[str]) -> list[str]:
    """The files to check: paths as given, folders replaced by the checkpoint files under
    them (by extension: ``.pt .pth .bin .ckpt .tar .safetensors`` and ``*.index.json``)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out.extend(_folder(path))
        else:
            out.append(path)
    return out


# -- text output --------------------------------------------------------------------------------


def _s(text: str) -> str:
    return escape(text, None)


def _headline(r: dict[str, Any]) -> str:
    counts = r["counts"]
    strict = ", strict" if r["strict"] else ""
    path = _s(r["path"])
    if r["status"] == "unreadable":
        return f"{path}: unreadable"
    fmt = r["format"] or "unknown"
    if r["ok"]:
        notes = f", {counts['info']} note{'s' if counts['info'] != 1 else ''}"
        return f"{path}: ok ({fmt}{strict}{notes if counts['info'] else ''})"
    parts = [
        f"{counts[s]} {s}{'s' if counts[s] != 1 else ''}"
        for s in ("error", "warning", "info")
        if counts[s]
    ]
    return f"{path}: {', '.join(parts)} ({fmt}{strict})"


def _problem_line(p: dict[str, Any], code_width: int) -> str:
    where = []
    if p["record"] is not None:  # (a member's name may be 64 KiB: shown cut, as in messages)
        where.append(escape(p["record"], NAME_LIMIT))
    if p["offset"] is not None:
        where.append(f"@{p['offset']}")
    if p["key_path"] is not None:
        where.append(f"[{_s(p['key_path'])}]")
    loc = f"{' '.join(where)}: " if where else ""
    return f"  {p['severity']:<7}  {p['code']:<{code_width}}  {loc}{_s(p['message'])}"


def print_report(r: dict[str, Any], quiet: bool) -> None:
    """One file's report: the headline, then a line per problem (``quiet``: nothing for a
    file without errors or warnings)."""
    problems = r["problems"]
    if r["ok"] and quiet:
        return
    print(_headline(r))
    if problems:
        code_width = max(len(p["code"]) for p in problems)
        for p in problems:
            print(_problem_line(p, code_width))


def summarize(entries: list[dict[str, Any]]) -> dict[str, int]:
    """``files``, and how many are ``ok`` (no error or warning; notes allowed), have
    ``errors``, have ``warnings`` (and no error), or are ``unreadable``: a partition."""
    statuses = [e["status"] for e in entries]
    return {
        "files": len(entries),
        "ok": sum(s in ("ok", "info") for s in statuses),
        "errors": statuses.count("error"),
        "warnings": statuses.count("warning"),
        "unreadable": statuses.count("unreadable"),
    }


def _status(summary: dict[str, int], fail_on: FailOn) -> int:
    if summary["unreadable"]:
        return USAGE
    failing = {"error": summary["errors"], "warning": summary["errors"] + summary["warnings"]}
    return PROBLEM if failing.get(fail_on, 0) else OK


# -- the command --------------------------------------------------------------------------------

_SUMMARY = "check files for damage, unsafe pickles and ambiguities"
_DESCRIPTION = (
    "Check checkpoint files without running anything from them: zip "
    "integrity (CRC-32 of every record, headers, overlaps, gaps), every pickle global "
    "outside the allowlist, storages and views, dtypes, devices, version and byteorder "
    "records, the legacy format, and what torch reads differently from a careful "
    "reader. Folders are searched for .pt .pth .bin .ckpt .tar .safetensors and "
    "*.index.json files. Each problem is an error, a warning or an info note (nothing "
    "wrong). Exit status: 0 no file fails --fail-on, 1 a file does, 2 usage error or an "
    "unreadable file (a missing file, a FIFO or device: never opened)."
)
_EXAMPLES = (
    "examples:\n  pthfmt validate model.pth\n  pthfmt validate --strict -j 2 checkpoints/\n"
    "  find . -name '*.pt' | pthfmt validate --files-from - --json\n"
    "  pthfmt validate --fail-on error --json ckpts/ | jq .summary\n"
    "  pthfmt validate --codes   (the table of problem codes)"
)


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "validate", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("files", nargs="*", metavar="PATH", help="files and folders to check")
    p.add_argument(
        "--files-from",
        metavar="FILE",
        help="read paths from FILE, one a line ('-': standard input)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document: {summary: {files, ok, errors, warnings, unreadable}, files}",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also flag what torch accepts but a careful publisher would not ship "
        "(compressed or unaligned data, extra records, unreferenced storages...)",
    )
    p.add_argument(
        "--no-data",
        action="store_true",
        help="do not read tensor data (skips the CRC-32 of storage records; a URL is then "
        "fetched but for its tensors)",
    )
    p.add_argument(
        "--fail-on",
        choices=("error", "warning", "never"),
        default="warning",
        help="exit 1 when a file has a problem of this severity or worse (default: warning)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="check files in N worker processes (0: one per CPU)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing for files without problems"
    )
    p.add_argument(
        "--codes", action="store_true", help="print the table of problem codes (Markdown) and exit"
    )


def _pool_results(files: list[str], checks: Checks, jobs: int) -> Iterator[dict[str, Any]]:
    """The entries in file order, from ``jobs`` worker processes: forked ones where the
    platform has ``fork`` (they inherit the imported validator: no start-up cost), else a
    ``multiprocessing`` pool taking batches of files."""
    from .. import validation  # noqa: F401  (imported once, here: forked workers inherit it)

    if sys.platform.startswith("linux"):
        return _forked_results(files, checks, jobs)
    import multiprocessing

    size = max(1, min(32, len(files) // (jobs * 4)))
    batches = [files[i : i + size] for i in range(0, len(files), size)]

    def results() -> Iterator[dict[str, Any]]:
        with multiprocessing.Pool(jobs) as pool:
            for batch in pool.imap(_Batch(checks), batches):
                yield from batch

    return results()


class _Batch:
    """A picklable ``_batch`` with ``checks`` bound (for the pool)."""

    def __init__(self, checks: Checks) -> None:
        self.checks = checks

    def __call__(self, paths: list[str]) -> list[dict[str, Any]]:
        return _batch(paths, self.checks)


def _forked_results(files: list[str], checks: Checks, jobs: int) -> Iterator[dict[str, Any]]:
    """``jobs`` forked workers; worker ``k`` checks files ``k, k + jobs, ...`` and writes
    each entry (pickled, length-prefixed) to its pipe; the parent reads them back in file
    order, so that reports stream in order while the workers run ahead."""
    import gc

    gc.collect()
    gc.freeze()  # the workers' collections then leave the inherited objects' pages shared
    workers: list[tuple[int, Any]] = []
    try:
        for k in range(jobs):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                os.close(read_fd)
                _worker(files[k::jobs], checks, write_fd)
            os.close(write_fd)
            workers.append((pid, os.fdopen(read_fd, "rb")))
    finally:
        gc.unfreeze()
    return _gather(workers, files, checks.strict)


def _worker(paths: list[str], checks: Checks, fd: int) -> None:  # pragma: no cover - child
    import pickle
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    status = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                data = pickle.dumps(validate_one(path, checks), protocol=pickle.HIGHEST_PROTOCOL)
                out.write(len(data).to_bytes(8, "little") + data)
                out.flush()
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _gather(
    workers: list[tuple[int, Any]], files: list[str], strict: bool
) -> Iterator[dict[str, Any]]:
    import pickle
    import signal

    dead: set[int] = set()
    done = False
    try:
        for i, path in enumerate(files):
            k = i % len(workers)
            head = b"" if k in dead else workers[k][1].read(8)
            if len(head) != 8:
                dead.add(k)
                message = "the worker process checking this file stopped (killed?)"
                yield _entry(path, None, [_problem("internal.error", message)], strict, message)
                continue
            yield pickle.loads(workers[k][1].read(int.from_bytes(head, "little")))
        done = True
    finally:
        for pid, pipe in workers:
            pipe.close()
            if not done:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:  # pragma: no cover
                    pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # pragma: no cover
                pass


def _results(files: list[str], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    jobs = min(args.jobs or os.cpu_count() or 1, len(files))
    checks = Checks(args.strict, not args.no_data)
    if jobs > 1:
        return _pool_results(files, checks, jobs)
    return (validate_one(f, checks) for f in files)


def run(args: argparse.Namespace) -> int:
    if args.codes:
        from ..validation import codes_markdown

        sys.stdout.write(codes_markdown())
        return OK
    if args.jobs < 0:
        raise Usage("validate: -j must be 0 or more")
    given = list(args.files)
    if args.files_from is not None:
        given += _read_list(args.files_from)
    if not given:
        raise Usage("validate: give at least one PATH (or --files-from, or --codes)")
    files = collect(given)
    entries = []
    for entry in _results(files, args):
        entries.append(entry)
        if entry["status"] == "unreadable":
            err(f"{entry['path']}: {entry['problems'][0]['message']}")
        if not args.json:
            print_report(entry, args.quiet)
            sys.stdout.flush()
    summary = summarize(entries)
    status = _status(summary, args.fail_on)
    if args.json:
        emit_json(
            {
                "summary": summary,
                "ok": status == OK,
                "strict": args.strict,
                "fail_on": args.fail_on,
                "files": entries,
            }
        )
    elif len(entries) != 1 and (not args.quiet or status):
        print(_summary_line(summary))
    return status


def _summary_line(s: dict[str, int]) -> str:
    parts = [f"{s['ok']} sound", f"{s['errors']} with errors", f"{s['warnings']} with warnings"]
    if s["unreadable"]:
        parts.append(f"{s['unreadable']} unreadable")
    return f"{s['files']} file{'s' if s['files'] != 1 else ''}: {', '.join(parts)}"
