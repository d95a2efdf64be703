"""Jagged nested tensors (NJTs, ``layout=torch.jagged``) against torch 2.13: files torch
writes load with torch's own values, offsets, lengths and unbind(); pthfmt.save writes them
back so that torch.load(weights_only=True) returns an equal NJT (zip and legacy); hostile
variants are refused with exact errors, and validate() reports bad offsets."""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

import pthfmt
from pthfmt import strategies as pst
from pthfmt.validation import validate

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]


def torch_bytes(obj: Any, legacy: bool = False) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    buf.seek(0)
    return buf


def torch_back(obj: Any, fmt: str) -> Any:
    buf = io.BytesIO()
    pthfmt.save({"v": obj}, buf, format=fmt)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["v"]


def to_numpy(t: Any) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def as_bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int16) if a.dtype.name == "bfloat16" else a


def assert_same(value: Any, t: Any) -> None:
    """A JaggedArray holds the NJT ``t``'s values, offsets, lengths and components."""
    assert isinstance(value, pthfmt.JaggedArray)
    assert value.ragged_idx == t._ragged_idx
    assert np.array_equal(as_bits(np.asarray(value.values)), to_numpy(t._values))
    assert np.array_equal(value.offsets, t._offsets.numpy())
    if t._lengths is None:
        assert value.lengths is None
    else:
        assert np.array_equal(value.lengths, t._lengths.numpy())
    parts = t.unbind()
    assert len(value) == len(parts)
    for mine, theirs in zip(value.arrays(), parts):
        assert mine.shape == tuple(theirs.shape)
        assert np.array_equal(as_bits(mine), to_numpy(theirs))


def assert_equal_njt(back: Any, t: Any) -> None:
    assert back.is_nested and back.layout == torch.jagged
    assert back._ragged_idx == t._ragged_idx
    assert torch.equal(back._values, t._values) and torch.equal(back._offsets, t._offsets)
    assert (back._lengths is None) == (t._lengths is None)
    if t._lengths is not None:
        assert torch.equal(back._lengths, t._lengths)
    assert all(torch.equal(a, b) for a, b in zip(back.unbind(), t.unbind()))


def njt(dtype: Any = torch.float32, ragged_idx: int = 1) -> Any:
    parts = [torch.arange(n * 3).reshape(n, 3).to(dtype) for n in (2, 4, 1)]
    t = torch.nested.nested_tensor(parts, layout=torch.jagged)
    return t.transpose(1, 2) if ragged_idx == 2 else t


def holey() -> Any:
    values = torch.arange(20.0).reshape(10, 2)
    offsets, lengths = torch.tensor([0, 3, 6, 10]), torch.tensor([2, 1, 4])
    return torch.nested.nested_tensor_from_jagged(values, offsets, lengths)


CASES = {
    "float32": lambda: njt(),
    "bfloat16": lambda: njt(torch.bfloat16),
    "int64": lambda: njt(torch.int64),
    "float16-ragged2": lambda: njt(torch.float16, ragged_idx=2),
    "lengths": holey,
    "1d": lambda: torch.nested.nested_tensor_from_jagged(
        torch.arange(10.0), torch.tensor([0, 3, 10])
    ),
    "jagged_dim2": lambda: torch.nested.nested_tensor_from_jagged(
        torch.arange(20.0).reshape(2, 10), torch.tensor([0, 3, 10]), jagged_dim=2
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_written_njt_loads_and_round_trips(case: str, legacy: bool) -> None:
    t = CASES[case]()
    value = pthfmt.load(torch_bytes({"n": t}, legacy))["n"]
    assert_same(value, t)
    with pthfmt.open(torch_bytes({"n": t}, legacy)) as ck:
        ref = ck.obj["n"]
        assert isinstance(ref.values, pthfmt.TensorRef)
        assert_same(ref, t)
        assert_equal_njt(torch_back(ref, "zip"), t)
    for fmt in ("zip", "legacy"):
        assert_equal_njt(torch_back(value, fmt), t)


def test_seqlens_are_the_cached_ones() -> None:
    t = njt()
    value = pthfmt.load(torch_bytes(t))
    assert (value.min_seqlen, value.max_seqlen) == (t._min_seqlen, t._max_seqlen) == (1, 4)
    assert value.shape == (3, None, 3) and value.dtype == np.float32
    back = torch_back(value, "zip")
    assert back._metadata_cache["max_seqlen"].shape == (4, 0)
    assert pthfmt.load(torch_bytes(holey())).min_seqlen is None  # torch cached none


def test_from_arrays_is_what_torch_builds() -> None:
    parts = [np.arange(n * 2, dtype=np.float32).reshape(n, 2) for n in (3, 0, 2)]
    value = pthfmt.JaggedArray.from_arrays(parts)
    t = torch.nested.nested_tensor([torch.from_numpy(p) for p in parts], layout=torch.jagged)
    assert_same(value, t)
    assert_equal_njt(torch_back(value, "zip"), t)
    assert repr(value) == (
        "JaggedArray(3 components, shape=(3, None, 2), dtype=float32, ragged_idx=1)"
    )


def test_torch_pickle_is_what_the_handlers_expect() -> None:
    """The globals torch 2.13 writes for an NJT are the ones allowlisted."""
    with zipfile.ZipFile(torch_bytes(njt())) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names = {a for op, a, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert names == {
        "torch._tensor _rebuild_from_type_v2",
        "torch.nested._internal.nested_tensor _rebuild_njt",
        "torch.nested._internal.nested_tensor NestedTensor",
        "torch._utils _rebuild_tensor_v2",
        "torch Tensor",
        "torch FloatStorage",
        "torch LongStorage",
        "collections OrderedDict",
        "__builtin__ set",
        "torch._dynamo.decorators _DimRange",
    }


# -- hostile variants: the pickle rewritten ------------------------------------------------------


def rewrite(t: Any, old: bytes, new: bytes) -> io.BytesIO:
    """``t`` saved by torch with the regex ``old`` replaced by ``new`` in its pickle (the
    zip is rewritten, so lengths may change)."""
    src = torch_bytes(t).getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data, count = re.subn(old, new, data, flags=re.DOTALL)
                assert count >= 1
            zout.writestr(info, data)
    out.seek(0)
    return out


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def test_unknown_njt_state_key_is_refused() -> None:
    bad = rewrite({"n": njt()}, re.escape(text("_lengths")), text("_lengthz"))
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith("NestedTensor state key '_lengthz' is not one torch writes")


def test_unknown_njt_argument_is_refused() -> None:
    bad = rewrite({"n": njt()}, re.escape(text("lengths")), text("lengthz"))
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith(
        "_rebuild_njt arguments are {'_metadata_cache', '_ragged_idx', 'lengthz', 'offsets', "
        "'requires_grad', 'values'}, not values, offsets, lengths, _ragged_idx, "
        "_metadata_cache, requires_grad"
    )


def test_unknown_dynamo_key_is_refused() -> None:
    bad = rewrite(
        njt(), re.escape(text("_has_dynamo_dim_marking")), text("_has_dynamo_dim_markinx")
    )
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith(
        "tensor state key '_has_dynamo_dim_markinx' is not one of dynamo's marks"
    )


def test_wrong_type_in_dynamo_state_is_refused() -> None:
    # min_seqlen's _specialize_on {0: []} -> {0: [0]} (only callables go there)
    bad = rewrite(njt(), rb"(_specialize_on.{2}}.{2}K\x00\].{2})s", b"\\1K\x00as")
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith(
        "tensor state '_specialize_on' holds {0: [0]}, not empty lists"
    )


def test_dim_range_state_is_checked() -> None:
    # _DimRange BUILD [0, None, None] -> [99, None, None]
    bad = rewrite(njt(), rb"\(K\x00NNe", b"(KcNNe")
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith("_DimRange dim is 99, not an int in [0, 64)")


def test_ragged_idx_out_of_range_is_refused() -> None:
    bad = rewrite(njt(), rb"(_ragged_idx.{2})K\x01", b"\\1K\x05")
    with pytest.raises(pthfmt.FormatError) as exc:
        pthfmt.load(bad)
    assert exc.value.message.startswith("NJT _ragged_idx 5 is not in [1, 2]")


def test_njt_function_to_another_class_is_refused() -> None:
    bad = rewrite(
        njt(), rb"ctorch.nested._internal.nested_tensor\nNestedTensor\n", b"ctorch\nTensor\n"
    )
    with pytest.raises(pthfmt.UnsafePickleError) as exc:
        pthfmt.load(bad)
    assert "_rebuild_njt builds only a NestedTensor" in exc.value.message


def bad_offsets() -> Any:
    values = torch.arange(10.0)
    return torch.nested.nested_tensor_from_jagged(values, torch.tensor([0, 7, 3, 12]))


def test_bad_offsets_are_corrupt_and_validate_reports_them(tmp_path: Path) -> None:
    t = bad_offsets()
    with pytest.raises(pthfmt.CorruptError) as exc:
        pthfmt.load(torch_bytes({"n": t}))
    assert exc.value.message.startswith(
        "jagged tensor offsets lie outside [0, 10] (the ragged axis of the values)"
    )
    path = tmp_path / "bad.pt"
    torch.save({"n": t}, path)
    torch.load(path, weights_only=True)  # torch itself accepts the file
    report = validate(str(path))
    found = [p for p in report.problems if p.code == "nested.jagged"]
    assert found and found[0].key_path == "n" and not report.ok
    with pthfmt.open(path) as ck:  # lazily: the error comes when the components are read
        with pytest.raises(pthfmt.CorruptError):
            ck.obj["n"].arrays()


def test_decreasing_offsets_and_long_lengths(tmp_path: Path) -> None:
    values = torch.arange(10.0)
    cases = {
        "dec": (torch.tensor([0, 7, 3, 10]), None, "jagged tensor offsets decrease"),
        "long": (
            torch.tensor([0, 3, 10]),
            torch.tensor([3, 8]),
            "jagged tensor offsets + lengths lie outside [0, 10] (the ragged axis of the values)",
        ),
    }
    for name, (offsets, lengths, message) in cases.items():
        t = torch.nested.nested_tensor_from_jagged(values, offsets, lengths)
        with pytest.raises(pthfmt.CorruptError) as exc:
            pthfmt.load(torch_bytes(t))
        assert exc.value.message.startswith(message), name
        path = tmp_path / f"{name}.pt"
        torch.save({"n": t}, path)
        assert [p.message for p in validate(str(path)).problems if p.code == "nested.jagged"] == [
            message
        ]


def test_offsets_not_spanning_the_values_warn(tmp_path: Path) -> None:
    t = torch.nested.nested_tensor_from_jagged(torch.arange(10.0), torch.tensor([0, 3, 6]))
    path = tmp_path / "span.pt"
    torch.save({"n": t}, path)
    with pytest.raises(RuntimeError):
        t.unbind()  # torch cannot split it
    found = [p for p in validate(str(path)).problems if p.code == "nested.jagged_span"]
    assert [p.message for p in found] == [
        "jagged tensor offsets run from 0 to 6, not from 0 to 10 (the ragged axis of the "
        "values) and there are no lengths"
    ]
    assert found[0].severity == "warning"


def test_a_valid_njt_file_is_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"a": njt(), "b": holey(), "c": njt(ragged_idx=2)}, path)
    report = validate(str(path))
    assert report.ok and not report.problems, report.problems


@settings(max_examples=60, deadline=None)
@given(pst.jagged_arrays())
def test_strategy_njts_load_in_torch(value: Any) -> None:
    for fmt in ("zip", "legacy"):
        back = torch_back(value, fmt)
        assert back.layout == torch.jagged and back._ragged_idx == value.ragged_idx
        mine = value.arrays()
        assert len(mine) == back.size(0)
        for a, b in zip(mine, back.unbind()):
            assert np.array_equal(as_bits(a), to_numpy(b), equal_nan=True)
        again = pthfmt.load(io.BytesIO(_saved(value, fmt)))
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(again.arrays(), mine))


def _saved(value: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    pthfmt.save(value, buf, format=fmt)
    return buf.getvalue()


# -- the handlers on values a hostile pickle can build ------------------------------------------


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {"_specialize_on": {0: np.zeros(2)}},
            "tensor state '_specialize_on' holds {0: array([0., 0.])}, not empty lists",
        ),
        (
            {"_dynamo_dynamic_indices": {64}},
            "tensor state '_dynamo_dynamic_indices' is {64}, not a set of dimensions",
        ),
        (
            {"_dynamo_dynamic_range": {(0, None, None)}},
            "tensor state '_dynamo_dynamic_range' is {(0, None, None)}, not a set of _DimRange",
        ),
        (
            {"_dynamo_hint_overrides": {0: 1 << 70}},
            "tensor state '_dynamo_hint_overrides' holds {0: 1180591620717411303424}, not int "
            "hints",
        ),
        (
            {"_has_dynamo_dim_marking": True, "foo": 1},
            "tensor state key 'foo' is not one of dynamo's marks",
        ),
    ],
)
def test_dynamo_state_values_are_checked(state: dict[str, Any], message: str) -> None:
    from pthfmt.torch.kinds import check_dynamo_state

    with pytest.raises(pthfmt.FormatError) as exc:
        check_dynamo_state(state, "tensor")
    assert exc.value.message == message
    check_dynamo_state({"other": np.zeros(2)}, "tensor")  # no dynamo marks: not looked at


def test_njt_state_with_an_array_for_ragged_idx_is_refused() -> None:
    from pthfmt.torch.kinds import _njt_state

    value = pthfmt.JaggedArray.from_arrays([np.zeros((2, 3)), np.zeros((1, 3))])
    with pytest.raises(pthfmt.FormatError) as exc:
        _njt_state(value, {"_ragged_idx": np.ones(3, np.int64)})
    assert exc.value.message == (
        "NestedTensor state _ragged_idx differs from the _rebuild_njt argument"
    )
    _njt_state(value, {"_ragged_idx": 1, "_values": value.values, "_offsets": value.offsets})


def test_lengths_that_would_overflow_are_corrupt() -> None:
    value = pthfmt.JaggedArray(np.zeros(10), np.array([0, 5, 10]), np.array([2, (1 << 63) - 1]), 1)
    with pytest.raises(pthfmt.CorruptError) as exc:
        value.arrays()
    assert exc.value.message == (
        "jagged tensor offsets + lengths lie outside [0, 10] (the ragged axis of the values)"
    )
    with pytest.raises(pthfmt.UnserializableError):
        pthfmt.save(value, io.BytesIO())


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"min_seqlen": 3}, "NJT min_seqlen is a int, not a tensor"),
        (
            {"max_seqlen": np.zeros((3, 1), np.float32)},
            "NJT max_seqlen has shape (3, 1), not (n, 0)",
        ),
        (
            {"min_seqlen": np.zeros((1, 0)), "inverse": 1},
            "NJT _metadata_cache holds {'inverse', 'min_seqlen'}, not min_seqlen and max_seqlen",
        ),
        ([], "NJT _metadata_cache holds a list, not min_seqlen and max_seqlen"),
    ],
)
def test_wrong_types_in_the_cache_are_refused(cache: Any, message: str) -> None:
    from pthfmt.torch.kinds import _seqlens

    with pytest.raises(pthfmt.FormatError) as exc:
        _seqlens(cache)
    assert exc.value.message == message
    assert _seqlens({"max_seqlen": np.zeros((4, 0), np.float32)}) == (None, 4)


def test_a_parameter_of_an_njt_loads_as_torch_loads_it() -> None:
    """torch pickles nn.Parameter(njt) as the NJT with ``_is_param`` in its state, and loads
    a NestedTensor."""
    t = njt()
    loaded = torch.load(torch_bytes({"p": torch.nn.Parameter(t)}), weights_only=True)["p"]
    assert type(loaded).__name__ == "NestedTensor"
    value = pthfmt.load(torch_bytes({"p": torch.nn.Parameter(t)}))["p"]
    assert value.requires_grad
    assert_same(value, t)
