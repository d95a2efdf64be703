"""A static scan of one pickle: every global it names, with offsets, nothing executed.

:func:`scan_pickle` walks the opcodes from ``start`` to ``STOP`` like
``pickletools.genops``, driven by :data:`~pthfmt.pickle.opcodes.OPCODES`: a fixed-size
argument is skipped by its table size, any other is read by the table's own argument reader
(the same bounds-checked readers the VM uses; there is no second table of widths).  It lists
every global (``GLOBAL``, ``INST``, and a ``STACK_GLOBAL`` whose operands are literal or
memoized strings), copyreg extension codes, the opcodes torch's ``weights_only`` unpickler
lacks, the protocol and where the pickle ends.  The validator uses it to report globals and
structure past the first error, which the VM (which stops there) cannot.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import CorruptError, PthError
from .opcodes import BY_CODE, Opcode, read_arg

__all__ = ["PickleScan", "scan_pickle", "WEIGHTS_ONLY_OPS"]

#: The opcodes torch's ``weights_only`` unpickler implements.
WEIGHTS_ONLY_OPS: Final = frozenset(
    "PROTO STOP MARK GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS TUPLE TUPLE1 "
    "TUPLE2 TUPLE3 NONE NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT "
    "BININT1 BININT2 BINFLOAT BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT "
    "LONG_BINPUT LONG1".split()
)
_STRING_OPS: Final = frozenset(
    [
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
    ]
)
_GET_OPS: Final = frozenset(["GET", "BINGET", "LONG_BINGET"])
_PUT_OPS: Final = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])


@dataclass
class PickleScan:
    """What a pass over a pickle's opcodes found, without executing any of them."""

    globals: list[tuple[int, str, str, str]] = field(default_factory=list)  # pos, mod, name, op
    unresolved: list[int] = field(default_factory=list)  # STACK_GLOBALs of unknown operands
    extensions: list[tuple[int, int]] = field(default_factory=list)
    not_weights_only: dict[str, int] = field(default_factory=dict)  # opcode -> first offset
    proto: int | None = None
    end: int | None = None  # offset just after STOP
    error: tuple[int, str] | None = None


# What the scan does per opcode: skip a fixed-size argument, read one, or act.
(
    _A_FIXED,
    _A_READ,
    _A_STR,
    _A_GET,
    _A_PUT,
    _A_MEMOIZE,
    _A_GLOBAL,
    _A_STACK_GLOBAL,
    _A_EXT,
    _A_PROTO,
    _A_STOP,
    _A_FRAME,
) = range(12)
_Action = tuple[int, Opcode]


def _action(op: Opcode) -> int:
    name = op.name
    special = {
        "GLOBAL": _A_GLOBAL,
        "INST": _A_GLOBAL,
        "STACK_GLOBAL": _A_STACK_GLOBAL,
        "EXT1": _A_EXT,
        "EXT2": _A_EXT,
        "EXT4": _A_EXT,
        "PROTO": _A_PROTO,
        "STOP": _A_STOP,
        "MEMOIZE": _A_MEMOIZE,
        "FRAME": _A_FRAME,
    }.get(name)
    if special is not None:
        return special
    if name in _GET_OPS:
        return _A_GET
    if name in _PUT_OPS:
        return _A_PUT
    if name in _STRING_OPS:
        return _A_STR
    return _A_FIXED if op.arg.size >= 0 else _A_READ


_SCAN: Final[list[_Action | None]] = [None] * 256
for _op in BY_CODE.values():
    _SCAN[_op.code] = (_action(_op), _op)
_WO_OK: Final = [a is not None and a[1].name in WEIGHTS_ONLY_OPS for a in _SCAN]


class _State:
    """The scan's view of the memo: string values (or the positions of the opcodes that
    pushed them, decoded only when a ``STACK_GLOBAL`` needs them)."""

    __slots__ = ("memo", "memo_len", "recent")

    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}
        self.memo_len = 0
        self.recent: list[Any] = []  # values pushed by the last string/memo opcodes


def scan_pickle(data: Any, start: int = 0, end: int | None = None) -> PickleScan:
    """Walk one pickle from ``start`` to its ``STOP``; offsets are positions in ``data``."""
    end = len(data) if end is None else end
    out = PickleScan()
    state = _State()
    pos = start
    try:
        while True:
            if pos >= end:
                out.error = (pos, "pickle truncated: no STOP opcode before the end")
                return out
            code = data[pos]
            action = _SCAN[code]
            if action is None:
                out.error = (pos, f"unknown pickle opcode 0x{code:02x}")
                return out
            if not _WO_OK[code] and action[1].name not in out.not_weights_only:
                out.not_weights_only[action[1].name] = pos
            nxt = _step(action, data, pos, start, end, out, state)
            if nxt < 0:
                return out
            if nxt > end:
                raise CorruptError("pickle truncated in an opcode argument")
            if len(state.recent) > 2:
                del state.recent[:-2]
            pos = nxt
    except PthError as exc:
        out.error = (pos, f"{BY_CODE[data[pos]].name}: {_bare(exc.message)}")
        return out
    except (struct.error, IndexError):
        out.error = (pos, f"{BY_CODE[data[pos]].name}: pickle truncated")
        return out


def _bare(message: str) -> str:
    """An argument reader's message without its ``pickle truncated:`` lead (the scan names
    the opcode instead)."""
    lead = "pickle truncated: "
    if message.startswith(lead + "an argument of"):
        return message[len(lead) :]
    return message


def _step(
    action: _Action, data: Any, pos: int, start: int, end: int, out: PickleScan, state: _State
) -> int:
    """Run one opcode of the scan: the position of the next one (-1 after ``STOP``)."""
    kind, op = action
    if kind == _A_FIXED:
        state.recent = []
        return pos + 1 + op.arg.size
    if kind == _A_FRAME:  # transparent: framing changes no value
        return pos + 1 + op.arg.size
    if kind == _A_READ:
        state.recent = []
        return read_arg(op, data, pos + 1, end)[1]
    if kind == _A_STR:
        nxt = read_arg(op, data, pos + 1, end)[1]
        state.recent.append(pos)  # decoded only if a STACK_GLOBAL needs it
        return nxt
    if kind == _A_GET or kind == _A_PUT:
        arg, nxt = read_arg(op, data, pos + 1, end)
        _memo(kind == _A_GET, arg, state)
        return int(nxt)
    if kind == _A_MEMOIZE:
        recent = state.recent
        if recent and recent[-1] is not None:
            state.memo[state.memo_len] = recent[-1]
        else:
            state.memo.pop(state.memo_len, None)
        state.memo_len += 1
        return pos + 1
    return _act(kind, op, data, pos, start, end, out, state)


def _memo(get: bool, arg: Any, state: _State) -> None:
    if get:
        state.recent.append(state.memo.get(arg) if type(arg) is int else None)
        return
    state.memo_len += 1
    if type(arg) is int:
        if state.recent and state.recent[-1] is not None:
            state.memo[arg] = state.recent[-1]
        else:
            state.memo.pop(arg, None)


def _act(
    kind: int, op: Opcode, data: Any, pos: int, start: int, end: int, out: PickleScan, state: _State
) -> int:
    """The opcodes the scan reports on: globals, extensions, ``PROTO`` and ``STOP``."""
    if kind == _A_GLOBAL:
        arg, nxt = read_arg(op, data, pos + 1, end)
        out.globals.append((pos, arg[0], arg[1], op.name))
        state.recent = []
        return int(nxt)
    if kind == _A_STACK_GLOBAL:
        operands = [_string_at(data, v, end) for v in state.recent[-2:]]
        if len(operands) == 2 and all(isinstance(v, str) for v in operands):
            out.globals.append((pos, operands[0], operands[1], op.name))
        else:
            out.unresolved.append(pos)
        state.recent = []
        return pos + 1
    if kind == _A_EXT:
        arg, nxt = read_arg(op, data, pos + 1, end)
        out.extensions.append((pos, arg))
        state.recent = []
        return int(nxt)
    if kind == _A_PROTO:
        if pos == start and pos + 2 <= end:
            out.proto = data[pos + 1]
        return pos + 2
    out.end = pos + 1  # STOP
    return -1


def _string_at(data: Any, value: Any, end: int) -> Any:
    """A string pushed by the opcode at position ``value`` (decoded now), or ``value``."""
    if type(value) is not int:
        return value
    try:
        arg, _ = read_arg(BY_CODE[data[value]], data, value + 1, end)
    except PthError:
        return None
    return arg if isinstance(arg, str) else None
