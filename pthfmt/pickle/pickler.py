"""A protocol-2 pickler that writes what ``torch.save`` writes, byte for byte.

``torch.save`` pickles with CPython's C pickler (``_pickle.c``) at protocol 2.  This module
reproduces that pickler's output for the values a checkpoint holds, without recursion, so
that a file written here is the file torch would write for the same objects.  (The writer
hands most objects to that C pickler itself, through :mod:`pthfmt.pickle.cpickler`; this
module is the reference it is tested against and writes whatever the C pickler would write
differently.)

==========================  ===============================================================
value                       opcodes
==========================  ===============================================================
``None``/``True``/``False`` ``NONE`` / ``NEWTRUE`` / ``NEWFALSE``
``int``                     ``BININT1`` (0..255), ``BININT2`` (..65535), ``BININT`` (int32),
                            else ``LONG1`` (little-endian two's complement, <= 255 bytes)
``float``                   ``BINFLOAT`` (8-byte **big-endian** double)
``str``                     ``BINUNICODE`` (u32 length + UTF-8, surrogates passed through)
``bytes``                   ``GLOBAL _codecs encode`` + ``(latin-1 text, 'latin1')`` + ``REDUCE``
``tuple``                   ``EMPTY_TUPLE``; ``TUPLE1/2/3``; ``MARK`` items ``TUPLE``
``list``                    ``EMPTY_LIST``; one item ``APPEND``; else ``MARK`` <=1000 ``APPENDS``
``dict``                    ``EMPTY_DICT``; one item ``SETITEM``; else ``MARK`` <=1000 pairs
                            ``SETITEMS`` (plus an empty batch when ``len % 1000 == 0``, as
                            ``batch_dict_exact`` does)
``OrderedDict``             ``GLOBAL collections OrderedDict`` ``EMPTY_TUPLE`` ``REDUCE``, items
                            as for an iterator (a lone last pair is ``SETITEM``), then the
                            instance ``__dict__`` (``_metadata``) and ``BUILD`` when non-empty
``set``                     ``GLOBAL __builtin__ set`` + ``([items],)`` + ``REDUCE``
``complex``                 ``GLOBAL __builtin__ complex`` + ``(real, imag)`` + ``REDUCE``
``bytearray``               ``GLOBAL __builtin__ bytearray`` + ``()`` or ``(bytes,)`` + ``REDUCE``
``Counter``                 ``GLOBAL collections Counter`` + ``({...},)`` + ``REDUCE``
:class:`GlobalRef`          ``GLOBAL module name`` (a class, function or dtype torch names)
:class:`PersistentId`       the id tuple, then ``BINPERSID`` (a storage reference)
:class:`Reduction`          ``func args REDUCE`` [items ``SETITEMS``] [state ``BUILD``]
==========================  ===============================================================

Every value except ``None``, bools, ints and floats is *memoized*: after it is written it gets
``BINPUT n`` (``LONG_BINPUT`` from n = 256), and writing the same object again (by identity)
is ``BINGET n``/``LONG_BINGET n``.  That is how torch files share strings (``'storage'``,
``'cpu'``), storage classes and tensors, and how a reader rebuilds shared objects as shared.

One deliberate difference: CPython writes ``b""`` as ``__builtin__.bytes()``, which
``torch.load(weights_only=True)`` refuses; it is written here as ``_codecs.encode('',
'latin1')``, which loads as ``b""``.  Values torch's weights-only loader cannot rebuild
(``frozenset``, recursive tuples, anything else the ``reducer`` refuses) raise
:class:`~pthfmt.errors.UnserializableError` naming the key path, and so does nesting deeper
than :data:`MAX_DEPTH` (``torch.save`` itself fails there with ``RecursionError``).
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..errors import PthError, UnserializableError
from ..model.tree import capped, key_text
from .opcodes import BY_NAME

__all__ = [
    "GlobalRef",
    "PersistentId",
    "Reduction",
    "Pickler",
    "MAX_DEPTH",
    "key_path",
    "ARGS",
    "KEY",
    "encode_long",
    "builtin_reduction",
    "ALIAS_PREFIX",
]

#: Deepest container nesting written (CPython's default recursion limit, where torch.save fails).
MAX_DEPTH: Final = 1000
#: Items per ``APPENDS``/``SETITEMS`` batch (``BATCHSIZE`` in ``_pickle.c``).
BATCH: Final = 1000
PROTOCOL: Final = 2


def _code(name: str) -> bytes:
    return bytes([BY_NAME[name].code])


(
    MARK,
    STOP,
    NONE,
    NEWTRUE,
    NEWFALSE,
    BININT,
    BININT1,
    BININT2,
    LONG1,
    BINFLOAT,
    BINUNICODE,
    EMPTY_TUPLE,
    TUPLE,
    EMPTY_LIST,
    APPEND,
    APPENDS,
    EMPTY_DICT,
    SETITEM,
    SETITEMS,
    GLOBAL,
    REDUCE,
    BUILD,
    BINPUT,
    LONG_BINPUT,
    BINGET,
    LONG_BINGET,
    BINPERSID,
    PROTO,
) = map(
    _code,
    (
        "MARK",
        "STOP",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "BINFLOAT",
        "BINUNICODE",
        "EMPTY_TUPLE",
        "TUPLE",
        "EMPTY_LIST",
        "APPEND",
        "APPENDS",
        "EMPTY_DICT",
        "SETITEM",
        "SETITEMS",
        "GLOBAL",
        "REDUCE",
        "BUILD",
        "BINPUT",
        "LONG_BINPUT",
        "BINGET",
        "LONG_BINGET",
        "BINPERSID",
        "PROTO",
    ),
)
_TUPLE_N = (EMPTY_TUPLE, _code("TUPLE1"), _code("TUPLE2"), _code("TUPLE3"))
_u1 = struct.Struct("<B").pack
_u2 = struct.Struct("<H").pack
_i4 = struct.Struct("<i").pack
_u4 = struct.Struct("<I").pack
_f8 = struct.Struct(">d").pack


class GlobalRef:
    """A module-level name written as ``GLOBAL module name``.

    There is one object per name (like the class or function torch pickles), so the memo
    turns every repeat into a ``BINGET``.  Each also has an ``alias``, a name of this module
    that resolves to it (module ``__getattr__``): CPython's C pickler, which
    :mod:`pthfmt.pickle.cpickler` drives, writes a global only after finding it by module
    and name, and finds this one without importing anything else.
    """

    __slots__ = ("alias", "module", "name")
    _interned: ClassVar[dict[tuple[str, str], GlobalRef]] = {}
    by_alias: ClassVar[dict[str, GlobalRef]] = {}
    module: str
    name: str
    alias: str

    def __new__(cls, module: str, name: str) -> GlobalRef:
        ref = cls._interned.get((module, name))
        if ref is None:
            ref = super().__new__(cls)
            ref.module, ref.name = module, name
            ref.alias = f"{ALIAS_PREFIX}{next(_ALIAS_NUMBERS)}"  # (unique across threads)
            cls._interned[(module, name)] = ref
            cls.by_alias[ref.alias] = ref
        return ref

    def __call__(self, *args: Any) -> Any:
        """Never called: a reduce tuple's function must be callable for the C pickler."""
        raise TypeError(f"{self!r} only names a global for pickling")

    def __repr__(self) -> str:
        return f"GlobalRef({self.module!r}, {self.name!r})"


#: Prefix of :attr:`GlobalRef.alias` (the text after it is a decimal index).
ALIAS_PREFIX: Final = "_global_"
_ALIAS_NUMBERS: Final = itertools.count()


def __getattr__(name: str) -> GlobalRef:
    """``pthfmt.pickle.pickler._global_<n>``: the :class:`GlobalRef` with that alias."""
    ref = GlobalRef.by_alias.get(name)
    if ref is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return ref


class PersistentId:
    """A persistent id: the tuple is pickled, then ``BINPERSID`` (torch's storage reference)."""

    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


@dataclass(frozen=True)
class Reduction:
    """What ``__reduce__`` returns: ``func(*args)``, then ``dictitems``, then ``BUILD(state)``."""

    func: GlobalRef
    args: tuple[Any, ...]
    state: Any = None
    dictitems: list[tuple[Any, Any]] | None = None


#: ``reducer(obj, path)`` for types the pickler does not know: a :class:`Reduction` of
#: ``obj``, or another value to write in its place; it raises UnserializableError to refuse.
Reducer = Callable[[Any, "Path"], Any]
#: A key path as a linked list ``(parent, key)``; ``None`` is the root object.
Path = tuple[Any, Any] | None

OBJ_ORDERED_DICT: Final = GlobalRef("collections", "OrderedDict")
OBJ_COUNTER: Final = GlobalRef("collections", "Counter")
#: Types :meth:`Pickler._save_value` writes at once, pushing no work.
_ATOMS: Final = frozenset({type(None), bool, int, float, str, GlobalRef})
_SET = GlobalRef("__builtin__", "set")
_COMPLEX = GlobalRef("__builtin__", "complex")
_BYTEARRAY = GlobalRef("__builtin__", "bytearray")
_ENCODE = GlobalRef("_codecs", "encode")
_LATIN1 = "latin1"

# Work items of the pickling loop (a stack, so pushed in reverse order).
_SAVE, _WRITE, _MEMO, _END_TUPLE = range(4)


class _Marker:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


#: Path step into a reduction's argument tuple: the index below it is not part of the path.
ARGS: Final = _Marker("<args>")
#: Path step from a dict to one of its keys (``state.<key>``).
KEY: Final = _Marker("<key>")


def key_path(path: Path) -> str | None:
    """``model.layers.0.weight`` for a linked path; ``None`` for the root."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        if key is ARGS:
            if parts:
                parts.pop()  # the argument index
        else:
            parts.append(key.text if type(key) is _Marker else key_text(key))
    # the innermost parts, capped as tree.walk caps them
    return capped(iter(parts), len(parts)) if parts else None


def encode_long(value: int) -> bytes:
    """``LONG1``'s payload: the shortest little-endian two's complement (``pickle.encode_long``)."""
    if value == 0:
        return b""
    data = value.to_bytes((value.bit_length() >> 3) + 1, "little", signed=True)
    if value < 0 and len(data) > 1 and data[-1] == 0xFF and data[-2] & 0x80:
        data = data[:-1]
    return data


def _batches(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Pickler:
    """Pickle one object at protocol 2; :meth:`dump` returns the bytes.

    ``reducer`` is called for every object of a type not listed in the module docstring.
    """

    def __init__(self, reducer: Reducer, *, max_depth: int = MAX_DEPTH) -> None:
        self.reducer = reducer
        self.max_depth = max_depth
        self.out = bytearray()
        self.memo: dict[int, tuple[int, Any]] = {}  # id -> (index, object kept alive)
        self._active: set[int] = set()  # tuples and reductions being written
        self._stack: list[tuple[Any, ...]] = []

    def dump(self, obj: Any) -> bytes:
        self.out += PROTO + bytes([PROTOCOL])
        self._stack.append((_SAVE, obj, None, 0))
        stack, out, save = self._stack, self.out, self._save_value
        item: tuple[Any, ...] = ()
        try:
            while stack:
                item = stack.pop()
                kind = item[0]
                if kind == _SAVE:
                    save(item[1], item[2], item[3])
                elif kind == _WRITE:
                    out += item[1]
                elif kind == _MEMO:
                    self._active.discard(id(item[1]))
                    self._memo_put(item[1])
                else:  # _END_TUPLE
                    tup = item[1]
                    self._active.discard(id(tup))
                    out += _TUPLE_N[len(tup)] if len(tup) <= 3 else TUPLE
                    self._memo_put(tup)
        except PthError as exc:  # only _SAVE items raise: locate the value
            raise exc.locate(key_path=key_path(item[2] if item[0] == _SAVE else None)) from None
        out += STOP
        return bytes(out)

    # -- the memo ----------------------------------------------------------------------------
    def _memo_put(self, obj: Any) -> None:
        index = len(self.memo)
        self.memo[id(obj)] = (index, obj)
        self.out += BINPUT + _u1(index) if index < 256 else LONG_BINPUT + _u4(index)

    def _memo_get(self, index: int) -> None:
        self.out += BINGET + _u1(index) if index < 256 else LONG_BINGET + _u4(index)

    # -- scheduling --------------------------------------------------------------------------
    def _push(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Schedule work items to run in the order given."""
        self._stack.extend(reversed(list(items)))

    @staticmethod
    def _saves(
        values: Iterable[Any], path: Path, depth: int, keys: Iterable[Any]
    ) -> list[tuple[Any, ...]]:
        return [(_SAVE, value, (path, key), depth) for key, value in zip(keys, values)]

    def _pairs(
        self, pairs: list[tuple[Any, Any]], path: Path, depth: int
    ) -> Iterator[tuple[Any, ...]]:
        for key, value in pairs:
            yield (_SAVE, key, (path, KEY), depth)
            yield (_SAVE, value, (path, key), depth)

    # -- one value -----------------------------------------------------------------------------
    def _save_value(self, obj: Any, path: Path, depth: int) -> None:
        out, kind = self.out, type(obj)
        if obj is None:
            out += NONE
        elif kind is bool:
            out += NEWTRUE if obj else NEWFALSE
        elif kind is int:
            self._save_int(obj)
        elif kind is float:
            out += BINFLOAT + _f8(obj)
        elif (hit := self.memo.get(id(obj))) is not None:
            self._memo_get(hit[0])
        elif kind is str:
            raw = obj.encode("utf-8", "surrogatepass")
            if len(raw) > 0xFFFFFFFF:
                raise UnserializableError(
                    "a string of 4 GiB or more cannot be pickled at protocol 2"
                )
            out += BINUNICODE + _u4(len(raw)) + raw
            self._memo_put(obj)
        elif kind is GlobalRef:
            out += GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii")
            self._memo_put(obj)
        elif kind is PersistentId:
            if type(obj.pid) is tuple and self._save_atoms(obj.pid, path):
                out += BINPERSID
            else:
                self._push([(_SAVE, obj.pid, path, depth + 1), (_WRITE, BINPERSID)])
        else:
            if depth >= self.max_depth:
                raise UnserializableError(
                    f"the object is nested more than {self.max_depth} levels deep"
                )
            if id(obj) in self._active:
                raise UnserializableError(
                    f"a {kind.__name__} that contains itself through a "
                    "tuple or tensor cannot be loaded by torch"
                )
            self._save_container(obj, kind, path, depth + 1)

    def _save_int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += BININT1 + _u1(value)
        elif 0 <= value <= 0xFFFF:
            self.out += BININT2 + _u2(value)
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            self.out += BININT + _i4(value)
        else:
            data = encode_long(value)
            if len(data) > 255:
                raise UnserializableError(
                    "an int of more than 2040 bits needs LONG4, which "
                    "torch.load(weights_only=True) does not read"
                )
            self.out += LONG1 + _u1(len(data)) + data

    def _save_container(self, obj: Any, kind: type, path: Path, depth: int) -> None:
        if kind is OrderedDict and not obj and not vars(obj):
            # OrderedDict(): every tensor's backward hooks (_save_reduce, without the stack)
            self._save_value(OBJ_ORDERED_DICT, path, depth)
            self.out += EMPTY_TUPLE + REDUCE
            self._memo_put(obj)
        elif kind is dict:
            self.out += EMPTY_DICT
            self._memo_put(obj)
            self._push(self._dict_items(list(obj.items()), path, depth))
        elif kind is list:
            self.out += EMPTY_LIST
            self._memo_put(obj)
            self._push(self._list_items(obj, path, depth))
        elif kind is tuple:
            self._save_tuple(obj, path, depth)
        else:
            reduction = builtin_reduction(obj, kind)
            if reduction is None:
                reduction = self.reducer(obj, path)
                if not isinstance(reduction, Reduction):
                    self._push([(_SAVE, reduction, path, depth)])  # a stand-in value
                    return
            self._save_reduce(obj, reduction, path, depth)

    def _save_tuple(self, obj: tuple[Any, ...], path: Path, depth: int) -> None:
        if not obj:
            self.out += EMPTY_TUPLE
            return
        if self._save_atoms(obj, path):
            return
        self._active.add(id(obj))
        work = self._saves(obj, path, depth, range(len(obj)))
        if len(obj) > 3:
            work.insert(0, (_WRITE, MARK))
        work.append((_END_TUPLE, obj))
        self._stack.extend(reversed(work))

    def _save_atoms(self, obj: tuple[Any, ...], path: Path) -> bool:
        """Write a tuple of scalars, strings and globals at once (sizes, strides, persistent
        ids): such items push no work, so nothing needs the stack.  False if any item is
        something else (nothing is written then)."""
        atoms = _ATOMS
        for item in obj:
            if type(item) not in atoms:
                return False
        if len(obj) > 3:
            self.out += MARK
        for index, item in enumerate(obj):
            try:
                self._save_value(item, path, 0)
            except PthError as exc:
                raise exc.locate(key_path=key_path((path, index))) from None
        self.out += _TUPLE_N[len(obj)] if len(obj) <= 3 else TUPLE
        self._memo_put(obj)
        return True

    def _list_items(self, items: list[Any], path: Path, depth: int) -> Iterator[tuple[Any, ...]]:
        """``batch_list_exact``: a lone item is ``APPEND``, else batches of ``APPENDS``."""
        if len(items) == 1:
            yield (_SAVE, items[0], (path, 0), depth)
            yield (_WRITE, APPEND)
            return
        for start in range(0, len(items), BATCH):
            yield (_WRITE, MARK)
            yield from self._saves(
                items[start : start + BATCH], path, depth, range(start, start + BATCH)
            )
            yield (_WRITE, APPENDS)

    def _dict_items(
        self, pairs: list[tuple[Any, Any]], path: Path, depth: int
    ) -> Iterator[tuple[Any, ...]]:
        """``batch_dict_exact``: a lone pair is ``SETITEM``; a full last batch is followed by
        an empty ``MARK SETITEMS``."""
        if len(pairs) == 1:
            yield from self._pairs(pairs, path, depth)
            yield (_WRITE, SETITEM)
            return
        if not pairs:
            return
        for batch in _batches(pairs):
            yield (_WRITE, MARK)
            yield from self._pairs(batch, path, depth)
            yield (_WRITE, SETITEMS)
        if len(pairs) % BATCH == 0:
            yield (_WRITE, MARK + SETITEMS)

    def _iter_items(
        self, pairs: list[tuple[Any, Any]], path: Path, depth: int
    ) -> Iterator[tuple[Any, ...]]:
        """``batch_dict`` over an iterator (reduce ``dictitems``): a lone last pair is
        ``SETITEM``; no empty batches."""
        for batch in _batches(pairs):
            if len(batch) == 1:
                yield from self._pairs(batch, path, depth)
                yield (_WRITE, SETITEM)
            else:
                yield (_WRITE, MARK)
                yield from self._pairs(batch, path, depth)
                yield (_WRITE, SETITEMS)

    def _save_reduce(self, obj: Any, r: Reduction, path: Path, depth: int) -> None:
        self._active.add(id(obj))
        work: list[tuple[Any, ...]] = [
            (_SAVE, r.func, path, depth),
            (_SAVE, r.args, (path, ARGS), depth),
            (_WRITE, REDUCE),
            (_MEMO, obj),
        ]
        if r.dictitems:
            work += self._iter_items(r.dictitems, path, depth)
        if r.state is not None:
            work += [(_SAVE, r.state, path, depth), (_WRITE, BUILD)]
        self._push(work)


def builtin_reduction(obj: Any, kind: type) -> Reduction | None:
    """How CPython reduces the builtin and ``collections`` types torch's loader accepts."""
    if kind is OrderedDict:
        state = vars(obj) or None
        return Reduction(OBJ_ORDERED_DICT, (), state, list(obj.items()))
    if kind is bytes:
        return Reduction(_ENCODE, (obj.decode("latin-1"), _LATIN1))
    if kind is set:
        return Reduction(_SET, (list(obj),))
    if kind is complex:
        return Reduction(_COMPLEX, (obj.real, obj.imag))
    if kind is bytearray:
        return Reduction(_BYTEARRAY, (bytes(obj),) if obj else ())
    if kind is Counter:
        return Reduction(OBJ_COUNTER, (dict(obj),))
    if kind is frozenset:
        raise UnserializableError(
            "torch.load(weights_only=True) cannot load a frozenset "
            "(builtins.frozenset is not allowlisted); use a set"
        )
    return None
