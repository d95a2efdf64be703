"""The safetensors checks of :func:`pthfmt.validate`: every broken header rule as a problem.

:func:`check_safetensors` runs the reader's own header checker
(:func:`pthfmt.formats.safetensors.check_header`) in collecting mode, so that ``validate``
and ``pthfmt.open`` apply exactly the same rules (strict JSON, ``__metadata__`` of strings,
known dtypes, shapes, sizes = shape x dtype, data offsets in order with no overlap and no
gap), and reports every problem past the first, each with its code, the file offset and the
tensor name.  Tensors of a dtype torch lacks (``F6_*``) are a ``safetensors.no_torch_dtype``
warning: the file is sound safetensors, but no torch checkpoint can hold them.
"""

from __future__ import annotations

from typing import Final

from ..formats.safetensors import HeaderProblem, check_header, torch_view
from ..source import Source
from ..text import escape
from .codes import CODES, Problem

__all__ = ["check_safetensors", "MAX_PROBLEMS"]

#: Problems collected per file before the rest are counted.
MAX_PROBLEMS: Final = 1000


def check_safetensors(src: Source) -> list[Problem]:
    """Every problem of a safetensors file's header and layout (empty when it is sound)."""
    found: list[HeaderProblem] = []
    extra = 0

    def collect(problem: HeaderProblem) -> None:
        nonlocal extra
        if len(found) < MAX_PROBLEMS:
            found.append(problem)
        else:
            extra += 1

    entries, _ = check_header(src.buf, src.size, collect)
    problems = [
        Problem(p.code, CODES[p.code].severity, p.message, None, p.offset, p.key) for p in found
    ]
    if extra:
        problems.append(
            Problem("safetensors.header", "error", f"... and {extra} more safetensors problems")
        )
    for entry in entries:
        view = torch_view(entry)
        if isinstance(view, str):
            problems.append(
                Problem(
                    "safetensors.no_torch_dtype",
                    CODES["safetensors.no_torch_dtype"].severity,
                    f"safetensors entry {view} has no torch dtype",
                    None,
                    entry.where,
                    escape(entry.name),
                )
            )
    return problems
