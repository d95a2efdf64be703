"""The writer's fast path: CPython's C pickler (``_pickle.Pickler``) at protocol 2.

``torch.save`` pickles with that same pickler, so for the values it knows natively (``None``,
bools, ints, floats, str, non-empty bytes, bytearray, tuples, lists, dicts, sets) it writes
the bytes :class:`~pthfmt.pickle.pickler.Pickler` reproduces in Python, about twenty times
faster.  Everything else reaches :meth:`_Pickler.reducer_override` (called only for objects
the C pickler has no opcode of its own for, and only once per object: repeats are memo hits),
which turns it into a reduce tuple from the same :class:`Reduction`\\ s the Python pickler
writes: :func:`~pthfmt.pickle.pickler.builtin_reduction` for ``OrderedDict``, ``Counter`` and
``complex``, the caller's ``reducer`` for the rest (tensors, devices).  A
:class:`PersistentId` is the one object ``persistent_id`` answers for (``BINPERSID``).

**Globals without imports.**  The C pickler writes ``GLOBAL module name`` only for an object
it finds again by importing ``module`` and looking ``name`` up.  A :class:`GlobalRef` is
written under its alias instead (``GLOBAL pthfmt.pickle.pickler _global_<n>``, which that
module resolves to the same object); each distinct global is written once (the memo makes
every repeat a ``BINGET``), and afterwards each alias line is replaced by the real
``module\\nname\\n``.  Protocol 2 has no offsets or lengths around globals, so the
replacement changes nothing else.  If the finished pickle holds any alias line other than
exactly one per global written (a string of the object that happens to spell one), nothing
is replaced and :func:`dump` returns ``None``: the caller writes with the Python pickler.

**Why this is safe.**  The C pickler only ever meets objects that are plain data or were
built by pthfmt for this purpose: the writer sends an object here only after its first pass
(``writer._Plan.collect``) has seen every object in it and found only dicts (and
``OrderedDict``, ``Counter``), lists, tuples, sets, str, bytes, bytearray, numbers, ``None``,
:class:`~pthfmt.Device` and tensors, and (like ``pickle.dumps``) it calls no method of a value
it pickles: reduction of a non-builtin type goes through ``reducer_override`` first, and that
never returns ``NotImplemented``, so no ``__reduce_ex__``, ``__getstate__`` or
``copyreg`` entry of the object's class is ever consulted.  The only imports it makes are of
``pthfmt.pickle.pickler`` (for aliases) and of ``builtins``/``_codecs`` (for the ``set``,
``bytearray`` and ``bytes`` reductions it knows).  Anything unexpected raises, and the caller
then writes with the Python pickler, which names the problem and its key path.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Final

from ..errors import UnserializableError
from .pickler import (
    ALIAS_PREFIX,
    OBJ_ORDERED_DICT,
    PROTOCOL,
    GlobalRef,
    PersistentId,
    Reduction,
    builtin_reduction,
)

__all__ = ["dump"]

#: ``GLOBAL`` lines the C pickler writes for aliases (group 1: the alias).
_ALIAS_LINE: Final = re.compile(
    b"c"
    + re.escape(GlobalRef.__module__.encode("ascii"))
    + rb"\n("
    + re.escape(ALIAS_PREFIX.encode("ascii"))
    + rb"[0-9]+)\n"
)

Reducer = Callable[[Any, Any], Any]


class _Pickler(pickle.Pickler):
    """Protocol 2, ``fix_imports`` (``__builtin__``), as ``torch.save``'s pickler."""

    def __init__(self, file: io.BytesIO, reducer: Reducer) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.reducer = reducer
        self.globals: list[GlobalRef] = []

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if type(obj) is PersistentId else None

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is OrderedDict and not obj and not vars(obj):
            return _EMPTY_ORDERED_DICT  # every tensor's backward hooks
        if kind in _BUILTIN:
            if kind is GlobalRef:
                self.globals.append(obj)
                return obj.alias
            r = builtin_reduction(obj, kind)
        else:
            r = self.reducer(obj, None)
            if type(r) is tuple:
                return r
        if type(r) is not Reduction:  # a stand-in value: only the Python pickler has them
            raise UnserializableError(f"{kind.__name__} needs the Python pickler")
        items = iter(r.dictitems) if r.dictitems else None
        return (r.func, r.args, r.state, None, items)


#: Types reduced here rather than by the caller's reducer.
_BUILTIN: Final = frozenset({GlobalRef, OrderedDict, Counter, complex})
_EMPTY_ORDERED_DICT: Final = (OBJ_ORDERED_DICT, ())


def dump(obj: Any, reducer: Reducer) -> bytes | None:
    """``obj`` pickled as :class:`~pthfmt.pickle.pickler.Pickler` would, or ``None`` when an
    alias cannot be told apart from the object's own bytes.  ``reducer`` is as the Python
    pickler's, and must return a :class:`Reduction` or a reduce tuple (the path argument is
    ``None``).  Raises whatever the C pickler or ``reducer`` raise: the caller then falls back
    to the Python pickler."""
    out = io.BytesIO()
    pickler = _Pickler(out, reducer)
    pickler.dump(obj)
    lines = {
        ref.alias.encode("ascii"): b"c%s\n%s\n"
        % (ref.module.encode("ascii"), ref.name.encode("ascii"))
        for ref in pickler.globals
    }
    with out.getbuffer() as data:  # (no copy)
        if sorted(_ALIAS_LINE.findall(data)) != sorted(lines):
            return None
        return _ALIAS_LINE.sub(lambda m: lines[m.group(1)], data)
