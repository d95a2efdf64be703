"""Print ``name==version`` for the lower bound of every runtime dependency in pyproject.toml."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(__file__).parent.with_name("pyproject.toml").read_text())
pins = []
for requirement in project["project"]["dependencies"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(?:,.*)?", requirement)
    if match is None:
        sys.exit(f"no lower bound in the dependency {requirement!r}")
    pins.append(f"{match[1]}=={match[2]}")
print(" ".join(pins))
