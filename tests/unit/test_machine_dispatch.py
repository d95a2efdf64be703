"""The pickle VM's dispatch: one place per opcode, file errors told apart from pthfmt's bugs,
and poisons that absorb what a lenient run does to them."""

from __future__ import annotations

import pickle
import pickletools
import struct

import pytest

from pthfmt.errors import CorruptError, FormatError, PthError, UnsafePickleError
from pthfmt.model.device import location_mapper
from pthfmt.model.globals import Global
from pthfmt.model.storage import StorageTable
from pthfmt.pickle import machine
from pthfmt.pickle.keys import KeyGuard
from pthfmt.pickle.machine import INLINED, Poison, Unpickler
from pthfmt.pickle.opcodes import OPCODES
from pthfmt.torch.handlers import TorchHandlers


def handlers(unknown: str = "error") -> TorchHandlers:
    def locate(info):
        raise FormatError("no storages in these tests")

    return TorchHandlers(
        StorageTable(location_mapper(None), locate), eager=False, mmap=False, unknown=unknown
    )


def run(data: bytes, h=None):
    return Unpickler(data, h or handlers(), record="t.pkl").load()


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def uni(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# -- the table and the dispatch agree ---------------------------------------------------------
def test_every_opcode_is_inlined_or_has_exactly_one_handler():
    names = {op.name for op in OPCODES}
    methods = {m[3:] for m in dir(Unpickler) if m.startswith("op_")}
    assert INLINED <= names
    assert not INLINED & methods, "an inlined opcode keeps a dead op_ handler"
    assert names - INLINED == methods, "opcodes without a handler, or handlers of no opcode"
    assert len(INLINED) == 16


def test_the_table_covers_every_opcode_pickle_defines():
    ours = {op.name: op.code for op in OPCODES}
    theirs = {op.name: ord(op.code.encode("latin-1")) for op in pickletools.opcodes}
    assert ours == theirs
    constants = {
        name: value[0]
        for name, value in vars(pickle).items()
        if name.isupper()
        and isinstance(value, bytes)
        and len(value) == 1
        and name not in ("TRUE", "FALSE")
    }  # INT's two-byte spellings
    assert {n: c for n, c in constants.items()} == {n: ours[n] for n in constants}
    assert set(constants) <= set(ours)


@pytest.mark.parametrize("protocol", range(6))
def test_inlined_opcodes_run_inline(protocol):
    value = [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (), False, 300, "s", {"a": [1]}] * 200
    data = pickle.dumps(value, protocol=protocol)
    assert run(data) == value


def test_inline_reduce():
    data = b"\x80\x02" + glob("torch", "Size") + b"K\x02K\x03\x86\x85R."
    assert run(data) == (2, 3)


# -- file errors are precise PthErrors ---------------------------------------------------------
@pytest.mark.parametrize(
    "body,name,offset",
    [
        (b"\x86", "TUPLE2", 2),  # inlined: nothing on the stack
        (b"N\x86", "TUPLE2", 3),  # one item only
        (b"NN\x87", "TUPLE3", 4),
        (b"\x85", "TUPLE1", 2),
        (b"q\x00", "BINPUT", 2),
        (b"r\x00\x00\x00\x00", "LONG_BINPUT", 2),
        (b"R", "REDUCE", 2),
        (b"Q", "BINPERSID", 2),
        (b"(N\x86", "TUPLE2", 4),  # the mark hides what lies below it
        (b"Na", "APPEND", 3),  # handlers: stack checked explicitly
        (b"}Ns", "SETITEM", 4),
        (b"b", "BUILD", 2),
        (b"2", "DUP", 2),
        (b"\x93", "STACK_GLOBAL", 2),
        (b"\x81", "NEWOBJ", 2),
        (b"p0\n", "PUT", 2),
        (b"(o", "OBJ", 3),
    ],
)
def test_stack_underflow_names_the_opcode(body, name, offset):
    with pytest.raises(CorruptError) as info:
        run(b"\x80\x02" + body + b"N.")
    assert info.value.message == f"pickle stack underflow at {name}"
    assert info.value.offset == offset and info.value.record == "t.pkl"


def test_a_handler_called_with_the_wrong_arity_is_the_files_error():
    data = b"\x80\x02" + glob("torch", "Size") + b"(K\x01K\x02K\x03tR."
    with pytest.raises(FormatError) as info:
        run(data)
    assert info.value.message == (
        "invalid pickle at REDUCE: TorchHandlers.size() takes from "
        "1 to 2 positional arguments but 4 were given"
    )
    assert info.value.offset == 22
    newobj = b"\x80\x02" + glob("torch", "Size") + b"(K\x01K\x02K\x03t\x81."
    with pytest.raises(FormatError, match=r"^invalid pickle at NEWOBJ: TorchHandlers.size\(\)"):
        run(newobj)


@pytest.mark.parametrize(
    "body,error,message",
    [
        (b"J\x01", CorruptError, "pickle truncated: an argument of 4 bytes runs past the end"),
        (b"K", CorruptError, "pickle truncated in an opcode argument"),
        (b"X\x01\x00", CorruptError, "pickle truncated: an argument of 4 bytes runs past the end"),
        (
            b"S'\\x1'\n",
            CorruptError,
            "invalid escape in a STRING argument: invalid \\x escape at position 0",
        ),
        (b"V\\u12\n", CorruptError, "invalid UNICODE argument: truncated \\uXXXX escape"),
        (b"N)N\x92", FormatError, "NEWOBJ_EX keyword arguments are a NoneType, not a dict"),
    ],
)
def test_bad_arguments_are_pth_errors(body, error, message):
    with pytest.raises(error) as info:
        run(b"\x80\x02" + body)
    assert info.value.message == message


def test_text_lines_in_a_memoryview():
    data = memoryview(b"\x80\x02I42\nL7\n\x86.")
    assert Unpickler(data, handlers(), start=0).load() == (42, 7)


# -- our own bugs propagate as what they are ---------------------------------------------------
class Buggy:
    """Handlers whose code has the bugs a handler could have."""

    def __init__(self, exc: type[Exception]) -> None:
        self.keys = KeyGuard()
        self.exc = exc

    def boom(self, *args):
        raise self.exc("a bug in a handler")

    def resolve(self, module, name):
        return Global(f"{module}.{name}", self.boom)

    def persistent_load(self, pid):
        raise self.exc("a bug in persistent_load")

    def build(self, obj, state):
        raise self.exc("a bug in build")

    def setitems(self, obj, items):
        raise self.exc("a bug in setitems")

    def extend(self, obj, items):
        raise self.exc("a bug in extend")

    def lenient(self):
        return self


@pytest.mark.parametrize("exc", [TypeError, KeyError, AttributeError, IndexError, ValueError])
@pytest.mark.parametrize(
    "body",
    [
        glob("m", "f") + b")R.",  # inline REDUCE
        glob("m", "f") + b")\x81.",  # NEWOBJ through the dispatch
        b"(" + glob("m", "f") + b"o.",  # OBJ
        b"N" + b"Q.",  # inline BINPERSID
        b"PX\n.",  # PERSID
        glob("m", "f") + b"Nb.",  # BUILD
        b"NNNs.",  # SETITEM on a non-dict
        b"NNa.",  # APPEND on a non-list
    ],
)
def test_exceptions_from_handler_code_propagate(exc, body):
    with pytest.raises(exc) as info:
        Unpickler(b"\x80\x02" + body, Buggy(exc)).load()
    assert not isinstance(info.value, PthError)


# -- poisons -------------------------------------------------------------------------------------
def test_poison_is_public_and_keeps_the_old_name():
    assert machine.Poison is Poison and machine._Poison is Poison


@pytest.mark.parametrize(
    "tail",
    [
        b"}X\x01\x00\x00\x00kNsb",  # BUILD after SETITEM
        b"(X\x01\x00\x00\x00kNu",  # SETITEMS
        b"Na",  # APPEND
        b"(NNe",  # APPENDS
        b"(N\x90",  # ADDITEMS
        b"Nb",  # BUILD
    ],
)
def test_a_poison_absorbs_what_follows_the_first_refusal(tail):
    data = b"\x80\x02}" + uni("a") + glob("os", "system") + tail + b"s."
    with pytest.raises(UnsafePickleError) as info:
        run(data)
    assert info.value.message == "global os.system is not allowed: a known code-execution gadget"
    assert info.value.key_path == "a"  # the lenient re-run got to the end
    rerun = Unpickler(data, handlers().lenient())
    rerun.lenient = True
    root = rerun.load()
    assert isinstance(root["a"], Poison) and root["a"].op_pos == 9


def test_global_apply_tells_binding_errors_from_bugs():
    def handler(a, b):
        return {}[a]  # a bug: KeyError inside the handler

    g = Global("m.f", handler)
    with pytest.raises(FormatError) as info:
        g.apply((1,))
    assert info.value.message == (
        "arguments of m.f do not fit: test_global_apply_tells_binding_"
        "errors_from_bugs.<locals>.handler() missing 1 required "
        "positional argument: 'b'"
    )
    with pytest.raises(KeyError):
        g.apply((1, 2))
