"""Random state-dict trees saved by torch must read back exactly as ``torch.load`` reads them.

A tree is nested dicts / OrderedDicts / lists / tuples whose leaves are plain values and
tensors.  The tensors are random ``as_strided`` views (any offset, stride 0, overlap, empty,
0-dim), plain views, Parameters, conj and neg views over a few random base storages of any
dtype, so storages are shared across leaves and the same tensor object can appear twice.  Each
tree is saved zip or legacy at protocol 2..5, then compared leaf by leaf, bit for bit, with
``torch.load`` (and with the saved objects themselves) in copy mode, mmap mode and via
``open()``; storage sharing must match torch's exactly.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]
torch = pytest.importorskip("torch")

import pthfmt  # noqa: E402
from tests.support.torch_helpers import (  # noqa: E402
    ALL_DTYPES,
    V3_DTYPES,
    assert_same_tree,
    make_tensor,
    torch_bytes,
)

#: drawn more often than the rest: what real state dicts hold, and complex for conj views
COMMON_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.complex64, torch.int64)

SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# -- strategies ---------------------------------------------------------------------------------


@st.composite
def strided_views(draw, base: torch.Tensor) -> torch.Tensor:
    """A random in-bounds ``as_strided`` view of ``base`` (a 1-d tensor)."""
    numel = base.numel()
    ndim = draw(st.integers(0, 3))
    size = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    stride = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    if 0 in size:
        offset = draw(st.integers(0, numel))
    else:
        extent = sum((n - 1) * s for n, s in zip(size, stride))
        if extent >= numel:
            return base
        offset = draw(st.integers(0, numel - 1 - extent))
    return base.as_strided(size, stride, offset)


#: BUG (xfail in test_reader_torch.py::test_conj_neg_views_legacy_copy): a copying load of a
#: legacy file computes conj/neg views from the storage before its bytes are read.  Until it
#: is fixed, legacy examples draw no conj/neg views; set False to let hypothesis find it.
AVOID_LEGACY_CONJ_NEG_BUG = False
#: BUG (xfail in test_reader_torch.py::test_zero_dim_conj_neg_is_an_array): a 0-dim conj/neg
#: view comes back as a numpy scalar, not a 0-d array.
AVOID_ZERO_DIM_CONJ_NEG_BUG = False


@st.composite
def views(draw, base: torch.Tensor, legacy: bool = False) -> torch.Tensor:
    numel = base.numel()
    kind = draw(
        st.sampled_from(["whole", "slice", "strided", "strided", "matrix_t", "expand", "scalar"])
    )
    if kind == "slice":
        start = draw(st.integers(0, numel))
        step = draw(st.integers(1, 4))
        view = base[start::step]
    elif kind == "strided":
        view = draw(strided_views(base))
    elif kind == "matrix_t" and numel >= 4:
        rows = draw(st.integers(1, numel // 2))
        cols = numel // rows
        view = base[: rows * cols].view(rows, cols).t()
    elif kind == "expand" and numel:
        i = draw(st.integers(0, numel - 1))
        view = base[i : i + 1].expand(draw(st.integers(0, 3)), 2)
    elif kind == "scalar" and numel:
        view = base[draw(st.integers(0, numel - 1))]
    else:
        view = base
    wraps = ["none", "none", "parameter", "frozen"]
    if not (legacy and AVOID_LEGACY_CONJ_NEG_BUG) and not (
        view.dim() == 0 and AVOID_ZERO_DIM_CONJ_NEG_BUG
    ):
        wraps = ["none", "parameter", "frozen", "neg"]
        if view.is_complex():
            wraps += ["conj"] * 4
    wrap = draw(st.sampled_from(wraps))
    try:
        if wrap == "parameter":
            view = torch.nn.Parameter(view, requires_grad=True)
        elif wrap == "frozen":
            view = torch.nn.Parameter(view, requires_grad=False)
        elif wrap == "conj" and view.is_complex():
            view = view.conj()
        elif wrap == "neg" and view.dtype != torch.bool:  # (xfail test_neg_view_of_empty_bool)
            view = torch._neg_view(view)
        torch_bytes(view)  # torch must be able to read its own values
    except (RuntimeError, NotImplementedError):
        view = base
    return view


class Leaf:
    """A placeholder for the ``index``-th tensor of the pool (tensors themselves cannot go
    through hypothesis: it reprs drawn values, and torch cannot print bits or float8)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"Leaf({self.index})"


class Example:
    """A drawn checkpoint: the tree, how to save it, and a repr that never prints tensors."""

    def __init__(self, obj: Any, protocol: int, legacy: bool, summary: str) -> None:
        self.obj, self.protocol, self.legacy, self.summary = obj, protocol, legacy, summary

    def __repr__(self) -> str:
        return f"Example(protocol={self.protocol}, legacy={self.legacy}, {self.summary})"


def _describe(t: torch.Tensor) -> str:
    kind = "Parameter" if isinstance(t, torch.nn.Parameter) else "Tensor"
    flags = "".join(
        f" {f}"
        for f, on in (("conj", t.is_conj()), ("neg", t.is_neg()), ("grad", t.requires_grad))
        if on
    )
    return (
        f"{kind}({t.dtype}, size={tuple(t.shape)}, stride={t.stride()}, "
        f"offset={t.storage_offset()}, storage={t.untyped_storage().nbytes()}B "
        f"@{t.untyped_storage().data_ptr():x}{flags})"
    )


def _leaves(tree: Any) -> list[Leaf]:
    if isinstance(tree, Leaf):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _leaves(v)]
    return []


def _fill(tree: Any, pool: list[torch.Tensor]) -> Any:
    if isinstance(tree, Leaf):
        return pool[tree.index]
    if isinstance(tree, dict):
        out = type(tree)((k, _fill(v, pool)) for k, v in tree.items())
        if hasattr(tree, "_metadata"):
            out._metadata = tree._metadata
        return out
    if isinstance(tree, list):
        return [_fill(v, pool) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_fill(v, pool) for v in tree)
    return tree


@st.composite
def checkpoints(draw) -> Example:
    legacy = draw(st.booleans())
    nbases = draw(st.integers(1, 4))
    bases = []
    for _ in range(nbases):
        dtype = draw(st.sampled_from(ALL_DTYPES + COMMON_DTYPES))
        numel = draw(st.integers(0, 24))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        bases.append(make_tensor(dtype, (numel,), gen))
    pool = [
        draw(views(bases[draw(st.integers(0, nbases - 1))], legacy))
        for _ in range(draw(st.integers(1, 10)))
    ]
    tensors = st.integers(0, len(pool) - 1).map(Leaf)  # the same tensor may appear twice
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    )
    keys = st.text(st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=6)
    tree = st.recursive(
        st.one_of(tensors, tensors, scalars),
        lambda inner: st.one_of(
            st.dictionaries(keys, inner, min_size=1, max_size=4),
            st.dictionaries(keys, inner, min_size=1, max_size=4).map(collections.OrderedDict),
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=3).map(tuple),
        ),
        max_leaves=12,
    )
    root = draw(st.dictionaries(keys, tree, min_size=1, max_size=5))
    used = {leaf.index for leaf in _leaves(root)}
    for i in range(len(pool)):  # every drawn view is saved at least once
        if i not in used:
            root[f"pool{i}" if f"pool{i}" not in root else f"pool{i}_{len(root)}"] = Leaf(i)
    # the usual state-dict shape: an OrderedDict with a _metadata attribute, most of the time
    if draw(st.booleans()):
        root = collections.OrderedDict(root)
        root._metadata = collections.OrderedDict([("", {"version": 1})])
    protocol = draw(st.sampled_from([2, 2, 3, 4, 5]))
    summary = f"tree={root!r}, pool=[{', '.join(map(_describe, pool))}]"
    return Example(_fill(root, pool), protocol, legacy, summary)


# -- checks --------------------------------------------------------------------------------------


def tensor_pairs(ours: Any, theirs: Any, path: str = "") -> list[tuple[str, Any, torch.Tensor]]:
    """``(path, our_leaf, torch_tensor)`` for every tensor leaf (each container once)."""
    out, seen, stack = [], set(), [(path, ours, theirs)]
    while stack:
        where, a, b = stack.pop()
        if isinstance(b, torch.Tensor):
            out.append((where, a, b))
        elif id(b) in seen:
            continue
        elif isinstance(b, dict):
            seen.add(id(b))
            stack.extend((f"{where}.{k}", a[k], b[k]) for k in b)
        elif isinstance(b, (list, tuple)):
            seen.add(id(b))
            stack.extend((f"{where}.{i}", x, y) for i, (x, y) in enumerate(zip(a, b)))
    return out


def first_paths(root: Any) -> list[str]:
    """Key paths of the distinct tensor objects, depth first in insertion order (= the order
    the pickler meets them); a container or tensor reached again is not entered again."""
    out, seen, stack = [], set(), [("", root)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, (torch.Tensor, dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        prefix = f"{where}." if where else ""
        if isinstance(value, torch.Tensor):
            out.append(where)
        elif isinstance(value, dict):
            stack.extend((f"{prefix}{k}", v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{prefix}{i}", v) for i, v in reversed(list(enumerate(value))))
    return out


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def storage_id(t: torch.Tensor) -> int | None:
    storage = t.untyped_storage()
    return storage.data_ptr() if storage.nbytes() else None


def check_sharing(ours: Any, theirs: Any, *, refs: bool, mmap: bool) -> None:
    """Two leaves share our buffer (or storage key) exactly when they share torch's storage."""
    pairs = [
        (w, a, b)
        for w, a, b in tensor_pairs(ours, theirs)
        if storage_id(b) is not None and not (b.is_conj() or b.is_neg())
    ]
    for where, a, _ in pairs:
        if not refs:
            assert a.flags.writeable != mmap, where
    for i, (wa, a, ta) in enumerate(pairs):
        for wb, b, tb in pairs[i + 1 :]:
            same = storage_id(ta) == storage_id(tb)
            if refs:
                assert (a.storage_key == b.storage_key) == same, (wa, wb)
                assert (a.storage is b.storage) == same, (wa, wb)
            else:
                assert (_root(a) is _root(b)) == same, (wa, wb)


def check_example(example: Example, directory: Path) -> None:
    obj, protocol, legacy = example.obj, example.protocol, example.legacy
    path = directory / "ckpt.pt"
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    has_v3 = any(b.dtype in V3_DTYPES for _, _, b in tensor_pairs(obj, obj))
    references = [obj]  # what was saved is the truth ...
    if not (legacy and has_v3):  # ... and torch.load must agree (it can't: legacy + v3)
        theirs = torch.load(path, weights_only=False)
        assert_same_tree(theirs, obj)
        references.append(theirs)
    copy = pthfmt.load(path)
    mapped = pthfmt.load(path, mmap=True)
    with pthfmt.open(path) as ck:
        assert ck.format == ("legacy" if legacy else "zip")
        for expected in references:
            assert_same_tree(copy, expected)
            assert_same_tree(mapped, expected)
            assert_same_tree(ck.obj, expected, refs=True)
            check_sharing(copy, expected, refs=False, mmap=False)
            check_sharing(mapped, expected, refs=False, mmap=True)
            check_sharing(ck.obj, expected, refs=True, mmap=False)
        assert [k for k, _ in ck.tensors()] == first_paths(obj)
    if isinstance(obj, collections.OrderedDict):
        assert copy._metadata == obj._metadata == mapped._metadata


@settings(max_examples=100, **SETTINGS)
@given(checkpoints())
def test_random_state_dicts_match_torch(example):
    with tempfile.TemporaryDirectory() as d:
        check_example(example, Path(d))


@pytest.mark.slow
@settings(max_examples=1000, **SETTINGS)
@given(checkpoints())
def test_random_state_dicts_match_torch_1000(example):
    """The issue's "Done when": 1,000 random state dicts match torch."""
    with tempfile.TemporaryDirectory() as d:
        check_example(example, Path(d))


def test_strategy_covers_the_interesting_cases():
    """The strategy really produces what the docstring claims (not vacuous)."""
    found: collections.Counter[str] = collections.Counter()

    @settings(max_examples=600, derandomize=True, **SETTINGS)
    @given(checkpoints())
    def collect(example):
        obj, protocol, legacy = example.obj, example.protocol, example.legacy
        found.update(["examples", f"protocol{protocol}"])
        found.update(["legacy" if legacy else "zip"])
        pairs = tensor_pairs(obj, obj)
        ids = [storage_id(b) for _, _, b in pairs]
        if len([i for i in ids if i is not None]) > len({i for i in ids if i is not None}):
            found.update(["shared storage"])
        if len({id(b) for _, _, b in pairs}) < len(pairs):
            found.update(["same tensor twice"])
        for _, _, b in pairs:
            found.update([str(b.dtype)])
            if isinstance(b, torch.nn.Parameter):
                found.update(["parameter"])
            if b.is_conj():
                found.update(["conj"])
            if b.is_neg():
                found.update(["neg"])
            if 0 in b.stride() and b.numel() > 1:
                found.update(["stride 0"])
            if b.dim() == 0:
                found.update(["0-dim"])
            if b.numel() == 0 and b.storage_offset() > 0:
                found.update(["empty with offset"])
            if b.numel() and b.untyped_storage().nbytes() > b.numel() * b.element_size():
                found.update(["smaller than storage"])

    collect()
    wanted = {
        "protocol2",
        "protocol5",
        "legacy",
        "zip",
        "shared storage",
        "same tensor twice",
        "parameter",
        "conj",
        "neg",
        "stride 0",
        "0-dim",
        "empty with offset",
        "smaller than storage",
        "torch.bfloat16",
        "torch.uint16",
        "torch.complex32",
        "torch.float8_e4m3fn",
    }
    rare = {name: found[name] for name in wanted if found[name] < 2}
    assert not rare, (rare, found["examples"])
