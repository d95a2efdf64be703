"""``pthfmt convert IN OUT [--format F] [--key KEY] [--max-shard-size SIZE] [-q]``: the
parser, the progress bar and the summary line around :class:`pthfmt.engines.convert.Conversion`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ..engines.tree import Failure
from ..errors import PthError
from ..text import escape
from .output import OK, PROBLEM, command_parser, err, guard, human_size

if TYPE_CHECKING:
    from ..engines.convert import Conversion

__all__ = ["add_parser", "run", "PROGRESS_MIN", "ProgressBar"]

#: Bytes of tensor data from which ``convert`` shows a progress bar (when stderr is a terminal).
PROGRESS_MIN = 64 << 20


class ProgressBar:
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
        line = (
            f"{self.label} [{bar:<30}] {frac:4.0%}  {human_size(min(done, total))} / "
            f"{human_size(total)}"
        )
        self.width = max(self.width, len(line))
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()

    def clear(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


_SUMMARY = "convert between .pth/.pt/.bin, .safetensors and .npz"
_DESCRIPTION = (
    "Convert a checkpoint to the format OUT's extension names: torch "
    "(.pth, .pt, .bin, .ckpt), .safetensors or .npz.  IN may also be a sharded "
    "checkpoint (its *.index.json or the folder holding it).  Nested keys flatten with "
    "dots, as state_dict keys do; non-tensor values (epoch, loss, hyper-parameters) "
    "travel as JSON in the safetensors metadata or the npz sidecar.  A file that "
    "calls a known code-execution gadget (os.system, eval...) is refused, naming each "
    "call; --salvage extracts its tensors anyway.  OUT may not be IN (or a link to it).  "
    "Whatever OUT's "
    "format cannot hold is left out and named in a warning on stderr.  Tensors stream "
    "one by one; OUT is written to a temporary file and renamed into place when "
    "complete.  Exit status: 0 converted, 1 a problem with IN, 2 usage error or "
    "unreadable/unwritable file."
)
_EXAMPLES = (
    "examples:\n  pthfmt convert model.pth model.safetensors\n"
    "  pthfmt convert model.safetensors model.pth\n"
    "  pthfmt convert --key model_state_dict checkpoint.pth model.safetensors\n"
    "  pthfmt convert ./sharded-model/ merged.safetensors   (folder with *.bin.index.json)"
    "\n  pthfmt convert --max-shard-size 2GB model.pth ./sharded-model/"
    "\n  pthfmt convert weights.npz weights.pt"
)


def add_parser(sub: Any) -> None:
    p = command_parser(sub, "convert", _SUMMARY, _DESCRIPTION, _EXAMPLES)
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument(
        "--format",
        choices=("pth", "safetensors", "npz"),
        help="OUT's format, when its extension does not say",
    )
    p.add_argument(
        "--key",
        metavar="KEY",
        help="convert only the entries under KEY, without the prefix (e.g. model_state_dict)",
    )
    p.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="write a sharded checkpoint into the folder OUT, as save_pretrained does: shards "
        "of at most SIZE (e.g. 2GB, 500MB; decimal units) and an index; tensors only; "
        "--format pth or safetensors (the default)",
    )
    p.add_argument(
        "--salvage",
        action="store_true",
        help="convert the tensors of a file that calls code-execution gadgets (which is "
        "refused otherwise); every stub is dropped and named in a warning",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no summary and no progress bar (warnings are still shown)",
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _write(conv: Conversion, args: argparse.Namespace) -> int:
    """Write OUT with a progress bar where it helps; warnings and the summary line."""
    paths = f"{escape(args.input, None)} -> {escape(args.output, None)}"
    bar = ProgressBar(paths)
    show = not args.quiet and conv.nbytes >= PROGRESS_MIN and sys.stderr.isatty()
    try:
        conv.write(bar if show else None)
    except PthError as exc:  # bad data met while streaming: IN's problem
        err(f"{args.input}: {exc}")
        return PROBLEM
    finally:
        bar.clear()
    for warning in conv.warnings:
        err(f"warning: {warning}")
    if not args.quiet:
        values = f", {_count(len(conv.values), 'value')}" if conv.values else ""
        what: str = conv.format
        if conv.max_shard_size is None:
            size = os.path.getsize(args.output)
        else:
            shards = len(conv.written) - (len(conv.written) > 1)  # the index is last
            what = f"{conv.format}, {_count(shards, 'shard')}" + (
                " + index" if len(conv.written) > 1 else ""
            )
            size = sum(os.path.getsize(os.path.join(args.output, n)) for n in conv.written)
        print(f"{paths} ({what}): {_count(len(conv.items), 'tensor')} ({human_size(size)}){values}")
    return OK


def _output_problem(output: str) -> str:
    """The CLI's wording for an OUT whose format cannot be told."""
    ext = os.path.splitext(output)[1]
    what = f"the extension {ext!r}" if ext else "a name without an extension"
    return (
        f"cannot tell the output format from {what}: use .pth/.pt/.bin/.ckpt, .safetensors "
        "or .npz (or --format)"
    )


def run(args: argparse.Namespace) -> int:
    import shutil

    from ..engines.convert import Conversion, GadgetError, UnknownFormatError, output_format
    from ..formats.sharding import parse_size

    def check_output() -> int:
        if args.max_shard_size is not None:
            try:
                parse_size(args.max_shard_size)
            except ValueError as exc:
                raise Failure(str(exc), usage=True) from None
            if args.format == "npz":
                raise Failure("--max-shard-size writes pth or safetensors shards", usage=True)
            return OK
        try:
            output_format(args.output, args.format)
        except UnknownFormatError:
            raise Failure(_output_problem(args.output), usage=True) from None
        if os.path.isdir(args.output):
            raise Failure("is a directory", usage=True)
        return OK

    job: list[Conversion] = []

    def read() -> int:
        try:
            job.append(
                Conversion(
                    args.input,
                    args.output,
                    format=args.format,
                    key=args.key,
                    salvage=args.salvage,
                    max_shard_size=args.max_shard_size,
                )
            )
        except UnknownFormatError as exc:
            raise Failure(str(exc), usage=True) from None
        except shutil.SameFileError:
            raise Failure(
                f"is the same file as OUT {args.output} (refused, as cp does)", usage=True
            ) from None
        except GadgetError as exc:
            raise Failure(str(exc).replace("salvage=True", "--salvage")) from None
        return OK

    status = guard(args.output, check_output) or guard(args.input, read)
    if status:
        return status
    try:
        return guard(args.output, lambda: _write(job[0], args))  # OSError: OUT not writable
    finally:
        job[0].close()
