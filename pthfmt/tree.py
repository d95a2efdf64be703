"""Walking a loaded object tree: key paths, each object once, no recursion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["walk", "MAX_PATH_PARTS"]

#: Key paths deeper than this keep their last parts only (``<12345 levels>.a.b``), so that
#: a hostile million-level tree cannot make path strings quadratic in its depth.
MAX_PATH_PARTS = 64


class _Node:
    __slots__ = ("depth", "key", "parent")

    def __init__(self, parent: _Node | None, key: Any, depth: int) -> None:
        self.parent, self.key, self.depth = parent, key, depth

    def path(self) -> str:
        parts: list[str] = []
        node: _Node | None = self
        while node is not None and node.parent is not None and len(parts) < MAX_PATH_PARTS:
            parts.append(str(node.key))
            node = node.parent
        if node is not None and node.parent is not None:
            parts.append(f"<{self.depth - len(parts)} levels>")
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
    stack: list[tuple[_Node, Any]] = [(_ROOT, root)]
    while stack:
        node, value = stack.pop()
        if isinstance(value, shared):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if want is None or want(value):
            yield node.path(), value
        if isinstance(value, dict):
            items: list[tuple[Any, Any]] = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            continue
        depth = node.depth + 1
        stack.extend((_Node(node, k, depth), v) for k, v in reversed(items))
