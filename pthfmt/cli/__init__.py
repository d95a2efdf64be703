"""The ``pthfmt`` command line: ``inspect``, ``validate``, ``diff`` and ``convert``
(``python -m pthfmt``).

Each command is one :class:`Command` in :data:`COMMANDS`, from its module in this package: a
parser builder and a runner that returns the exit code.  The runners only parse arguments,
call the engines (:mod:`pthfmt.engines`) and print.  Bad input never shows a traceback: the
file and the problem go to stderr on one line.

Exit codes: 0 success (files sound, no differences), 1 a problem or a difference found,
2 usage error or unreadable file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..engines.diff import compare_values, diff_summary
from ..engines.inspect import inspect_summary
from ..engines.tree import leaves
from . import convert, diff, inspect, validate
from .convert import PROGRESS_MIN
from .output import OK, USAGE, Usage, err, human_size, wrap

__all__ = [
    "main",
    "COMMANDS",
    "Command",
    "build_parser",
    # the old single-module CLI's public names, for code that imported them from pthfmt.cli
    "compare_values",
    "diff_summary",
    "inspect_summary",
    "leaves",
    "human_size",
    "PROGRESS_MIN",
]


@dataclass(frozen=True)
class Command:
    name: str
    add_parser: Callable[[Any], None]
    run: Callable[[argparse.Namespace], int]


#: The subcommands, in ``--help`` order.
COMMANDS: list[Command] = [
    Command("inspect", inspect.add_parser, inspect.run),
    Command("validate", validate.add_parser, validate.run),
    Command("diff", diff.add_parser, diff.run),
    Command("convert", convert.add_parser, convert.run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pthfmt",
        description=wrap(
            "Read, check and compare PyTorch checkpoint files (.pt/.pth/.bin) "
            "without torch and without running code from them."
        ),
        epilog="examples:\n  pthfmt inspect model.pth\n  pthfmt validate --strict *.pth\n"
        "  pthfmt diff --strip-a module. a.pth b.pth\n"
        "  pthfmt convert model.pth model.safetensors\n\n"
        "Run 'pthfmt COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pthfmt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _tolerant_streams() -> None:
    """Never fail on output encoding: whatever a strict or ASCII locale cannot encode (a
    path's undecodable bytes) is written as a backslash escape."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a stream already in use
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (usage errors give 2, never raise)."""
    _tolerant_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    runner = {c.name: c.run for c in COMMANDS}[args.command]
    try:
        return runner(args)
    except Usage as exc:
        parser.print_usage(sys.stderr)
        err(str(exc))
        return USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pthfmt inspect big.pth | head`
        try:
            sys.stdout = open(os.devnull, "w")  # silence the interpreter's final flush
        except OSError:
            pass
        return OK
