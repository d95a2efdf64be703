"""pthfmt.save without torch: refusals, key paths, atomic refusal, and the writer read back
by pthfmt's own reader.  What torch makes of the files is in ``tests/interop/test_writer.py``.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given

import pthfmt
from pthfmt import UnserializableError, writer
from pthfmt.reader import detect_format
from tests.support.writer import HYPOTHESIS, ORDERED_SCALARS, save_bytes, trees


@HYPOTHESIS
@given(obj=trees())
def test_the_collecting_first_pass_equals_the_pickling_one(obj: Any) -> None:
    """save() finds the tensors with a plain walk; the pickling first pass it falls back to
    (for anything the walk does not know) must give the very same bytes."""
    fast = save_bytes(obj)
    with mock.patch.object(writer._Plan, "collect", return_value=False):
        assert save_bytes(obj) == fast


@HYPOTHESIS
@given(obj=trees(scalars=ORDERED_SCALARS))
def test_saving_what_we_read_gives_the_same_bytes(obj: Any) -> None:
    """save(open(save(x)).obj) == save(x): the reader keeps everything the writer wrote
    (sets are left out: a set rebuilt from its items may iterate in another order)."""
    for fmt in ("zip", "legacy"):
        try:
            first = save_bytes(obj, format=fmt)
        except UnserializableError:
            assert fmt == "legacy"  # v3 dtypes
            continue
        with pthfmt.open(io.BytesIO(first)) as ck:
            assert save_bytes(ck.obj, format=fmt) == first


def test_devices_are_recorded_per_storage() -> None:
    a = np.arange(4, dtype=np.float32)
    obj = {"gpu": pthfmt.Tensor(a, device="cuda:1"), "cpu": a, "mps": pthfmt.Tensor(a, "mps")}
    data = save_bytes(obj)
    with pthfmt.open(io.BytesIO(data)) as ck:
        assert {k: str(t.device) for k, t in ck.tensors()} == {
            "gpu": "cuda:1",
            "cpu": "cpu",
            "mps": "mps",
        }


# -- refusals -------------------------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: 0, "functions and classes"),
        (Opaque(), r"tests\.unit\.test_writer\.Opaque|test_writer\.Opaque"),
        (Opaque, "functions and classes"),
        ((i for i in range(3)), "generators"),
        (np.array([object()], dtype=object), "object arrays"),
        (np.array(["a"]), "no torch equivalent"),
        (np.zeros(2, dtype=[("x", "f4")]), "no torch equivalent"),
        (np.ma.masked_array([1.0], mask=[True]), "mask"),
        (frozenset([1]), "frozenset"),
        (np.datetime64("2020-01-01"), "no Python or torch"),
        (pthfmt.Tensor(np.zeros(2, np.int64), requires_grad=True), "cannot require gradients"),
        (np.zeros(2, np.dtype(np.int8, metadata={"torch": "qint8"})), "quantization"),
        (collections.defaultdict(list), "defaultdict"),
    ],
)
def test_unserializable_values_name_their_key_path(
    value: Any, message: str, tmp_path: Path
) -> None:
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")
    obj = {"model": {"layers": [{"weight": np.ones(2)}, {"weight": value}]}}
    with pytest.raises(UnserializableError, match=message) as info:
        pthfmt.save(obj, target)
    assert info.value.key_path == "model.layers.1.weight"
    assert "model.layers.1.weight" in str(info.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    buf = io.BytesIO()
    with pytest.raises(UnserializableError):
        pthfmt.save(obj, buf)
    assert buf.getvalue() == b""  # nothing written to a stream either


def test_errors_inside_keys_sets_and_attributes_are_located() -> None:
    with pytest.raises(UnserializableError) as info:
        save_bytes({"a": {(1, Opaque()): 1}})
    assert info.value.key_path == "a.<key>.1"
    od = collections.OrderedDict(w=1)
    od._metadata = {"x": Opaque()}  # type: ignore[attr-defined]
    with pytest.raises(UnserializableError) as info:
        save_bytes({"sd": od})
    assert info.value.key_path == "sd._metadata.x"


def test_deep_nesting_is_an_error_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UnserializableError, match="nested more than 1000") as info:
        save_bytes(deep)
    assert info.value.key_path == "<936 levels>." + ".".join(["0"] * 64)  # the innermost 64
    ok: Any = np.ones(1)
    for _ in range(900):
        ok = {"x": ok}
    save_bytes(ok)  # torch reads it: tests/interop/test_writer.py


def test_recursion_through_containers() -> None:
    d: dict[str, Any] = {}
    d["self"] = d
    save_bytes(d)  # torch reads it: tests/interop/test_writer.py
    t: list[Any] = []
    tup = (t,)
    t.append(tup)
    with pytest.raises(UnserializableError, match="contains itself"):
        save_bytes(tup)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="format"):
        pthfmt.save({}, io.BytesIO(), format="tar")
    with pytest.raises(ValueError, match="archive_name"):
        pthfmt.save({}, io.BytesIO(), archive_name="a/b")
    with pytest.raises(TypeError, match="writable"):
        pthfmt.save({}, 3)  # type: ignore[arg-type]


def test_a_legacy_file_spelling_ustar_is_not_a_tar() -> None:
    """Found by hypothesis: a legacy pickle with ``ustar`` at byte 257 (a bytes value) was
    read as a tar archive; torch tries tarfile, which refuses the checksum, then reads it as a
    legacy file, and so does pthfmt now."""
    at = save_bytes({"tag": b"ustar"}, format="legacy").find(b"ustar")
    assert 0 < at < 257
    data = save_bytes({"tag": b"x" * (257 - at) + b"ustar"}, format="legacy")
    assert data[257:262] == b"ustar"
    assert detect_format(data[:512]) == "legacy"
    with pthfmt.open(io.BytesIO(data)) as ck:
        assert ck.format == "legacy" and ck.obj["tag"].endswith(b"ustar")
