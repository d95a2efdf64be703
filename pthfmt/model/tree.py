"""Walking a loaded object tree: key paths, each object once, no recursion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

__all__ = ["walk", "MAX_PATH_PARTS"]

#: Key paths deeper than this keep their last parts only (``<12345 levels>.a.b``), so that
#: a hostile million-level tree cannot make path strings quadratic in its depth.
MAX_PATH_PARTS = 64


class _Node:
    """A container on the way down: its parent, its key there, and its depth."""

    __slots__ = ("depth", "key", "parent")

    def __init__(self, parent: _Node | None, key: Any, depth: int) -> None:
        self.parent, self.key, self.depth = parent, key, depth

    def path(self, *last: Any) -> str:
        """This container's key path, or that of its item ``last[0]``."""
        parts: list[str] = [str(k) for k in last]
        node: _Node | None = self
        while node is not None and node.parent is not None and len(parts) < MAX_PATH_PARTS:
            parts.append(str(node.key))
            node = node.parent
        if node is not None and node.parent is not None:
            parts.append(f"<{self.depth + len(last) - len(parts)} levels>")
        return ".".join(reversed(parts))


_ROOT = _Node(None, None, 0)


def walk(root: Any, *, leaves: tuple[type, ...] = (),
         want: Callable[[Any], bool] | None = None) -> Iterator[tuple[str, Any]]:
    """Depth-first ``(key_path, value)`` over dicts, lists and tuples, in order.

    Key paths join dict keys and list indices with dots (``state.0.exp_avg``); the root's
    path is ``""``.  Every object that could be reached twice (containers, and instances of
    ``leaves``) is visited once, so shared and cyclic references walk in time linear in the
    number of distinct objects.  With ``want``, only values it accepts are yielded (and only
    their paths are built).
    """
    seen: set[int] = set()
    shared = (dict, list, tuple, *leaves)
    # (the container holding value, value's key there, value); nodes only for containers
    stack: list[tuple[_Node | None, Any, Any]] = [(None, None, root)]
    while stack:
        parent, key, value = stack.pop()
        if isinstance(value, shared):
            if id(value) in seen:
                continue
            seen.add(id(value))
        wanted = want is None or want(value)
        if isinstance(value, dict):
            keys: Any = reversed(value)
            values: Any = reversed(value.values())
        elif isinstance(value, (list, tuple)):
            keys, values = range(len(value) - 1, -1, -1), reversed(value)
        else:
            if wanted:
                yield (parent.path(key) if parent is not None else ""), value
            continue
        node = _ROOT if parent is None else _Node(parent, key, parent.depth + 1)
        if wanted:
            yield node.path(), value
        stack.extend(zip(repeat(node), keys, values))
