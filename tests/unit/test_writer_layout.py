"""The bytes pthfmt.save writes, checked without torch: the zip container record by record,
the legacy layout, torch's offset and serialization-id formulas, and the pickler against
CPython's.  That these are byte for byte what torch.save writes is checked in
``tests/interop/test_writer_layout.py``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt.formats.zip.writer import (
    ZipWriter,
    archive_name_for_path,
    data_offset,
    std_hash,
    unordered_set_order,
)
from pthfmt.pickle.pickler import Pickler
from tests.support.writer import save_bytes, zip_layout

# -- the container, record by record -------------------------------------------------------


def test_layout_details(tmp_path: Path) -> None:
    obj = {"a": np.arange(3, dtype=np.float32), "e": np.zeros(0), "b": np.ones((2, 2))}
    pthfmt.save(obj, tmp_path / "lay.pt")
    entries, _ = zip_layout(tmp_path / "lay.pt")
    names = [e[0].decode() for e in entries]
    assert names == [
        "lay/data.pkl",
        "lay/.format_version",
        "lay/.storage_alignment",
        "lay/byteorder",
        "lay/data/0",
        "lay/data/1",
        "lay/data/2",
        "lay/version",
        "lay/.data/serialization_id",
    ]
    raw = (tmp_path / "lay.pt").read_bytes()
    for name, fields, _, local, local_rest, start, descriptor in entries:
        assert start % 64 == 0
        empty = name.endswith(b"data/1")
        assert struct.unpack_from("<HHH", local, 4) == (0, 0x0800 if empty else 0x0808, 0)
        assert local_rest[len(name) : len(name) + 2] == b"FB"
        assert set(local_rest[len(name) + 4 :]) <= {ord("Z")}
        assert fields[1:7] == [0, 0, 0x0800 if empty else 0x0808, 0, 0, 0]
        assert descriptor[:4] == (b"" if empty else b"PK\x07\x08")
    with zipfile.ZipFile(tmp_path / "lay.pt") as z:  # CRCs are right
        assert z.testzip() is None
        assert z.read("lay/version") == b"3\n" and z.read("lay/byteorder") == b"little"
        assert z.read("lay/.format_version") == b"1"
        assert z.read("lay/.storage_alignment") == b"64"
        assert len(z.read("lay/.data/serialization_id")) == 40
    assert raw[-22:-18] == b"PK\x05\x06" and raw[-42:-38] == b"PK\x06\x07"


def test_data_offset_formula() -> None:
    """``detail::getOffset`` examples from torch files (see the format notes, §1.4/§1.5)."""
    assert data_offset(0, len("t/data.pkl"), 154) == 64
    assert data_offset(534, len("t/data/0"), 24) == 576
    assert data_offset(726, len("big/data/0"), 4294967396) == 832
    assert data_offset(4294968252, len("big/data/1"), 24) == 4294968320
    assert data_offset(0, 10, 1, alignment=4096) == 4096


def test_serialization_id_parts() -> None:
    """libstdc++ values, printed by a C++ program built with g++ 12."""
    assert std_hash(b"data.pkl") == 4941642132189851806
    names = [
        "data.pkl",
        ".format_version",
        ".storage_alignment",
        "byteorder",
        "data/0",
        "data/1",
        "data/2",
        "version",
    ]
    assert unordered_set_order(names) == [
        "version",
        "data/2",
        "data/0",
        "data/1",
        "byteorder",
        ".storage_alignment",
        ".format_version",
        "data.pkl",
    ]


def test_zipwriter_refuses_misuse() -> None:
    out = io.BytesIO()
    w = ZipWriter(out.write, "a")
    w.add("x", b"1")
    with pytest.raises(ValueError, match="twice"):
        w.add("x", b"2")
    with pytest.raises(pthfmt.PthError, match="produced 2 bytes"):
        w.add("y", [b"ab"], 3)
    with pytest.raises(ValueError, match="alignment"):
        ZipWriter(out.write, "a", alignment=0)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("names/model.pth", "model"),
        ("names/model.tar.gz", "model.tar"),
        ("noext", "noext"),
        ("a/my model.v2.pt", "my model.v2"),
        ("a\\b\\win.pt", "win"),
        ("ünï.pt", "archive"),
        ("d/.hidden", "archive"),
    ],
)
def test_archive_names(path: str, name: str) -> None:
    assert archive_name_for_path(path) == name


# -- the legacy format ------------------------------------------------------------------------


def test_legacy_layout(tmp_path: Path) -> None:
    """Five pickles, then per storage (keys sorted as strings) an int64 count and the data."""
    obj = {f"t{i}": np.full(i + 1, i, np.int16) for i in range(12)}
    data = save_bytes(obj, format="legacy")
    f = io.BytesIO(data)
    assert pickle.load(f) == 0x1950A86A20F9469CFC6C
    assert pickle.load(f) == 1001
    assert pickle.load(f) == {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }

    class Name(str):
        def __call__(self, *args: Any) -> Any:
            return (str(self), args)

    class Peek(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return pid

        def find_class(self, module: str, name: str) -> Any:
            return Name(f"{module}.{name}")

    main = Peek(f).load()
    assert main["t3"][0] == "torch._utils._rebuild_tensor_v2"
    assert main["t3"][1][0] == ("storage", "torch.ShortStorage", "3", "cpu", 4, None)
    keys = pickle.load(f)
    assert keys == sorted(str(i) for i in range(12))
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        assert count == int(key) + 1
        assert np.frombuffer(f.read(2 * count), "<i2").tolist() == [int(key)] * count
    assert f.read() == b""  # torch reads it: tests/interop/


# -- the pickler against CPython's -----------------------------------------------------------


def _refuse(obj: Any, path: Any) -> Any:
    raise TypeError(type(obj))


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(min_size=1, max_size=5)
    | st.complex_numbers()
    | st.sampled_from(["shared", "x", ""]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=3), children, max_size=5)
        | st.dictionaries(st.text(max_size=3), children, max_size=5).map(collections.OrderedDict)
        | st.sets(st.integers(), max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(obj=PLAIN, repeat=st.integers(1, 3))
def test_pickler_matches_cpython(obj: Any, repeat: int) -> None:
    """Same bytes as ``pickle.dumps(obj, protocol=2)`` (memo and batching included)."""
    value = [obj] * repeat
    assert Pickler(_refuse).dump(value) == pickle.dumps(value, protocol=2)


def test_pickler_batches_like_cpython() -> None:
    for n in (1, 2, 999, 1000, 1001, 2000, 2001):
        for value in (
            {str(i): i for i in range(n)},
            list(range(n)),
            collections.OrderedDict((str(i), i) for i in range(n)),
            set(range(n)),
        ):
            assert Pickler(_refuse).dump(value) == pickle.dumps(value, protocol=2), (n, value)
    shared = ["s"] * 300 + [list(range(3))] * 3
    assert Pickler(_refuse).dump(shared) == pickle.dumps(shared, protocol=2)
    assert Pickler(_refuse).dump(b"") != pickle.dumps(b"", protocol=2)  # see the docstring
