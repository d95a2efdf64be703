"""What every command prints with: exit codes, the one-line error on stderr, JSON, tables and
the renderings of sizes, shapes and values."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..engines.tree import Failure, plain
from ..errors import PthError
from ..text import escape, is_unicode, short_repr

__all__ = [
    "OK",
    "PROBLEM",
    "USAGE",
    "Usage",
    "guard",
    "err",
    "wrap",
    "command_parser",
    "human_size",
    "emit_json",
    "json_safe",
    "table",
    "show",
    "shape_text",
]

OK, PROBLEM, USAGE = 0, 1, 2


class Usage(Exception):
    """A usage error: ``main`` prints the usage line and the message, exit status 2."""


def guard(
    path: str | None, func: Callable[[], int], json_error: dict[str, Any] | None = None
) -> int:
    """Run ``func``; a bad file becomes one line on stderr and exit code 1 (2 if unreadable).
    ``path`` prefixes the message (``None``: the message names its file itself).  With
    ``json_error`` (``--json``), stdout gets that document with the ``error`` message too, so
    that it is JSON whatever happened."""
    where = f"{path}: " if path else ""
    try:
        return func()
    except Failure as exc:
        status, message = USAGE if exc.usage else PROBLEM, _located(where, str(exc))
    except PthError as exc:
        status, message = PROBLEM, _located(where, str(exc))
    except (BrokenPipeError, Usage):
        raise
    except OSError as exc:
        status, message = USAGE, f"{where}{exc.strerror or exc}"
    except (RecursionError, MemoryError) as exc:
        status = PROBLEM
        message = f"{where}the file is too large or too deeply nested ({type(exc).__name__})"
    except Exception as exc:  # a pthfmt bug: one line, never a traceback
        status = PROBLEM
        message = (
            f"{where}internal error: {type(exc).__name__}: {escape(str(exc), 300)} (a pthfmt bug)"
        )
    err(message)
    if json_error is not None:
        emit_json({**json_error, "ok": False, "error": escape(message, None)})
    return status


def _located(where: str, message: str) -> str:
    """``message`` after ``where`` (the file), unless it already starts with the file
    (errors about an index or a folder name it themselves)."""
    if not where or message.startswith((where, escape(where, None))):
        return message
    return where + message


def wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def command_parser(
    sub: Any, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand's parser: ``summary`` in the command list, ``description`` wrapped,
    ``examples`` (the epilog) as written."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=wrap(description),
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def err(message: str) -> None:
    """``pthfmt: message`` on stderr, escaped (no control character from a file or a path
    reaches the terminal raw; no lone surrogate can fail the encoding)."""
    print(f"pthfmt: {escape(message, None)}", file=sys.stderr)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def json_safe(doc: Any) -> Any:
    """``doc`` with every string (and key) that is not valid Unicode -- a lone surrogate from
    a file -- escaped by :func:`pthfmt.text.escape`, so that the JSON is valid UTF-8."""
    if isinstance(doc, str):
        return doc if is_unicode(doc) else escape(doc, None)
    if isinstance(doc, dict):
        return {json_safe(k): json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return doc


def emit_json(doc: Any) -> None:
    """``doc`` as JSON on stdout: ASCII only (``\\uXXXX`` escapes for the rest), so that
    no control or bidi character reaches a terminal raw; lone surrogates escaped first."""
    json.dump(json_safe(doc), sys.stdout, indent=2, ensure_ascii=True, allow_nan=False)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[str]], indent: str = "") -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()


def show(value: Any, limit: int = 100) -> str:
    """A value on one line of at most ``limit`` characters, escaped."""
    rendered = plain(value)
    if isinstance(rendered, list) and len(rendered) > 3:
        head = ", ".join(short_repr(v, 30) for v in rendered[:3])
        text = f"[{head}, ... ({len(rendered)} items)]"
        full = repr(rendered) if len(rendered) <= limit else None
        if full is not None and len(full) <= limit:
            text = full
    elif isinstance(rendered, str) and not isinstance(value, str):
        text = rendered
    else:
        text = short_repr(rendered, limit)
    return escape(text, limit)


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) if shape else "()"
