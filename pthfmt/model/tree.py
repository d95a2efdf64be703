"""Walking a loaded object tree: key paths, each object once, no recursion, bounded output.

A *key path* joins the keys from the root to a value with dots: dict keys and list or tuple
indices (``model_state_dict.fc1.weight``, ``state.0.exp_avg``); the root's path is ``""``.
Every key a file controls is rendered by :func:`key_text`:

- a ``str`` key is itself; an ``int`` key is its decimal form, or ``<a N-bit int>`` when it
  is longer than 256 bits (Python refuses ``str()`` of ints over 4,300 digits, and a
  ``LONG4`` key may be any size);
- any other key (bytes, floats, tuples...) is its bounded repr (:func:`pthfmt.text.short_repr`);
- a key longer than :data:`MAX_PART_CHARS` characters keeps its first characters and says how
  long it was: ``aaaa...<+1048000 chars>``.

A path is capped twice, so that shared keys and deep nesting cannot make it large:

- at most :data:`MAX_PATH_PARTS` parts: deeper paths keep the innermost parts and say how many
  levels they left out: ``<999936 levels>.0.0``;
- at most about :data:`MAX_PATH_CHARS` characters: the innermost parts that fit are kept, the
  rest are counted the same way (``<60 levels>.k.weight``).

A capped path therefore always starts with ``<N levels>``; an uncapped one never does.  On
top of that, one :func:`walk` builds at most :data:`PATH_BUDGET` characters of key paths plus
:data:`PATH_CHARS_PER_ITEM` per container item it visits (a ``LimitError`` beyond), so the
total work of a walk such as ``Checkpoint.tensors()`` is in proportion to the objects the file
holds, however they share long keys.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Iterator
from typing import Any, Final

from ..errors import LimitError
from ..text import int_text, short_repr
from .stub import Stub

__all__ = [
    "walk",
    "key_text",
    "join_path",
    "MAX_PATH_PARTS",
    "MAX_PATH_CHARS",
    "MAX_PART_CHARS",
    "PATH_BUDGET",
    "PATH_CHARS_PER_ITEM",
]

#: Key paths deeper than this keep their last parts only (``<12345 levels>.a.b``), so that
#: a hostile million-level tree cannot make path strings quadratic in its depth.
MAX_PATH_PARTS: Final = 64
#: A key path keeps its innermost parts up to this many characters.
MAX_PATH_CHARS: Final = 4096
#: One key is cut to this many characters (and told its length).
MAX_PART_CHARS: Final = 1024
#: Characters of key paths one walk may build, beyond :data:`PATH_CHARS_PER_ITEM` per item.
PATH_BUDGET: Final = 64 << 20
PATH_CHARS_PER_ITEM: Final = 64


def key_text(key: Any) -> str:
    """How ``key`` appears in a key path (see the module docstring); never raises."""
    kind = type(key)
    if kind is str:
        text: str = key
    elif kind is int:
        text = int_text(key)
    else:
        text = short_repr(key)
    if len(text) > MAX_PART_CHARS:
        text = f"{text[: MAX_PART_CHARS - 32]}...<+{len(text) - MAX_PART_CHARS + 32} chars>"
    return text


def join_path(inner_first: list[str], depth: int, complete: bool) -> str:
    """Join rendered parts given innermost first; ``depth`` is the path's full number of
    parts and ``complete`` says whether ``inner_first`` holds them all (else they are the
    innermost ones and the rest are counted)."""
    if not complete:
        inner_first.append(f"<{depth - len(inner_first)} levels>")
    return ".".join(reversed(inner_first))


def capped(texts: Iterator[str], depth: int) -> str:
    """The key path of a value ``depth`` levels down whose keys ``texts`` yields innermost
    first, within :data:`MAX_PATH_PARTS` parts and :data:`MAX_PATH_CHARS` characters."""
    parts: list[str] = []
    size = 0
    for text in texts:
        if len(parts) >= MAX_PATH_PARTS or (parts and size + len(text) > MAX_PATH_CHARS):
            return join_path(parts, depth, complete=False)
        parts.append(text)
        size += len(text) + 1
    return join_path(parts, depth, complete=True)


class _Node:
    """A container on the way down: its parent, its key there, and its depth; and its whole
    key path once made (``whole``: ``None`` until then, ``""`` also for a path that
    :func:`capped` would cut)."""

    __slots__ = ("depth", "key", "parent", "whole")

    def __init__(self, parent: _Node | None, key: Any, depth: int) -> None:
        self.parent, self.key, self.depth = parent, key, depth
        self.whole: str | None = None if parent is not None else ""

    def keys(self) -> Iterator[str]:
        """The rendered keys from this container up to the root, innermost first."""
        node: _Node | None = self
        while node is not None and node.parent is not None:
            yield key_text(node.key)
            node = node.parent

    def _whole(self) -> str:
        """This container's key path when :func:`capped` keeps all of it, else ``""`` (the
        root's is ``""`` too); made once per container, each from its parent's."""
        todo: list[_Node] = []
        node = self
        while node.whole is None:  # (parents first: no recursion however deep)
            todo.append(node)
            node = node.parent  # type: ignore[assignment]  # (the root's whole is "")
        for node in reversed(todo):
            up = node.parent
            assert up is not None
            whole = ""
            if node.depth <= MAX_PATH_PARTS and (up.depth == 0 or up.whole):
                whole = key_text(node.key) if up.depth == 0 else f"{up.whole}.{key_text(node.key)}"
                if node.depth > 1 and len(whole) > MAX_PATH_CHARS:
                    whole = ""
            node.whole = whole
        return self.whole  # type: ignore[return-value]

    def path(self) -> str:
        """This container's key path."""
        whole = self.whole if self.whole is not None else self._whole()
        if whole or self.depth == 0:
            return whole
        return capped(self.keys(), self.depth)

    def item_path(self, key: Any) -> str:
        """The key path of this container's item ``key``."""
        whole = self.whole if self.whole is not None else self._whole()
        first = key if type(key) is str and len(key) <= MAX_PART_CHARS else key_text(key)
        if self.depth == 0:
            return first
        if whole and self.depth < MAX_PATH_PARTS:
            path = f"{whole}.{first}"
            if len(path) <= MAX_PATH_CHARS:
                return path
        return capped(_chain(first, self.keys()), self.depth + 1)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


_ROOT = _Node(None, None, 0)


def walk(
    root: Any, *, leaves: tuple[type, ...] = (), want: Callable[[Any], bool] | None = None
) -> Iterator[tuple[str, Any]]:
    """Depth-first ``(key_path, value)`` over dicts, lists, tuples, ``argparse.Namespace``
    fields and stubs (:meth:`pthfmt.Stub.items`: an ``nn.Module`` stub's parameters, buffers
    and children under their ``state_dict`` names), in order.

    Key paths are built as the module docstring says.  Every object that could be reached
    twice (containers, and instances of ``leaves``) is visited once, so shared and cyclic
    references walk in time linear in the number of distinct objects.  With ``want``, only
    values it accepts are yielded (and only their paths are built).  A walk whose key paths
    would take more characters than its budget raises :class:`~pthfmt.errors.LimitError`.
    """
    seen: set[int] = set()
    containers = (dict, list, tuple, Stub, Namespace)
    shared = (*containers, *leaves)
    # exact leaf types, whose instances the item loop below takes itself (no trip through
    # the container checks, no frame)
    plain_leaves = {kind for kind in leaves if not issubclass(kind, containers)}
    budget = PATH_BUDGET
    # One frame per container on the way down: its node, its keys and values (copied when
    # it is reached, as lists: no tuple per item) and the index of the next item.
    frames: list[_Frame] = []
    parent: _Node | None = None
    key: Any = None
    value: Any = root
    while True:
        visit, items = True, None
        if isinstance(value, shared):
            visit = id(value) not in seen
            if visit:
                seen.add(id(value))
                items = _items(value)  # (None: an instance of ``leaves``)
        if visit:
            node = None
            if items is not None:
                node = _ROOT if parent is None else _Node(parent, key, parent.depth + 1)
                budget += PATH_CHARS_PER_ITEM * len(items[1])
            if want is None or want(value):
                if node is not None:
                    path = node.path()
                else:
                    path = parent.item_path(key) if parent is not None else ""
                budget -= len(path)
                if budget < 0:
                    _too_long()
                yield path, value
            if items is not None:
                assert node is not None
                frames.append(_Frame(node, items[0], items[1]))
        # the next item: of the innermost container that has one left
        while frames:
            frame = frames[-1]
            i = frame.next
            values = frame.values
            if i < len(values):
                frame.next = i + 1
                keys = frame.keys
                parent, key, value = frame.node, i if keys is None else keys[i], values[i]
                if type(value) not in plain_leaves:
                    break
                # a leaf of an exact leaf type: what the loop above does for it, here
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if want is None or want(value):
                    path = parent.item_path(key)
                    budget -= len(path)
                    if budget < 0:
                        _too_long()
                    yield path, value
                continue
            frames.pop()
        else:
            return


class _Frame:
    """A container being walked: its node, its keys (``None``: indices) and values, and the
    next item's index."""

    __slots__ = ("keys", "next", "node", "values")

    def __init__(self, node: _Node, keys: list[Any] | None, values: list[Any]) -> None:
        self.node, self.keys, self.values, self.next = node, keys, values, 0


def _items(value: Any) -> tuple[list[Any] | None, list[Any]] | None:
    """A container's keys (``None`` for a sequence: its indices) and values, as lists
    (``None`` for a leaf)."""
    if isinstance(value, dict):
        return list(value), list(value.values())
    if isinstance(value, (list, tuple)):
        return None, list(value)
    if type(value) is Stub:
        pairs = value.items()
        return [k for k, _ in pairs], [v for _, v in pairs]
    if type(value) is Namespace:
        fields = vars(value)
        return list(fields), list(fields.values())
    return None


def _too_long() -> None:
    raise LimitError(
        "the key paths of this object tree take more characters than its size "
        "justifies (long keys shared at many levels)"
    )
