"""torch's per-tensor fast path (``pthfmt/torch/tensor_template.py``) against the loop.

The loop with the fast path off (``Unpickler.fast_paths = False``) is the oracle: on every
file, valid or broken, both must give the same tree (same values, same sharing) or the same
error (same class, message, record, offset and key path).
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt.errors import PthError, UnsafePickleError
from pthfmt.model.device import location_mapper
from pthfmt.model.storage import StorageTable
from pthfmt.pickle.machine import Unpickler
from pthfmt.source import Source
from pthfmt.strategies import state_dicts
from pthfmt.torch import tensor_template
from pthfmt.torch.handlers import TorchHandlers
from tests.support.fastpath import count_fast_path, count_runs

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def canonical(obj: Any) -> Any:
    """The tree as comparable values: arrays by dtype, shape, strides, bytes and which
    objects and storages are shared (numbered in order of first appearance)."""
    ids: dict[int, int] = {}
    roots: dict[int, int] = {}
    alive: list[Any] = []  # (an id is unique only while its object lives)

    def ident(x: Any, table: dict[int, int]) -> int:
        alive.append(x)
        return table.setdefault(id(x), len(table))

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            root = x
            while isinstance(root.base, np.ndarray):
                root = root.base
            base = root.base if root.base is not None else root
            return (
                "array",
                ident(x, ids),
                ident(base, roots),
                x.dtype.str,
                x.shape,
                x.strides,
                x.tobytes(),
                x.flags.writeable,
            )
        if isinstance(x, pthfmt.TensorRef):
            return (
                "ref",
                ident(x, ids),
                ident(x.storage, roots),
                x.storage.key,
                x.storage.nbytes,
                x.storage.tag,
                str(x.storage.location),
                str(x.dtype),
                x.shape,
                x.stride,
                x.storage_offset,
                x.requires_grad,
                x.is_parameter,
                walk(x.numpy()),
            )
        if isinstance(x, dict):
            items = tuple((walk(k), walk(v)) for k, v in x.items())  # (a key: any object)
            return (type(x).__name__, ident(x, ids), items, walk(vars(x)) if vars_of(x) else None)
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, tuple(walk(v) for v in x))
        return ("value", type(x).__name__, repr(x))

    def vars_of(x: Any) -> bool:
        return bool(getattr(x, "__dict__", None))

    return walk(obj)


def outcome(data: bytes, fast: bool, lazy: bool = False) -> Any:
    def load() -> Any:
        try:
            if lazy:
                with pthfmt.open(io.BytesIO(data)) as ck:
                    return ("tree", canonical(ck.obj))
            return ("tree", canonical(pthfmt.load(io.BytesIO(data))))
        except PthError as exc:
            return ("error", type(exc).__name__, str(exc), exc.record, exc.offset, exc.key_path)

    return with_fast_paths(fast, load)


def assert_same(data: bytes) -> Any:
    for lazy in (False, True):
        fast = outcome(data, True, lazy)
        assert fast == outcome(data, False, lazy)
    return fast


@pytest.fixture
def hits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[taken, declined] counts of the fast path."""
    return count_fast_path(monkeypatch)


def with_fast_paths(fast: bool, load: Callable[[], Any]) -> Any:
    """``load()`` with the fast path on or off (the loop: the oracle)."""
    Unpickler.fast_paths = fast
    try:
        return load()
    finally:
        Unpickler.fast_paths = True


def counted_reads(monkeypatch: pytest.MonkeyPatch, method: str) -> list[int]:
    """The sizes ``Source.<method>(offset, nbytes)`` is asked for from now on."""
    sizes: list[int] = []
    real = getattr(Source, method)

    def counted(self: Source, offset: int, nbytes: int) -> Any:
        sizes.append(nbytes)
        return real(self, offset, nbytes)

    monkeypatch.setattr(Source, method, counted)
    return sizes


def saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    pthfmt.save(obj, buf)
    return buf.getvalue()


def mixed() -> OrderedDict[str, Any]:
    """Tensors of the shapes the pattern covers and some it does not, shared storages, a
    Parameter that requires grad, sizes that need BININT2 and BININT."""
    base = np.arange(24, dtype=np.float32)
    return OrderedDict(
        [
            ("scalar", np.array(3, dtype=np.int64)),
            ("vector", np.arange(5, dtype=np.float32)),
            ("matrix", np.ones((3, 4), dtype=np.float16)),
            ("cube", np.zeros((2, 3, 4), dtype=np.int32)),
            ("four", np.zeros((1, 2, 1, 2), dtype=np.uint8)),
            ("view", base[2:20:3]),
            ("again", base[1:]),
            ("wide", np.zeros(300, dtype=np.int8)),
            ("wider", np.zeros(70000, dtype=np.int8)),
            ("param", pthfmt.Tensor(np.ones(4, np.float64), parameter=True, requires_grad=True)),
            ("empty", np.zeros((0, 3), dtype=np.float32)),
            ("vector", np.arange(2, dtype=np.float32)),
        ]
    )


def test_the_fast_path_runs_every_tensor_but_the_first(hits: list[int]) -> None:
    sd = OrderedDict((f"layer.{i}.w", np.full((i % 3 + 1,), i, np.float32)) for i in range(300))
    data = saved(sd)
    out = pthfmt.load(io.BytesIO(data))
    assert hits == [299, 0]  # every tensor but the first (its globals are not memoized yet)
    assert all((out[k] == v).all() and out[k].shape == v.shape for k, v in sd.items())
    assert assert_same(data)[0] == "tree"


@pytest.mark.parametrize("where", ["path", "bytes"])
def test_the_fast_path_copies_small_storages_itself(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager loads of a local file: the fast path copies each small storage out of the file
    itself, into arrays of their own, as the loop does (through ``Source.copy``)."""
    data = saved({"model": mixed(), "again": mixed()})
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    copies = counted_reads(monkeypatch, "copy")

    def load() -> Any:
        return canonical(pthfmt.load(path if where == "path" else io.BytesIO(data)))

    fast = with_fast_paths(True, load)
    # the first mixed()'s tensors each name a storage class first (a GLOBAL, not a memo
    # get): the loop's; the second's 10 storages are the fast path's
    assert len(copies) == 10
    copies.clear()
    assert fast == with_fast_paths(False, load)
    assert len(copies) == 20
    arrays = [v for v in pthfmt.load(path)["model"].values()]
    assert all(a.flags.writeable for a in arrays)


def _root(arr: np.ndarray) -> Any:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr.base


def test_the_fast_path_maps_storages_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mmap=True`` loads of a local file: the fast path makes each storage's view of the
    mapping itself, each storage the root of its arrays (a memoryview of its own bytes), as
    the loop does (through ``Source.array``)."""
    data = saved({"model": mixed(), "again": mixed()})
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    views = counted_reads(monkeypatch, "array")
    fast = with_fast_paths(True, lambda: pthfmt.load(path, mmap=True))
    assert len(views) == 10  # (the first mixed()'s storages: the loop's, as above)
    views.clear()
    slow = with_fast_paths(False, lambda: pthfmt.load(path, mmap=True))
    assert len(views) == 20
    assert canonical(fast) == canonical(slow)
    for tree in (fast, slow):
        arrays = {k: v for k, v in tree["again"].items()}
        roots = {k: _root(a) for k, a in arrays.items()}
        assert all(type(r) is memoryview for r in roots.values())
        assert roots["view"] is roots["again"]  # one storage, one root
        # each root holds exactly its storage's bytes (``view`` and ``again``: the 23 float32
        # the writer keeps for the two)
        sizes = {k: 92 if k in ("view", "again") else a.nbytes for k, a in arrays.items()}
        assert {k: r.nbytes for k, r in roots.items()} == sizes
        assert not any(a.flags.writeable for a in arrays.values())


def test_mixed_shapes_agree_with_the_loop(hits: list[int]) -> None:
    data = saved({"model": mixed(), "epoch": 3, "again": mixed()})
    assert assert_same(data)[0] == "tree"
    assert hits[0] > 10 and hits[1] > 0  # taken for most, declined for 4-d (the loop's)


@SETTINGS
@given(state_dicts(max_tensors=8))
def test_state_dicts_agree_with_the_loop(sd: OrderedDict[str, Any]) -> None:
    assert assert_same(saved({"a": sd, "b": sd, "c": list(sd.values())}))[0] == "tree"


def _pickle_region(data: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return name, z.read(name)


def _with_pickle(data: bytes, name: str, pkl: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pkl if info.filename == name else src.read(info))
    return buf.getvalue()


#: 40 tensors first, so that the mixed ones come after memo index 256 (LONG_BINGET/PUT)
BASE = saved({"fill": [np.ones(2, np.float32) for _ in range(40)], "model": mixed(), "step": 7})
NAME, PICKLE = _pickle_region(BASE)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, len(PICKLE) - 1), st.integers(0, 255), st.sampled_from("sid")),
        min_size=1,
        max_size=3,
    )
)
def test_broken_pickles_agree_with_the_loop(edits: list[tuple[int, int, str]]) -> None:
    """Bytes set, inserted or deleted anywhere: the near misses of the pattern (a memo index
    one off, an int opcode changed, a tuple opcode of the wrong arity, a length byte that
    disagrees with the digits) fall back to the loop, and give its tree or its error."""
    pkl = bytearray(PICKLE)
    for pos, value, how in edits:
        pos = min(pos, len(pkl) - 1)
        if how == "s":
            pkl[pos] = value
        elif how == "i":
            pkl[pos:pos] = bytes([value])
        else:
            del pkl[pos]
    assert_same(_with_pickle(BASE, NAME, bytes(pkl)))


@pytest.mark.parametrize(
    "old, new",
    [
        (b"X\x01\x00\x00\x001", b"X\x02\x00\x00\x001"),  # length byte disagrees with digits
        (b"\x89h\x0b)R", b"\x89h\x03)R"),  # backward hooks: not the OrderedDict global
        (b"K\x04\x85", b"J\xfb\xff\xff\xff\x85"),  # a negative size
    ],
)
def test_targeted_near_misses_agree_with_the_loop(old: bytes, new: bytes) -> None:
    assert old in PICKLE
    assert_same(_with_pickle(BASE, NAME, PICKLE.replace(old, new, 1)))


@pytest.mark.parametrize("order", ["reversed", "shuffled", "upper"])
def test_storage_records_in_any_order_or_case_load_the_same(order: str) -> None:
    """The record lookup tries the record after the last one found first (torch's order);
    any other order, or names found only by torch's case-insensitive lookup, read alike."""
    data = saved({f"w{i}": np.full(i % 4 + 1, i, np.float32) for i in range(40)})
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    if order == "reversed":
        infos = infos[:1] + infos[1:][::-1]
    elif order == "shuffled":
        infos = infos[:1] + sorted(infos[1:], key=lambda i: hash(i.filename) % 7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in infos:
            name = info.filename
            if order == "upper" and "/data/" in name:
                name = name.replace("/data/", "/DATA/")
            dst.writestr(name, src.read(info))
    out = pthfmt.load(io.BytesIO(buf.getvalue()))
    assert canonical(out) == canonical(pthfmt.load(io.BytesIO(data)))


def test_handlers_that_read_persistent_ids_their_own_way_get_no_fast_path() -> None:
    """The fast path declares storages as ``TorchHandlers.persistent_load`` does: handlers
    that override it (the tar format's) must see every id, as the loop shows them."""

    class Picky(TorchHandlers):
        def persistent_load(self, pid: Any) -> Any:
            if pid[2] != "0":
                raise UnsafePickleError(f"storage {pid[2]} refused")
            return super().persistent_load(pid)

    table = StorageTable(location_mapper(None), lambda info: None)
    handlers = Picky(table, eager=False, mmap=False)
    pkl = _pickle_region(saved({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}))[1]
    with pytest.raises(UnsafePickleError, match="storage 1 refused"):
        Unpickler(pkl, handlers, record="data.pkl").load()


# -- run continuation: the items after a tensor, run without returning to the loop ------------

#: Six small tensors in a dict (items: key, put, memo get of the rebuild global, tensor), the
#: same in a list (no keys), then dicts whose keys are read back from the memo (optimizer
#: state).
RUN = saved(
    {
        "d": OrderedDict((f"w{i}", np.full(i % 3 + 1, i, np.float32)) for i in range(6)),
        "l": [np.full(i % 2 + 1, i, np.int16) for i in range(6)],
        "o": {
            i: {"step": np.full((), i, np.float32), "avg": np.full(2, i, np.float32)}
            for i in range(3)
        },
    }
)
RUN_NAME, RUN_PICKLE = _pickle_region(RUN)


def _item(key: bytes) -> int:
    """Where the dict item of ``key`` starts in ``RUN_PICKLE``."""
    at = RUN_PICKLE.index(b"X" + len(key).to_bytes(4, "little") + key)
    return at


def test_a_run_takes_every_following_item_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_runs(monkeypatch)
    sd = OrderedDict((f"k{i}", np.full(i % 3 + 1, i, np.float32)) for i in range(50))
    obj = {"a": sd, "b": [v.copy() for v in sd.values()]}
    out = pthfmt.load(io.BytesIO(saved(obj)))
    assert len(calls) == 2  # the second dict item, and the list's first item
    assert canonical(out) == canonical(obj)


#: Every byte from the end of the first dict item's tensor to the end of the fourth's, the
#: list's first three items and the last inner dicts of the optimizer state: set to what
#: the continuation tests for (an opcode, a memo index one off, a length byte, an invalid
#: UTF-8 byte), or deleted.
_SPAN = (
    list(range(_item(b"w1") - 4, _item(b"w4")))
    + list(range(RUN_PICKLE.index(b"]"), RUN_PICKLE.index(b"]") + 160))
    + list(range(len(RUN_PICKLE) - 240, len(RUN_PICKLE)))
)


def _broken_at(data: bytes, name: str, pickle: bytes, pos: int) -> None:
    """The byte at ``pos`` of the record ``name`` (``pickle``) of ``data`` changed (flipped,
    incremented, made an opcode a run reads, dropped): the same outcome as the loop's."""
    byte = pickle[pos]
    for value in {byte ^ 1, byte + 1 & 255, 0x58, 0x68, 0x6A, 0x71, 0x72, 0xFF, None}:
        if value == byte:
            continue
        pkl = bytearray(pickle)
        if value is None:
            del pkl[pos]
        else:
            pkl[pos] = value
        assert_same(_with_pickle(data, name, bytes(pkl)))


@pytest.mark.parametrize("pos", _SPAN)
def test_a_run_broken_at_every_position_agrees_with_the_loop(pos: int) -> None:
    _broken_at(RUN, RUN_NAME, RUN_PICKLE, pos)


@pytest.mark.parametrize(
    "old, new",
    [
        # a key that is a lone surrogate (the loop decodes it with surrogatepass)
        (b"X\x02\x00\x00\x00w2", b"X\x03\x00\x00\x00\xed\xa0\x80"),
        # a key that is not UTF-8: the loop's error, at the loop's offset
        (b"X\x02\x00\x00\x00w2", b"X\x02\x00\x00\x00\xc3w"),
        # a key whose length runs past the end of the pickle
        (b"X\x02\x00\x00\x00w5", b"X\xff\xff\x00\x00w5"),
    ],
)
def test_odd_keys_in_a_run_agree_with_the_loop(old: bytes, new: bytes) -> None:
    assert old in RUN_PICKLE
    assert_same(_with_pickle(RUN, RUN_NAME, RUN_PICKLE.replace(old, new, 1)))


def test_a_tensor_reading_its_own_key_back_from_the_memo_agrees_with_the_loop() -> None:
    """The key ``storage`` put just before the tensor, and the tensor's persistent id reading
    its tag back from that memo slot: valid for the loop, so for the continuation."""
    at = _item(b"w2")
    put = RUN_PICKLE[at + 7 : at + 9]  # BINPUT n of the key
    assert put[:1] == b"q"
    pkl = bytearray(RUN_PICKLE)
    tag_get = RUN_PICKLE.index(b"((h", at) + 2
    pkl[tag_get : tag_get + 2] = b"h" + put[1:]
    pkl[at : at + 7] = b"X\x07\x00\x00\x00st"  # (the key grows by five bytes below)
    pkl[at + 7 : at + 7] = b"orage"
    fast = assert_same(_with_pickle(RUN, RUN_NAME, bytes(pkl)))
    assert fast[0] == "tree"


def test_keys_read_back_from_the_memo_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optimizer state: every inner dict's keys (``step``, ``exp_avg``) are memo gets after
    the first dict; tuple keys likewise; one run call per dict."""
    calls = count_runs(monkeypatch)
    key = (1, 2)
    state = {
        i: {"step": np.full((), i, np.float32), "exp_avg": np.full(3, i, np.float32)}
        for i in range(20)
    }
    obj = {"state": state, "t": [{key: np.ones(2, np.int8), "x": np.ones(1)} for _ in range(5)]}
    data = saved(obj)
    assert canonical(pthfmt.load(io.BytesIO(data))) == canonical(obj)
    assert len(calls) == 20 + 5 + 1  # each dict's second item on (and the very first dict's)
    assert assert_same(data)[0] == "tree"


def _renumbered(pkl: bytes, replace: dict[int, bytes], dropped: int) -> bytes:
    """``pkl`` with the opcodes at the offsets in ``replace`` replaced by those bytes, and
    every one-byte memo index above ``dropped`` lowered by one (the put of ``dropped`` is
    gone)."""
    import pickletools

    out = bytearray()
    ops = list(pickletools.genops(pkl))
    for k, (op, arg, at) in enumerate(ops):
        stop = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
        if at in replace:
            out += replace[at]
        elif op.name in ("BINPUT", "BINGET") and arg > dropped:
            out += bytes([pkl[at], arg - 1])
        else:
            out += pkl[at:stop]
    return bytes(out)


def test_a_none_key_read_back_from_the_memo_is_pushed_as_the_loop_does() -> None:
    """``NONE PUT`` as one item's key, ``GET`` of it as the next item's: the run pushes that
    ``None`` as the key (not as 'no key'), as the loop does."""
    import pickletools

    ops = {at: (op.name, arg) for op, arg, at in pickletools.genops(RUN_PICKLE)}
    w1, w2 = _item(b"w1"), _item(b"w2")
    w1_put = ops[w1 + 7][1]
    w2_put = ops[w2 + 7][1]
    pkl = _renumbered(
        RUN_PICKLE,
        {w1: b"N", w2: b"h" + bytes([w1_put]), w2 + 7: b""},
        dropped=w2_put,
    )
    fast = assert_same(_with_pickle(RUN, RUN_NAME, pkl))
    assert fast[0] == "tree"
    d = pthfmt.load(io.BytesIO(_with_pickle(RUN, RUN_NAME, pkl)))["d"]
    assert list(d)[:2] == ["w0", None] and len(d) == 5  # w1 and w2 both under None
    assert (d[None] == np.full(3, 2, np.float32)).all()


def _overwritten(slot: int, value: bytes) -> bytes:
    """``RUN`` with ``value`` put over the memo slot that the dict's tensors read their tag
    (0), storage class (1), location (2) or hooks (3) from, between the third and fourth
    items (after the fast path has read and checked that slot for three tensors)."""
    import pickletools

    w1 = _item(b"w1")
    gets = [
        (at, arg)
        for op, arg, at in pickletools.genops(RUN_PICKLE)
        if at > w1 and op.name == "BINGET"
    ]
    # the item's own get of the rebuild global, then tag, class, (key put), location...
    tag, cls = gets[1][1], gets[2][1]
    location = gets[3][1]
    hooks = next(arg for at, arg in gets if RUN_PICKLE[at + 2 : at + 4] == b")R")
    idx = (tag, cls, location, hooks)[slot]
    at = _item(b"w3")
    pkl = RUN_PICKLE[:at] + value + b"q" + bytes([idx]) + b"0" + RUN_PICKLE[at:]
    return _with_pickle(RUN, RUN_NAME, pkl)


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


@pytest.mark.parametrize(
    "slot, value, expect",
    [
        (0, _unicode("storage"), "tree"),  # the same value, another object: checked again
        (0, _unicode("storagE"), "error"),
        (1, b"ctorch\nIntStorage\n", "int32"),  # another storage class of the same size
        (1, b"ctorch\nLongStorage\n", "error"),
        (2, _unicode("cpu"), "tree"),
        (2, _unicode("meta"), "tree"),
        (3, b"ccollections\nOrderedDict\n", "tree"),  # the same global, resolved again
        (3, b"ctorch._utils\n_rebuild_tensor_v2\n", "error"),
    ],
)
def test_a_put_over_a_checked_memo_slot_is_seen(slot: int, value: bytes, expect: str) -> None:
    """The fast path keeps what it checked in the memo slots every tensor reads (tag, storage
    class, location, hooks): a put over one of them, of anything, is what the next tensor
    reads, as in the loop."""
    data = _overwritten(slot, value)
    fast = assert_same(data)
    if expect == "error":
        assert fast[0] == "error"
    else:
        assert fast[0] == "tree"
        d = pthfmt.load(io.BytesIO(data))["d"]
        dtype = np.int32 if expect == "int32" else np.float32
        assert [d[f"w{i}"].dtype for i in range(6)] == [np.float32] * 3 + [dtype] * 3


def test_a_run_goes_on_when_the_rebuild_global_is_a_long_memo_get(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rebuild global memoized after index 255: its gets are ``LONG_BINGET``\\ s."""
    from pthfmt.torch import tensor_template

    calls: list[int] = []
    run = tensor_template.TensorTemplate.run

    def counted(self: Any, *args: Any) -> Any:
        calls.append(args[1])
        return run(self, *args)

    monkeypatch.setattr(tensor_template.TensorTemplate, "run", counted)
    obj = {
        "names": [f"n{i}" for i in range(300)],
        "d": OrderedDict((f"k{i}", np.full(i % 3 + 1, i, np.float32)) for i in range(20)),
    }
    data = saved(obj)
    assert canonical(pthfmt.load(io.BytesIO(data))) == canonical(obj)
    assert len(calls) == 1
    pkl = _pickle_region(data)[1]
    assert pkl[calls[0] - 5] == 0x6A  # LONG_BINGET
    assert assert_same(data)[0] == "tree"


# -- unmade memo entries: a tensor's persistent id, hooks and argument tuple, read back ------
MANY = saved({f"w{i}": np.full((i % 3 + 1, 2), i, np.float32) for i in range(80)})
MANY_NAME, MANY_PICKLE = _pickle_region(MANY)


def _tensor_slots(pkl: bytes, which: int) -> int:
    """The first memo index of the ``which``-th tensor whose entries the loop makes as
    ``key, pid, size, stride, hooks, args, tensor`` with seven ``LONG_BINPUT``s (the
    fast path leaves pid, hooks and args unmade)."""
    import pickletools

    ops = list(pickletools.genops(pkl))
    firsts = [  # (the put of a storage key: a string of digits)
        arg
        for (before, key, _), (op, arg, _) in pairwise(ops)
        if op.name == "LONG_BINPUT" and before.name == "BINUNICODE" and key.isdigit()
    ]
    return firsts[which]


def _reading(pkl: bytes, body: bytes) -> bytes:
    """``pkl`` with ``SETITEMS`` of ``body``'s items into the top-level dict before STOP."""
    assert pkl.endswith(b".")
    return _with_pickle(MANY, MANY_NAME, pkl[:-1] + b"(" + body + b"u.")


def _get(idx: int) -> bytes:
    return b"j" + idx.to_bytes(4, "little")


def _key(text: str) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


@pytest.mark.parametrize(
    "roles",
    [(1,), (4,), (5,), (4, 5), (5, 4), (1, 5, 4, 5), (5, 5)],
    ids=lambda r: "-".join(map(str, r)),
)
def test_unmade_entries_read_back_are_what_the_loop_made(
    roles: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickle reading back a tensor's persistent id (n+1), hooks (n+4) or argument tuple
    (n+5) gets what the loop memoized: equal values, the argument tuple holding the very
    hooks, whichever is read first, and each read of one entry the same object."""
    n = _tensor_slots(MANY_PICKLE, 20)
    body = b"".join(_key(f"r{i}") + _get(n + r) for i, r in enumerate(roles))
    data = _reading(MANY_PICKLE, body)
    assert assert_same(data)[0] == "tree"
    made: list[int] = []
    make = tensor_template._Unmade.make
    monkeypatch.setattr(
        tensor_template._Unmade, "make", lambda self, idx: made.append(idx) or make(self, idx)
    )
    out = pthfmt.load(io.BytesIO(data))
    assert made == list(dict.fromkeys(n + r for r in roles))  # (each entry made once)
    read = [out[f"r{i}"] for i in range(len(roles))]
    for r, value in zip(roles, read):
        if r == 1:
            assert value[0] == "storage" and value[2].isdigit() and type(value[4]) is int
        elif r == 4:
            assert type(value) is OrderedDict and not value
        else:
            assert len(value) == 6 and type(value[5]) is OrderedDict
    if 4 in roles and 5 in roles:
        assert read[roles.index(5)][5] is read[roles.index(4)]


def test_unmade_entries_of_many_tensors_read_back_in_any_order() -> None:
    firsts = [_tensor_slots(MANY_PICKLE, k) for k in (0, 7, 30, 31, 45)]
    body = b"".join(_key(f"r{n}.{r}") + _get(n + r) for n in reversed(firsts) for r in (5, 1, 4))
    assert assert_same(_reading(MANY_PICKLE, body))[0] == "tree"


def test_a_put_over_an_unmade_entry_is_what_a_later_read_gets() -> None:
    """A value put over a tensor's hooks entry before anything read it: reading that entry
    gets the value, and the argument tuple still holds hooks of its own (the loop's)."""
    n = _tensor_slots(MANY_PICKLE, 20)
    over = _key("over") + b"r" + (n + 4).to_bytes(4, "little") + b"0"  # (put, then POP)
    body = _key("a") + _get(n + 4) + _key("b") + _get(n + 5)
    pkl = MANY_PICKLE[:-1] + over + b"(" + body + b"u."
    data = _with_pickle(MANY, MANY_NAME, pkl)
    assert assert_same(data)[0] == "tree"
    out = pthfmt.load(io.BytesIO(data))
    assert out["a"] == "over" and type(out["b"][5]) is OrderedDict


@pytest.mark.parametrize("role", [1, 4, 5])
def test_an_unmade_entry_read_back_as_a_dict_key_is_made_first(role: int) -> None:
    """An item of a run keyed by a memo get of an earlier tensor's unmade entry (instead of
    a new string): the run stops there and the loop's get makes it (a pid or argument tuple
    as the key, an OrderedDict refused as the loop refuses it)."""
    import pickletools

    n = _tensor_slots(MANY_PICKLE, 5)
    key = _key("w75")  # (a later item of the same run)
    at = MANY_PICKLE.index(key)
    dropped = int.from_bytes(MANY_PICKLE[at + len(key) + 1 : at + len(key) + 5], "little")
    out = bytearray()  # the key a memo get, its put gone, later memo indices one lower
    ops = list(pickletools.genops(MANY_PICKLE))
    for k, (op, arg, pos) in enumerate(ops):
        stop = ops[k + 1][2] if k + 1 < len(ops) else len(MANY_PICKLE)
        if pos == at:
            out += _get(n + role)
        elif pos == at + len(key):
            pass
        elif op.name in ("LONG_BINPUT", "LONG_BINGET") and arg > dropped:
            out += MANY_PICKLE[pos : pos + 1] + (arg - 1).to_bytes(4, "little")
        else:
            out += MANY_PICKLE[pos:stop]
    pkl = bytes(out)
    fast = assert_same(_with_pickle(MANY, MANY_NAME, pkl))
    assert fast[0] == ("tree" if role == 1 else "error")  # (unhashable: refused)


def _memo_size(pkl: bytes) -> int:
    import pickletools

    return 1 + max(arg for op, arg, _ in pickletools.genops(pkl) if op.name.endswith("PUT"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, _memo_size(MANY_PICKLE) - 1), max_size=12))  # (0: the dict)
def test_memo_gets_of_any_entries_agree_with_the_loop(indices: list[int]) -> None:
    """Items whose values are memo gets of any entries (made, unmade, read twice) at the end
    of a many-tensor pickle: the same tree as the loop's."""
    body = b"".join(_key(f"r{i}") + _get(idx) for i, idx in enumerate(indices))
    assert assert_same(_reading(MANY_PICKLE, body))[0] == "tree"


_LONG_SPAN = range(MANY_PICKLE.index(_key("w60")) - 4, MANY_PICKLE.index(_key("w62")) + 12)


@pytest.mark.parametrize("pos", _LONG_SPAN)
def test_a_long_index_run_broken_at_every_position_agrees_with_the_loop(pos: int) -> None:
    """As above, over items whose puts and gets take 4-byte memo indices (the run reads a
    new key's LONG_BINPUT and the rebuild get at once)."""
    _broken_at(MANY, MANY_NAME, MANY_PICKLE, pos)


def test_a_key_put_over_an_earlier_entry_in_a_long_index_run_agrees_with_the_loop() -> None:
    """A run's new key put to an earlier memo index (over another key) instead of the next:
    the run stops there; a memo get of that entry reads the new key, and one of the next
    index finds nothing stored there, as in the loop."""
    first = MANY_PICKLE.index(_key("w60")) + len(_key("w60"))
    second = MANY_PICKLE.index(_key("w61")) + len(_key("w61"))
    assert MANY_PICKLE[first] == MANY_PICKLE[second] == 0x72
    earlier = int.from_bytes(MANY_PICKLE[first + 1 : first + 5], "little")
    pkl = bytearray(MANY_PICKLE)
    pkl[second + 1 : second + 5] = earlier.to_bytes(4, "little")
    data = _with_pickle(MANY, MANY_NAME, bytes(pkl[:-1] + b"(" + _key("r") + _get(earlier) + b"u."))
    assert assert_same(data)[0] == "tree"
    assert pthfmt.load(io.BytesIO(data))["r"] == "w61"
    # the entries after it: the loop stored the next tensor's from one index later
    data = _with_pickle(
        MANY, MANY_NAME, bytes(pkl[:-1] + b"(" + _key("r") + _get(earlier + 8) + b"u.")
    )
    assert assert_same(data)[0] == "error"


def test_tensors_past_the_patterns_a_template_makes_go_through_the_loop(
    monkeypatch: pytest.MonkeyPatch, hits: list[int]
) -> None:
    """A run pattern per storage class and location (their memo gets matched as they are);
    past :data:`_MAX_PATTERNS` of them, the loop runs the tensors of the others."""
    sd = {f"w{i}": np.full(2, i, (np.float32, np.int64, np.float16)[i % 3]) for i in range(60)}
    data = saved(sd)
    monkeypatch.setattr(tensor_template, "_MAX_PATTERNS", 2)
    assert assert_same(data)[0] == "tree"
    hits[:] = [0, 0]
    out = pthfmt.load(io.BytesIO(data))
    assert all((out[k] == v).all() and out[k].dtype == v.dtype for k, v in sd.items())
    assert hits[0] > 20 and hits[1] > 15  # (float16's every third tensor: declined)


def test_the_templates_of_one_pickle_share_their_compiled_patterns() -> None:
    """A file may name the rebuild global again and again (a template each): the patterns
    they compile (~0.4 ms each) are one bounded table per pickle, not one per template."""
    handlers = TorchHandlers(
        StorageTable(location_mapper(None), lambda info: None), eager=False, mmap=False
    )
    first, second = (handlers.resolve("torch._utils", "_rebuild_tensor_v2") for _ in "ab")
    assert first is not second and first.fast is not None and second.fast is not None
    templates = [g.fast.__self__ for g in (first, second)]  # type: ignore[attr-defined]
    assert templates[0] is not templates[1]
    assert templates[0].compiled is templates[1].compiled
