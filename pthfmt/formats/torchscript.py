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

from ..errors import PthError
from ..torch.handlers import ScriptClasses

__all__ = ["script_classes"]

_CLASS = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(([^)]*)\):", re.M)
_NAMES = re.compile(r'^  __(parameters|buffers)__ = \[([^\]]*)\]', re.M)
_QUOTED = re.compile(r'"([^"]*)"')


def script_classes(sources: dict[str, bytes]) -> ScriptClasses:
    """Map ``__torch__.<path>.<Class>`` to (parameter names, buffer names, is a Module).

    ``sources`` maps a code record's path below ``code/`` (``__torch__/foo/bar.py``) to its
    text.  Unreadable records are skipped: they only cost the state-dict view its names.
    """
    classes: ScriptClasses = {}
    for path, raw in sources.items():
        if not path.endswith(".py"):
            continue
        module = path[:-3].replace("/", ".")
        text = raw.decode("utf-8", "replace")
        starts = list(_CLASS.finditer(text))
        for i, match in enumerate(starts):
            body = text[match.end():starts[i + 1].start() if i + 1 < len(starts) else None]
            lists = {"parameters": (), "buffers": ()}
            for kind, names in _NAMES.findall(body):
                lists[kind] = tuple(_QUOTED.findall(names))
            is_module = match.group(2).strip() == "Module"
            classes[f"{module}.{match.group(1)}"] = (lists["parameters"], lists["buffers"],
                                                     is_module)
    return classes


def read_sources(archive: object) -> dict[str, bytes]:
    """The ``code/*.py`` records of a :class:`TorchZip` (deflated ones inflated)."""
    out: dict[str, bytes] = {}
    for rel, entries in archive.records.items():  # type: ignore[attr-defined]
        if rel.startswith("code/") and rel.endswith(".py") and len(entries) == 1:
            try:
                out[rel[len("code/"):]] = archive.zip.read(entries[0])  # type: ignore[attr-defined]
            except PthError:
                continue
    return out
