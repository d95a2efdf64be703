"""torch's per-tensor opcode sequence, run without the pickle loop (a fast path, nothing new).

``torch.save`` writes every tensor after the first through the same ~30 opcodes: a memo get of
``_rebuild_tensor_v2`` and the call of it on ``(persistent id, offset, size, stride,
requires_grad, OrderedDict())``::

    BINGET rebuild  MARK MARK BINGET 'storage' BINGET <storage class> BINUNICODE key BINPUT
    BINGET 'cpu' BININT1 numel TUPLE BINPUT BINPERSID BININT1 offset  <size> <stride>
    NEWFALSE BINGET OrderedDict EMPTY_TUPLE REDUCE BINPUT TUPLE BINPUT REDUCE BINPUT

(``LONG_BINGET``/``LONG_BINPUT`` from memo index 256, ``BININT2`` for ints from 256; sizes
and strides of 0 to 3 dimensions as ``EMPTY_TUPLE`` or ``TUPLE1/2/3`` + put).  When the
pickle machine meets the memo get of the rebuild handler, :meth:`TensorTemplate.run` matches
that sequence with one compiled pattern (C speed) and does exactly what the loop would do
with it: the same handler calls with the same arguments in the same order, the same memo
entries under the same indices, the tensor pushed.  Anything else — another opcode, an int
that is not a plain int opcode, a memo index that is not the next one, a memo get of something
other than what torch puts there, an int of 65,536 or more (a large tensor: per-tensor time
does not matter there), a handler refusing the values — returns ``None`` *before
any memo or stack change*, and the loop runs the same bytes opcode by opcode, so every check,
error message and error offset is the loop's own.  Handler calls repeated that way are
idempotent (a storage declared again is the same storage).

Three of a tensor's seven memo entries, its persistent id, hooks and argument tuple, are
never read back by torch's pickles: when the tensor's key is new and its puts are long (most
tensors), the path leaves them *unmade* (:class:`~pthfmt.model.globals.Unmade`) and makes
them, from the tensor's opcodes, only if a memo get reads one (a tenth of a many-tensor
load's time and a third of its transient memory otherwise).

After a tensor the path goes on by itself (*run continuation*) while the next item of the
dict or list being built is another such tensor, keyed by a new ``BINUNICODE`` string put to
the next memo index or by a memo get (torch's state dicts and optimizer state): it pushes and
memoizes exactly what the loop would, item by item, and hands the loop the first item it
does not take, untouched.

A run's tensors read their tag, storage class, location and hooks through the same few memo
gets: the first tensor with given gets is matched by the general pattern, which captures
them, and the rest by a pattern made for those very tokens (matched as they are, not
captured; one per storage class and location, at most :data:`_MAX_PATTERNS`).

The patterns are built from the opcode table, so they cannot name an opcode the table does
not hold; ``Unpickler.fast_paths = False`` turns this path off (the tests' oracle).
"""

from __future__ import annotations

import re
import struct
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..errors import PthError
from ..model.globals import Global, Unmade
from ..model.storage import SMALL_COPY, StorageInfo, StorageType, StoredReader
from ..model.tensor import TensorRef, view_of
from ..pickle.opcodes import BY_NAME

__all__ = ["TensorTemplate"]


def _op(name: str) -> bytes:
    return re.escape(bytes([BY_NAME[name].code]))


_GET: Final = b"(" + _op("BINGET") + b".|" + _op("LONG_BINGET") + b"....)"
_PUT: Final = b"(" + _op("BINPUT") + b".|" + _op("LONG_BINPUT") + b"....)"
_GET_: Final = b"(?:" + _op("BINGET") + b".|" + _op("LONG_BINGET") + b"....)"  # (no group)
#: Ints below 65,536 only: sizes, strides and offsets of small tensors, and never a hash
#: flood of the size and stride tuples kept once each (``TensorTemplate.tuples``).
_INT: Final = b"(" + _op("BININT1") + b".|" + _op("BININT2") + b"..)"
_INT_: Final = b"(?:" + _op("BININT1") + b".|" + _op("BININT2") + b"..)"  # (no group)
#: A size or stride tuple: ``EMPTY_TUPLE``, or its ints and tuple opcode as one group (the
#: key of ``TensorTemplate.views``) and its put.
_TUPLE: Final = (
    b"(?:"
    + _op("EMPTY_TUPLE")
    + b"|("
    + _INT_
    + _op("TUPLE1")
    + b"|"
    + _INT_
    + _INT_
    + _op("TUPLE2")
    + b"|"
    + _INT_
    + _INT_
    + _INT_
    + _op("TUPLE3")
    + b")"
    + _PUT
    + b")"
)


def _tensor_pattern(gets: tuple[bytes, bytes, bytes] | None = None) -> re.Pattern[bytes]:
    """From after the rebuild get to the put of the tensor.  torch's storage keys are
    decimal numbers: a new one is matched as ``BINUNICODE`` of 1-9 digits (the length byte is
    checked against them after the match), a seen one is a memo get.

    Without ``gets``, the memo gets of the tensor's tag and storage class (one group),
    location and hooks are captured (groups 1, 6 and 15; :data:`_PATTERN`).  With the tokens
    of those gets, they are matched as they are, not captured: the pattern the fast path
    matches a run's tensors with (groups as in :data:`_FIELDS`)."""
    if gets is None:
        tag_class, location, hooks = b"(" + _GET_ + _GET_ + b")", _GET, _GET
    else:
        tag_class, location, hooks = (re.escape(t) for t in gets)
    return re.compile(
        _op("MARK")
        + _op("MARK")
        + tag_class
        + b"(?:"
        + _op("BINUNICODE")
        + b"([\x01-\x09])\x00\x00\x00([0-9]{1,9})|"
        + _GET
        + b")(?:"
        + _PUT
        + b")?"
        + location
        + _INT
        + _op("TUPLE")
        + _PUT
        + _op("BINPERSID")
        + _INT
        + _TUPLE
        + _TUPLE
        + b"("
        + _op("NEWTRUE")
        + b"|"
        + _op("NEWFALSE")
        + b")"
        + hooks
        + _op("EMPTY_TUPLE")
        + _op("REDUCE")
        + _PUT
        + _op("TUPLE")
        + _PUT
        + _op("REDUCE")
        + _PUT,
        re.S,
    )


_PATTERN: Final = _tensor_pattern()
#: The groups of a pattern made with given gets, in order: the key's length byte and digits,
#: or its memo get; the key's put; numel; the persistent id's put; offset; size and its
#: put; stride and its put; requires_grad; the last three puts.
_FIELDS: Final = (
    "length digits key_get key_put numel pid_put offset size size_put stride stride_put "
    "requires_grad put put put"
).split()
#: Distinct gets tokens (storage classes x locations) the templates of one pickle make
#: patterns for: a file that names more runs the rest through the loop.
_MAX_PATTERNS: Final = 64
_NEVER: Final = re.compile(b"(?!)")

_U4 = struct.Struct("<I").unpack_from
#: a LONG_BINPUT then a BINGET (torch memoizes its globals first): (opcode, index, opcode,
#: index)
_LONG_PUT_GET = struct.Struct("<BIBB").unpack_from
_NEWTRUE = BY_NAME["NEWTRUE"].code
_BININT1 = BY_NAME["BININT1"].code
_BINGET = BY_NAME["BINGET"].code
#: Seven ``LONG_BINPUT`` tokens of the indices ``n`` to ``n + 6`` (5 bytes each, the index
#: little-endian after the opcode), read as one little-endian int, are ``_SEVEN_BASE + n *
#: _SEVEN_STEP`` (no carries while ``n < _LAST_SEVEN``).
_SEVEN_BASE: Final = sum(
    (BY_NAME["LONG_BINPUT"].code << 40 * i) + (i << (40 * i + 8)) for i in range(7)
)
_SEVEN_STEP: Final = sum(1 << (40 * i + 8) for i in range(7))
_LAST_SEVEN: Final = (1 << 32) - 6


_ORDERED_DICT: Final = "collections.OrderedDict"
#: A tensor's unmade memo entries, from its first memo index: the persistent id, the hooks
#: and the argument tuple (their order in :meth:`TensorTemplate._make`'s ``made``).
_ROLES: Final = {1: 0, 4: 1, 5: 2}


def _shape(tok: bytes) -> tuple[int, ...]:
    """The value of a size or stride token (``BININT1``/``BININT2`` ints, then the tuple
    opcode)."""
    values = []
    at, last = 0, len(tok) - 1
    while at < last:
        if tok[at] == _BININT1:
            values.append(tok[at + 1])
            at += 2
        else:
            values.append(tok[at + 1] | tok[at + 2] << 8)
            at += 3
    return tuple(values)


def _stored(
    g: tuple[Any, ...],
    n: int,
    key: str,
    pid: tuple[Any, ...],
    size: tuple[int, ...],
    stride: tuple[int, ...],
) -> list[Any] | None:
    """What the puts before the tensor's last three store, in order, when every put of the
    match (``g``: groups as in :data:`_FIELDS`; those and the last three) is to the next memo
    index from ``n``; else ``None``.  (Seven long puts, the commonest case, are checked at
    once by the caller.)"""
    puts: list[bytes] = []
    values: list[Any] = []
    if g[3] is not None:  # the new key's put
        puts.append(g[3])
        values.append(key)
    puts.append(g[5])
    values.append(pid)
    if g[8] is not None:  # the size's
        puts.append(g[8])
        values.append(size)
    if g[10] is not None:  # the stride's
        puts.append(g[10])
        values.append(stride)
    puts += (g[12], g[13], g[14])
    for k, t in enumerate(puts, n):
        if (t[1] if len(t) == 2 else _U4(t, 1)[0]) != k:
            return None
    return values


class TensorTemplate:
    """The fast path of one ``_rebuild_tensor_v2`` global of one run (see the module doc).

    ``declare`` is the storage table's ``declare_typed`` (what ``persistent_load`` calls for
    a well-typed 5-item storage id: the pattern and the checks of ``_gets`` guarantee one)
    and ``make_tensor`` the handlers' (what ``_rebuild_tensor_v2`` calls with its six
    arguments).
    """

    __slots__ = (
        "compiled",
        "copies_from",
        "declare",
        "direct",
        "eager",
        "hit_bases",
        "hits",
        "last_hit",
        "make_tensor",
        "mmap",
        "patterns",
        "run_pattern",
        "starts",
        "steps",
        "stored",
        "tuples",
        "unmade",
        "unmade_from",
        "views",
        "views_from",
    )

    def __init__(
        self,
        declare: Callable[..., Any],
        make_tensor: Callable[..., Any],
        eager: bool = False,
        mmap: bool = False,
        direct: bool = False,
        stored: StoredReader | None = None,
        compiled: dict[tuple[bytes, bytes, bytes], re.Pattern[bytes]] | None = None,
    ) -> None:
        self.declare = declare
        self.make_tensor = make_tensor
        #: the handlers' own arguments: arrays (``eager``) or lazy references, from the
        #: mapped file (``mmap``)
        self.eager = eager
        self.mmap = mmap
        #: ``make_tensor`` is the handlers' own and nothing observes the tensors it makes
        #: (``on_tensor``): the fast path checks the view's bounds and makes the array or
        #: the :class:`TensorRef` itself, as ``make_tensor`` would
        self.direct = direct
        #: the reader of storages lying uncompressed in the file, and the file as one array
        #: when an eager copy of such a storage is a plain slice of it copied, or as one
        #: memoryview when an eager mapped storage is a slice of it: the fast path makes those
        #: copies and views itself (``stored.copies_from``, ``stored.views_from``)
        self.stored = stored
        self.copies_from = (
            stored.copies_from() if stored is not None and eager and not mmap else None
        )
        self.views_from = stored.views_from() if stored is not None and eager and mmap else None
        #: Each distinct size or stride tuple once: a million tensors of a few shapes hold a
        #: few tuples, not two million (each one memory, and work for every full collection).
        self.tuples: dict[tuple[int, ...], tuple[int, ...]] = {}
        #: (size token, stride token) (``_TUPLE``'s ints and tuple opcode; ``None`` for an
        #: empty tuple) -> the size, the stride, and the offset of the last element from the
        #: first in elements (-1: no elements)
        self.views: dict[tuple[bytes | None, bytes | None], tuple[Any, Any, int]] = {}
        #: (stride, item size) -> the stride in bytes (what numpy takes)
        self.steps: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
        #: the memo get tokens of a tensor's tag, storage class, location and hooks -> the
        #: pattern matching tensors with those very gets, the tokens, and (once checked) their
        #: memo indices, the largest of them and the objects found there: while those very
        #: objects are there, they pass again; and the one tried first (the last one used)
        self.patterns: dict[tuple[bytes, bytes, bytes], list[Any]] = {}
        #: the compiled run patterns, shared by the templates of one pickle (at most
        #: :data:`_MAX_PATTERNS` in all: each costs ~0.4 ms to compile, and a file may name
        #: the rebuild global again and again)
        self.compiled = {} if compiled is None else compiled
        self.run_pattern: list[Any] = [_NEVER, (b"", b"", b""), None]
        #: Unmade memo entries (see :class:`_Unmade`): the stand-in, and the same columns
        #: as the one making them (no reference back: no cycle)
        unmade = _Unmade(declare, self.views)
        self.unmade = Unmade(unmade.make)
        self.starts = unmade.starts
        self.hit_bases, self.hits = unmade.hit_bases, unmade.hits
        self.last_hit: tuple[Any, ...] | None = None
        self.unmade_from = unmade

    def run(
        self,
        data: Any,
        pos: int,
        end: int,
        memo: list[Any],
        sparse: dict[int, Any],
        stack: list[Any],
        rebuild: Any,
    ) -> int | None:
        """From ``pos`` (just after the memo get of the ``rebuild`` global): push the tensor,
        and those of the dict items that follow it (see :meth:`_items`), onto ``stack``; the
        position after them, or ``None`` with nothing changed."""
        if sparse:
            return None
        self.unmade_from.data = data
        pos = self._tensor(data, pos, end, memo, stack)
        if pos < 0:
            return None
        return self._items(data, pos, end, memo, stack, rebuild)

    def _view(self, size_tok: bytes | None, stride_tok: bytes | None) -> tuple[Any, Any, int]:
        """The entry of ``views`` for these tokens, made (each distinct tuple kept once)."""
        tuples = self.tuples
        size = () if size_tok is None else _shape(size_tok)
        size = tuples.setdefault(size, size)
        stride = () if stride_tok is None else _shape(stride_tok)
        stride = tuples.setdefault(stride, stride)
        span = 0
        for n, step in zip(size, stride):
            if not n:
                span = -1
                break
            span += (n - 1) * step
        view = self.views[size_tok, stride_tok] = (size, stride, span)
        return view

    def _pattern_for(self, data: Any, pos: int, end: int) -> list[Any] | None:
        """The run pattern for the gets of the tensor at ``pos`` (made on first need, at most
        :data:`_MAX_PATTERNS`), now the one tried first; ``None`` when no tensor is there."""
        m = _PATTERN.match(data, pos, end)
        if m is None:
            return None
        gets = (m.group(1), m.group(6), m.group(15))
        run = self.patterns.get(gets)
        if run is None:
            pattern = self.compiled.get(gets)
            if pattern is None:
                if len(self.compiled) >= _MAX_PATTERNS:
                    return None
                pattern = self.compiled[gets] = _tensor_pattern(gets)
            run = self.patterns[gets] = [pattern, gets, None]
        self.run_pattern = run
        return run

    def _gets(self, gets: tuple[bytes, bytes, bytes], memo: list[Any]) -> tuple[Any, ...] | None:
        """The memo gets of a tensor's tag and storage class (one token: ``_PATTERN``'s first
        group), location and hooks: their memo indices, the largest, and the objects found
        there; or ``None`` when what they read is not what torch puts there."""
        n = len(memo)
        u4 = _U4
        pair = gets[0]
        cut = 2 if pair[0] == _BINGET else 5
        found = []
        for t in (pair[:cut], pair[cut:], gets[1], gets[2]):
            found.append(t[1] if len(t) == 2 else u4(t, 1)[0])
        if max(found) >= n:
            return None
        tag, storage_class, location, hooks = (memo[i] for i in found)
        if (
            type(tag) is not str
            or tag != "storage"
            or type(storage_class) is not StorageType
            or type(location) is not str
            or type(hooks) is not Global
            or hooks.qualname != _ORDERED_DICT
        ):
            return None
        return (*found, max(found), tag, storage_class, location, hooks)

    def _items(
        self, data: Any, pos: int, end: int, memo: list[Any], stack: list[Any], rebuild: Any
    ) -> int:
        """Run continuation: while the next item of the dict or list being built is
        ``[key]  GET rebuild  <tensor>``, a memo get of the very global this path was taken
        for, with a key that is either ``BINUNICODE`` + a put to the next memo index or a
        memo get of anything but a global, what the loop would do with those bytes: the key
        pushed (and memoized), then the tensor.  At anything else (or a key the loop would
        decode differently or refuse), the position of that item's first opcode, with that
        item untouched: the loop runs it."""
        u4 = _U4
        while pos + 2 <= end:
            code = data[pos]
            key: Any = None
            keyed = new = False  # a key first; a new one (memoized), not one read back
            at = pos
            if code == 0x58:  # BINUNICODE: a new key
                start = pos + 5
                if start > end:
                    break
                stop = start + u4(data, pos + 1)[0]
                if stop + 7 <= end:  # its LONG_BINPUT and a BINGET of rebuild, read at once
                    put, idx, get, glob = _LONG_PUT_GET(data, stop)
                    if put == 0x72 and get == 0x68 and idx == len(memo):
                        if glob >= len(memo) or memo[glob] is not rebuild:
                            break
                        try:
                            key = str(data[start:stop], "utf-8", "surrogatepass")
                        except UnicodeDecodeError:
                            break
                        memo.append(key)
                        stack.append(key)
                        done = self._tensor(data, stop + 7, end, memo, stack)
                        if done < 0:
                            memo.pop()
                            stack.pop()
                            break
                        pos = done
                        continue
                if stop + 4 > end:  # (a put and a get at least)
                    break
                code = data[stop]
                if code == 0x71:  # BINPUT
                    idx = data[stop + 1]
                    at = stop + 2
                elif code == 0x72 and stop + 5 <= end:  # LONG_BINPUT
                    idx = u4(data, stop + 1)[0]
                    at = stop + 5
                else:
                    break
                if idx != len(memo) or at + 2 > end:
                    break
                try:
                    key = str(data[start:stop], "utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    break
                keyed = new = True
            elif code == 0x68 or code == 0x6A:  # a key read back, or the tensor's own get
                if code == 0x68:
                    idx = data[pos + 1]
                    at = pos + 2
                elif pos + 5 <= end:
                    idx = u4(data, pos + 1)[0]
                    at = pos + 5
                else:
                    break
                if idx >= len(memo):
                    break
                key = memo[idx]
                if key is rebuild:
                    at = pos
                elif type(key) is Global or type(key) is Unmade or at + 2 > end:
                    break  # (an unmade entry: the loop's get makes it)
                else:
                    keyed = True
            else:
                break
            code = data[at]
            if code == 0x68:  # BINGET
                idx = data[at + 1]
                at += 2
            elif code == 0x6A and at + 5 <= end:  # LONG_BINGET
                idx = u4(data, at + 1)[0]
                at += 5
            else:
                break
            if idx >= len(memo) or memo[idx] is not rebuild:
                break
            if not keyed:
                done = self._tensor(data, at, end, memo, stack)
                if done < 0:
                    break
            else:
                if new:
                    memo.append(key)
                stack.append(key)
                done = self._tensor(data, at, end, memo, stack)
                if done < 0:
                    if new:
                        memo.pop()
                    stack.pop()
                    break
            pos = done
        return pos

    def _tensor(self, data: Any, pos: int, end: int, memo: list[Any], stack: list[Any]) -> int:
        """From ``pos`` (just after the memo get of the rebuild global): the tensor pushed and
        memoized, and the position after its put; or -1 with nothing changed."""
        # the memo gets of the tag, storage class, location and hooks: the objects torch puts
        # there, stored before this tensor (the same few tokens for a run's tensors: matched
        # as they are by a pattern made for them, their entry cached)
        run = self.run_pattern
        m: re.Match[bytes] | None = run[0].match(data, pos, end)
        if m is None:
            other = self._pattern_for(data, pos, end)
            if other is None:
                return -1
            run = other
            m = run[0].match(data, pos, end)
            if m is None:
                return -1
        g = m.groups()
        n = len(memo)
        hit = run[2]
        if hit is None or hit[4] >= n:
            hit = run[2] = self._gets(run[1], memo)
            if hit is None:
                return -1
        i, j, k, h, _, tag, storage_class, location, hooks = hit
        if (
            memo[i] is not tag
            or memo[j] is not storage_class
            or memo[k] is not location
            or memo[h] is not hooks
        ):  # a put over a slot since (rare): check what is there now
            hit = run[2] = self._gets(run[1], memo)
            if hit is None:
                return -1
            tag, storage_class, location = hit[5], hit[6], hit[7]
        if g[1] is not None:  # a new storage key
            digits = g[1]
            if len(digits) != g[0][0]:
                return -1
            key = str(digits, "ascii")
        else:
            t = g[2]
            i = t[1] if len(t) == 2 else _U4(t, 1)[0]
            seen = memo[i] if i < n else None
            if type(seen) is not str:
                return -1
            key = seen
        t = g[4]
        numel = t[1] if len(t) == 2 else t[1] | t[2] << 8
        toks = (g[7], g[9])
        view = self.views.get(toks)
        if view is None:
            view = self._view(*toks)
        size, stride, span = view
        key_put, size_put, stride_put = g[3], g[8], g[10]
        values: list[Any] | None
        if (
            key_put is not None
            and size_put is not None
            and stride_put is not None
            and n < _LAST_SEVEN
            and len(joined := b"".join((key_put, g[5], size_put, stride_put, g[12], g[13], g[14])))
            == 35
        ):  # seven LONG_BINPUTs (written out: most tensors; ``_stored`` does the others)
            if int.from_bytes(joined, "little") != _SEVEN_BASE + n * _SEVEN_STEP:
                return -1
            # (a new key: what the unmade entries hold can be read again from the bytes)
            values = (
                None
                if g[1] is not None
                else [key, (tag, storage_class, key, location, numel), size, stride]
            )
        else:
            pid = (tag, storage_class, key, location, numel)
            values = _stored(g, n, key, pid, size, stride)
            if values is None:
                return -1
        t = g[6]
        offset = t[1] if len(t) == 2 else t[1] | t[2] << 8
        try:
            storage = self.declare(key, storage_class, location, numel)
            dtype = storage.dtype
            if not self.direct or dtype is None or type(storage) is not StorageInfo:
                requires_grad = g[11][0] == _NEWTRUE
                tensor = self.make_tensor(storage, None, offset, size, stride, requires_grad)
            elif ((offset + span if span >= 0 else -1) + 1) * dtype.itemsize > storage.nbytes:
                return -1  # (make_tensor's check_view: the loop raises its error)
            elif not self.eager:
                tensor = TensorRef(
                    storage, dtype, offset, size, stride, g[11][0] == _NEWTRUE, mmap=self.mmap
                )
            else:
                buffer = storage._buffer
                if buffer is None:
                    # (what storage.buffer() does, written out: once per storage)
                    if storage._reader is self.stored and (start := storage.offset) is not None:
                        end = start + storage.nbytes
                        if (whole := self.copies_from) is not None:
                            if end - start < SMALL_COPY and end <= len(whole):
                                buffer = storage._buffer = whole[start:end].copy()
                        elif (mapped := self.views_from) is not None and end <= len(mapped):
                            buffer = storage._buffer = np.frombuffer(mapped[start:end], np.uint8)
                    if buffer is None:
                        buffer = storage.buffer(self.mmap)
                itemsize = dtype.itemsize
                if stride == (1,) and offset == 0 and 0 < size[0] * itemsize == buffer.nbytes:
                    tensor = buffer.view(dtype.numpy)
                elif span < 0:  # (no elements: view_of's own way)
                    tensor = view_of(buffer, dtype, offset, size, stride)
                else:  # (view_of, written out: byte strides kept per stride and item size)
                    steps = self.steps.get((stride, itemsize))
                    if steps is None:
                        steps = self.steps[stride, itemsize] = tuple(n * itemsize for n in stride)
                    tensor = np.ndarray(size, dtype.numpy, buffer, offset * itemsize, steps)
        except (PthError, MemoryError):
            return -1  # the loop runs the same opcodes and raises it where it belongs
        if values is None:  # the persistent id, hooks and argument tuple left unmade
            unmade = self.unmade
            memo += (key, unmade, size, stride, unmade, unmade, tensor)
            self.starts.append(pos)
            if hit is not self.last_hit:
                self.last_hit = hit
                self.hit_bases.append(n)
                self.hits.append(hit)
        else:
            hook: OrderedDict[Any, Any] = OrderedDict()  # (the handler's, for no items)
            memo += values
            requires_grad = g[11][0] == _NEWTRUE
            memo += (hook, (storage, offset, size, stride, requires_grad, hook), tensor)
        stack.append(tensor)
        return m.end()


class _Unmade:
    """What one template's unmade memo entries are made from: where the opcodes of each
    tensor that left some start in ``data`` (a new key and seven ``LONG_BINPUT``s, the
    commonest case), and its first memo index (read from those opcodes on the first
    :meth:`make`); the ``gets`` entries those tensors passed, each from the first index it
    served; and the entries made so far, by first memo index."""

    __slots__ = ("bases", "data", "declare", "hit_bases", "hits", "made", "starts", "views")

    def __init__(self, declare: Callable[..., Any], views: dict[Any, tuple[Any, Any, int]]) -> None:
        self.declare = declare
        self.views = views
        self.data: Any = b""
        self.bases = array("q")
        self.starts = array("q")
        self.hit_bases = array("q")
        self.hits: list[tuple[Any, ...]] = []
        self.made: dict[int, tuple[Any, Any, Any]] = {}

    def make(self, idx: int) -> Any:
        """The unmade memo entry ``idx``: the persistent id, hooks or argument tuple of the
        tensor whose seven entries start at the last of ``bases`` not after it, as the loop
        makes them from that tensor's opcodes (all three at once, so that the argument tuple
        holds the very hooks, whichever is read first)."""
        bases = self.bases
        for start in self.starts[len(bases) :]:  # (each tensor's first index, read once)
            first = _PATTERN.match(self.data, start)
            assert first is not None
            bases.append(_U4(first.group(5), 1)[0])  # (its key's LONG_BINPUT)
        k = bisect_right(bases, idx) - 1
        n = bases[k]
        made = self.made.get(n)
        if made is None:
            m = _PATTERN.match(self.data, self.starts[k])
            assert m is not None  # (it matched when the entries were left unmade)
            g = m.groups()
            hit = self.hits[bisect_right(self.hit_bases, n) - 1]
            tag, storage_class, location = hit[5], hit[6], hit[7]
            key = str(g[2], "ascii")
            t = g[6]
            numel = t[1] if len(t) == 2 else t[1] | t[2] << 8
            t = g[8]
            offset = t[1] if len(t) == 2 else t[1] | t[2] << 8
            size, stride, _ = self.views[g[9], g[11]]
            storage = self.declare(key, storage_class, location, numel)  # (the same one)
            hook: OrderedDict[Any, Any] = OrderedDict()
            args = (storage, offset, size, stride, g[13][0] == _NEWTRUE, hook)
            made = self.made[n] = ((tag, storage_class, key, location, numel), hook, args)
        return made[_ROLES[idx - n]]
