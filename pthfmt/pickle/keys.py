"""Bounds on hashing a file's dict keys and set items.

Hashing is the one step of unpickling whose cost the file can choose beyond its size:

- **Nesting.** CPython hashes a tuple by hashing its items recursively, in C and without a
  recursion check: a key nested a million tuples deep (one byte per level in a pickle)
  overflows the C stack and kills the process.
- **Sharing.** A tuple's hash is not cached and the memo lets a file reuse one tuple many
  times: ``t[k] = (t[k-1], t[k-1])`` is 60 opcodes for ``k = 60`` and 2**60 item hashes.
- **Big ints.** An int's hash is not cached either and costs one step per 64 bits: a
  megabyte int put in the memo once can be used as the key of a thousand dicts.
- **Collisions.** ``str`` and ``bytes`` hashes are randomized per process, but ints, floats
  and tuples of them hash the same everywhere; integers from 2**61 on and many floats can be
  chosen to share one hash, and inserting n keys of one hash takes n**2 comparisons.

:class:`KeyGuard` sees every key before it is hashed.  Strings, bytes, small ints, bools and
``None`` pass at the cost of a type check.  Tuples and frozensets must nest at most
:data:`MAX_HEIGHT` deep and expand to at most :data:`MAX_NODES` items counted with
repetition, big ints by their size (the work of one hash); then any key's hash may be
shared by at most :data:`MAX_SAME_HASH` distinct keys in one pickle.  The work of all
hashes and same-hash comparisons of one pickle is charged to a budget set from the file's
size (one item per 32 bytes of copy budget), so many large keys cannot add up to a hang
either.  Each is a :class:`LimitError`.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError, LimitError

__all__ = ["KeyGuard", "MAX_HEIGHT", "MAX_NODES", "MAX_SAME_HASH"]

MAX_HEIGHT = 100
MAX_NODES = 100_000
MAX_SAME_HASH = 64
#: ints below this magnitude hash to themselves (mod 2**61 - 1): distinct ones never collide
_SMALL_INT = 1 << 60


class KeyGuard:
    """Checks the keys of one pickle (see the module docstring)."""

    __slots__ = ("_by_hash", "budget")

    def __init__(self, budget: int = 1 << 24) -> None:
        self._by_hash: dict[int, list[Any]] = {}  # hash -> the distinct keys that have it
        #: items that hashing and comparing keys may still visit
        self.budget = budget

    def check(self, key: Any) -> None:
        kind = type(key)
        if (
            kind is str
            or kind is bytes
            or kind is bool
            or key is None
            or (kind is int and -_SMALL_INT < key < _SMALL_INT)
        ):
            return
        work = _bound(key) if kind is tuple or kind is frozenset else _cost(key)
        self._charge(2 * work)  # our hash and the container's
        try:
            value = hash(key)
        except TypeError:
            raise FormatError(
                f"dict key or set item of type {kind.__name__} is not hashable"
            ) from None
        same = self._by_hash.get(value)
        if same is None:
            self._by_hash[value] = [key]
        else:
            self._charge(work * len(same))  # comparisons with the keys of that hash
            if key in same:
                return
            same.append(key)
            if len(same) > MAX_SAME_HASH:
                raise LimitError(
                    f"more than {MAX_SAME_HASH} distinct dict keys or set items "
                    "share one hash (a hash-flooding pattern)"
                )

    def _charge(self, work: int) -> None:
        self.budget -= work
        if self.budget < 0:
            raise LimitError(
                "hashing this pickle's dict keys and set items takes more work "
                "than the file's size justifies"
            )

    def check_all(self, keys: Any) -> None:
        for key in keys:
            if type(key) is not str:
                self.check(key)


def _bound(root: tuple[Any, ...] | frozenset[Any]) -> int:
    """The items of a tuple/frozenset key's full expansion; refuse one nested deeper than
    MAX_HEIGHT or expanding to more than MAX_NODES items.  Each distinct container is visited
    once, without recursion; height and size are computed bottom-up, so sharing cannot hide
    a long chain."""
    done: dict[int, tuple[int, int]] = {}  # id -> (items in its expansion, levels); the
    #                                         root keeps every container alive, so ids hold
    todo: list[tuple[Any, int, bool]] = [(root, 0, False)]
    while todo:
        node, depth, expanded = todo.pop()
        if expanded:
            total, height = 1, 1
            for item in node:
                below = done.get(id(item)) if type(item) in _NESTED else None
                if below is None:
                    total += _cost(item)
                else:
                    total += below[0]
                    height = max(height, below[1] + 1)
            if total > MAX_NODES:
                raise LimitError(
                    f"a dict key or set item expands to more than {MAX_NODES} "
                    "items: hashing it would take too long"
                )
            if height > MAX_HEIGHT:
                break
            done[id(node)] = (total, height)
        elif id(node) not in done:
            if depth >= MAX_HEIGHT:  # depth counts the containers above node
                break
            todo.append((node, depth, True))
            todo.extend(
                (item, depth + 1, False)
                for item in node
                if type(item) in _NESTED and id(item) not in done
            )
    else:
        return done[id(root)][0]
    raise LimitError(f"a dict key or set item is nested more than {MAX_HEIGHT} tuples deep")


_NESTED = (tuple, frozenset)


def _cost(item: Any) -> int:
    """The work of hashing a leaf, in items: ints hash digit by digit and do not cache it
    (a megabyte int reused through the memo as a key would cost a megabyte each time)."""
    return item.bit_length() // 64 + 1 if type(item) is int else 1
