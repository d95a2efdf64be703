"""Print ``name==version`` for the lower bound of every runtime dependency in pyproject.toml
that applies to this Python (``; python_version<'3.12'`` style markers are honoured)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

project = tomllib.loads(Path(__file__).parent.with_name("pyproject.toml").read_text())
pins = []


def applies(marker: str) -> bool:
    """A ``python_version <op> 'X.Y'`` marker (the only kind pyproject.toml uses) here."""
    if not marker.strip():
        return True
    found = re.fullmatch(r"\s*python_version\s*(<|<=|>|>=|==)\s*'(\d+)\.(\d+)'\s*", marker)
    if found is None:
        sys.exit(f"unsupported marker {marker!r}")
    here, there = sys.version_info[:2], (int(found[2]), int(found[3]))
    return {
        "<": here < there,
        "<=": here <= there,
        ">": here > there,
        ">=": here >= there,
        "==": here == there,
    }[found[1]]


for entry in project["project"]["dependencies"]:
    requirement, _, marker = entry.partition(";")
    if not applies(marker):
        continue
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(?:,.*)?", requirement)
    if match is None:
        sys.exit(f"no lower bound in the dependency {requirement!r}")
    pins.append(f"{match[1]}=={match[2]}")
print(" ".join(pins))
