"""Every pickle opcode (protocols 0-5) in one table, after CPython's ``pickletools``.

The table drives the unpickler (argument decoding and dispatch), the validator's opcode scan
and the docs.  An :class:`ArgKind` says how an opcode's inline argument is encoded; readers
are bounds-checked against ``end`` so that no length prefix can make us read or allocate more
than the record holds.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import CorruptError

__all__ = ["ArgKind", "Opcode", "OPCODES", "BY_CODE", "read_arg"]

_u2 = struct.Struct("<H").unpack_from
_i4 = struct.Struct("<i").unpack_from
_u4 = struct.Struct("<I").unpack_from
_u8 = struct.Struct("<Q").unpack_from
_f8 = struct.Struct(">d").unpack_from

Reader = Callable[[Any, int, int], "tuple[Any, int]"]


def _need(pos: int, n: int, end: int) -> int:
    if n < 0 or pos + n > end:
        raise CorruptError(
            f"pickle truncated: an argument of {n} bytes runs past the end", offset=pos
        )
    return pos + n


def _fixed(n: int, unpack: Callable[[Any, int], tuple[Any, ...]]) -> Reader:
    def read(data: Any, pos: int, end: int) -> tuple[Any, int]:
        stop = _need(pos, n, end)
        return unpack(data, pos)[0], stop

    return read


def _uint1(data: Any, pos: int, end: int) -> tuple[int, int]:
    stop = _need(pos, 1, end)
    return data[pos], stop


def _sized(prefix: int, size: Reader, decode: Callable[[bytes], Any]) -> Reader:
    def read(data: Any, pos: int, end: int) -> tuple[Any, int]:
        n, start = size(data, pos, end)
        stop = _need(start, n, end)
        return decode(bytes(data[start:stop])), stop

    return read


def _long(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptError(f"invalid UTF-8 in a pickled string: {exc.reason}") from None


def _py2str(raw: bytes) -> str | bytes:
    """Python 2 ``str`` (BINSTRING): text when it is UTF-8 (as torch.load decodes it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _line(data: Any, pos: int, end: int) -> tuple[bytes, int]:
    if hasattr(data, "find"):
        stop = data.find(b"\n", pos, end)
    else:  # a memoryview: find in a copy, offset back
        stop = bytes(data[pos:end]).find(b"\n")
        stop = stop + pos if stop >= 0 else stop
    if stop < 0:
        raise CorruptError("pickle truncated: no newline after a text argument", offset=pos)
    return bytes(data[pos:stop]), stop + 1


def _text(data: Any, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _line(data, pos, end)
    return raw.decode("ascii", "backslashreplace"), pos


def _quoted(data: Any, pos: int, end: int) -> tuple[str | bytes, int]:
    raw, pos = _line(data, pos, end)
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        raise CorruptError("STRING argument is not a quoted string", offset=pos)
    try:
        return _py2str(codecs.escape_decode(raw[1:-1])[0]), pos
    except ValueError as exc:  # a bad escape such as \\x1
        raise CorruptError(f"invalid escape in a STRING argument: {exc}", offset=pos) from None


def _unicodenl(data: Any, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _line(data, pos, end)
    try:
        return raw.decode("raw-unicode-escape"), pos
    except UnicodeDecodeError as exc:  # a truncated \\u escape
        raise CorruptError(f"invalid UNICODE argument: {exc.reason}", offset=pos) from None


def _two_lines(data: Any, pos: int, end: int) -> tuple[tuple[str, str], int]:
    module, pos = _text(data, pos, end)
    name, pos = _text(data, pos, end)
    return (module, name), pos


def _decimal(data: Any, pos: int, end: int) -> tuple[Any, int]:
    raw, pos = _line(data, pos, end)
    text = raw.rstrip(b"L").decode("ascii", "replace")
    if text in ("00", "01"):  # protocol 0 booleans (INT 00 / 01)
        return text == "01", pos
    try:
        return int(text), pos
    except ValueError:
        raise CorruptError(f"invalid decimal integer {text[:40]!r}", offset=pos) from None


def _floatnl(data: Any, pos: int, end: int) -> tuple[float, int]:
    raw, pos = _line(data, pos, end)
    try:
        return float(raw), pos
    except ValueError:
        raise CorruptError(f"invalid float {raw[:40]!r}", offset=pos) from None


@dataclass(frozen=True)
class ArgKind:
    name: str
    read: Reader | None
    doc: str

    @property
    def size(self) -> int:
        """Bytes of a fixed-size argument (0 for none); -1 when the size varies."""
        return _FIXED_SIZES.get(self.name, -1)


_FIXED_SIZES: Final = {
    "none": 0,
    "uint1": 1,
    "uint2": 2,
    "int4": 4,
    "uint4": 4,
    "uint8": 8,
    "float8": 8,
}


def _unicode4(data: Any, pos: int, end: int) -> tuple[str, int]:
    """BINUNICODE, the commonest argument of all (every key and device tag): kept direct."""
    start = pos + 4
    if start > end:
        _need(pos, 4, end)
    stop = start + _u4(data, pos)[0]
    if stop > end:
        _need(start, stop - start, end)
    try:
        return str(data[start:stop], "utf-8", "surrogatepass"), stop
    except UnicodeDecodeError as exc:
        raise CorruptError(f"invalid UTF-8 in a pickled string: {exc.reason}") from None


_K = {
    k.name: k
    for k in (
        ArgKind("none", None, "no argument"),
        ArgKind("uint1", _uint1, "1-byte unsigned int"),
        ArgKind("uint2", _fixed(2, _u2), "2-byte little-endian unsigned int"),
        ArgKind("int4", _fixed(4, _i4), "4-byte little-endian signed int"),
        ArgKind("uint4", _fixed(4, _u4), "4-byte little-endian unsigned int"),
        ArgKind("uint8", _fixed(8, _u8), "8-byte little-endian unsigned int"),
        ArgKind("float8", _fixed(8, _f8), "8-byte big-endian IEEE double"),
        ArgKind("long1", _sized(1, _uint1, _long), "uint1 length + little-endian two's complement"),
        ArgKind("long4", _sized(4, _fixed(4, _i4), _long), "int4 length + two's complement"),
        ArgKind("string1", _sized(1, _uint1, _py2str), "uint1 length + Python 2 str bytes"),
        ArgKind("string4", _sized(4, _fixed(4, _i4), _py2str), "int4 length + Python 2 str bytes"),
        ArgKind("bytes1", _sized(1, _uint1, bytes), "uint1 length + bytes"),
        ArgKind("bytes4", _sized(4, _fixed(4, _u4), bytes), "uint4 length + bytes"),
        ArgKind("bytes8", _sized(8, _fixed(8, _u8), bytes), "uint8 length + bytes"),
        ArgKind("unicode1", _sized(1, _uint1, _utf8), "uint1 length + UTF-8"),
        ArgKind("unicode4", _unicode4, "uint4 length + UTF-8"),
        ArgKind("unicode8", _sized(8, _fixed(8, _u8), _utf8), "uint8 length + UTF-8"),
        ArgKind("decimalnl", _decimal, "decimal integer + newline ('00'/'01' are booleans)"),
        ArgKind("floatnl", _floatnl, "float repr + newline"),
        ArgKind("stringnl", _quoted, "quoted, escaped Python 2 str + newline"),
        ArgKind("unicodenl", _unicodenl, "raw-unicode-escape text + newline"),
        ArgKind("textnl", _text, "ASCII text + newline"),
        ArgKind("module_name", _two_lines, "module + newline + qualified name + newline"),
    )
}


@dataclass(frozen=True)
class Opcode:
    name: str
    code: int
    arg: ArgKind
    proto: int
    doc: str


def _op(name: str, code: str, arg: str, proto: int, doc: str) -> Opcode:
    return Opcode(name, ord(code), _K[arg], proto, doc)


#: name, code, argument, protocol that introduced it, what it does.
OPCODES: Final[tuple[Opcode, ...]] = (
    _op("INT", "I", "decimalnl", 0, "push an int (or bool for 00/01)"),
    _op("BININT", "J", "int4", 1, "push a 4-byte signed int"),
    _op("BININT1", "K", "uint1", 1, "push a 1-byte unsigned int"),
    _op("BININT2", "M", "uint2", 1, "push a 2-byte unsigned int"),
    _op("LONG", "L", "decimalnl", 0, "push a long int"),
    _op("LONG1", "\x8a", "long1", 2, "push a long int (up to 255 bytes)"),
    _op("LONG4", "\x8b", "long4", 2, "push a long int"),
    _op("STRING", "S", "stringnl", 0, "push a Python 2 str"),
    _op("BINSTRING", "T", "string4", 1, "push a Python 2 str"),
    _op("SHORT_BINSTRING", "U", "string1", 1, "push a Python 2 str"),
    _op("BINBYTES", "B", "bytes4", 3, "push bytes"),
    _op("SHORT_BINBYTES", "C", "bytes1", 3, "push bytes"),
    _op("BINBYTES8", "\x8e", "bytes8", 4, "push bytes"),
    _op("BYTEARRAY8", "\x96", "bytes8", 5, "push a bytearray"),
    _op("NEXT_BUFFER", "\x97", "none", 5, "push an out-of-band buffer"),
    _op("READONLY_BUFFER", "\x98", "none", 5, "make the top buffer read-only"),
    _op("NONE", "N", "none", 0, "push None"),
    _op("NEWTRUE", "\x88", "none", 2, "push True"),
    _op("NEWFALSE", "\x89", "none", 2, "push False"),
    _op("UNICODE", "V", "unicodenl", 0, "push a str"),
    _op("SHORT_BINUNICODE", "\x8c", "unicode1", 4, "push a str"),
    _op("BINUNICODE", "X", "unicode4", 1, "push a str"),
    _op("BINUNICODE8", "\x8d", "unicode8", 4, "push a str"),
    _op("FLOAT", "F", "floatnl", 0, "push a float"),
    _op("BINFLOAT", "G", "float8", 1, "push a float"),
    _op("EMPTY_LIST", "]", "none", 1, "push []"),
    _op("APPEND", "a", "none", 0, "list.append(pop)"),
    _op("APPENDS", "e", "none", 1, "list.extend(items since mark)"),
    _op("LIST", "l", "none", 0, "push a list of the items since mark"),
    _op("EMPTY_TUPLE", ")", "none", 1, "push ()"),
    _op("TUPLE", "t", "none", 0, "push a tuple of the items since mark"),
    _op("TUPLE1", "\x85", "none", 2, "1-tuple of the top item"),
    _op("TUPLE2", "\x86", "none", 2, "2-tuple of the top items"),
    _op("TUPLE3", "\x87", "none", 2, "3-tuple of the top items"),
    _op("EMPTY_DICT", "}", "none", 1, "push {}"),
    _op("DICT", "d", "none", 0, "push a dict of the key/value pairs since mark"),
    _op("SETITEM", "s", "none", 0, "dict[key] = value"),
    _op("SETITEMS", "u", "none", 1, "dict.update(pairs since mark)"),
    _op("EMPTY_SET", "\x8f", "none", 4, "push set()"),
    _op("ADDITEMS", "\x90", "none", 4, "set.update(items since mark)"),
    _op("FROZENSET", "\x91", "none", 4, "push a frozenset of the items since mark"),
    _op("POP", "0", "none", 0, "discard the top item (or the mark)"),
    _op("DUP", "2", "none", 0, "push the top item again"),
    _op("MARK", "(", "none", 0, "push a mark"),
    _op("POP_MARK", "1", "none", 1, "discard everything since mark"),
    _op("GET", "g", "decimalnl", 0, "push memo[n]"),
    _op("BINGET", "h", "uint1", 1, "push memo[n]"),
    _op("LONG_BINGET", "j", "uint4", 1, "push memo[n]"),
    _op("PUT", "p", "decimalnl", 0, "memo[n] = top"),
    _op("BINPUT", "q", "uint1", 1, "memo[n] = top"),
    _op("LONG_BINPUT", "r", "uint4", 1, "memo[n] = top"),
    _op("MEMOIZE", "\x94", "none", 4, "memo[len(memo)] = top"),
    _op("EXT1", "\x82", "uint1", 2, "push the copyreg extension n"),
    _op("EXT2", "\x83", "uint2", 2, "push the copyreg extension n"),
    _op("EXT4", "\x84", "int4", 2, "push the copyreg extension n"),
    _op("GLOBAL", "c", "module_name", 0, "push module.name"),
    _op("STACK_GLOBAL", "\x93", "none", 4, "push module.name from the two top strings"),
    _op("REDUCE", "R", "none", 0, "push callable(*args)"),
    _op("BUILD", "b", "none", 0, "obj.__setstate__(state)"),
    _op("INST", "i", "module_name", 0, "push module.name(*items since mark)"),
    _op("OBJ", "o", "none", 1, "push cls(*items since mark)"),
    _op("NEWOBJ", "\x81", "none", 2, "push cls.__new__(cls, *args)"),
    _op("NEWOBJ_EX", "\x92", "none", 4, "push cls.__new__(cls, *args, **kwargs)"),
    _op("PROTO", "\x80", "uint1", 2, "protocol version"),
    _op("STOP", ".", "none", 0, "end of the pickle: return the top item"),
    _op("FRAME", "\x95", "uint8", 4, "the next n bytes form one frame"),
    _op("PERSID", "P", "textnl", 0, "push persistent_load(text id)"),
    _op("BINPERSID", "Q", "none", 1, "push persistent_load(pop)"),
)

BY_CODE: Final[dict[int, Opcode]] = {op.code: op for op in OPCODES}
BY_NAME: Final[dict[str, Opcode]] = {op.name: op for op in OPCODES}
HIGHEST_PROTOCOL: Final = 5


def read_arg(op: Opcode, data: Any, pos: int, end: int) -> tuple[Any, int]:
    """Decode ``op``'s inline argument at ``pos``; returns ``(value, next_pos)``."""
    read = op.arg.read
    return (None, pos) if read is None else read(data, pos, end)
