"""A restricted pickle virtual machine.

It runs the opcodes of :mod:`.opcodes` over an in-memory record with a plain loop (no
recursion the file could drive) and never imports or calls anything named by the file:
``GLOBAL``/``STACK_GLOBAL``/``INST`` names go to ``handlers.resolve``, which returns either an
inert value (a dtype, a storage type) or a :class:`Global` wrapping one of *our* handlers.
``REDUCE``/``NEWOBJ``/``OBJ`` call only such wrappers; ``BUILD`` only updates our own types
and ``OrderedDict`` attributes; ``SETITEM(S)``/``APPEND(S)``/``ADDITEMS`` only touch real dicts,
lists and sets.  Every error becomes a :class:`~pthfmt.errors.PthError` carrying the record,
the opcode's offset and the key path being built.

**File errors and our bugs.**  What the file controls is checked explicitly (stack depth,
argument types, memo keys, lengths) and raised as a :class:`~pthfmt.errors.PthError`.  The
dispatch loop catches no broad exception class around handler calls: an ``IndexError``,
``TypeError`` or ``struct.error`` counts as the file's (a stack underflow, a call with the
wrong number of arguments) only when it is raised by the loop's own frame, where the only
operations that can raise them are stack pops and the call of an allowlisted handler; the
same exception raised inside a handler is a bug in pthfmt and propagates as what it is.

**Dispatch.**  The opcodes in :data:`INLINED` run inline in :meth:`Unpickler.load`; every
other opcode of the table has exactly one ``op_<NAME>`` method (``tests/unit/
test_machine_dispatch.py`` checks both, and that the table covers every opcode of
:mod:`pickle`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from itertools import repeat
from operator import add, mul
from typing import Any, Final, Protocol

from ..errors import (
    CorruptError,
    FormatError,
    LimitError,
    PthError,
    UnsafePickleError,
    UnsupportedError,
)
from ..model.globals import Global, Unmade
from ..model.tree import walk
from ..text import short_repr
from .keys import KeyGuard
from .opcodes import BY_CODE, HIGHEST_PROTOCOL, OPCODES, Opcode

__all__ = ["Global", "Pending", "Handlers", "Unpickler", "Poison", "INLINED"]


class Pending:
    """Base of objects that ``BUILD`` replaces by their final value (numpy arrays, dtypes)."""

    __slots__ = ("memo_keys",)

    def __init__(self) -> None:
        self.memo_keys: list[int] = []

    def build(self, state: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class Handlers(Protocol):
    #: checks every dict key and set item before it is hashed
    keys: KeyGuard

    def resolve(self, module: str, name: str) -> Any: ...

    def persistent_load(self, pid: Any) -> Any: ...

    def build(self, obj: Any, state: Any) -> Any: ...

    def setitems(self, obj: Any, items: list[Any]) -> None:
        """SETITEM(S) on something that is not a dict (refuse, or record on a stub)."""
        ...

    def extend(self, obj: Any, items: list[Any]) -> None:
        """APPEND(S) on something that is not a list (refuse, or record on a stub)."""
        ...

    def lenient(self) -> Handlers:
        """Fresh handlers for a lenient re-run (see :meth:`Unpickler.key_path`)."""
        ...


class Poison:
    """Stands for an object whose construction failed, in a lenient run.

    ``op_pos`` is the position of the opcode that failed.  A poison absorbs what the pickle
    goes on to do to the object it replaces (``SETITEM(S)``, ``APPEND(S)``, ``ADDITEMS``,
    ``BUILD``), so the first refusal is the only problem a lenient run meets for it.
    """

    __slots__ = ("op_pos",)

    def __init__(self, op_pos: int) -> None:
        self.op_pos = op_pos

    def __repr__(self) -> str:
        return f"<poison of the object that failed at offset {self.op_pos}>"


_Poison = Poison  # the name of earlier releases

#: The opcodes :meth:`Unpickler.load` runs inline (nearly all of a torch pickle); they have
#: no ``op_<NAME>`` method.
INLINED: Final[frozenset[str]] = frozenset(
    [
        "LONG_BINPUT",
        "BINPUT",
        "BINGET",
        "BININT1",
        "MARK",
        "TUPLE",
        "REDUCE",
        "BINUNICODE",
        "EMPTY_TUPLE",
        "TUPLE1",
        "NEWFALSE",
        "BINPERSID",
        "BININT2",
        "LONG_BINGET",
        "TUPLE2",
        "TUPLE3",
    ]
)


_U4 = struct.Struct("<I").unpack_from
_STR: Final = frozenset([str])


class _Stop(Exception):
    pass


def _describe(obj: Any) -> str:
    return obj.qualname if isinstance(obj, Global) else type(obj).__name__


class Unpickler:
    """Run one pickle from ``data[start:end]``; :meth:`load` returns the object."""

    #: Whether a memo get of a :class:`Global` with a ``fast`` path may take it (strict runs
    #: only).  Off, every opcode runs in the loop: the tests' oracle for the fast paths.
    fast_paths = True

    def __init__(
        self,
        data: Any,
        handlers: Handlers,
        *,
        start: int = 0,
        end: int | None = None,
        record: str | None = None,
    ) -> None:
        self.data = data
        self.handlers = handlers
        self.pos = self.start = start
        self.lenient = False
        #: Lenient runs: told of each error a handler raised before it became a poison
        #: (the validator reports the reader's own errors this way).
        self.on_error: Callable[[PthError], None] | None = None
        self.end = len(data) if end is None else end
        self.record = record
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        #: The memo: picklers number entries 0, 1, 2...; those live in a list (no key
        #: objects, no hashing) as long as each new index is the next one, any other index
        #: in ``sparse`` (so a file's indices never size anything).
        self.memo: list[Any] = []
        self.sparse: dict[int, Any] = {}
        self.proto = 0
        self.op_pos = start

    # -- the loop --------------------------------------------------------------------------
    def load(self) -> Any:
        """Run to ``STOP``; ``pos`` is the opcode being run until its handler returns.

        The opcodes that make up nearly all of a torch pickle (memo puts and gets, small
        ints, marks, tuples, REDUCE, BINPERSID, strings) run inline on local variables;
        every other opcode goes through the dispatch tables built from the opcode table,
        with ``self.stack`` synchronised around the call.
        """
        data, end = self.data, self.end
        kinds, readers = _KINDS, _READERS
        handlers = [None if f is None else f.__get__(self) for f in _HANDLERS]
        u4, pending, call = _U4, Pending, self._call
        strict = not self.lenient  # lenient re-runs turn handler errors into poisons
        fast = strict and self.fast_paths
        persistent = self.handlers.persistent_load if strict else self._persistent
        read_str = _READERS[ord("X")]
        memo, sparse, metastack = self.memo, self.sparse, self.metastack
        stack = self.stack
        pos = self.pos
        try:
            while True:
                if pos >= end:
                    raise CorruptError("pickle truncated: no STOP opcode before the end")
                code = data[pos]
                if code == 0x72 or code == 0x71:  # LONG_BINPUT, BINPUT
                    value = stack[-1]  # (underflow: at this opcode)
                    if code == 0x72:
                        if pos + 5 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        idx = u4(data, pos + 1)[0]
                        pos += 5
                    else:
                        if pos + 2 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        idx = data[pos + 1]
                        pos += 2
                    if idx == len(memo):
                        memo.append(value)
                        if sparse:
                            sparse.pop(idx, None)
                    elif idx < len(memo):
                        memo[idx] = value
                    else:
                        sparse[idx] = value
                    if isinstance(value, pending):
                        value.memo_keys.append(idx)
                elif code == 0x68 or code == 0x6A:  # BINGET, LONG_BINGET
                    if code == 0x68:
                        if pos + 2 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        idx = data[pos + 1]
                        after = pos + 2
                    else:
                        if pos + 5 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        idx = u4(data, pos + 1)[0]
                        after = pos + 5
                    value = memo[idx] if idx < len(memo) else self._sparse_get(idx)
                    if type(value) is Global:
                        if value.fast is not None and fast:
                            done = value.fast(data, after, end, memo, sparse, stack, value)
                            if done is not None:  # (else: the loop runs the same opcodes)
                                pos = done
                                continue
                    elif type(value) is Unmade:
                        value = memo[idx] = value.make(idx)
                    stack.append(value)
                    pos = after
                elif code == 0x4B:  # BININT1
                    if pos + 2 > end:
                        raise CorruptError("pickle truncated in an opcode argument")
                    stack.append(data[pos + 1])
                    pos += 2
                elif code == 0x28:  # MARK
                    metastack.append(stack)
                    stack = []
                    pos += 1
                elif code == 0x74:  # TUPLE
                    if not metastack:
                        raise CorruptError("pickle mark missing")
                    items = tuple(stack)
                    stack = metastack.pop()
                    stack.append(items)
                    pos += 1
                elif code == 0x52:  # REDUCE
                    self.op_pos = pos  # for lenient poisons
                    args = stack.pop()
                    func = stack[-1]
                    if strict and type(func) is Global and type(args) is tuple:
                        stack[-1] = func.call(*args)
                    else:
                        stack[-1] = call(func, args, "REDUCE")
                    pos += 1
                elif code == 0x58:  # BINUNICODE
                    start = pos + 5
                    stop = start + u4(data, pos + 1)[0] if start <= end else end + 1
                    if stop <= end:
                        try:
                            stack.append(str(data[start:stop], "utf-8", "surrogatepass"))
                            pos = stop
                            continue
                        except UnicodeDecodeError:
                            pass
                    arg, pos = read_str(data, pos + 1, end)  # (raises the table's error)
                    stack.append(arg)
                elif code == 0x29:  # EMPTY_TUPLE
                    stack.append(())
                    pos += 1
                elif code == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                    pos += 1
                elif code == 0x89:  # NEWFALSE
                    stack.append(False)
                    pos += 1
                elif code == 0x51:  # BINPERSID
                    self.op_pos = pos
                    stack[-1] = persistent(stack[-1])  # (lenient: poisons)
                    pos += 1
                elif code == 0x4D:  # BININT2
                    if pos + 3 > end:
                        raise CorruptError("pickle truncated in an opcode argument")
                    if pos + 12 <= end and data[pos + 3] == data[pos + 6] == data[pos + 9] == 0x4D:
                        pos = _push_ints2(data, pos, end, stack)  # a run of them (a list)
                        continue
                    stack.append(data[pos + 1] | data[pos + 2] << 8)
                    pos += 3
                elif code == 0x86:  # TUPLE2
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                    pos += 1
                elif code == 0x87:  # TUPLE3
                    third = stack.pop()
                    second = stack.pop()
                    stack[-1] = (stack[-1], second, third)
                    pos += 1
                else:
                    self.stack = stack
                    self.op_pos = pos
                    kind = kinds[code]
                    if kind == 0:
                        handlers[code](None)
                        pos += 1
                    elif kind == 1:
                        if pos + 2 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        handlers[code](data[pos + 1])
                        pos += 2
                    elif kind == 4:
                        if pos + 5 > end:
                            raise CorruptError("pickle truncated in an opcode argument")
                        handlers[code](u4(data, pos + 1)[0])
                        pos += 5
                    elif kind == 2:
                        arg, next_pos = readers[code](data, pos + 1, end)
                        handlers[code](arg)
                        pos = next_pos
                    elif kind == -1:
                        raise CorruptError(f"unknown pickle opcode 0x{code:02x}")
                    else:
                        raise AssertionError(f"inlined opcode 0x{code:02x} reached dispatch")
                    stack = self.stack
        except _Stop:
            self.pos = pos + 1
            return self._result
        except PthError as exc:
            op_pos = self.op_pos = pos
            own = exc.record is None or exc.record == self.record  # else: another record's
            raise exc.locate(
                record=self.record, offset=op_pos if own else None, key_path=self.key_path(op_pos)
            ) from None
        except (IndexError, TypeError, struct.error) as exc:
            if not _raised_here(exc):
                raise  # from a handler: a bug in pthfmt, not the file
            op_pos = self.op_pos = pos
            raise self._file_error(exc, op_pos) from None
        except RecursionError:
            op_pos = pos
            raise CorruptError(
                "object too deeply nested",
                record=self.record,
                offset=op_pos,
                key_path=self.key_path(op_pos),
            ) from None
        except MemoryError:
            op_pos = pos
        # Out of memory.  Raised here, outside the handler, so that the MemoryError (whose
        # traceback pins this frame) is not kept as the LimitError's context, and with what
        # the run built released: the memory is free as soon as the error is raised.
        stack.clear()
        self.stack.clear()
        self.metastack.clear()
        self.memo.clear()
        self.sparse.clear()
        raise LimitError(
            f"out of memory at {self._opname(op_pos)}", record=self.record, offset=op_pos
        )

    def _file_error(self, exc: Exception, op_pos: int) -> PthError:
        """The error for an exception the loop's own frame raised on the file's behalf."""
        name = self._opname(op_pos)
        kind: type[PthError]
        if isinstance(exc, IndexError):
            message, kind = f"pickle stack underflow at {name}", CorruptError
        elif isinstance(exc, TypeError):  # an allowlisted handler called wrongly
            message, kind = f"invalid pickle at {name}: {exc}", FormatError
        else:
            message, kind = f"pickle truncated at {name}", CorruptError
        return kind(message, record=self.record, offset=op_pos, key_path=self.key_path(op_pos))

    def _opname(self, pos: int) -> str:
        try:
            return BY_CODE[self.data[pos]].name
        except (KeyError, IndexError):
            return "end of data"

    # -- helpers ---------------------------------------------------------------------------
    def pop_mark(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise CorruptError("pickle mark missing")
        self.stack = self.metastack.pop()
        return items

    def _need(self, n: int) -> list[Any]:
        """The stack, after checking that it holds at least ``n`` items above the mark."""
        stack = self.stack
        if len(stack) < n:
            raise CorruptError(f"pickle stack underflow at {self._opname(self.op_pos)}")
        return stack

    def key_path(self, fail_pos: int) -> str | None:
        """The key path of the object whose construction failed at ``fail_pos``.

        The stack alone cannot tell (``SETITEM`` and ``SETITEMS`` leave the same layout), so
        the pickle is run again with lenient handlers that turn each failure into an inert
        :class:`Poison` and go on to ``STOP``; the first poison's place in the finished tree
        is the path.  Runs only after an error; linear like the first run.  A re-run that
        fails on the file's account gives no path; a bug in pthfmt propagates.
        """
        if self.lenient:
            return None
        try:
            rerun = Unpickler(
                self.data,
                self.handlers.lenient(),
                start=self.start,
                end=self.end,
                record=self.record,
            )
            rerun.lenient = True
            root = rerun.load()
        except (PthError, RecursionError, MemoryError):
            return None

        def failed(value: Any) -> bool:
            return isinstance(value, Poison) and value.op_pos == fail_pos

        for path, _ in walk(root, want=failed):
            return path or None
        return None

    def _poison(self, *inputs: Any) -> Poison:
        """A new poison, or the one an input already carries (so the first one travels)."""
        for value in inputs:
            if isinstance(value, Poison):
                return value
        for value in inputs:  # one level into argument and state tuples
            if isinstance(value, (tuple, list)):
                for item in value:
                    if isinstance(item, Poison):
                        return item
        return Poison(self.op_pos)

    def _poisoned(self, *inputs: Any) -> Poison | None:
        """The poison an input carries (itself, or one level into a tuple or list)."""
        for value in inputs:
            if type(value) is Poison:
                return value
            if isinstance(value, (tuple, list)):
                for item in value:
                    if type(item) is Poison:
                        return item
        return None

    def _failed(self, exc: PthError, *inputs: Any) -> Poison:
        """A lenient run's handler error: tell ``on_error``, go on with a poison."""
        if self.on_error is not None:
            self.on_error(exc)
        return self._poison(*inputs)

    def _call(self, func: Any, args: Any, how: str) -> Any:
        if self.lenient:
            inputs = (func, *(args if isinstance(args, tuple) else (args,)))
            poison = self._poisoned(*inputs)
            if poison is not None:  # its first failure is already reported
                return poison
            try:
                return self._strict_call(func, args, how)
            except PthError as exc:
                return self._failed(exc, *inputs)
        return self._strict_call(func, args, how)

    def _strict_call(self, func: Any, args: Any, how: str) -> Any:
        if not isinstance(func, Global):
            raise UnsafePickleError(f"{how} on {_describe(func)}, which is not callable")
        if not isinstance(args, tuple):
            raise FormatError(
                f"{how} arguments of {func.qualname} are a {type(args).__name__}, not a tuple"
            )
        try:
            return func.call(*args)
        except TypeError as exc:  # the arguments did not bind: the file's error
            if not _raised_here(exc):
                raise  # raised inside the handler: a bug in pthfmt
            raise FormatError(f"invalid pickle at {self._opname(self.op_pos)}: {exc}") from None

    def _global(self, module: Any, name: Any) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickleError("STACK_GLOBAL with non-string module or name")
        if self.lenient:
            try:
                return self.handlers.resolve(module, name)
            except PthError:
                return self._poison()
        return self.handlers.resolve(module, name)

    def _sparse_get(self, idx: int) -> Any:
        try:
            return self.sparse[idx]
        except KeyError:
            raise CorruptError(f"memo key {idx} was never stored") from None

    def _get(self, idx: int) -> None:
        memo = self.memo
        value = memo[idx] if 0 <= idx < len(memo) else self._sparse_get(idx)
        if type(value) is Unmade:
            value = memo[idx] = value.make(idx)
        self.stack.append(value)

    def _store(self, idx: int, value: Any) -> None:
        memo = self.memo
        if idx == len(memo):
            memo.append(value)
            self.sparse.pop(idx, None)
        elif idx < len(memo):
            memo[idx] = value
        else:
            self.sparse[idx] = value

    def _put(self, idx: int) -> None:
        if idx < 0:
            raise CorruptError(f"negative memo key {idx}")
        value = self._need(1)[-1]
        self._store(idx, value)
        if isinstance(value, Pending):
            value.memo_keys.append(idx)

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict):
            if type(target) is not Poison:  # a poison absorbs its items
                self.handlers.setitems(target, items)
            return
        if len(items) % 2:
            raise CorruptError("SETITEMS with an odd number of items")
        if type(target) is dict:
            names = items[::2]
            if set(map(type, names)) <= _STR:  # (the loop below, at C speed)
                target.update(zip(names, items[1::2]))
                return
        keys = self.handlers.keys
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                keys.check(key)
            target[key] = items[i + 1]

    def _extend(self, target: Any, items: list[Any]) -> None:
        if type(target) is list:
            target.extend(items)
        elif type(target) is not Poison:  # a poison absorbs its items
            self.handlers.extend(target, items)

    def _hashable_items(self, items: list[Any]) -> list[Any]:
        self.handlers.keys.check_all(items)
        return items

    # -- opcodes: pushing values (the inline ones are in ``load``) ---------------------------
    def op_INT(self, arg: Any) -> None:
        self.stack.append(arg)

    op_BININT = op_LONG = op_LONG1 = op_LONG4 = op_INT
    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = op_INT
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = op_INT
    op_UNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = op_INT
    op_FLOAT = op_BINFLOAT = op_INT

    def op_BYTEARRAY8(self, arg: bytes) -> None:
        self.stack.append(bytearray(arg))

    def op_NEXT_BUFFER(self, arg: None) -> None:
        raise UnsupportedError("out-of-band pickle buffers (protocol 5 NEXT_BUFFER)")

    op_READONLY_BUFFER = op_NEXT_BUFFER

    def op_NONE(self, arg: None) -> None:
        self.stack.append(None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.stack.append(True)

    # -- containers --------------------------------------------------------------------------
    def op_EMPTY_LIST(self, arg: None) -> None:
        self.stack.append([])

    def op_APPEND(self, arg: None) -> None:
        stack = self._need(2)
        value = stack.pop()
        self._extend(stack[-1], [value])

    def op_APPENDS(self, arg: None) -> None:
        items = self.pop_mark()
        self._extend(self._need(1)[-1], items)

    def op_LIST(self, arg: None) -> None:
        items = self.pop_mark()
        self.stack.append(items)

    def op_EMPTY_DICT(self, arg: None) -> None:
        self.stack.append({})

    def op_DICT(self, arg: None) -> None:
        d: dict[Any, Any] = {}
        self._setitems(d, self.pop_mark())
        self.stack.append(d)

    def op_SETITEM(self, arg: None) -> None:
        stack = self._need(3)
        value = stack.pop()
        key = stack.pop()
        self._setitems(stack[-1], [key, value])

    def op_SETITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        self._setitems(self._need(1)[-1], items)

    def op_EMPTY_SET(self, arg: None) -> None:
        self.stack.append(set())

    def op_ADDITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        target = self._need(1)[-1]
        if type(target) is Poison:  # a poison absorbs its items
            return
        if type(target) is not set:
            raise FormatError(f"ADDITEMS to a {_describe(target)}; only sets take items")
        target.update(self._hashable_items(items))

    def op_FROZENSET(self, arg: None) -> None:
        items = frozenset(self._hashable_items(self.pop_mark()))
        self.stack.append(items)

    # -- stack and memo ------------------------------------------------------------------------
    def op_POP(self, arg: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_DUP(self, arg: None) -> None:
        self.stack.append(self._need(1)[-1])

    def op_POP_MARK(self, arg: None) -> None:
        self.pop_mark()

    def op_GET(self, arg: Any) -> None:
        if type(arg) is not int:
            raise CorruptError(f"GET with a non-integer key {short_repr(arg)}")
        self._get(arg)

    def op_PUT(self, arg: Any) -> None:
        if type(arg) is not int:
            raise CorruptError(f"PUT with a non-integer key {short_repr(arg)}")
        self._put(arg)

    def op_MEMOIZE(self, arg: None) -> None:
        self._put(len(self.memo) + len(self.sparse))  # the number of entries

    def op_EXT1(self, arg: int) -> None:
        raise UnsafePickleError(f"copyreg extension code {arg} (EXT opcodes are not allowed)")

    op_EXT2 = op_EXT4 = op_EXT1

    # -- globals and calls ---------------------------------------------------------------------
    def op_GLOBAL(self, arg: tuple[str, str]) -> None:
        self.stack.append(self._global(*arg))

    def op_STACK_GLOBAL(self, arg: None) -> None:
        stack = self._need(2)
        name = stack.pop()
        module = stack.pop()
        stack.append(self._global(module, name))

    def op_NEWOBJ(self, arg: None) -> None:
        stack = self._need(2)
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args, "NEWOBJ")

    def op_NEWOBJ_EX(self, arg: None) -> None:
        stack = self._need(3)
        kwargs = stack.pop()
        args = stack.pop()
        if type(kwargs) is not dict:
            raise FormatError(f"NEWOBJ_EX keyword arguments are a {_describe(kwargs)}, not a dict")
        if kwargs:
            raise UnsupportedError("NEWOBJ_EX with keyword arguments")
        stack[-1] = self._call(stack[-1], args, "NEWOBJ_EX")

    def op_INST(self, arg: tuple[str, str]) -> None:
        args = tuple(self.pop_mark())
        self.stack.append(self._call(self._global(*arg), args, "INST"))

    def op_OBJ(self, arg: None) -> None:
        items = self.pop_mark()
        if not items:
            raise CorruptError(f"pickle stack underflow at {self._opname(self.op_pos)}")
        self.stack.append(self._call(items[0], tuple(items[1:]), "OBJ"))

    def op_BUILD(self, arg: None) -> None:
        stack = self._need(2)
        state = stack.pop()
        obj = stack[-1]
        if isinstance(obj, Pending):
            poison = self._poisoned(state) if self.lenient else None
            try:
                result = poison if poison is not None else obj.build(state)
            except PthError as exc:
                if not self.lenient:
                    raise
                result = self._failed(exc, state)
            stack[-1] = result
            for key in obj.memo_keys:
                self._store(key, result)
        elif not self.lenient and type(obj) is not Poison:  # a poison absorbs its state
            self.handlers.build(obj, state)

    def _persistent(self, pid: Any) -> Any:
        if self.lenient:
            poison = self._poisoned(pid)
            if poison is not None:  # its first failure is already reported
                return poison
            try:
                return self.handlers.persistent_load(pid)
            except PthError as exc:
                return self._failed(exc, pid)
        return self.handlers.persistent_load(pid)

    def op_PERSID(self, arg: str) -> None:
        self.stack.append(self._persistent(arg))

    # -- framing -------------------------------------------------------------------------------
    def op_PROTO(self, arg: int) -> None:
        if arg > HIGHEST_PROTOCOL:
            raise UnsupportedError(f"pickle protocol {arg} (pthfmt reads 0 to {HIGHEST_PROTOCOL})")
        self.proto = arg

    def op_FRAME(self, arg: int) -> None:
        if arg > self.end - self.start:
            raise CorruptError(f"pickle frame of {arg} bytes runs past the end")

    def op_STOP(self, arg: None) -> None:
        if not self.stack:
            raise CorruptError("STOP on an empty stack")
        self._result = self.stack.pop()
        raise _Stop


#: Whole ``BININT2`` opcodes, one after another (the ints of a list such as an optimizer's
#: parameter ids).
_INTS2: Final = re.compile(b"(?:M..)+", re.S)


def _push_ints2(data: Any, pos: int, end: int, stack: list[Any]) -> int:
    """What the loop does with the run of whole ``BININT2`` opcodes from ``pos`` (each one's
    little-endian value pushed), at C speed; the position after the run."""
    run = _INTS2.match(data, pos, end)
    assert run is not None  # (the caller saw the first opcode whole)
    stop = run.end()
    highs = map(mul, data[pos + 2 : stop : 3], repeat(256))
    stack += map(add, data[pos + 1 : stop : 3], highs)
    return stop


def _raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the frame that caught it (not by a function it called)."""
    tb = exc.__traceback__
    return tb is not None and tb.tb_next is None


# Dispatch tables indexed by opcode byte, built once from the opcode table: how the argument
# is read (-1 unknown opcode, 0 none, 1 one byte, 4 four bytes, 2 the table's reader) and the
# ``op_<NAME>`` method that runs it.
_KINDS: list[int] = [-1] * 256
_READERS: list[Any] = [None] * 256
_HANDLERS: list[Any] = [None] * 256
for _op in OPCODES:
    _READERS[_op.code] = _op.arg.read
    if _op.name in INLINED:
        _KINDS[_op.code] = -2  # never reaches the dispatch branch
    else:
        _KINDS[_op.code] = {"none": 0, "uint1": 1, "uint4": 4}.get(_op.arg.name, 2)
        _HANDLERS[_op.code] = getattr(Unpickler, "op_" + _op.name)


def opcode_at(data: Any, pos: int) -> Opcode | None:
    """The opcode at ``pos`` (for messages and scanners)."""
    return BY_CODE.get(data[pos]) if 0 <= pos < len(data) else None
