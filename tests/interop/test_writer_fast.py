"""The fast save path against the previous writer and against torch.save.

``pthfmt.save`` pickles through CPython's C pickler (``pthfmt.pickle.cpickler``) when its first
pass vouches for the tree, plans the storages of arrays that own their memory alone without
pointers, batches small zip records into few writes and computes the serialization id with
numpy.  :func:`previous_writer` switches all four back to the previous implementation (the
Python pickler, which stays the fallback; the storage planning and serialization id of before,
kept below as oracles; one write per record piece) and the files must be the same bytes.
"""

from __future__ import annotations

import collections
import io
import struct
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]
torch = pytest.importorskip("torch")

import pthfmt  # noqa: E402
from pthfmt import UnserializableError, writer, writer_storages  # noqa: E402
from pthfmt import strategies as pst  # noqa: E402
from pthfmt.formats.zip import writer as zipwriter  # noqa: E402
from pthfmt.pickle import cpickler  # noqa: E402
from pthfmt.pickle.pickler import GlobalRef  # noqa: E402
from tests.support.writer import (  # noqa: E402
    HYPOTHESIS,
    all_numpy_dtypes,
    random_array,
    save_bytes,
    trees,
)
from tests.support.writer_torch import assert_loaded, assert_sharing, torch_load  # noqa: E402

# -- the previous implementation, kept as the oracle -------------------------------------------


def old_assign_storages(views: list[Any]) -> None:
    """writer_storages.assign_storages before the fast path: every array through union-find."""
    shared: dict[tuple[Any, ...], Any] = {}
    groups: dict[tuple[Any, ...], list[Any]] = collections.defaultdict(list)
    for view in views:
        ref, array = view.ref, view.array
        if ref is not None:
            key = (id(ref.storage), ref.dtype, view.tag)
            if key not in shared:
                shared[key] = writer_storages.Storage(
                    view.dtype,
                    ref.storage.nbytes,
                    view.tag,
                    read=writer_storages.buffer_chunks(ref, view.dtype),
                )
            view.storage = shared[key]
            view.offset = ref.storage_offset
            view.shape, view.stride = tuple(list(ref.shape)), tuple(list(ref.stride))
            continue
        size = array.dtype.itemsize
        if array.size == 0 or any(s < 0 or s % size for s in array.strides):
            writer_storages.own_copy(view, array)
            continue
        lo = array.__array_interface__["data"][0]
        hi = lo + size + sum((n - 1) * s for n, s in zip(array.shape, array.strides))
        key = (view.dtype.name, writer_storages.is_big(array.dtype), view.tag, lo % size)
        groups[key].append((lo, hi, view))
    for members in groups.values():
        for component in writer_storages.sharing_components(members):
            writer_storages.share(component)


_M64 = (1 << 64) - 1


def old_std_hash(data: bytes) -> int:
    mul, n = 0xC6A4A7935BD1E995, len(data)
    whole = n & ~7
    h = (0xC70F6907 ^ (n * mul)) & _M64
    for (word,) in struct.iter_unpack("<Q", data[:whole]):
        w = (word * mul) & _M64
        h = ((h ^ (((w ^ (w >> 47)) * mul) & _M64)) * mul) & _M64
    if n & 7:
        h = ((h ^ int.from_bytes(data[whole:], "little")) * mul) & _M64
    h ^= h >> 47
    h = (h * mul) & _M64
    return h ^ (h >> 47)


def old_set_order(names: list[str]) -> list[str]:
    """libstdc++'s unordered_set, node by node (the previous unordered_set_order)."""
    hashes = {name: old_std_hash(name.encode("utf-8")) for name in names}
    head: list[str | None] = [None]
    after: dict[str, str | None] = {}
    before: dict[int, str | None] = {}
    buckets, grow = 1, 0

    def walk(node: str | None) -> Iterator[str]:
        while node is not None:
            yield node
            node = after[node]

    def link(node: str, bucket: int) -> None:
        if bucket in before:
            prev = before[bucket]
            if prev is None:
                after[node], head[0] = head[0], node
            else:
                after[node], after[prev] = after[prev], node
            return
        after[node], head[0] = head[0], node
        nxt = after[node]
        if nxt is not None:
            before[hashes[nxt] % buckets] = node
        before[bucket] = None

    for count, name in enumerate(names):
        if count + 1 > (buckets if count else 0):
            old = list(walk(head[0]))
            buckets, grow = zipwriter._BUCKETS[grow], grow + 1
            head[0], after, before = None, {}, {}
            for node in old:
                link(node, hashes[node] % buckets)
        link(name, hashes[name] % buckets)
    return list(walk(head[0]))


def old_serialization_id(names: list[str], crc_hash: int) -> bytes:
    name_hash = 0
    for name in old_set_order(names):
        name_hash = zipwriter.hash_combine(name_hash, old_std_hash(name.encode("utf-8")))
    return f"{name_hash:020d}{crc_hash:020d}".encode("ascii")


@contextmanager
def previous_writer() -> Iterator[None]:
    with (
        mock.patch.object(writer.cpickler, "dump", return_value=None),
        mock.patch.object(writer, "assign_storages", old_assign_storages),
        mock.patch.object(writer, "SMALL", -1),
        mock.patch.object(zipwriter, "SMALL", -1),
        mock.patch.object(zipwriter, "serialization_id", old_serialization_id),
    ):
        yield


def both_ways(obj: Any, **kwargs: Any) -> tuple[bytes, bytes]:
    new = save_bytes(obj, **kwargs)
    with previous_writer():
        old = save_bytes(obj, **kwargs)
    return new, old


@contextmanager
def c_pickles(expected: bool) -> Iterator[None]:
    """Asserts whether the C pickler wrote the final pickle."""
    results: list[Any] = []
    real = cpickler.dump

    def spy(obj: Any, reducer: Any) -> Any:
        results.append(real(obj, reducer))
        return results[-1]

    with mock.patch.object(writer.cpickler, "dump", spy):
        yield
    assert any(r is not None for r in results) == expected, results


#: Scalars that keep a tree on the C pickler (no numpy scalars or dtypes: stand-ins).
C_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(min_size=1, max_size=8)
    | st.complex_numbers(allow_nan=False)
    | st.sampled_from([pthfmt.Device("cpu"), pthfmt.Device("cuda", 1)])
    | st.sets(st.integers(-5, 300), max_size=4)
)


# -- same bytes as the previous writer, and torch reads them ----------------------------------


@HYPOTHESIS
@given(obj=trees(scalars=C_SCALARS))
def test_c_pickled_trees_are_the_previous_bytes(obj: Any) -> None:
    new, old = both_ways(obj)
    assert new == old
    loaded = torch_load(new)
    assert_loaded(obj, loaded)
    assert_sharing(obj, loaded)


@HYPOTHESIS
@given(obj=trees())
def test_every_tree_is_the_previous_bytes(obj: Any) -> None:
    """With numpy scalars, dtypes and ``b""`` too (the Python pickler writes those)."""
    assert save_bytes(obj) == both_ways(obj)[1]


@HYPOTHESIS
@given(sd=pst.state_dicts(max_tensors=12), legacy=st.booleans())
def test_state_dicts_are_the_previous_bytes(sd: Any, legacy: bool) -> None:
    fmt = "legacy" if legacy else "zip"
    try:
        new, old = both_ways(sd, format=fmt)
    except UnserializableError:
        assert legacy  # v3 dtypes
        return
    assert new == old
    loaded = torch_load(new)
    assert_loaded(sd, loaded)
    assert_sharing(sd, loaded)


@HYPOTHESIS
@given(data=st.data())
def test_many_small_tensors_are_the_previous_bytes(data: st.DataObject) -> None:
    """Hundreds of records: several rehashes of the serialization id's set, many batches."""
    n = data.draw(st.integers(1, 700))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict(
        (f"layer.{i}.w", rng.standard_normal(int(rng.integers(1, 5))).astype(np.float32))
        for i in range(n)
    )
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    obj = {"model": sd, "step": n, "lrs": [0.1] * (n % 5), "big": np.zeros(n * 40, np.uint8)}
    with c_pickles(True):
        new, old = both_ways(obj)
    assert new == old
    assert_loaded(obj, torch_load(new))


def test_many_small_tensors_are_torch_save_bytes(tmp_path: Path) -> None:
    """A many-small training checkpoint, as in the benchmark, byte for byte torch.save's."""
    torch.manual_seed(0)
    model = collections.OrderedDict(
        (f"m.{i}.w", torch.randn(1 + i % 7) if i % 3 else torch.tensor(i)) for i in range(3000)
    )
    model._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
        (f"m.{i}", {"version": 1}) for i in range(3000)
    )
    exp_avg = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)} for i in range(300)}
    obj = {
        "model": model,
        "optimizer": {
            "state": exp_avg,
            "param_groups": [{"lr": 1e-3, "params": list(range(3000))}],
        },
        "epoch": 3,
        "config": {"name": "x", "betas": (0.9, 0.999)},
    }
    torch.save(obj, tmp_path / "t.pt")
    theirs = (tmp_path / "t.pt").read_bytes()
    ours_in = pthfmt.load(tmp_path / "t.pt")
    with c_pickles(True):
        pthfmt.save(ours_in, tmp_path / "o.pt", archive_name="t")
    assert (tmp_path / "o.pt").read_bytes() == theirs


# -- where the C pickler must not be used, and is not --------------------------------------------


def recursive_tuple() -> Any:
    inner: list[Any] = []
    outer = (inner,)
    inner.append(outer)
    return outer


@pytest.mark.parametrize(
    "obj",
    [
        {"e": b"", "a": np.ones(2)},  # C: __builtin__.bytes(), which torch refuses
        {"i": 2**2100},  # C: LONG4, which the weights-only unpickler lacks
        {"s": np.float32(1), "a": np.ones(2)},  # numpy scalar: written as a Python float
        {"d": pthfmt.DType("float8_e5m2"), "a": np.ones(2, np.uint16)},  # a stand-in global
        {"t": (1, [2])},  # a tuple that could contain itself
        {"f": frozenset({1})},  # refused (torch's allowlist lacks frozenset)
    ],
    ids=["empty-bytes", "huge-int", "np-scalar", "dtype", "tuple-of-list", "frozenset"],
)
def test_values_the_c_pickler_writes_differently_go_to_the_python_pickler(obj: Any) -> None:
    def outcome() -> bytes:
        try:
            return save_bytes(obj)
        except UnserializableError as exc:
            return str(exc).encode()

    with c_pickles(False):
        new = outcome()
    with previous_writer():
        assert new == outcome()


def test_long1_bounds_stay_on_the_c_pickler() -> None:
    obj = {"i": -(2**2039), "j": 2**2039 - 1, "a": np.ones(2)}
    with c_pickles(True):
        new, old = both_ways(obj)
    assert new == old
    assert torch_load(new)["j"] == 2**2039 - 1


def test_a_tuple_inside_itself_is_refused_as_before() -> None:
    obj = {"x": recursive_tuple()}
    message = "a tuple that contains itself through a tuple or tensor cannot be loaded by torch"
    with c_pickles(False), pytest.raises(UnserializableError, match=message) as new:
        save_bytes(obj)
    with previous_writer(), pytest.raises(UnserializableError) as old:
        save_bytes(obj)
    assert str(new.value) == str(old.value)


def test_a_dict_inside_itself_stays_on_the_c_pickler() -> None:
    d: dict[str, Any] = {"a": np.ones(2)}
    d["self"] = [d, (1, 2)]
    with c_pickles(True):
        new, old = both_ways(d)
    assert new == old
    loaded = torch_load(new)
    assert loaded["self"][0] is loaded


def test_a_tensor_state_inside_its_own_arguments_is_refused_as_before() -> None:
    """A Counter holding itself: the C pickler recurses until RecursionError, the Python
    pickler names it; the error is the Python pickler's."""
    c: collections.Counter[Any] = collections.Counter()
    c["me"] = 1
    obj = {"c": c, "l": [c]}
    new, old = both_ways(obj)
    assert new == old


def test_deep_nesting_keeps_the_python_picklers_limit() -> None:
    """With a raised recursion limit the C pickler could go deeper than MAX_DEPTH; trees
    near it go to the Python pickler, which refuses past it exactly as before."""
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        for depth, ok in ((600, True), (990, True), (1200, False)):
            obj: Any = np.ones(1)
            for _ in range(depth):
                obj = {"x": obj}
            if ok:
                new, old = both_ways(obj)
                assert new == old
            else:
                with pytest.raises(UnserializableError, match="nested more than 1000"):
                    save_bytes(obj)
        # a Counter is three levels to the pickler (itself, its argument tuple, the dict)
        for depth, ok in ((320, True), (340, False)):
            obj = np.ones(1)
            for _ in range(depth):
                obj = collections.Counter({"x": obj})
            if ok:
                new, old = both_ways(obj)
                assert new == old
            else:
                with c_pickles(False), pytest.raises(UnserializableError, match="nested more"):
                    save_bytes(obj)
    finally:
        sys.setrecursionlimit(old_limit)


def test_a_string_spelling_an_alias_line_goes_to_the_python_pickler() -> None:
    """The C pickler writes our globals under aliases and they are replaced afterwards; a
    string of the object that spells an alias line leaves the replacement ambiguous."""
    alias = GlobalRef("torch._utils", "_rebuild_tensor_v2").alias
    obj = {"a": np.ones(2), "trap": f"c{GlobalRef.__module__}\n{alias}\n"}
    with c_pickles(False):
        new, old = both_ways(obj)
    assert new == old
    assert torch_load(new)["trap"] == obj["trap"]


def test_objects_with_their_own_reduce_never_reach_the_c_pickler() -> None:
    """The C pickler only sees trees the first pass walked completely: a class with its own
    ``__reduce__`` is refused by the Python pickler, and nothing of it is called."""
    called: list[str] = []

    class Sneaky(dict):  # type: ignore[type-arg]
        def __reduce_ex__(self, protocol: Any) -> Any:
            called.append("reduce")
            return (print, ("pwned",))

    with c_pickles(False), pytest.raises(UnserializableError, match="Sneaky"):
        save_bytes({"x": Sneaky(a=1), "a": np.ones(2)})
    assert called == []


def test_alias_globals_resolve_and_nothing_else_does() -> None:
    from pthfmt.pickle import pickler

    ref = GlobalRef("torch", "FloatStorage")
    assert getattr(pickler, ref.alias) is ref
    with pytest.raises(AttributeError):
        pickler._global_999999  # noqa: B018
    with pytest.raises(TypeError, match="only names a global"):
        ref()


# -- the parts ------------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    names=st.lists(
        st.text(min_size=0, max_size=30) | st.integers(0, 10**6).map(lambda i: f"data/{i}"),
        unique=True,
        max_size=400,
    )
)
def test_serialization_id_and_set_order_are_the_previous_ones(names: list[str]) -> None:
    assert zipwriter.std_hashes([n.encode("utf-8", "surrogatepass") for n in names]) == [
        old_std_hash(n.encode("utf-8", "surrogatepass")) for n in names
    ]
    names = [n for n in names if n.isprintable() and "\ud800" not in n]
    assert zipwriter.unordered_set_order(names) == old_set_order(names)
    assert zipwriter.serialization_id(names, 12345) == old_serialization_id(names, 12345)


def test_serialization_id_over_many_rehashes() -> None:
    names = [".format_version", "data.pkl"] + [f"data/{i}" for i in range(30000)]
    assert zipwriter.serialization_id(names, 7) == old_serialization_id(names, 7)


def test_small_records_are_batched_into_few_writes() -> None:
    writes: list[int] = []
    out = io.BytesIO()

    def write(data: Any) -> None:
        writes.append(memoryview(data).nbytes)
        out.write(data)

    obj = {f"t{i}": np.full(3, i, np.float32) for i in range(2000)}
    writer._write_zip(write, "a", b"\x80\x02N.", plan_storages(obj))
    assert len(writes) < 20 and max(writes) < 1 << 20
    ref = io.BytesIO()
    with previous_writer():
        writer._write_zip(ref.write, "a", b"\x80\x02N.", plan_storages(obj))
    assert out.getvalue() == ref.getvalue()


def plan_storages(obj: Any) -> list[Any]:
    plan = writer._Plan(legacy=False)
    plan.pickle(obj)
    return plan.storages


@pytest.mark.parametrize("dtype", all_numpy_dtypes(), ids=str)
def test_every_dtype_alone_and_shared_is_the_previous_bytes(dtype: np.dtype) -> None:
    a = random_array(dtype, (4, 6), seed=dtype.itemsize)
    obj = {"alone": a.copy(), "view": a[1:], "col": a[..., :1], "t": a.T, "b": a.copy()[::-1]}
    new, old = both_ways(obj)
    assert new == old


def test_foreign_memory_keeps_the_overlap_rule() -> None:
    """An array on a foreign buffer (no owning base) may overlap an owned one: then the
    storages are planned pointer by pointer, as before."""
    owned = np.arange(16, dtype=np.float32)
    foreign = np.frombuffer(memoryview(owned), np.float32)[4:8]
    obj: Iterable[Any] = {"owned": owned, "foreign": foreign, "other": np.ones(3, np.float32)}
    new, old = both_ways(obj)
    assert new == old
    loaded = torch_load(new)
    assert loaded["owned"].untyped_storage().data_ptr() == (
        loaded["foreign"].untyped_storage().data_ptr()
    )
