"""Walking a loaded object tree: key paths, each object once, no recursion."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["walk"]


def walk(root: Any, *, leaves: tuple[type, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Depth-first ``(key_path, value)`` over dicts, lists and tuples, in order.

    Key paths join dict keys and list indices with dots (``state.0.exp_avg``).  Every object
    that could be reached twice (containers, and instances of ``leaves``) is yielded once, so
    shared and cyclic references walk in time linear in the number of distinct objects.
    """
    seen: set[int] = set()
    shared = (dict, list, tuple, *leaves)
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, shared):
            if id(value) in seen:
                continue
            seen.add(id(value))
        yield path, value
        if isinstance(value, dict):
            items: list[tuple[Any, Any]] = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            continue
        prefix = f"{path}." if path else ""
        stack.extend((f"{prefix}{k}", v) for k, v in reversed(items))
