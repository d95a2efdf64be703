"""Key paths: any key renders (ints of any size), every path is capped in parts and in
characters, and the paths of a whole walk are bounded by what the file holds."""

from __future__ import annotations

import json
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt.errors import FormatError, LimitError, UnsafePickleError
from pthfmt.model.device import location_mapper
from pthfmt.model.storage import StorageTable
from pthfmt.model.tree import MAX_PART_CHARS, MAX_PATH_CHARS, key_text, walk
from pthfmt.pickle.machine import Unpickler
from pthfmt.torch.handlers import TorchHandlers
from tests.support.host import run_python

BIG = 10**5000  # over Python's 4,300-digit str() limit
BIG_TEXT = f"<a {BIG.bit_length()}-bit int>"


def long4(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8b" + len(raw).to_bytes(4, "little") + raw


def rezip(src, dst, change) -> None:
    """Copy a checkpoint, changing its data.pkl."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(
                info.filename, change(data) if info.filename.endswith("data.pkl") else data
            )


@pytest.fixture
def big_key_file(tmp_path):
    """A checkpoint whose dict keys are a LONG4 int of 5,001 digits."""
    plain = tmp_path / "plain.pth"
    pthfmt.save({"@K@": np.zeros(2, np.float32), "x": {"@K@": np.ones(1)}}, plain)
    path = tmp_path / "big.pth"
    rezip(plain, path, lambda d: d.replace(b"X\x03\x00\x00\x00@K@", long4(BIG), 1))
    return path


def test_key_text():
    assert key_text("a.b") == "a.b"
    assert key_text(-12) == "-12"
    assert key_text(BIG) == BIG_TEXT == "<a 16610-bit int>"
    assert key_text((1, BIG)) == f"(1, {BIG_TEXT})"
    assert key_text(b"\x1b[2J") == "b'\\x1b[2J'"
    cut = key_text("k" * (1 << 20))
    assert cut == "k" * (MAX_PART_CHARS - 32) + f"...<+{(1 << 20) - MAX_PART_CHARS + 32} chars>"


def test_huge_int_keys_in_tensors(big_key_file):
    with pthfmt.open(big_key_file) as ck:
        assert [k for k, _ in ck.tensors()] == [BIG_TEXT, f"x.{BIG_TEXT}"]


def test_huge_int_keys_in_state_dict(big_key_file):
    with pytest.raises(FormatError) as info:
        pthfmt.state_dict(pthfmt.load(big_key_file))
    assert info.value.message == f"state dict key {BIG_TEXT} is a int, not a string"


def test_huge_int_key_in_an_error_key_path():
    data = b"\x80\x02}" + long4(BIG) + b"}X\x01\x00\x00\x00a" + b"cos\nsystem\n" + b"ss."
    h = TorchHandlers(StorageTable(location_mapper(None), None), eager=False, mmap=False)
    with pytest.raises(UnsafePickleError) as info:
        Unpickler(data, h, record="r").load()
    assert info.value.key_path == f"{BIG_TEXT}.a"
    assert str(info.value) == (
        "global os.system is not allowed: a known code-execution gadget (record 'r', offset "
        f"{len(data) - 14}, key '{BIG_TEXT}.a')"
    )


def test_deep_paths_keep_their_innermost_parts():
    obj: object = "leaf"
    for _ in range(1000):
        obj = [obj]
    ((path, _),) = walk(obj, want=lambda v: v == "leaf")
    assert path == "<936 levels>." + ".".join(["0"] * 64)


def test_paths_are_capped_in_characters():
    key = "k" * (1 << 20)
    obj: object = "leaf"
    for _ in range(63):
        obj = {key: obj}
    ((path, _),) = walk(obj, want=lambda v: v == "leaf")
    part = key_text(key)
    kept = (MAX_PATH_CHARS + 1) // (len(part) + 1)
    assert path == f"<{63 - kept} levels>." + ".".join([part] * kept)
    assert len(path) <= MAX_PATH_CHARS + 20


_BOUNDED = textwrap.dedent("""
    import json, sys, time
    import pthfmt
    from tests.support.host import peak_memory
    t = time.process_time()
    n, error = 0, None
    with pthfmt.open(sys.argv[1]) as ck:
        try:
            for key, ref in ck.tensors():
                n += 1
        except pthfmt.PthError as exc:
            error = [type(exc).__name__, exc.message]
    print(json.dumps({"n": n, "error": error, "seconds": time.process_time() - t,
                      "peak": peak_memory()}))
""")


def test_tensors_of_shared_long_keys_is_bounded(tmp_path):
    """63 levels keyed by one 1 MiB string over 100,000 distinct tensors: 4 KiB per path
    would be 400 MB of paths from a 7 MB file."""
    key = "k" * (1 << 20)
    base = np.zeros(100_000, np.uint8)
    obj: object = [base[i : i + 1] for i in range(100_000)]
    for _ in range(63):
        obj = {key: obj}
    path = tmp_path / "deep.pth"
    pthfmt.save(obj, path)
    assert path.stat().st_size < 8 << 20
    out = run_python(_BOUNDED, path, timeout=60)
    result = json.loads(out.stdout)
    assert result["error"] == [
        LimitError.__name__,
        (
            "the key paths of this object tree take more characters than its size justifies "
            "(long keys shared at many levels)"
        ),
    ]
    assert result["seconds"] < 5 and result["peak"] < 1 << 30


def _reference_walk(root, leaves=(), want=None):
    """walk's contract, recursively: depth first, in order, each container (and each
    instance of ``leaves``) once, paths from key_text (shallow trees: no capping)."""
    seen: set[int] = set()
    out: list[tuple[str, object]] = []
    shared = (dict, list, tuple, *leaves)

    def visit(value, parts):
        if isinstance(value, shared):
            if id(value) in seen:
                return
            seen.add(id(value))
        if want is None or want(value):
            out.append((".".join(parts), value))
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            return
        for key, item in items:
            visit(item, [*parts, key_text(key)])

    visit(root, [])
    return out


class _Leaf:
    """A leaf type for ``walk(leaves=...)``: each instance yielded once however shared."""


class _SubLeaf(_Leaf):
    """Not of the exact leaf type: walked the general way, with the same result."""


_SHARED_LEAF = _Leaf()
_leaf = st.one_of(
    st.integers(-3, 300),
    st.text(max_size=3),
    st.none(),
    st.floats(0, 1),
    st.builds(_Leaf),
    st.builds(_SubLeaf),
    st.just(_SHARED_LEAF),
)
_trees = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_trees, st.data())
def test_walk_agrees_with_a_recursive_reference(tree, data):
    shared = [tree, tree]  # the same subtree twice: visited once
    root = data.draw(st.sampled_from([tree, shared, {"a": tree, "b": [tree, shared]}]))
    want = data.draw(
        st.sampled_from([None, lambda v: isinstance(v, int), lambda v: isinstance(v, _Leaf)])
    )
    leaves = data.draw(st.sampled_from([(), (_Leaf,), (_SubLeaf,), (_Leaf, dict)]))
    got = [(p, id(v)) for p, v in walk(root, leaves=leaves, want=want)]
    assert got == [(p, id(v)) for p, v in _reference_walk(root, leaves=leaves, want=want)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["", "a", "weight"]),
            st.integers(0, 10),
            st.text(min_size=60, max_size=70),
            st.text(min_size=1000, max_size=1100),
        ),
        min_size=1,
        max_size=70,
    ),
    st.one_of(st.just(""), st.text(max_size=5), st.text(min_size=4000, max_size=4100)),
)
def test_cached_container_paths_are_what_capped_gives(keys, last):
    """A container's path is kept once made and its items' paths are built on it; near and
    past the caps (64 parts, 4,096 characters) and with empty keys, they are exactly what
    :func:`capped` makes from the keys."""
    from pthfmt.model.tree import _ROOT, _chain, _Node, capped, key_text

    for deepest_first in (True, False):  # (parents' paths made on the way, or before)
        node = _ROOT
        chain = [node]
        for k in keys:
            node = _Node(node, k, node.depth + 1)
            chain.append(node)
        for node in reversed(chain) if deepest_first else chain:
            assert node.path() == capped(node.keys(), node.depth)
            expected = capped(_chain(key_text(last), node.keys()), node.depth + 1)
            assert node.item_path(last) == expected
