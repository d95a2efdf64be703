"""TorchScript archives (``torch.jit.save``): what pthfmt reads of them, without running them.

A TorchScript archive is torch's zip container with a ``constants.pkl`` record.  Its
``data.pkl`` pickles the module tree as objects of the archive's own classes
(``__torch__.torch.nn.modules.linear.Linear``): ``NEWOBJ`` + ``BUILD({attribute: value})``,
tensors stored exactly as in ``torch.save`` files.  The classes are defined by TorchScript
source in ``code/<module path>.py`` records; pthfmt never runs that source, it only scans it
as text for each class's ``__parameters__`` and ``__buffers__`` lists, which say which
tensor attributes make up the module's ``state_dict()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

from ..errors import LimitError, PthError
from ..torch.handlers import ScriptClasses

__all__ = ["script_classes", "read_sources", "code_budget"]

# One line each (TorchScript's printer writes them so); matched line by line, so that no
# pattern can scan past a line's end: the scan is linear in the code's size, whatever the
# code holds.
_CLASS: Final = re.compile(r"class ([A-Za-z_][A-Za-z0-9_]*)\(([^)]*)\):")
_NAMES: Final = re.compile(r"  __(parameters|buffers)__ = \[([^\]]*)\]")
_QUOTED: Final = re.compile(r'"([^"]*)"')


def code_budget(file_size: int) -> int:
    """Bytes of code text the scan may inflate in all: real archives' code compresses about
    5:1, so 16 times the file's size (and 64 MiB for small files) is never reached."""
    return 16 * file_size + (64 << 20)


def script_classes(sources: dict[str, bytes] | Iterable[tuple[str, bytes]]) -> ScriptClasses:
    """Map ``__torch__.<path>.<Class>`` to (parameter names, buffer names, is a Module).

    ``sources`` yields (or maps) a code record's path below ``code/`` (``__torch__/foo/bar.py``)
    and its text, one record at a time.
    """
    classes: ScriptClasses = {}
    pairs = sources.items() if isinstance(sources, dict) else sources
    for path, raw in pairs:
        if path.endswith(".py"):
            _scan(path[:-3].replace("/", "."), raw.decode("utf-8", "replace"), classes)
    return classes


def _scan(module: str, text: str, classes: ScriptClasses) -> None:
    """The classes of one code record, line by line."""
    current: str | None = None
    lists: dict[str, tuple[str, ...]] = {}
    is_module = False
    for line in text.split("\n"):
        if line.startswith("class "):
            match = _CLASS.match(line)
            if match is None:
                continue
            if current is not None:
                classes[current] = (lists["parameters"], lists["buffers"], is_module)
            current = f"{module}.{match.group(1)}"
            lists = {"parameters": (), "buffers": ()}
            is_module = match.group(2).strip() == "Module"
        elif current is not None and line.startswith("  __"):
            names = _NAMES.match(line)
            if names is not None:
                lists[names.group(1)] = tuple(_QUOTED.findall(names.group(2)))
    if current is not None:
        classes[current] = (lists["parameters"], lists["buffers"], is_module)


def read_sources(archive: Any) -> Iterator[tuple[str, bytes]]:
    """The ``code/*.py`` records of a :class:`TorchZip`, inflated one at a time (deflated
    ones under :func:`code_budget` in all).  Unreadable records are skipped: they only cost
    the state-dict view its names."""
    budget = code_budget(archive.zip.src.size)
    for rel, entries in archive.records.items():
        if not (rel.startswith("code/") and rel.endswith(".py") and len(entries) == 1):
            continue
        entry = entries[0]
        budget -= entry.usize
        if budget < 0:
            raise LimitError(
                "the TorchScript code records inflate to more than "
                f"{code_budget(archive.zip.src.size)} bytes, more than the "
                "file's size justifies",
                record=entry.name,
            )
        try:
            text = archive.zip.read(entry)
        except PthError:
            continue
        yield rel[len("code/") :], text
