"""Assertions on pthfmt's reading shared by ``tests/unit`` and ``tests/interop`` (no torch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pthfmt
from pthfmt import PthError


def both_raise(
    path: Path | str,
    exc_type: type[PthError],
    *,
    match: str | None = None,
) -> Any:
    """load() and open() both raise ``exc_type``; returns the load() error."""
    with pytest.raises(exc_type, match=match) as a:
        pthfmt.load(path)
    with pytest.raises(exc_type, match=match):
        pthfmt.open(path)
    assert isinstance(a.value, PthError) and isinstance(a.value, ValueError)
    return a.value


def raw(value: Any) -> bytes:
    """An array's (or array-like's) bytes in C order."""
    return np.ascontiguousarray(value).tobytes()


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` pairs of nested dicts."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree
