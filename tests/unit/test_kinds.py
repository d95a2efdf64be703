"""Quantized, sparse, nested and meta tensors without torch: crafted pickles with malformed
rebuild arguments give exact PthErrors at the right key path; the numpy representations'
own arithmetic (packing, dequantize, to_dense, nested views); validation of what torch
does not check; non-checkpoint zip archives named."""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pthfmt
from pthfmt import strategies as pst
from pthfmt.errors import CorruptError, FormatError, UnserializableError, UnsupportedError
from pthfmt.model.kinds import (
    NestedArray,
    QuantizedArray,
    SparseArray,
    pack_subbyte,
    unpack_subbyte,
)
from pthfmt.pickle.pickler import GlobalRef, PersistentId, Pickler, Reduction
from pthfmt.validation.kinds import check_kind, check_tree

U = "torch._utils"
QTENSOR = GlobalRef(U, "_rebuild_qtensor")
SPARSE = GlobalRef(U, "_rebuild_sparse_tensor")
NESTED = GlobalRef(U, "_rebuild_nested_tensor")
META = GlobalRef(U, "_rebuild_meta_tensor_no_storage")
V2 = GlobalRef(U, "_rebuild_tensor_v2")
LAYOUT = GlobalRef("torch.serialization", "_get_layout")
PER_TENSOR = GlobalRef("torch", "per_tensor_affine")
PER_CHANNEL = GlobalRef("torch", "per_channel_affine")


def _storage(key: str, cls: str, numel: int) -> PersistentId:
    return PersistentId(("storage", GlobalRef("torch", cls), key, "cpu", numel))


def _tensor(key: str, cls: str, shape: tuple[int, ...]) -> Reduction:
    numel = int(np.prod(shape))
    strides = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
    return Reduction(V2, (_storage(key, cls, numel), 0, shape, strides, False, OrderedDict()))


def craft(obj: Any, records: dict[str, bytes] | None = None) -> bytes:
    """A zip checkpoint whose pickle is ``obj`` (Reductions written as they are)."""
    pickled = Pickler(lambda o, p: o).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        for key, data in (records or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def load_error(
    obj: Any, records: dict[str, bytes] | None = None, kind: type = FormatError
) -> pthfmt.PthError:
    data = craft({"a": {"b": obj}}, records)
    with pytest.raises(kind) as exc:
        pthfmt.load(io.BytesIO(data))
    assert exc.value.key_path == "a.b"
    return exc.value


def qtensor(
    qparams: Any,
    *,
    cls: str = "QInt8Storage",
    size: Any = (4,),
    stride: Any = (1,),
    numel: int = 4,
    requires_grad: Any = False,
) -> Reduction:
    return Reduction(
        QTENSOR, (_storage("0", cls, numel), 0, size, stride, qparams, requires_grad, OrderedDict())
    )


Q_RECORD = {"0": bytes(4)}
F64 = {"1": np.array([0.5, 0.25], np.float64).tobytes(), "2": np.array([1, 2], np.int64).tobytes()}


# -- quantized ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qparams", "message"),
    [
        ("x", "quantizer_params is 'x', not a tuple"),
        ((PER_TENSOR, 0.1), "per_tensor_affine quantizer_params has 2 items, not 3"),
        (
            (PER_TENSOR, "s", 0),
            "per_tensor_affine scale 's' and zero point 0 are not a float and an int",
        ),
        (
            (PER_TENSOR, 0.1, 1 << 70),
            "per_tensor_affine zero point 1180591620717411303424 is not an int64",
        ),
        (
            (GlobalRef("torch", "per_tensor_symmetric"), 0.1, 0),
            "quantizer_params qscheme <torch.per_tensor_symmetric> (torch loads only "
            "per_tensor_affine, per_channel_affine and per_channel_affine_float_qparams)",
        ),
        ((PER_CHANNEL, [0.1], [0]), "per-channel quantizer_params has 3 items, not 4"),
        ((PER_CHANNEL, [0.1], [0], 1), "per-channel axis 1 is out of range for size (4,)"),
        (
            (PER_CHANNEL, [0.1], [0], 0),
            "per-channel scales of shape (1,) and zero points of shape "
            "(1,) do not match size[0] = 4",
        ),
        (
            (PER_CHANNEL, ["a"] * 4, [0] * 4, 0),
            "per-channel scales list holds something other than numbers",
        ),
        ((PER_CHANNEL, "s", "z", 0), "per-channel scales is a str, not a tensor"),
    ],
)
def test_qtensor_bad_qparams(qparams: Any, message: str) -> None:
    assert load_error(qtensor(qparams), Q_RECORD).message == message


def test_qtensor_bad_storage_and_flags() -> None:
    err = load_error(qtensor((PER_TENSOR, 0.1, 0), cls="FloatStorage", numel=1), Q_RECORD)
    assert err.message == "_rebuild_qtensor storage is FloatStorage, not a quantized storage"
    err = load_error(qtensor((PER_TENSOR, 0.1, 0), requires_grad=1), Q_RECORD)
    assert err.message == "_rebuild_qtensor requires_grad is 1, not a bool"
    err = load_error(qtensor((PER_TENSOR, 0.1, 0), size=(2, -1), stride=(1, 1)), Q_RECORD)
    assert err.message == "_rebuild_qtensor size holds -1, not an int in [0, 2**63)"
    err = load_error(qtensor((PER_TENSOR, 0.1, 0), size=(5,)), Q_RECORD, CorruptError)
    assert err.message == (
        "tensor on storage '0': view (offset 0, size (5,), stride (1,)) "
        "needs 5 bytes of a 4-byte storage"
    )


def test_qtensor_subbyte_view_counts_values() -> None:
    # quint4x2: 3 bytes hold 6 values; 7 values do not fit
    record = {"0": bytes([0x21, 0x43, 0x65])}
    ok = craft(
        {"q": qtensor((PER_TENSOR, 0.5, 1), cls="QUInt4x2Storage", size=(6,), numel=3)}, record
    )
    q = pthfmt.load(io.BytesIO(ok))["q"]
    assert q.dtype == "quint4x2" and q.int_repr().tolist() == [1, 2, 3, 4, 5, 6]
    assert q.dequantize().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    with pthfmt.open(io.BytesIO(ok)) as ck:
        assert ck.obj["q"].int_repr().tolist() == [1, 2, 3, 4, 5, 6]
    err = load_error(
        qtensor((PER_TENSOR, 0.5, 1), cls="QUInt4x2Storage", size=(7,), numel=3),
        record,
        CorruptError,
    )
    assert err.message == (
        "tensor on storage '0': view (offset 0, size (7,), stride (1,)) "
        "needs 7 bytes of a 6-byte storage"
    )


def test_qtensor_per_channel_from_tensors() -> None:
    qp = (PER_CHANNEL, _tensor("1", "DoubleStorage", (2,)), _tensor("2", "LongStorage", (2,)), 0)
    data = craft({"q": qtensor(qp, size=(2, 2), stride=(2, 1))}, {**Q_RECORD, **F64})
    q = pthfmt.load(io.BytesIO(data))["q"]
    assert (q.qscheme, q.axis) == ("per_channel_affine", 0)
    assert q.scale.tolist() == [0.5, 0.25] and q.zero_point.tolist() == [1, 2]
    assert q.dequantize().tolist() == [[-0.5, -0.5], [-0.5, -0.5]]


# -- sparse --------------------------------------------------------------------------------------

IDX = {"0": np.array([[0, 1], [1, 0]], np.int64).tobytes(), "1": np.ones(2, np.float32).tobytes()}


def coo(*data: Any, layout: str = "torch.sparse_coo") -> Reduction:
    return Reduction(SPARSE, (Reduction(LAYOUT, (layout,)), tuple(data)))


INDICES = _tensor("0", "LongStorage", (2, 2))
VALUES = _tensor("1", "FloatStorage", (2,))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            coo(INDICES, VALUES, (2, 2), True, layout="torch.strided"),
            "_rebuild_sparse_tensor layout 'torch.strided' is not a sparse layout",
        ),
        (
            Reduction(SPARSE, (Reduction(LAYOUT, ("torch.sparse_coo",)), [1])),
            "_rebuild_sparse_tensor data is a list, not a tuple",
        ),
        (coo(INDICES, VALUES), "sparse_coo data has 2 items, not 3 or 4"),
        (coo(INDICES, VALUES, (2, 2), 1), "sparse_coo is_coalesced is 1, not a bool"),
        (coo(INDICES, VALUES, (2, "x")), "sparse_coo size holds 'x', not an int in [0, 2**63)"),
        (
            coo(VALUES, VALUES, (2, 2)),
            "sparse_coo indices are float32 of shape (2,), not 2-d int64",
        ),
        (coo(INDICES, "v", (2, 2)), "sparse_coo values is a str, not a tensor"),
        (
            coo(INDICES, VALUES, (2, 2, 2)),
            "sparse_coo shapes do not fit together: indices (2, 2), values (2,), size (2, 2, 2)",
        ),
        (
            coo(INDICES, VALUES, VALUES, (2, 2), layout="torch.sparse_csr"),
            "sparse_csr indices are int64 and float32, not both int32 or int64",
        ),
        (
            coo(INDICES, VALUES, VALUES, layout="torch.sparse_csr"),
            "sparse_csr data has 3 items, not 4",
        ),
        (
            coo(INDICES, INDICES, VALUES, (2, 2), layout="torch.sparse_csc"),
            "sparse_csc shapes do not fit together: compressed indices (2, 2), plain indices "
            "(2, 2), values (2,), size (2, 2)",
        ),
    ],
)
def test_sparse_bad_arguments(obj: Any, message: str) -> None:
    assert load_error(obj, IDX).message == message


def test_sparse_loads_unchecked_and_validate_reports() -> None:
    bad = {"0": np.array([[0, 5], [1, 0]], np.int64).tobytes(), "1": IDX["1"]}
    value = pthfmt.load(io.BytesIO(craft({"s": coo(INDICES, VALUES, (2, 2), True)}, bad)))["s"]
    assert value.layout == "sparse_coo" and value.coalesced is True
    with pytest.raises(CorruptError, match=r"sparse COO indices lie outside the shape \(2, 2\)"):
        value.to_dense()
    [problem] = check_tree({"s": value})
    assert (problem.code, problem.key_path, problem.message) == (
        "sparse.indices",
        "s",
        "sparse_coo index 5 of entry 1 lies outside dimension 0 of size 2",
    )


def test_validate_order_and_qparams() -> None:
    unsorted = SparseArray(
        "sparse_coo",
        (2, 2),
        np.ones(2, np.float32),
        indices=np.array([[1, 0], [0, 1]]),
        coalesced=True,
    )
    assert [p.code for p in check_kind(unsorted)] == ["sparse.order"]
    assert (
        check_kind(
            SparseArray(
                "sparse_coo",
                (2, 2),
                np.ones(2, np.float32),
                indices=np.array([[1, 0], [0, 1]]),
                coalesced=False,
            )
        )
        == []
    )
    csr = SparseArray(
        "sparse_csr",
        (2, 3),
        np.ones(3, np.float32),
        compressed_indices=np.array([0, 2, 3]),
        plain_indices=np.array([2, 1, 0]),
    )
    assert [p.message for p in check_kind(csr)] == [
        "sparse_csr plain indices of a compressed segment are not sorted and unique"
    ]
    ptr = SparseArray(
        "sparse_csr",
        (2, 3),
        np.ones(3, np.float32),
        compressed_indices=np.array([0, 2, 4]),
        plain_indices=np.array([0, 1, 0]),
    )
    assert [p.message for p in check_kind(ptr)] == [
        "sparse_csr compressed indices are not a pointer array of 3 entries from 0 to 3"
    ]
    q = QuantizedArray(
        "qint8",
        np.zeros(2, np.int8),
        "per_channel_affine_float_qparams",
        np.array([0.1, -1.0], np.float32),
        np.array([0, np.inf], np.float32),
        0,
    )
    assert [p.message for p in check_kind(q, "q")] == [
        "quantization scale -1.0 is not a finite positive number",
        "quantization zero point inf is not finite",
    ]


# -- nested and meta -----------------------------------------------------------------------------

NESTED_RECORDS = {
    "0": np.arange(5, dtype=np.float32).tobytes(),
    "1": np.array([[2], [3]], np.int64).tobytes(),
    "2": np.array([[1], [1]], np.int64).tobytes(),
    "3": np.array([0, 2], np.int64).tobytes(),
}


def nested(offsets: tuple[int, ...] = (2,)) -> Reduction:
    return Reduction(
        NESTED,
        (
            _tensor("0", "FloatStorage", (5,)),
            _tensor("1", "LongStorage", (2, 1)),
            _tensor("2", "LongStorage", (2, 1)),
            _tensor("3", "LongStorage", offsets),
        ),
    )


def test_nested_components_load_and_open() -> None:
    data = craft({"n": nested()}, NESTED_RECORDS)
    n = pthfmt.load(io.BytesIO(data))["n"]
    assert [c.tolist() for c in n.components] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    with pthfmt.open(io.BytesIO(data)) as ck:
        refs = ck.obj["n"].components
        assert [r.storage_offset for r in refs] == [0, 2]
        assert [r.numpy().tolist() for r in refs] == [[0.0, 1.0], [2.0, 3.0, 4.0]]


def test_nested_component_outside_buffer() -> None:
    records = {**NESTED_RECORDS, "3": np.array([0, 3], np.int64).tobytes()}
    err = load_error(nested(), records, CorruptError)
    assert err.message == (
        "tensor on storage 'nested buffer': view (offset 3, size (3,), "
        "stride (1,)) needs 24 bytes of a 20-byte storage"
    )
    err = load_error(
        Reduction(NESTED, (_tensor("0", "FloatStorage", (5,)), "s", "t", "o")), NESTED_RECORDS
    )
    assert err.message == "nested tensor sizes is a str, not a tensor"
    err = load_error(nested(offsets=(2, 1)), {**NESTED_RECORDS, "3": bytes(16)})
    assert err.message == "nested tensor offsets are int64 of shape (2, 1)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("f", (2,), (1,), False), "meta tensor dtype is 'f', not a torch dtype"),
        (
            (GlobalRef("torch", "float32"), (2, 3), (1,), False),
            "meta tensor size (2, 3) and stride (1,) differ in length",
        ),
        (
            (GlobalRef("torch", "float32"), (2,), (1,), None),
            "meta tensor requires_grad is None, not a bool",
        ),
        (
            (GlobalRef("torch", "float32"), [1.5], (1,), False),
            "meta tensor size holds 1.5, not an int in [0, 2**63)",
        ),
    ],
)
def test_meta_bad_arguments(args: tuple[Any, ...], message: str) -> None:
    assert load_error(Reduction(META, args)).message == message


def test_meta_has_no_data() -> None:
    data = craft({"m": Reduction(META, (GlobalRef("torch", "bfloat16"), (2, 3), (3, 1), True))})
    m = pthfmt.load(io.BytesIO(data))["m"]
    assert (m.dtype, m.shape, m.stride, m.requires_grad, m.numel) == (
        "bfloat16",
        (2, 3),
        (3, 1),
        True,
        6,
    )
    with pytest.raises(UnsupportedError) as exc:
        m.numpy()
    assert exc.value.message == ("a meta tensor (dtype bfloat16, shape (2, 3)) has no data to read")


# -- the representations -------------------------------------------------------------------------


@given(st.sampled_from([2, 4]), st.lists(st.integers(0, 255), max_size=40))
def test_pack_unpack_round_trip(bits: int, raw: list[int]) -> None:
    values = np.array(raw, np.uint8) & ((1 << bits) - 1)
    packed = pack_subbyte(values, bits)
    assert packed.size == -(-values.size // (8 // bits))
    assert unpack_subbyte(packed, bits, values.size).tolist() == values.tolist()


def test_pack_is_low_bits_first() -> None:
    assert pack_subbyte(np.array([1, 2, 3], np.uint8), 4).tolist() == [0x21, 0x03]
    assert pack_subbyte(np.array([1, 2, 3, 0, 1], np.uint8), 2).tolist() == [0b00111001, 1]


def test_dequantize_qint32_wraps_as_torch() -> None:
    q = QuantizedArray("qint32", np.array([-(2**31), 5], np.int32), "per_tensor_affine", 1.0, 7)
    assert q.dequantize().tolist() == [2147483648.0, -2.0]


def test_to_dense_of_a_huge_shape_is_a_limit_error() -> None:
    s = SparseArray(
        "sparse_coo", (2**40, 2**40), np.ones(0, np.float32), indices=np.zeros((2, 0), np.int64)
    )
    with pytest.raises(pthfmt.LimitError) as exc:
        s.to_dense()
    assert exc.value.message == (
        "a dense array of shape (1099511627776, 1099511627776) is too large for numpy"
    )


def test_bsr_to_dense() -> None:
    s = SparseArray(
        "sparse_bsr",
        (2, 4),
        np.arange(4, dtype=np.float32).reshape(1, 2, 2),
        compressed_indices=np.array([0, 1]),
        plain_indices=np.array([1]),
    )
    assert s.to_dense().tolist() == [[0, 0, 0, 1], [0, 0, 2, 3]]


def test_nested_from_arrays() -> None:
    n = NestedArray.from_arrays([np.ones((2, 3)), np.zeros((1, 3))])
    assert n.sizes.tolist() == [[2, 3], [1, 3]] and n.offsets.tolist() == [0, 6]
    assert [c.shape for c in n.components] == [(2, 3), (1, 3)]


@given(pst.kinds())
def test_strategies_round_trip_through_pthfmt(value: Any) -> None:
    for fmt in ("zip", "legacy"):
        buf = io.BytesIO()
        if fmt == "legacy" and isinstance(value, NestedArray):
            with pytest.raises(UnserializableError, match="nested tensors from the legacy"):
                pthfmt.save({"v": value}, buf, format=fmt)
            continue
        pthfmt.save({"v": value}, buf, format=fmt)
        back = pthfmt.load(io.BytesIO(buf.getvalue()))["v"]
        assert type(back) is type(value)
        assert check_kind(back) == []
        if isinstance(value, QuantizedArray):
            assert (back.dtype, back.qscheme, back.axis) == (value.dtype, value.qscheme, value.axis)
            assert np.array_equal(back.int_repr(), value.int_repr())
            assert np.array_equal(back.dequantize(), value.dequantize(), equal_nan=True)
        elif isinstance(value, SparseArray):
            assert (back.layout, back.shape, back.coalesced) == (
                value.layout,
                value.shape,
                value.coalesced,
            )
            assert np.array_equal(back.to_dense(), value.to_dense())
        elif isinstance(value, (NestedArray, pthfmt.JaggedArray)):
            assert all(
                np.array_equal(a, b, equal_nan=True) for a, b in zip(back.arrays(), value.arrays())
            )
        else:
            assert (back.dtype, back.shape, back.stride) == (value.dtype, value.shape, value.stride)


def test_save_refuses_bad_values() -> None:
    bad = QuantizedArray("quint4x2", np.array([16], np.uint8), "per_tensor_affine", 1.0, 0)
    with pytest.raises(UnserializableError) as exc:
        pthfmt.save({"q": bad}, io.BytesIO())
    assert (exc.value.message, exc.value.key_path) == ("quint4x2 values must lie in [0, 16)", "q")
    odd = QuantizedArray("qint8", np.zeros(2, np.int8), "per_tensor_symmetric", 1.0, 0)
    with pytest.raises(UnserializableError, match="qscheme 'per_tensor_symmetric' cannot"):
        pthfmt.save({"q": odd}, io.BytesIO())


# -- zip archives that are not checkpoints -------------------------------------------------------


def _zip(names: list[str]) -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in names:
            z.writestr(name, b"x")
    out.seek(0)
    return out


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["pkg/.data/version", "pkg/.data/extern_modules", "pkg/res/model.pkl"],
            "a torch.package archive (.data/extern_modules): only torch.package.PackageImporter "
            "reads it, by importing and running the Python modules it packages (record "
            "pkg/data.pkl is missing)",
        ),
        (
            ["x.npy", "y.npy"],
            "a numpy .npz archive (numpy.load reads it) (zip record 'x.npy' is "
            "not inside an archive folder)",
        ),
        (
            ["[Content_Types].xml", "word/document.xml"],
            "an Office Open XML document (zip record '[Content_Types].xml' is not inside an "
            "archive folder)",
        ),
        (
            ["a/version", "a/other"],
            "a zip archive of 2 records with no data.pkl, not a torch "
            "checkpoint (record a/data.pkl is missing)",
        ),
    ],
)
def test_other_zip_archives_are_named(names: list[str], message: str) -> None:
    with pytest.raises(FormatError) as exc:
        pthfmt.load(_zip(names))
    assert exc.value.message == message
