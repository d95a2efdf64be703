"""The restricted pickle VM on its own: plain data at every protocol, and refusals."""

from __future__ import annotations

import math
import os
import pickle
import pickletools
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pthfmt.errors import (
    CorruptError,
    FormatError,
    LimitError,
    PthError,
    UnsafePickleError,
    UnsupportedError,
)
from pthfmt.model.storage import StorageTable
from pthfmt.pickle.machine import Unpickler
from pthfmt.pickle.opcodes import BY_NAME, OPCODES
from pthfmt.torch.handlers import TorchHandlers


def handlers() -> TorchHandlers:
    def locate(info):
        raise FormatError("no storages in these tests")

    from pthfmt.model.device import location_mapper

    return TorchHandlers(StorageTable(location_mapper(None), locate), eager=False, mmap=False)


def run(data: bytes):
    return Unpickler(data, handlers(), record="test.pkl").load()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
hashables = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.dictionaries(st.text(max_size=5), inner, max_size=4).map(OrderedDict),
        st.frozensets(hashables, max_size=4),
        st.sets(hashables, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(trees, st.integers(0, 5))
def test_plain_data_matches_pickle(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert run(data) == pickle.loads(data)


def test_opcode_table_is_pickletools():
    ours = {op.name: (op.code, op.proto) for op in OPCODES}
    theirs = {op.name: (ord(op.code.encode("latin-1")), op.proto) for op in pickletools.opcodes}
    assert ours == theirs


def test_shared_and_recursive_references_survive():
    shared = [1, 2]
    value = {"a": shared, "b": shared}
    loop: list = [0]
    loop.append(loop)
    out = run(pickle.dumps(value, protocol=2))
    assert out["a"] is out["b"]
    out2 = run(pickle.dumps(loop, protocol=2))
    assert out2[1] is out2


def test_ordered_dict_metadata_is_kept():
    od = OrderedDict(w=1)
    od._metadata = OrderedDict({"": {"version": 1}})
    out = run(pickle.dumps(od, protocol=2))
    assert out == od and out._metadata == od._metadata


def test_numpy_arrays_and_scalars_decode_without_numpy_pickle():
    value = {
        "a": np.arange(6, dtype=">i4").reshape(2, 3),
        "f": np.asfortranarray(np.eye(2)),
        "s": np.float32(2.5),
        "i": np.int64(-3),
        "b": np.array([True, False]),
    }
    for protocol in (2, 4):
        out = run(pickle.dumps(value, protocol=protocol))
        for k, v in value.items():
            assert np.array_equal(out[k], v) and out[k].dtype == v.dtype, k


def test_numpy_object_arrays_are_refused():
    with pytest.raises(UnsafePickleError):
        run(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2))


def _canary(tmp_path):
    return tmp_path / "canary"


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
@pytest.mark.parametrize("func", [os.system, eval, exec, getattr, __import__])
def test_dangerous_reduce_is_refused_and_never_runs(tmp_path, protocol, func):
    canary = _canary(tmp_path)
    arg = f"open({str(canary)!r}, 'w')" if func in (eval, exec) else f"touch {canary}"
    args = (arg,) if func is not getattr else (_Reduce(__import__, ("os",)), "system")
    data = pickle.dumps({"x": [1, _Reduce(func, args)]}, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        run(data)
    assert func.__name__ in str(info.value)
    assert info.value.key_path == "x.1"
    assert not canary.exists()


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02" + _global("subprocess", "check_call") + b"X\x02\x00\x00\x00ls\x85R.",
        b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x8c\x02ls\x85R.",  # STACK_GLOBAL
        b"(X\x02\x00\x00\x00lsios\nsystem\n.",  # INST
        b"(" + _global("os", "system") + b"X\x02\x00\x00\x00lso.",  # OBJ
        b"\x80\x02" + _global("builtins", "getattr") + b")\x81.",  # NEWOBJ
        b"\x80\x04" + _global("runpy", "run_path") + b")}\x92.",  # NEWOBJ_EX
        b"\x80\x02" + _global("importlib", "import_module") + b"X\x02\x00\x00\x00osR.",
        b"\x80\x02" + _global("functools", "partial") + b")R.",
        b"\x80\x02" + _global("operator", "attrgetter") + b")R.",
        b"\x80\x02" + _global("numpy", "load") + b")R.",
        b"\x80\x02" + _global("torch", "load") + b")R.",
        b"\x80\x02" + _global("torch.serialization", "load") + b")R.",
        b"\x80\x02\x82\x01.",  # EXT1
    ],
)
def test_dangerous_globals_through_every_opcode(payload):
    with pytest.raises(UnsafePickleError):
        run(payload)


def test_build_on_allowed_types_is_restricted():
    # BUILD on a set, a list, and an OrderedDict with a non-attribute state
    for payload in (
        b"\x80\x02]}b.",
        b"\x80\x02" + _global("builtins", "set") + b")R}b.",
        b"\x80\x02" + _global("collections", "OrderedDict") + b")R]b.",
    ):
        with pytest.raises(PthError):
            run(payload)


def test_setitem_and_append_only_on_real_containers():
    with pytest.raises(FormatError, match="SETITEM"):
        run(b"\x80\x02]K\x01K\x02s.")
    with pytest.raises(FormatError, match="APPEND"):
        run(b"\x80\x02}K\x01a.")


def test_codecs_encode_only_plain_codecs():
    ok = (
        b"\x80\x02"
        + _global("_codecs", "encode")
        + b"X\x02\x00\x00\x00hiX\x06\x00\x00\x00latin1\x86R."
    )
    assert run(ok) == b"hi"
    bad = ok.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00rot_13")
    with pytest.raises(UnsafePickleError):
        run(bad)


@pytest.mark.parametrize(
    "payload,error",
    [
        (b"", CorruptError),
        (b"\x80\x02", CorruptError),  # no STOP
        (b"\x80\x06N.", UnsupportedError),  # protocol 6
        (b"\x80\x02h\x07.", CorruptError),  # memo key never stored
        (b"\x80\x02.", CorruptError),  # STOP on empty stack
        (b"\x80\x02a.", CorruptError),  # stack underflow
        (b"\x80\x02X\xff\xff\xff\x7fab.", CorruptError),  # BINUNICODE length lies
        (b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"x.", CorruptError),  # BINBYTES8
        (b"\x80\x04\x8d" + (2**40).to_bytes(8, "little") + b"x.", CorruptError),  # BINUNICODE8
        (b"\x80\x02\x8b\xff\xff\xff\x7f\x00.", CorruptError),  # LONG4 length lies
        (b"\x80\x02\xff.", CorruptError),  # unknown opcode
        (b"\x80\x05\x97.", UnsupportedError),  # NEXT_BUFFER
        (b"\x80\x02u.", CorruptError),  # SETITEMS without mark
    ],
)
def test_malformed_streams(payload, error):
    with pytest.raises(error):
        run(payload)


def test_deep_nesting_needs_no_recursion():
    depth = 1_000_000
    data = b"\x80\x02" + b"](" * depth + b"e" * depth + b"."
    out = run(data)
    for _ in range(10):
        out = out[0]
    assert isinstance(out, list)


def test_every_error_carries_record_and_offset():
    with pytest.raises(UnsafePickleError) as info:
        run(b"\x80\x02N0" + _global("os", "system") + b".")
    assert info.value.record == "test.pkl" and info.value.offset == 4
    assert "os.system" in str(info.value) and "offset 4" in str(info.value)


def test_floats_and_ints_of_every_encoding():
    for protocol in range(6):
        value = [
            0,
            255,
            256,
            65535,
            65536,
            -1,
            2**31,
            -(2**31) - 1,
            2**100,
            1.5,
            -0.0,
            math.inf,
            True,
            False,
            None,
        ]
        assert run(pickle.dumps(value, protocol=protocol)) == value


def test_opcode_codes_are_unique():
    assert len({op.code for op in OPCODES}) == len(OPCODES)
    assert BY_NAME["BINPERSID"].code == ord("Q")


_memo_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["q", "r", "p", "\x94"]), st.integers(0, 300)),
        st.tuples(st.just("get"), st.sampled_from(["h", "j", "g"]), st.integers(0, 300)),
    ),
    max_size=40,
)


def _memo_pickle(ops: list[tuple[str, str, int]]) -> bytes:
    out = bytearray(b"\x80\x04(")
    for n, (kind, code, idx) in enumerate(ops):
        if kind == "put":
            out += b"K" + bytes([n % 256])  # a value, then memoize it
            if code == "q":
                out += b"q" + bytes([idx % 256])
            elif code == "r":
                out += b"r" + idx.to_bytes(4, "little")
            elif code == "p":
                out += b"p" + str(idx).encode() + b"\n"
            else:
                out += b"\x94"
        elif code == "h":
            out += b"h" + bytes([idx % 256])
        elif code == "j":
            out += b"j" + idx.to_bytes(4, "little")
        else:
            out += b"g" + str(idx).encode() + b"\n"
    return bytes(out + b"l.")


@settings(max_examples=300, deadline=None)
@given(_memo_ops)
def test_memo_puts_and_gets_in_any_order_match_pickle(ops):
    data = _memo_pickle(ops)
    try:
        expected = pickle.loads(data)
    except (KeyError, pickle.UnpicklingError):
        with pytest.raises(CorruptError, match="memo key"):
            run(data)
        return
    assert run(data) == expected


def test_huge_or_negative_memo_indices_size_nothing():
    top = (2**32 - 1).to_bytes(4, "little")
    assert run(b"\x80\x02K\x07r" + top + b"0j" + top + b".") == 7
    with pytest.raises(CorruptError, match="negative memo key"):
        run(b"\x80\x02K\x07p-5\n.")
    with pytest.raises(CorruptError, match="memo key -1 was never stored"):
        run(b"\x80\x02K\x07q\x00g-1\n.")


def test_tuple_and_float_keys_of_real_files_pass_the_key_guard():
    # many distinct tuple keys, one tuple key repeated in many dicts, floats, big ints
    value = {
        "pairs": {(i, i + 1): i for i in range(5000)},
        "repeated": [{(1, 2): i} for i in range(5000)],
        "floats": {i / 7: i for i in range(2000)},
        "big": {2**64 + i: i for i in range(2000)},
        "nested": {((1, (2, (3,))), frozenset({4, (5, 6)})): 0},
    }
    assert run(pickle.dumps(value, protocol=2)) == value


@pytest.mark.parametrize("depth,ok", [(100, True), (101, False)])
def test_key_nesting_is_bounded(depth, ok):
    data = b"\x80\x02}" + b"K\x01" + b"\x85" * depth + b"Ns."
    if ok:
        assert len(run(data)) == 1
    else:
        with pytest.raises(LimitError, match="nested more than 100"):
            run(data)


def test_shared_subtuples_count_with_repetition_and_long_chains_as_chains():
    # ((t, t), ...) doubling 20 times: 2**21 items to hash, from 100 bytes
    data = b"\x80\x02}K\x01\x85" + b"q\x000h\x00h\x00\x86" * 20 + b"Ns."
    with pytest.raises(LimitError, match="expands to more than"):
        run(data)
    # a chain behind shortcuts, (p149, ..., p1, p0) where p[k] = (p[k-1],): each p[k] is
    # first met one level down, its p[k-1] already measured; the chain is 150 deep all the same
    chain = b"K\x01\x85q\x00" + b"".join(b"\x85q" + bytes([k]) for k in range(1, 150))
    shortcuts = b"0(" + b"".join(b"h" + bytes([k]) for k in reversed(range(150))) + b"t"
    with pytest.raises(LimitError, match="nested more than"):
        run(b"\x80\x02}" + chain + shortcuts + b"Ns.")


def test_huge_ints_in_shapes_are_refused_before_any_arithmetic():
    """A 1 MB int repeated through the memo in a size tuple: its product would take minutes."""
    from pthfmt.torch.handlers import _PendingArray

    big = 1 << 8_000_000
    h = handlers()
    with pytest.raises(FormatError, match=r"at most 64 ints in \[0, 2\*\*63\)"):
        h.np_frombuffer(b"", np.dtype("u1"), (big,) * 30)
    with pytest.raises(FormatError, match=r"at most 64 ints"):
        _PendingArray(h).build((1, (big,) * 30, np.dtype("u1"), False, b""))
    with pytest.raises(FormatError, match=r"at most 64 ints"):
        h.np_frombuffer(b"", np.dtype("u1"), (1,) * 65)


def _outcome(data: bytes) -> object:
    try:
        return ("value", run(data))
    except PthError as exc:
        return ("error", type(exc).__name__, str(exc), exc.offset, exc.key_path)


def _one_int2(data: bytes, pos: int, end: int, stack: list) -> int:
    """The loop's own ``BININT2``, one opcode at a time (the oracle of the run path)."""
    stack.append(data[pos + 1] | data[pos + 2] << 8)
    return pos + 3


@pytest.mark.parametrize("count", [1, 3, 4, 5, 12, 1000, 1001])
def test_runs_of_binint2_read_as_pickle_does(count: int) -> None:
    values = [*range(300, 300 + count), 7, 70000, 65535]
    data = pickle.dumps(values, protocol=2)
    assert run(data) == values
    assert run(pickle.dumps(tuple(values[:5]), protocol=2)) == tuple(values[:5])


def test_a_run_of_binint2_cut_or_broken_anywhere_agrees_with_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut at every byte, or with one byte changed, a run of ``BININT2`` gives what running
    its opcodes one at a time gives: the same list, or the same error at the same offset."""
    import pthfmt.pickle.machine as machine

    data = pickle.dumps([*range(250, 262), "x", (300, 301, 302, 303)], protocol=2)
    cases = [data[:k] for k in range(len(data))]
    for k in range(len(data)):
        for value in (0x4D, 0x4B, 0x65, 0x00):
            cases.append(data[:k] + bytes([value]) + data[k + 1 :])
    fast = [_outcome(case) for case in cases]
    monkeypatch.setattr(machine, "_push_ints2", _one_int2)
    slow = [_outcome(case) for case in cases]
    assert fast == slow
