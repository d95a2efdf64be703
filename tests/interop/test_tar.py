"""The pre-0.4 tar checkpoint format against torch 2.13: every file ``tests.support.tar``
builds is first loaded by ``torch.load(weights_only=False)`` to prove the builder right, then
compared with what pthfmt makes of it.  (pthfmt alone on these files: ``tests/unit/test_tar.py``.)
"""

from __future__ import annotations

import io
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import pthfmt
from pthfmt import UnsafePickleError
from pthfmt.model.storage import StorageSlice
from tests.support.tar import (
    F32,
    I16,
    OUTSIDE,
    PARAMETER,
    SYS_INFO,
    TENSORS,
    Call,
    Glob,
    Ref,
    dumps,
    example,
    expected_array,
    from_mmap,
    get,
    members,
    ptr,
    raises,
    storages_member,
    tar_bytes,
    tensors_member,
    write,
)

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning"),
]


def torch_bytes(t: Any) -> bytes:
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    return write(tmp_path, tar_bytes(members(example())))


# -- torch agrees with the builder ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, "py2", 4])
def test_torch_loads_the_builder(torch_mod: Any, tmp_path: Path, protocol: int | str) -> None:
    spec = example()
    path = write(tmp_path, tar_bytes(members(spec, protocol)))
    out = torch_mod.load(path, weights_only=False)
    roots = {
        "1001": out["a"].untyped_storage().data_ptr(),
        "1002": out["longs"][1].untyped_storage().data_ptr(),
    }
    for path_, (root, elem, data) in TENSORS.items():
        t = get(out, path_)
        want = expected_array(spec, path_)
        assert tuple(t.shape) == want.shape
        assert torch_bytes(t) == np.ascontiguousarray(want).tobytes()
        if root in roots and t.numel():
            assert t.data_ptr() - roots[root] == elem * data.itemsize
    assert out["b"].stride() == (1, 2) and out["b"].storage_offset() == 1
    assert out["a_again"] is out["a"] and out["nested"]["w"] is out["b"]
    assert out["storage"].tolist() == I16.tolist()
    assert bytes(out["view"]._untyped_storage) == F32[4:10].tobytes()
    assert out["view"].data_ptr() - roots["1001"] == 16
    assert (out["epoch"], out["name"]) == (7, "net")


def test_torch_refuses_weights_only(torch_mod: Any, example_path: Path) -> None:
    with pytest.raises(Exception, match=r"legacy \.tar format"):
        torch_mod.load(example_path, weights_only=True)


# -- pthfmt agrees with torch --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, "py2", 4])
def test_load_matches_torch(torch_mod: Any, tmp_path: Path, protocol: int | str) -> None:
    path = write(tmp_path, tar_bytes(members(example(), protocol)))
    ref = torch_mod.load(path, weights_only=False)
    out = pthfmt.load(path)
    roots = {
        "1001": ptr(out["a"]),
        "1002": ptr(out["longs"][1]),
        "1003": ptr(out["storage"].buffer(False)),
    }
    for key_path, (root, elem, data) in TENSORS.items():
        t, arr = get(ref, key_path), get(out, key_path)
        assert isinstance(arr, np.ndarray)
        assert str(t.dtype) == f"torch.{arr.dtype}"
        assert arr.shape == tuple(t.shape)
        assert arr.strides == tuple(s * arr.itemsize for s in t.stride())
        assert np.ascontiguousarray(arr).tobytes() == torch_bytes(t)
        if arr.size:
            assert ptr(arr) - roots[root] == elem * data.itemsize
        assert arr.flags.writeable and not from_mmap(arr)
    assert out["a_again"] is out["a"] and out["nested"]["w"] is out["b"]
    assert (out["epoch"], out["name"]) == (7, "net")


def test_load_shares_memory_where_torch_does(torch_mod: Any, example_path: Path) -> None:
    ref = torch_mod.load(example_path, weights_only=False)
    out = pthfmt.load(example_path)
    assert np.shares_memory(out["a"], out["b"])  # b lies on a view of a's storage
    assert not np.shares_memory(out["a"], out["longs"][0])
    ref["a"][1, 2] = 99.0
    out["a"][1, 2] = 99.0
    assert ref["b"][0, 0].item() == out["b"][0, 0] == 99.0
    ref["longs"][1][2, 1] = -1  # zero stride: one element, 3 rows
    out["longs"][1][2, 1] = -1
    assert ref["longs"][1][:, 1].tolist() == out["longs"][1][:, 1].tolist() == [-1, -1, -1]
    assert ref["longs"][0][0].item() == out["longs"][0][0] == -1


def test_bare_storage_and_storage_view(torch_mod: Any, example_path: Path) -> None:
    ref = torch_mod.load(example_path, weights_only=False)
    ref_storage, ref_view = ref["storage"].tolist(), ref["view"]
    view_offset = ref_view.data_ptr() - ref["a"].untyped_storage().data_ptr()
    view_bytes = bytes(ref_view._untyped_storage)
    out = pthfmt.load(example_path)
    storage = out["storage"]
    assert isinstance(storage, pthfmt.StorageInfo)
    assert (storage.key, storage.dtype.name, storage.numel) == ("1003", "int16", 3)
    assert storage.buffer(False).view("<i2").tolist() == ref_storage
    view = out["view"]
    assert isinstance(view, StorageSlice)
    assert (view.base.key, view.start, view.numel) == ("1001", 4, 6)
    assert view.start * 4 == view_offset
    base = view.base.buffer(False)
    assert base[view.start * 4 : (view.start + view.numel) * 4].tobytes() == view_bytes
    assert np.shares_memory(base, out["a"])


@pytest.mark.parametrize("mmap_", [False, True])
def test_open_matches_torch(torch_mod: Any, example_path: Path, mmap_: bool) -> None:
    ref = torch_mod.load(example_path, weights_only=False)
    with pthfmt.open(example_path) as ck:
        assert ck.format == "tar"
        assert ck.records == ["sys_info", "pickle", "tensors", "storages"]
        assert ck.version == "1000" and ck.byteorder == "little"
        assert list(ck.storages) == ["1001", "1002", "1003"]
        assert all(s.record == "storages" for s in ck.storages.values())
        found = dict(ck.tensors())
        assert set(found) == {"a", "b", "longs.0", "longs.1", "empty"}  # nested.w is b
        data = example_path.read_bytes()
        for key_path, (root, elem, arr) in TENSORS.items():
            t, tref = get(ref, key_path), found[key_path]
            assert isinstance(tref, pthfmt.TensorRef)
            assert (tref.storage_key, tref.storage_offset) == (root, elem)
            assert tref.shape == tuple(t.shape) and tref.stride == t.stride()
            assert f"torch.{tref.dtype}" == str(t.dtype) and str(tref.device) == "cpu"
            info = ck.storages[root]
            assert data[info.offset : info.offset + info.nbytes] == arr.tobytes()
            got = tref.numpy(mmap=mmap_)
            assert np.ascontiguousarray(got).tobytes() == torch_bytes(t)
            if got.size:
                assert from_mmap(got) is mmap_ and got.flags.writeable is not mmap_


DTYPES = [
    ("FloatStorage", "FloatTensor", np.float32),
    ("DoubleStorage", "DoubleTensor", "<f8"),
    ("HalfStorage", "HalfTensor", "<f2"),
    ("LongStorage", "LongTensor", "<i8"),
    ("IntStorage", "IntTensor", "<i4"),
    ("ShortStorage", "ShortTensor", "<i2"),
    ("CharStorage", "CharTensor", "i1"),
    ("ByteStorage", "ByteTensor", "u1"),
    ("BoolStorage", "BoolTensor", "?"),
    ("BFloat16Storage", "BFloat16Tensor", ml_dtypes.bfloat16),
]


def test_every_legacy_storage_class(torch_mod: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    storages, tensors, obj = [], [], {}
    for i, (scls, tcls, dtype) in enumerate(DTYPES):
        raw = rng.integers(0, 256, 12 * np.dtype(dtype).itemsize, dtype=np.uint8)
        data = (raw % 2 if np.dtype(dtype).kind == "b" else raw).view(dtype)
        storages.append((100 + i, "cpu", scls, data))
        tensors.append((200 + i, 100 + i, tcls, (3, 2), (1, 3), 2))
        obj[scls] = Ref(str(200 + i))
    path = write(
        tmp_path,
        tar_bytes(
            {
                "sys_info": dumps(SYS_INFO),
                "pickle": dumps(obj),
                "tensors": tensors_member(tensors),
                "storages": storages_member(storages, []),
            }
        ),
    )
    ref = torch_mod.load(path, weights_only=False)
    out = pthfmt.load(path)
    for scls, _, _ in DTYPES:
        t, arr = ref[scls], out[scls]
        assert str(t.dtype) == f"torch.{pthfmt.open(path).obj[scls].dtype}", scls
        assert arr.shape == (3, 2) and arr.strides == (arr.itemsize, 3 * arr.itemsize)
        assert np.ascontiguousarray(arr).tobytes() == torch_bytes(t), scls


def test_torch_maps_cuda_locations(torch_mod: Any, tmp_path: Path) -> None:
    """The file of tests/unit/test_tar.py::test_cuda_locations_and_map_location, read by
    torch on the CPU."""
    spec = {
        "storages": [(11, "cuda:1", "DoubleStorage", np.arange(4, dtype="<f8"))],
        "views": [],
        "tensors": [(12, 11, "torch.cuda.DoubleTensor", (4,), (1,), 0)],
        "obj": {"w": Ref("12")},
    }
    path = write(tmp_path, tar_bytes(members(spec)))
    ref = torch_mod.load(path, weights_only=False, map_location="cpu")
    assert ref["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_dialects_and_extra_members(torch_mod: Any, tmp_path: Path, fmt: int) -> None:
    parts = members(example())
    long_name = "notes/" + "x" * (90 if fmt == tarfile.USTAR_FORMAT else 150)
    items = [(long_name, b"ignored by torch"), *parts.items(), ("README", b"hello")]
    kw = {"pax_headers": {"comment": "written by a test"}} if fmt == tarfile.PAX_FORMAT else {}
    path = write(tmp_path, tar_bytes(items, fmt, **kw))
    ref = torch_mod.load(path, weights_only=False)
    out = pthfmt.load(path)
    assert np.ascontiguousarray(out["b"]).tobytes() == torch_bytes(ref["b"])
    assert pthfmt.open(path).records == [long_name, *parts, "README"]


def test_pax_extended_header_on_a_member(torch_mod: Any, tmp_path: Path) -> None:
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members(example()).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.uname = "jürgen"  # not ASCII: a PAX 'x' header per member
            tar.addfile(info, io.BytesIO(data))
    data = f.getvalue()
    assert data[156:157] == b"x"
    path = write(tmp_path, data)
    ref = torch_mod.load(path, weights_only=False)
    assert np.ascontiguousarray(pthfmt.load(path)["b"]).tobytes() == torch_bytes(ref["b"])


def test_sys_info_is_optional(torch_mod: Any, tmp_path: Path) -> None:
    parts = members(example())
    del parts["sys_info"]
    path = write(tmp_path, tar_bytes(parts))
    ref = torch_mod.load(path, weights_only=False)
    with pthfmt.open(path) as ck:
        assert ck.version is None and ck.records == ["pickle", "tensors", "storages"]
        assert ck.obj["a"].numpy().tobytes() == torch_bytes(ref["a"])


def test_parameters_with_variable_state(torch_mod: Any, tmp_path: Path) -> None:
    """torch 0.3 pickled a Parameter as ``Parameter(data)`` + BUILD (requires_grad, volatile,
    hooks); torch 2.13 still loads that through ``Tensor.__setstate__``."""
    spec = example()
    spec["obj"] = {
        "w": Call(PARAMETER, (Ref("3001"),), (False, False, OrderedDict())),
        "b": Call(PARAMETER, (Ref("3002"),), (True, False, None)),
    }
    path = write(tmp_path, tar_bytes(members(spec)))
    ref = torch_mod.load(path, weights_only=False)
    with pthfmt.open(path) as ck:
        for name in ("w", "b"):
            t, tref = ref[name], ck.obj[name]
            assert isinstance(t, torch_mod.nn.Parameter) and tref.is_parameter
            assert tref.requires_grad == t.requires_grad
            assert np.ascontiguousarray(tref.numpy()).tobytes() == torch_bytes(t.detach())
    out = pthfmt.load(path)
    assert np.shares_memory(out["w"], out["b"])


def test_whole_model_needs_stub_mode(torch_mod: Any, tmp_path: Path) -> None:
    """``torch.save(model)``: the class is the persistent id ``(cls, source_file, source)``."""
    import inspect

    linear = Glob("torch.nn.modules.linear", "Linear")
    weight = Call(PARAMETER, (Ref("3001"),), (True, False, OrderedDict()))
    state = {
        "training": True,
        "_parameters": OrderedDict(weight=weight),
        "_buffers": OrderedDict(),
        "_modules": OrderedDict(),
        "in_features": 3,
        "out_features": 2,
    }
    spec = example()
    spec["obj"] = Call(Ref((linear, None, None)), (), state, new=True)
    path = write(tmp_path, tar_bytes(members(spec)))
    model = torch_mod.load(path, weights_only=False)
    assert isinstance(model, torch_mod.nn.Linear)
    exc = raises(path.read_bytes(), UnsafePickleError, "pickle", "Linear is not allowed")
    assert exc.offset is not None
    if "unknown" not in inspect.signature(pthfmt.load).parameters:
        pytest.skip("pthfmt.load has no unknown='stub'")
    stub = pthfmt.load(path, unknown="stub")
    assert stub.type.qualname == "torch.nn.modules.linear.Linear"
    got = stub.state["_parameters"]["weight"]
    assert np.ascontiguousarray(got).tobytes() == torch_bytes(model.weight.detach())


# -- what torch does with the malformed files of tests/unit/test_tar.py ------------------------


@pytest.mark.parametrize("name", ["storages", "tensors", "pickle"])
def test_torch_on_a_missing_member(torch_mod: Any, tmp_path: Path, name: str) -> None:
    """torch fails with a bare KeyError where pthfmt names the member (tests/unit)."""
    parts = members(example())
    del parts[name]
    data = tar_bytes(parts)
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)


def test_torch_on_an_unknown_storage_key(torch_mod: Any, tmp_path: Path) -> None:
    spec = example()
    spec["tensors"][1] = (3002, 9999, "FloatTensor", (2, 2), (1, 2), 1)
    data = tar_bytes(members(spec))
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)


def test_torch_on_an_unknown_key_in_the_pickle(torch_mod: Any, tmp_path: Path) -> None:
    spec = example()
    spec["obj"]["ghost"] = Ref("9999")
    data = tar_bytes(members(spec))
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)


@pytest.mark.parametrize(("tensor", "torch_grows"), OUTSIDE)
def test_torch_on_a_tensor_outside_its_storage(
    torch_mod: Any, tmp_path: Path, tensor: tuple, torch_grows: bool
) -> None:
    spec = example()
    spec["tensors"][0] = tensor
    data = tar_bytes(members(spec))
    if torch_grows:
        # torch's set_() silently reallocates a resizable root storage to fit the tensor:
        # the tail is uninitialised memory and views made before (b) dangle.  pthfmt refuses.
        out = torch_mod.load(write(tmp_path, data), weights_only=False)
        assert out["a"].untyped_storage().nbytes() > F32.nbytes
    else:
        with pytest.raises(RuntimeError):
            torch_mod.load(write(tmp_path, data), weights_only=False)
