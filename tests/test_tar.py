"""The pre-0.4 tar checkpoint format (torch 0.1 to 0.3), read by ``pthfmt.formats.tar``.

torch 2.13 can still load these files but no longer writes them, so they are built here the
way torch 0.3's ``_save`` did: ``tarfile`` (PAX format) holding ``sys_info``, ``pickle``,
``tensors`` and ``storages``, with pickles made by a pure-Python pickler that writes the
``torch.FloatStorage``-style globals and the ``str(_cdata)`` persistent ids.  Every file is
first loaded by ``torch.load(weights_only=False)`` to prove the builder right, then compared
with what pthfmt makes of it.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt import CorruptError, FormatError, PthError, UnsafePickleError
from pthfmt.model.storage import StorageSlice

pytestmark = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")

# -- the builder ---------------------------------------------------------------------------------


class Glob:
    """A global the pickle names (``torch FloatStorage``) without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Ref:
    """A tensor or storage of the checkpoint: pickled as persistent id ``pid``."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class Call:
    """``func(*args)`` (``REDUCE``, or ``NEWOBJ`` with ``new=True``), then ``BUILD state``."""

    def __init__(self, func: Any, args: tuple, state: Any = None, new: bool = False) -> None:
        self.func, self.args, self.state, self.new = func, args, state, new


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is open
    dispatch = pickle._Pickler.dispatch.copy()

    def save_glob(self, obj: Glob) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_call(self, obj: Call) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.NEWOBJ if obj.new else pickle.REDUCE)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Glob] = save_glob
    dispatch[Call] = save_call

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Ref) else None


class _Py2Pickler(_Pickler):
    """Writes text as Python 2 ``str`` (``SHORT_BINSTRING``), as torch 0.3 on Python 2 did."""

    dispatch = _Pickler.dispatch.copy()

    def save_py2_str(self, obj: str) -> None:
        raw = obj.encode("ascii")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str


def dumps(obj: Any, protocol: int | str = 2) -> bytes:
    """``protocol`` 0 to 4, or ``"py2"``: protocol 2 with Python 2 strings."""
    f = io.BytesIO()
    if protocol == "py2":
        _Py2Pickler(f, 2).dump(obj)
    else:
        _Pickler(f, protocol).dump(obj)
    return f.getvalue()


def storages_member(storages: list, views: list, count: int | None = None,
                    protocol: int | str = 2) -> bytes:
    """``(key, location, storage class name, little-endian array)`` per storage."""
    out = [dumps(len(storages) if count is None else count, protocol)]
    for key, location, cls, data in storages:
        out += [dumps((key, location, Glob("torch", cls)), protocol),
                struct.pack("<q", data.size), data.tobytes()]
    out.append(dumps(views, protocol))
    return b"".join(out)


def tensors_member(tensors: list, count: int | None = None,
                   protocol: int | str = 2) -> bytes:
    """``(key, storage key, tensor class, size, stride, storage_offset)`` per tensor."""
    out = [dumps(len(tensors) if count is None else count, protocol)]
    for key, storage_key, cls, size, stride, offset in tensors:
        module, _, name = cls.rpartition(".")
        n = len(size)
        out += [dumps((key, storage_key, Glob(module or "torch", name)), protocol),
                struct.pack("<q", n),   # torch 0.3 wrote ndim as 8 bytes; readers take <i + 4
                struct.pack(f"<{n}q", *size), struct.pack(f"<{n}q", *stride),
                struct.pack("<q", offset)]
    return b"".join(out)


SYS_INFO = {"protocol_version": 1000, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8}}


def members(spec: dict, protocol: int | str = 2) -> dict[str, bytes]:
    """The four members of ``spec`` in torch's order (sys_info, pickle, tensors, storages)."""
    return {
        "sys_info": dumps(SYS_INFO, protocol),
        "pickle": dumps(spec["obj"], protocol),
        "tensors": tensors_member(spec["tensors"], protocol=protocol),
        "storages": storages_member(spec["storages"], spec["views"], protocol=protocol),
    }


def tar_bytes(parts: dict[str, bytes] | list[tuple[str, bytes]],
              fmt: int = tarfile.PAX_FORMAT, **tar_kw: Any) -> bytes:
    f = io.BytesIO()
    items = parts.items() if isinstance(parts, dict) else parts
    with tarfile.open(fileobj=f, mode="w:", format=fmt, **tar_kw) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_500_000_000
            tar.addfile(info, io.BytesIO(data))
    return f.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "ckpt.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def member_offset(data: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmember(name).offset_data


# -- the example: ex_tar.py's 2x3 tensor, tensor on a storage view, bare storage, and more -------

F32 = np.array([0x00000000, 0x3FC00000, 0x80000000, 0x7F800000, 0x7FC12345, 0x00000001,
                0x40500000, 0xC0E00000, 0x7149F2CA, 0x42280000], "<u4").view("<f4")
I64 = np.array([2**40, -5, 0, 9], "<i8")
I16 = np.array([7, -3, 32767], "<i2")


def example() -> dict:
    return {
        "storages": [(1001, "cpu", "FloatStorage", F32),
                     (1002, "cpu", "LongStorage", I64),
                     (1003, "cpu", "ShortStorage", I16)],
        "views": [(2001, 1001, 4, 6)],
        "tensors": [(3001, 1001, "FloatTensor", (2, 3), (3, 1), 0),
                    (3002, 2001, "FloatTensor", (2, 2), (1, 2), 1),
                    (3003, 1002, "LongTensor", (2,), (2,), 1),
                    (3004, 1002, "LongTensor", (3, 2), (0, 1), 0),
                    (3005, 1003, "ShortTensor", (0,), (1,), 0)],
        "obj": {"a": Ref("3001"), "b": Ref("3002"), "longs": [Ref("3003"), Ref(3004)],
                "empty": Ref("3005"), "storage": Ref("1003"), "view": Ref("2001"),
                "a_again": Ref("3001"), "nested": OrderedDict([("w", Ref("3002"))]),
                "epoch": 7, "name": "net"},
    }


#: key path -> (root storage key, element offset in the root, the root's data)
TENSORS = {
    "a": ("1001", 0, F32),
    "b": ("1001", 5, F32),         # view at 4, tensor offset 1 inside it
    "longs.0": ("1002", 1, I64),
    "longs.1": ("1002", 0, I64),
    "empty": ("1003", 0, I16),
}


def get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def expected_array(spec: dict, path: str) -> np.ndarray:
    """What the tensor at ``path`` holds, computed from the spec with numpy alone."""
    key = get(spec["obj"], path).pid
    (_, _, _, size, stride, _) = next(t for t in spec["tensors"] if t[0] == int(key))
    _root, elem, data = TENSORS[path]
    flat = data[elem:]
    return np.lib.stride_tricks.as_strided(flat, size, [s * data.itemsize for s in stride])


def ptr(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def torch_bytes(t: Any) -> bytes:
    import torch
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def from_mmap(arr: np.ndarray) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else \
            getattr(base, "obj", None)
    return False


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    return write(tmp_path, tar_bytes(members(example())))


# -- torch agrees with the builder ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, "py2", 4])
def test_torch_loads_the_builder(torch_mod: Any, tmp_path: Path, protocol: int | str) -> None:
    spec = example()
    path = write(tmp_path, tar_bytes(members(spec, protocol)))
    out = torch_mod.load(path, weights_only=False)
    roots = {"1001": out["a"].untyped_storage().data_ptr(),
             "1002": out["longs"][1].untyped_storage().data_ptr()}
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
    roots = {"1001": ptr(out["a"]), "1002": ptr(out["longs"][1]),
             "1003": ptr(out["storage"].buffer(False))}
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
    assert np.shares_memory(out["a"], out["b"])          # b lies on a view of a's storage
    assert not np.shares_memory(out["a"], out["longs"][0])
    ref["a"][1, 2] = 99.0
    out["a"][1, 2] = 99.0
    assert ref["b"][0, 0].item() == out["b"][0, 0] == 99.0
    ref["longs"][1][2, 1] = -1                            # zero stride: one element, 3 rows
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
    assert base[view.start * 4:(view.start + view.numel) * 4].tobytes() == view_bytes
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
        assert set(found) == {"a", "b", "longs.0", "longs.1", "empty"}   # nested.w is b
        data = example_path.read_bytes()
        for key_path, (root, elem, arr) in TENSORS.items():
            t, tref = get(ref, key_path), found[key_path]
            assert isinstance(tref, pthfmt.TensorRef)
            assert (tref.storage_key, tref.storage_offset) == (root, elem)
            assert tref.shape == tuple(t.shape) and tref.stride == t.stride()
            assert f"torch.{tref.dtype}" == str(t.dtype) and str(tref.device) == "cpu"
            info = ck.storages[root]
            assert data[info.offset:info.offset + info.nbytes] == arr.tobytes()
            got = tref.numpy(mmap=mmap_)
            assert np.ascontiguousarray(got).tobytes() == torch_bytes(t)
            if got.size:
                assert from_mmap(got) is mmap_ and got.flags.writeable is not mmap_


def test_load_mmap_views_the_file(example_path: Path) -> None:
    plain = pthfmt.load(example_path)
    out = pthfmt.load(example_path, mmap=True)
    for key_path in TENSORS:
        arr = get(out, key_path)
        assert arr.tobytes() == get(plain, key_path).tobytes()
        assert arr.strides == get(plain, key_path).strides
        if arr.size:
            assert from_mmap(arr) and not arr.flags.writeable
    assert np.shares_memory(out["a"], out["b"])


def test_load_from_a_stream(example_path: Path) -> None:
    data = example_path.read_bytes()
    out = pthfmt.load(io.BytesIO(data))
    plain = pthfmt.load(example_path)
    for key_path in TENSORS:
        assert get(out, key_path).tobytes() == get(plain, key_path).tobytes()
    assert np.shares_memory(out["a"], out["b"])


DTYPES = [("FloatStorage", "FloatTensor", np.float32), ("DoubleStorage", "DoubleTensor", "<f8"),
          ("HalfStorage", "HalfTensor", "<f2"), ("LongStorage", "LongTensor", "<i8"),
          ("IntStorage", "IntTensor", "<i4"), ("ShortStorage", "ShortTensor", "<i2"),
          ("CharStorage", "CharTensor", "i1"), ("ByteStorage", "ByteTensor", "u1"),
          ("BoolStorage", "BoolTensor", "?"),
          ("BFloat16Storage", "BFloat16Tensor", ml_dtypes.bfloat16)]


def test_every_legacy_storage_class(torch_mod: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    storages, tensors, obj = [], [], {}
    for i, (scls, tcls, dtype) in enumerate(DTYPES):
        raw = rng.integers(0, 256, 12 * np.dtype(dtype).itemsize, dtype=np.uint8)
        data = (raw % 2 if np.dtype(dtype).kind == "b" else raw).view(dtype)
        storages.append((100 + i, "cpu", scls, data))
        tensors.append((200 + i, 100 + i, tcls, (3, 2), (1, 3), 2))
        obj[scls] = Ref(str(200 + i))
    path = write(tmp_path, tar_bytes({"sys_info": dumps(SYS_INFO), "pickle": dumps(obj),
                                      "tensors": tensors_member(tensors),
                                      "storages": storages_member(storages, [])}))
    ref = torch_mod.load(path, weights_only=False)
    out = pthfmt.load(path)
    for scls, _, _ in DTYPES:
        t, arr = ref[scls], out[scls]
        assert str(t.dtype) == f"torch.{pthfmt.open(path).obj[scls].dtype}", scls
        assert arr.shape == (3, 2) and arr.strides == (arr.itemsize, 3 * arr.itemsize)
        assert np.ascontiguousarray(arr).tobytes() == torch_bytes(t), scls


def test_cuda_locations_and_map_location(torch_mod: Any, tmp_path: Path) -> None:
    spec = {"storages": [(11, "cuda:1", "DoubleStorage", np.arange(4, dtype="<f8"))],
            "views": [],
            "tensors": [(12, 11, "torch.cuda.DoubleTensor", (4,), (1,), 0)],
            "obj": {"w": Ref("12")}}
    path = write(tmp_path, tar_bytes(members(spec)))
    ref = torch_mod.load(path, weights_only=False, map_location="cpu")
    assert ref["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pthfmt.open(path) as ck:
        assert ck.storages["11"].tag == "cuda:1" and str(ck.obj["w"].device) == "cuda:1"
    with pthfmt.open(path, map_location={"cuda:1": "cpu"}) as ck:
        assert str(ck.obj["w"].device) == "cpu" and ck.storages["11"].tag == "cuda:1"
    assert pthfmt.load(path, map_location="cpu")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


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
            info.uname = "jürgen"                  # not ASCII: a PAX 'x' header per member
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


PARAMETER = Glob("torch.nn.parameter", "Parameter")


def test_parameters_with_variable_state(torch_mod: Any, tmp_path: Path) -> None:
    """torch 0.3 pickled a Parameter as ``Parameter(data)`` + BUILD (requires_grad, volatile,
    hooks); torch 2.13 still loads that through ``Tensor.__setstate__``."""
    spec = example()
    spec["obj"] = {"w": Call(PARAMETER, (Ref("3001"),), (False, False, OrderedDict())),
                   "b": Call(PARAMETER, (Ref("3002"),), (True, False, None))}
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
    state = {"training": True, "_parameters": OrderedDict(weight=weight),
             "_buffers": OrderedDict(), "_modules": OrderedDict(),
             "in_features": 3, "out_features": 2}
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


# -- malformed files -----------------------------------------------------------------------------


def raises(data: bytes, kind: type[PthError], member: str | None, match: str = "") -> PthError:
    with pytest.raises(kind, match=match) as info:
        pthfmt.load(io.BytesIO(data))
    exc = info.value
    if member is not None:
        assert exc.record == member and repr(member) in str(exc), str(exc)
    with pytest.raises(kind):
        pthfmt.open(io.BytesIO(data))
    return exc


def test_truncated_file_inside_the_storages_member() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "storages") + 100
    raises(data[:cut], CorruptError, "storages", "runs past the end")


def test_truncated_file_inside_the_pickle_member() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "pickle") + 10
    raises(data[:cut], CorruptError, "pickle", "runs past the end")


def test_truncated_file_inside_a_header() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "tensors") - 200
    raises(data[:cut], CorruptError, None, "truncated")


def test_truncated_storage_data_inside_the_member() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"])[:60]
    raises(tar_bytes(parts), CorruptError, "storages", "storage 1001 of 10 float32")


def test_truncated_pickle_inside_the_tensors_member() -> None:
    parts = members(example())
    parts["tensors"] = parts["tensors"][:20]
    raises(tar_bytes(parts), CorruptError, "tensors", "pickle truncated")


@pytest.mark.parametrize("name", ["storages", "tensors", "pickle"])
def test_missing_member(torch_mod: Any, tmp_path: Path, name: str) -> None:
    parts = members(example())
    del parts[name]
    data = tar_bytes(parts)
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)
    raises(data, FormatError, name, "is missing")


def test_storage_count_too_high() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"], count=4)
    raises(tar_bytes(parts), FormatError, "storages", "storage header .* is not a 3-tuple")


def test_storage_count_too_low() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"], count=2)
    raises(tar_bytes(parts), FormatError, "storages", "storage view .* is not a 4-tuple")


def test_tensor_count_too_high() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = tensors_member(spec["tensors"], count=6)
    raises(tar_bytes(parts), CorruptError, "tensors", "ends after 5 of the 6 tensors")


def test_tensor_count_too_low() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = tensors_member(spec["tensors"], count=4)
    raises(tar_bytes(parts), CorruptError, "tensors", "bytes after the last tensor")


def test_element_count_larger_than_the_data() -> None:
    spec = example()
    spec["storages"][2] = (1003, "cpu", "ShortStorage", I16)
    parts = members(spec)
    blob = parts["storages"]
    at = blob.index(struct.pack("<q", 3) + I16.tobytes())
    parts["storages"] = blob[:at] + struct.pack("<q", 10**6) + blob[at + 8:]
    raises(tar_bytes(parts), CorruptError, "storages", "storage 1003 of 1000000 int16")


@pytest.mark.parametrize("pid", [
    ("module", "Net", "net.py", "class Net: ..."),
    ("module", Glob("torch.nn.modules.linear", "Linear"), "linear.py", "..."),
    (Glob("__main__", "Net"), "net.py", "class Net: ..."),   # what torch 0.3 actually wrote
])
def test_module_persistent_id_is_refused(tmp_path: Path, pid: tuple) -> None:
    spec = example()
    spec["obj"]["model_class"] = Ref(pid)
    raises(tar_bytes(members(spec)), UnsafePickleError, "pickle", "not allowed|pickled class")


def test_unknown_storage_key_in_a_tensor(torch_mod: Any, tmp_path: Path) -> None:
    spec = example()
    spec["tensors"][1] = (3002, 9999, "FloatTensor", (2, 2), (1, 2), 1)
    data = tar_bytes(members(spec))
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)
    raises(data, FormatError, "tensors", "storage 9999, which member 'storages' does not hold")


def test_unknown_key_in_the_pickle(torch_mod: Any, tmp_path: Path) -> None:
    spec = example()
    spec["obj"]["ghost"] = Ref("9999")
    data = tar_bytes(members(spec))
    with pytest.raises(KeyError):
        torch_mod.load(write(tmp_path, data), weights_only=False)
    raises(data, FormatError, "pickle", "names no tensor")


def test_unknown_root_of_a_storage_view() -> None:
    spec = example()
    spec["views"] = [(2001, 9999, 4, 6)]
    raises(tar_bytes(members(spec)), FormatError, "storages",
           "slice of storage 9999, which the member does not hold")


def test_storage_view_outside_its_root() -> None:
    spec = example()
    spec["views"] = [(2001, 1001, 8, 6)]
    raises(tar_bytes(members(spec)), CorruptError, "storages", "does not fit the 10 elements")


@pytest.mark.parametrize(("tensor", "torch_grows"), [
    ((3001, 1001, "FloatTensor", (4, 3), (3, 1), 0), True),   # 12 of a 10-element storage
    ((3001, 2001, "FloatTensor", (7,), (1,), 0), False),      # 7 of a 6-element view
    ((3001, 1001, "FloatTensor", (2,), (1,), 9), True),       # offset runs off the end
])
def test_tensor_outside_its_storage(torch_mod: Any, tmp_path: Path, tensor: tuple,
                                    torch_grows: bool) -> None:
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
    raises(data, CorruptError, "tensors", "needs .* bytes of a")


def test_negative_size_and_dimension_count() -> None:
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", (-2, 3), (3, 1), 0)
    raises(tar_bytes(members(spec)), FormatError, "tensors", r"not an int in \[0, 2\*\*63\)")
    parts = members(example())
    blob = parts["tensors"]
    at = blob.index(struct.pack("<q", 2) + struct.pack("<2q", 2, 3))
    parts["tensors"] = blob[:at] + struct.pack("<i", -1) + blob[at + 4:]
    raises(tar_bytes(parts), CorruptError, "tensors", "-1 dimensions")
    parts["tensors"] = blob[:at] + struct.pack("<i", 10**9) + blob[at + 4:]
    raises(tar_bytes(parts), CorruptError, "tensors", "1000000000 dimensions")


def test_unsafe_global_in_a_storage_header() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = parts["storages"].replace(b"ctorch\nShortStorage\n", b"cos\nsystem\n")
    raises(tar_bytes(parts), UnsafePickleError, "storages", "os.system")


def test_untyped_storage_class_is_refused() -> None:
    spec = example()
    spec["storages"][2] = (1003, "cpu", "UntypedStorage", I16.view(np.uint8))
    raises(tar_bytes(members(spec)), FormatError, "storages", "no element type")


def test_persistent_id_in_a_header_pickle() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = dumps(Ref("1001")) + parts["tensors"][len(dumps(5)):]
    raises(tar_bytes(parts), FormatError, "tensors", "persistent id '1001' in a header")


def test_duplicate_keys_are_refused() -> None:
    spec = example()
    spec["tensors"][1] = (3001, 2001, "FloatTensor", (2, 2), (1, 2), 1)
    raises(tar_bytes(members(spec)), FormatError, "tensors", "tensor key 3001 occurs twice")
    spec = example()
    spec["storages"][2] = (1001, "cpu", "ShortStorage", I16)
    raises(tar_bytes(members(spec)), FormatError, "storages", "storage key 1001 occurs twice")
    spec = example()
    spec["views"] = [(1002, 1001, 4, 6)]
    raises(tar_bytes(members(spec)), FormatError, "storages", "also the key of a storage")


def test_duplicate_and_irregular_members() -> None:
    parts = list(members(example()).items())
    raises(tar_bytes([*parts, ("pickle", dumps({}))]), FormatError, "pickle", "occurs twice")
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in parts[:-1]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    raises(f.getvalue(), FormatError, "storages", "not a regular file")


def test_bad_header_checksum() -> None:
    data = bytearray(tar_bytes(members(example())))
    header = member_offset(bytes(data), "tensors") - 512
    data[header + 10] ^= 0x01
    raises(bytes(data), CorruptError, None, "bad checksum")


def test_trailing_bytes_after_the_pickle() -> None:
    parts = members(example())
    parts["pickle"] += b"junk"
    raises(tar_bytes(parts), CorruptError, "pickle", "4 bytes after")


def test_sys_info_must_be_a_dict() -> None:
    parts = members(example())
    parts["sys_info"] = dumps([1, 2])
    raises(tar_bytes(parts), FormatError, "sys_info", "not a dict")


def test_every_truncation_raises_only_pth_errors() -> None:
    data = tar_bytes(members(example()))
    end = member_offset(data, "storages") + len(members(example())["storages"])
    for cut in range(1, end + 512, 3):
        try:
            pthfmt.load(io.BytesIO(data[:cut]))
        except PthError:
            continue
        assert cut >= end, cut


@pytest.mark.parametrize(("size", "stride"), [((0, 2**62), (1, 1)), ((0,), (2**62,)),
                                              ((2**40, 0, 2**40), (1, 1, 1))])
def test_empty_tensor_with_impossible_sizes(size: tuple, stride: tuple) -> None:
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", size, stride, 0)
    data = tar_bytes(members(spec))
    raises(data, CorruptError, "tensors", "no array can have")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=3).flatmap(
    lambda size: st.tuples(st.just(tuple(size)),
                           st.tuples(*[st.integers(0, 5) for _ in size]),
                           st.integers(0, 12))))
def test_any_view_of_a_storage(view: tuple) -> None:
    """A tensor's view either reads exactly what numpy's as_strided says, or is refused."""
    size, stride, offset = view
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", size, stride, offset)
    data = tar_bytes(members(spec))
    count = int(np.prod(size))
    fits = count == 0 or offset + sum((n - 1) * s for n, s in zip(size, stride)) < F32.size
    if not fits:
        raises(data, CorruptError, "tensors", "bytes of a 40-byte storage")
        return
    arr = pthfmt.load(io.BytesIO(data))["a"]
    assert arr.shape == size and arr.strides == tuple(4 * s for s in stride)
    if count:
        want = np.lib.stride_tricks.as_strided(F32[offset:], size, [4 * s for s in stride])
        assert np.ascontiguousarray(arr).tobytes() == np.ascontiguousarray(want).tobytes()


_FUZZ_DATA = tar_bytes(members(example()))
_FUZZ_END = member_offset(_FUZZ_DATA, "storages") + len(members(example())["storages"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, _FUZZ_END - 1), st.integers(1, 255)),
                min_size=1, max_size=4))
def test_byte_flips_raise_only_pth_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_DATA)
    for at, mask in flips:
        data[at] ^= mask
    for mmap_ in (False, True):
        try:
            pthfmt.load(io.BytesIO(bytes(data)), mmap=mmap_)
        except PthError:
            pass
    try:
        with pthfmt.open(io.BytesIO(bytes(data))) as ck:
            for _, ref in ck.tensors():
                ref.numpy()
    except PthError:
        pass
