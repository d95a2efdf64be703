"""The reader against torch 2.13: every container variant, dtype, view and value kind.

Each test saves with real ``torch.save`` (or rewrites torch's file with ``zipfile`` where torch
cannot write the variant) and compares pthfmt's result with ``torch.load`` -- or with the
original tensors where torch's own loader is wrong or refuses the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]
torch = pytest.importorskip("torch")

import pthfmt  # noqa: E402
from pthfmt import CorruptError, FormatError, PthError, UnsafePickleError  # noqa: E402
from tests.support.checks import both_raise  # noqa: E402
from tests.support.torch_helpers import (  # noqa: E402
    ALL_DTYPES,
    V3_DTYPES,
    FakeStorage,
    FakeTensor,
    assert_array_matches,
    assert_ref_matches,
    assert_same_tree,
    craft_checkpoint,
    craft_pickle,
    dtype_name,
    make_tensor,
    rezip,
    save_tagged,
    tagged,
    to_big_endian,
    torch_bytes,
)

Point = collections.namedtuple("Point", "x y")


class MyTensor(torch.Tensor):
    pass


def torch_load(path, **kwargs):
    """torch's loader on our own (trusted) files: ``weights_only=False`` reads every protocol
    and numpy values."""
    return torch.load(path, weights_only=False, **kwargs)


def save(obj, tmp_path: Path, name: str = "ckpt.pt", **kwargs) -> Path:
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


def check_all_modes(path, expected, *, device: str = "cpu", layout: bool = True):
    """Our copy load, mmap load and lazy open all equal ``expected`` (torch's reading)."""
    assert_same_tree(pthfmt.load(path), expected, check_layout=layout)
    assert_same_tree(pthfmt.load(path, mmap=True), expected, check_layout=layout)
    with pthfmt.open(path) as ck:
        for key, ref in ck.tensors():
            assert str(ref.device) == device, key
        assert_same_tree(ck.obj, expected, refs=True, device=device)


def sample(gen=None):
    """A little of everything that is not exotic: views, a Parameter, a 0-dim, an empty."""
    base = torch.arange(24.0)
    return {
        "w": torch.nn.Parameter(torch.randn(3, 4, generator=gen)),
        "frozen": torch.nn.Parameter(torch.arange(5, dtype=torch.int64), requires_grad=False),
        "base": base,
        "t": base.view(4, 6).t(),
        "step": base[1::3],
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "list": [torch.tensor([1, 2, 3], dtype=torch.int16), "text", 3, None],
    }


# -- containers: zip with any folder name, legacy ----------------------------------------------


@pytest.mark.parametrize(
    ("filename", "folder"),
    [
        ("model.pth", "model"),
        ("model.tar.gz", "model.tar"),
        ("noext", "noext"),
        ("my model.v2.pt", "my model.v2"),
        ("ünï.pt", "archive"),
    ],
)
def test_zip_folder_from_file_stem(tmp_path, filename, folder):
    obj = sample()
    path = save(obj, tmp_path, filename)
    with pthfmt.open(path) as ck:
        assert ck.format == "zip"
        assert ck.archive_name == folder
        assert ck.version == "3"
        assert ck.byteorder == "little"
        assert f"{folder}/data.pkl" in ck.records
        assert_same_tree(ck.obj, torch_load(path), refs=True)
    check_all_modes(path, torch_load(path))


def test_zip_from_bytesio_is_archive(tmp_path):
    obj = sample()
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    expected = torch_load(io.BytesIO(data))
    with pthfmt.open(io.BytesIO(data)) as ck:
        assert ck.archive_name == "archive"
        assert ck.path is None
        assert_same_tree(ck.obj, expected, refs=True)
    assert_same_tree(pthfmt.load(io.BytesIO(data)), expected)
    assert_same_tree(pthfmt.load(io.BytesIO(data), mmap=True), expected)
    with (tmp_path / "f.pt").open("wb") as f:
        f.write(data)
    with (tmp_path / "f.pt").open("rb") as f:
        assert_same_tree(pthfmt.load(f), expected)


def test_stream_positioned_after_other_bytes(tmp_path):
    obj = sample()
    buf = io.BytesIO()
    buf.write(b"some header")
    start = buf.tell()
    torch.save(obj, buf)
    buf.seek(start)
    expected = torch_load(buf)
    buf.seek(start)
    assert_same_tree(pthfmt.load(buf), expected)


@pytest.mark.parametrize("folder", ["foo", "mödel ü", "with space", "archive"])
def test_zip_any_folder_name(tmp_path, folder):
    obj = sample()
    src = save(obj, tmp_path, "src.pt")
    dst = tmp_path / "renamed.pt"

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(folder + "/" + info.filename.split("/", 1)[1], zin.read(info))
    expected = torch_load(dst)
    assert_same_tree(expected, obj)  # torch reads the renamed archive too
    with pthfmt.open(dst) as ck:
        assert ck.archive_name == folder
    check_all_modes(dst, expected)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legacy_format(tmp_path, protocol):
    obj = sample()
    obj["bf16"] = torch.tensor([1.0, -3.5], dtype=torch.bfloat16)
    obj["c64"] = torch.tensor([1 + 2j, -3j], dtype=torch.complex64)
    path = save(obj, tmp_path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with path.open("rb") as f:
        assert f.read(1) == b"\x80"
    expected = torch_load(path)
    with pthfmt.open(path) as ck:
        assert ck.format == "legacy"
        assert ck.version == "1001"
        assert ck.archive_name is None
        assert sorted(ck.storages) == sorted({r.storage_key for _, r in ck.tensors()})
        assert_same_tree(ck.obj, expected, refs=True)
    check_all_modes(path, expected)
    # and through a stream
    assert_same_tree(pthfmt.load(io.BytesIO(path.read_bytes())), expected)


# -- pickle protocols ---------------------------------------------------------------------------


def protocol_sample():
    obj = sample()
    obj.update(
        {
            "bytes": b"\x00\xffabc",
            "empty_bytes": b"",
            "set": {1, 2, 3},
            "frozenset": frozenset({"a"}),
            "complex": 1.5 - 2j,
            "bytearray": bytearray(b"xy"),
            "big": 2**70,
            "neg": -(2**40),
            "float": 0.1,
            "nan": float("nan"),
            "unicode": "ünï ✓",
            "size": torch.Size([2, 3]),
            "dtype": torch.bfloat16,
            "device": torch.device("cuda", 1),
            "u16": torch.tensor([1, 258, 65535], dtype=torch.uint16),
            "f8": torch.tensor([0.5, -1.0], dtype=torch.float8_e4m3fn),
            "nested": {"a": [(1, 2), {"b": torch.ones(2, 2)}]},
        }
    )
    return obj


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols(tmp_path, protocol, legacy):
    obj = protocol_sample()
    if legacy:  # torch cannot load v3 dtypes from legacy files (tested separately)
        obj = {k: v for k, v in obj.items() if k not in ("u16", "f8")}
    path = save(obj, tmp_path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    # torch's weights_only loader refuses protocols 4 and 5 (FRAME)
    if protocol >= 4:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
    assert_same_tree(torch_load(path), obj)
    # compared with the original objects themselves, and with torch's load
    for ours in (pthfmt.load(path), pthfmt.load(path, mmap=True)):
        assert_same_tree(ours, obj)
        assert_same_tree(ours, torch_load(path))
    with pthfmt.open(path) as ck:
        assert_same_tree(ck.obj, obj, refs=True)


# -- dtypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_name)
def test_every_dtype_zip(tmp_path, dtype):
    gen = torch.Generator().manual_seed(ALL_DTYPES.index(dtype))
    t = make_tensor(dtype, (3, 4), gen)
    obj = {
        "t": t,
        "view": t[1:, ::2],
        "tt": t.t(),
        "scalar": make_tensor(dtype, (), gen),
        "empty": make_tensor(dtype, (0, 2), gen),
    }
    path = save(obj, tmp_path)
    expected = torch_load(path)
    for key in obj:
        assert torch_bytes(expected[key]) == torch_bytes(obj[key])
    check_all_modes(path, expected)
    with pthfmt.open(path) as ck:
        assert ck.obj["t"].dtype == dtype_name(dtype)
        assert ck.obj["t"].dtype_info.itemsize == t.element_size()


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_name)
def test_every_dtype_legacy(tmp_path, dtype):
    """Legacy files: torch writes v3 dtypes but cannot read them back; we read them right."""
    gen = torch.Generator().manual_seed(7)
    t = make_tensor(dtype, (3, 4), gen)
    obj = {"t": t, "view": t[1:, 1:3], "tail": t.reshape(-1)[5:], "scalar": t[2, 3]}
    path = save(obj, tmp_path, _use_new_zipfile_serialization=False)
    if dtype in V3_DTYPES:
        with pytest.raises(AttributeError, match="has no attribute 'dtype'"):
            torch_load(path)
        expected = obj  # the truth: what was saved
    else:
        expected = torch_load(path)
    check_all_modes(path, expected)


def test_unsavable_dtypes_are_known_to_torch_only():
    """torch cannot save uint1..7/int1..7 at all; make sure that is still so in 2.13."""
    with pytest.raises(KeyError):
        torch.save(torch.zeros(2, dtype=torch.uint4), io.BytesIO())


# -- parameters, views, offsets ----------------------------------------------------------------


def test_parameters(tmp_path):
    p = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    frozen = torch.nn.Parameter(torch.arange(4.0), requires_grad=False)
    ints = torch.nn.Parameter(torch.arange(3), requires_grad=False)
    with_state = torch.nn.Parameter(torch.ones(2))
    with_state.tag = "bar"
    obj = {
        "p": p,
        "frozen": frozen,
        "ints": ints,
        "state": with_state,
        "alias": p.data[1],
        "grad_tensor": torch.ones(2, requires_grad=True),
    }
    path = save(obj, tmp_path)
    expected = torch_load(path)
    check_all_modes(path, expected)
    with pthfmt.open(path) as ck:
        o = ck.obj
        assert o["p"].is_parameter and o["p"].requires_grad
        assert o["frozen"].is_parameter and not o["frozen"].requires_grad
        assert o["ints"].is_parameter and not o["ints"].requires_grad
        assert o["state"].state == {"tag": "bar"} == expected["state"].__dict__
        assert not o["alias"].is_parameter
        assert o["alias"].storage_key == o["p"].storage_key
        assert o["grad_tensor"].requires_grad and not o["grad_tensor"].is_parameter
        assert repr(o["p"]).startswith("Parameter(")
    arrays = pthfmt.load(path)
    assert np.shares_memory(arrays["p"], arrays["alias"])


VIEWS = {
    "transpose": lambda b: b.view(4, 6).t(),
    "permute3d": lambda b: b.view(2, 3, 4).permute(2, 0, 1),
    "step": lambda b: b[1::5],
    "step2d": lambda b: b.view(4, 6)[::2, 1::2],
    "column": lambda b: b.view(4, 6)[:, 2],
    "expand": lambda b: b[3:6].expand(4, 3),
    "expand_scalar": lambda b: b[7].expand(2, 3),
    "channels_last": lambda b: b.view(1, 4, 3, 2).contiguous(memory_format=torch.channels_last),
    "channels_last_view": lambda b: b.view(1, 6, 2, 2).permute(0, 3, 1, 2),
    "diagonal": lambda b: b[:16].view(4, 4).diagonal(),
    "unfold_overlap": lambda b: b.unfold(0, 5, 2),
    "offset": lambda b: b[17:],
    "narrow": lambda b: b.view(4, 6).narrow(1, 2, 3),
    "zero_dim": lambda b: b[11],
    "empty_at_end": lambda b: b[24:],
    "empty_middle": lambda b: b.view(4, 6)[2:2, 1:],
    "small_of_big": lambda b: b[4:6],
}


@pytest.mark.parametrize("name", list(VIEWS))
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.uint16, torch.complex64, torch.bfloat16], ids=dtype_name
)
def test_views_alone(tmp_path, name, dtype):
    """Each view saved alone: it brings its whole storage (often far bigger than itself)."""
    base = make_tensor(dtype, (24,), torch.Generator().manual_seed(1))
    view = VIEWS[name](base)
    path = save({"v": view}, tmp_path)
    expected = torch_load(path)
    assert expected["v"].stride() == view.stride()
    assert expected["v"].storage_offset() == view.storage_offset()
    check_all_modes(path, expected)


def test_odd_shapes(tmp_path):
    obj = {
        "empty5": torch.empty(5)[5:],
        "empty0": torch.empty(0),
        "empty03": torch.empty(0, 3),
        "empty_big_storage": torch.arange(10.0)[3:3],
        "zero_dim": torch.tensor(3.5),
        "zero_dim_int": torch.tensor(-7, dtype=torch.int64),
        "ones_dims": torch.ones(1, 1, 1),
        "channels_last_3d": torch.arange(48.0)
        .reshape(1, 2, 2, 3, 4)
        .contiguous(memory_format=torch.channels_last_3d),
    }
    path = save(obj, tmp_path)
    expected = torch_load(path)
    check_all_modes(path, expected)
    with pthfmt.open(path) as ck:
        ref = ck.obj["empty5"]
        assert (ref.storage_offset, ref.shape, ref.storage.nbytes) == (5, (0,), 20)
        assert ck.obj["zero_dim"].shape == () and ck.obj["zero_dim"].stride == ()
        assert ck.obj["zero_dim"].numpy()[()] == 3.5


def test_many_tensors_on_one_storage(tmp_path):
    base = torch.arange(100, dtype=torch.int32)
    obj = {f"v{i}": base[i : i + 10 : (i % 3) + 1] for i in range(60)}
    obj["whole"] = base
    path = save(obj, tmp_path)
    expected = torch_load(path)
    check_all_modes(path, expected)
    with pthfmt.open(path) as ck:
        assert len(ck.storages) == 1
        assert {r.storage_key for _, r in ck.tensors()} == set(ck.storages)
        assert ck.storages[next(iter(ck.storages))].nbytes == 400


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_shared_storage_aliasing(tmp_path, legacy):
    base = torch.arange(12.0)
    p = torch.nn.Parameter(base[:6].clone())
    obj = {
        "a": base,
        "b": base[2:5],
        "c": base.view(3, 4).t(),
        "p": p,
        "pv": p.data[1:3],
        "other": torch.zeros(3),
    }
    path = save(obj, tmp_path, _use_new_zipfile_serialization=not legacy)
    expected = torch_load(path)
    assert_same_tree(expected, obj)

    ours = pthfmt.load(path)
    for x, y in [("a", "b"), ("a", "c"), ("b", "c"), ("p", "pv")]:
        assert np.shares_memory(ours[x], ours[y]), (x, y)
    assert not np.shares_memory(ours["a"], ours["p"])
    assert not np.shares_memory(ours["a"], ours["other"])
    # writing through one view is seen by the others, like in torch
    ours["b"][0] = 100.0
    expected["b"][0] = 100.0
    assert ours["a"][2] == ours["c"][2, 0] == 100.0
    assert_same_tree(ours, expected)
    ours["pv"][:] = -1
    assert list(ours["p"][:4]) == [0.0, -1.0, -1.0, 3.0]

    mapped = pthfmt.load(path, mmap=True)
    assert np.shares_memory(mapped["a"], mapped["c"])
    for key, arr in mapped.items():
        assert not arr.flags.writeable, key
        with pytest.raises(ValueError):
            arr[...] = 0
    assert_same_tree(mapped, torch_load(path))

    with pthfmt.open(path) as ck:
        refs = ck.obj
        assert refs["a"].storage_key == refs["b"].storage_key == refs["c"].storage_key
        assert refs["a"].storage is refs["c"].storage
        assert refs["p"].storage_key == refs["pv"].storage_key != refs["a"].storage_key
        assert np.shares_memory(refs["a"].numpy(), refs["c"].numpy())


def test_conj_and_neg_views(tmp_path):
    c = torch.tensor([1 + 2j, -3 - 4j, 5j], dtype=torch.complex64)
    obj = {
        "conj": c.conj(),
        "conj128": torch.tensor([1 - 1j], dtype=torch.complex128).conj(),
        "neg": torch._neg_view(torch.tensor([1.0, -2.0, 0.0])),
        "neg_int": torch._neg_view(torch.tensor([1, -2, 3])),
        "neg_conj": torch._neg_view(c).conj(),
        "conj_view": c.conj()[1:],
        "plain": c,
    }
    path = save(obj, tmp_path)
    expected = torch_load(path)
    assert expected["conj"].is_conj() and expected["neg"].is_neg()
    check_all_modes(path, expected)
    ours = pthfmt.load(path)
    np.testing.assert_array_equal(ours["conj"], np.conj(obj["plain"].numpy()))
    np.testing.assert_array_equal(ours["neg"], [-1.0, 2.0, -0.0])
    np.testing.assert_array_equal(ours["neg_conj"], -np.conj(obj["plain"].numpy()))
    with pthfmt.open(path) as ck:
        assert ck.obj["conj"].conj and not ck.obj["conj"].neg
        assert ck.obj["neg_conj"].conj and ck.obj["neg_conj"].neg
        assert ck.obj["conj"].storage_key == ck.obj["plain"].storage_key


def conj_neg_sample():
    c = torch.tensor([1 + 2j, -3 - 4j, 5j], dtype=torch.complex64)
    return {
        "conj": c.conj(),
        "neg": torch._neg_view(torch.arange(1.0, 50.0)),
        "neg_conj": torch._neg_view(c).conj(),
        "plain": c,
    }


def test_conj_neg_views_legacy_lazy_and_mmap(tmp_path):
    obj = conj_neg_sample()
    path = save(obj, tmp_path, _use_new_zipfile_serialization=False)
    expected = torch_load(path)
    assert_same_tree(pthfmt.load(path, mmap=True), expected)
    with pthfmt.open(path) as ck:
        assert_same_tree(ck.obj, expected, refs=True)


def test_conj_neg_views_legacy_copy(tmp_path):
    obj = conj_neg_sample()
    path = save(obj, tmp_path, _use_new_zipfile_serialization=False)
    assert_same_tree(pthfmt.load(path), torch_load(path))


@pytest.mark.parametrize("mode", ["load", "open"])
def test_zero_dim_conj_neg_is_an_array(tmp_path, mode):
    obj = {
        "neg": torch._neg_view(torch.tensor(2.0)),
        "conj": torch.tensor(1 + 2j, dtype=torch.complex64).conj(),
    }
    path = save(obj, tmp_path)
    expected = torch_load(path)
    if mode == "load":
        assert_same_tree(pthfmt.load(path), expected)
    else:
        with pthfmt.open(path) as ck:
            assert_same_tree(ck.obj, expected, refs=True)


def test_neg_view_of_empty_bool(tmp_path):
    obj = {"b": torch._neg_view(torch.zeros(0, dtype=torch.bool))}
    path = save(obj, tmp_path)
    expected = torch_load(path)
    assert expected["b"].is_neg() and expected["b"].dtype == torch.bool
    assert_same_tree(pthfmt.load(path), expected)


def test_tensor_with_python_attributes(tmp_path):
    x = torch.arange(3.0)
    x.note = 5
    x.name_ = "hello"
    obj = {"x": x, "plain": torch.ones(1)}
    path = save(obj, tmp_path)
    expected = torch_load(path)
    assert expected["x"].note == 5
    check_all_modes(path, expected)
    with pthfmt.open(path) as ck:
        assert ck.obj["x"].state == {"note": 5, "name_": "hello"} == expected["x"].__dict__
        assert ck.obj["plain"].state is None


# -- python values --------------------------------------------------------------------------


def test_state_dict_metadata(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 2),
    )
    sd = model.state_dict()
    path = save(sd, tmp_path)
    expected = torch_load(path)
    for ours in (pthfmt.load(path), pthfmt.load(path, mmap=True), pthfmt.open(path).obj):
        assert type(ours) is collections.OrderedDict
        assert list(ours) == list(sd)
        assert ours._metadata == sd._metadata == expected._metadata
    check_all_modes(path, expected)
    # nested state dicts keep theirs too
    path = save({"model": sd, "copy": sd}, tmp_path, "nested.pt")
    ours = pthfmt.load(path)
    assert ours["model"] is ours["copy"]
    assert ours["model"]._metadata == sd._metadata


def trained(optimizer_cls, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = optimizer_cls(model.parameters(), **kwargs)
    for _ in range(2):
        loss = model(torch.randn(5, 3)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, loss


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.Adam, {"lr": 1e-3}),
        (torch.optim.AdamW, {"lr": 1e-3, "amsgrad": True}),
        (torch.optim.RMSprop, {"lr": 1e-2, "centered": True}),
    ],
)
def test_optimizer_state_dict(tmp_path, cls, kwargs):
    _, opt, _ = trained(cls, **kwargs)
    sd = opt.state_dict()
    path = save(sd, tmp_path)
    expected = torch_load(path)
    check_all_modes(path, expected)
    ours = pthfmt.load(path)
    assert ours["param_groups"] == expected["param_groups"]
    assert sorted(ours["state"]) == sorted(sd["state"]) == [0, 1, 2, 3]


def test_training_checkpoint(tmp_path):
    model, opt, loss = trained(torch.optim.Adam, lr=1e-3)
    ckpt = {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": loss.detach(),
        "loss_value": loss.item(),
        "best": None,
        "history": [0.5, 0.25],
    }
    path = save(ckpt, tmp_path, "training.pth")
    expected = torch_load(path)
    check_all_modes(path, expected)
    ours = pthfmt.load(path)
    assert ours["epoch"] == 7
    assert ours["loss_value"] == loss.item()
    assert ours["history"] == [0.5, 0.25]
    assert ours["loss"].shape == () and ours["loss"][()] == loss.item()
    assert (
        ours["optimizer_state_dict"]["param_groups"]
        == expected["optimizer_state_dict"]["param_groups"]
    )
    assert ours["model_state_dict"]._metadata == ckpt["model_state_dict"]._metadata
    names = [k for k, _ in pthfmt.open(path).tensors()]
    assert names[:2] == ["model_state_dict.0.weight", "model_state_dict.0.bias"]
    assert "optimizer_state_dict.state.0.exp_avg" in names
    assert names[-1] == "loss"


def test_size_dtype_device_objects(tmp_path):
    obj = {
        "size": torch.Size([2, 3]),
        "size0": torch.Size([]),
        "dtypes": [
            torch.float32,
            torch.bfloat16,
            torch.uint16,
            torch.float8_e4m3fn,
            torch.complex32,
            torch.bits8,
            torch.bool,
            torch.uint4,
        ],
        "devices": [
            torch.device("cpu"),
            torch.device("cuda", 1),
            torch.device("cuda"),
            torch.device("mps"),
            torch.device("meta"),
            torch.device("xpu", 0),
        ],
    }
    path = save(obj, tmp_path)
    expected = torch.load(path)  # all of it is weights_only-safe
    ours = pthfmt.load(path)
    assert_same_tree(ours, expected)
    assert ours["size"] == (2, 3) and type(ours["size"]) is tuple
    assert ours["size0"] == ()
    for a, b in zip(ours["dtypes"], expected["dtypes"]):
        assert isinstance(a, pthfmt.DType)
        assert (str(a), repr(a)) == (str(b), repr(b))
        assert a == str(b) and a == pthfmt.DType(str(b).removeprefix("torch."))
    for a, b in zip(ours["devices"], expected["devices"]):
        assert isinstance(a, pthfmt.Device)
        assert (str(a), repr(a), a.type, a.index) == (str(b), repr(b), b.type, b.index)


NUMPY_VALUES = {
    "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big_endian": np.arange(3, dtype=">i4"),
    "bools": np.array([True, False, True]),
    "u8": np.arange(5, dtype=np.uint8),
    "c128": np.array([1 + 2j, 3.5]),
    "f16": np.array([1.5, -0.0], dtype=np.float16),
    "empty": np.zeros((0, 2)),
    "scalar_f64": np.float64(2.5),
    "scalar_i64": np.int64(-7),
    "scalar_bool": np.bool_(True),
    "scalar_c64": np.complex64(1 - 2j),
    "scalar_f16": np.float16(0.5),
    "scalar_u32": np.uint32(4000000000),
}


def check_numpy_values(path):
    expected = torch_load(path)
    for ours in (pthfmt.load(path), pthfmt.open(path).obj):
        for key, value in NUMPY_VALUES.items():
            got = ours["np"][key]
            assert type(got) is type(value), key
            assert got.dtype.newbyteorder("=") == value.dtype.newbyteorder("="), key
            if isinstance(value, np.ndarray):
                assert got.shape == value.shape, key
                np.testing.assert_array_equal(got, value)
                np.testing.assert_array_equal(got, expected["np"][key])
            else:
                assert got == value == expected["np"][key], key
        if isinstance(ours["t"], np.ndarray):
            assert_array_matches(ours["t"], expected["t"])
        else:
            assert_ref_matches(ours["t"], expected["t"])


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_numpy_values_inside_checkpoints(tmp_path, protocol):
    path = save({"np": NUMPY_VALUES, "t": torch.arange(3.0)}, tmp_path, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch needs weights_only=False here
    check_numpy_values(path)


def test_numpy_arrays_protocol5(tmp_path):
    path = save({"np": NUMPY_VALUES, "t": torch.arange(3.0)}, tmp_path, pickle_protocol=5)
    check_numpy_values(path)


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_object_arrays_refused(tmp_path, protocol):
    path = save({"bad": np.array([1, "x"], dtype=object)}, tmp_path, pickle_protocol=protocol)
    with pytest.raises(UnsafePickleError, match="numpy dtype 'O8'") as exc:
        pthfmt.load(path)
    assert exc.value.record == "ckpt/data.pkl"


# -- device tags and map_location ------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("tag", ["cuda:0", "cuda:1", "mps", "xpu:0", "hpu:0", "meta"])
def test_device_tags(tmp_path, tag, legacy):
    obj = sample()
    path = tmp_path / "dev.pt"
    save_tagged(obj, path, tag, _use_new_zipfile_serialization=not legacy)
    if tag != "meta":  # torch cannot restore these on a CPU-only build
        with pytest.raises((RuntimeError, AssertionError)):
            torch.load(path)
    expected = torch.load(path, map_location="cpu")
    assert_same_tree(expected, obj)
    check_all_modes(path, expected, device=tag)
    with pthfmt.open(path) as ck:
        for info in ck.storages.values():
            assert info.tag == tag
            assert str(info.location) == tag
        for key, ref in ck.tensors():
            assert ref.device == pthfmt.Device.parse(tag), key
        assert_same_tree(ck.obj, expected, refs=True, device=tag)
    with pthfmt.open(path, map_location="cpu") as ck:
        assert_same_tree(ck.obj, expected, refs=True)


def test_map_location_variants(tmp_path):
    path = tmp_path / "mixed.pt"
    obj = {"big": torch.arange(16.0), "small": torch.arange(2.0), "mid": torch.arange(4)}

    def tagger(storage):
        return {64: "cuda:1", 8: "cpu", 32: "mps"}[storage.nbytes()]

    with tagged(tagger):
        torch.save(obj, path)
    seen = []

    def record(storage, tag):
        seen.append(tag)
        return storage

    expected = torch.load(path, map_location=record)
    assert_same_tree(expected, obj)
    tags = {"big": "cuda:1", "small": "cpu", "mid": "mps"}

    def devices(**kwargs):
        with pthfmt.open(path, **kwargs) as ck:
            assert sorted(info.tag for info in ck.storages.values()) == sorted(seen)
            for key, ref in ck.tensors():
                assert ref.storage.tag == tags[key]
                assert_array_matches(ref.numpy(), expected[key], where=key)
            return {key: str(ref.device) for key, ref in ck.tensors()}

    assert devices() == tags
    assert devices(map_location="cpu") == dict.fromkeys(tags, "cpu")
    assert devices(map_location=pthfmt.Device("cuda", 3)) == dict.fromkeys(tags, "cuda:3")
    assert devices(map_location={"cuda:1": "cuda:0", "mps": "cpu"}) == {
        "big": "cuda:0",
        "small": "cpu",
        "mid": "cpu",
    }
    assert devices(map_location={"cuda:1": pthfmt.Device("xpu", 2)}) == {
        "big": "xpu:2",
        "small": "cpu",
        "mid": "mps",
    }
    calls = []

    def callable_map(tag):
        calls.append(tag)
        return "cpu" if tag.startswith("cuda") else None  # None keeps the tag

    assert devices(map_location=callable_map) == {"big": "cpu", "small": "cpu", "mid": "mps"}
    assert sorted(calls) == sorted(seen)  # once per storage, like torch
    # map_location never changes values
    for ml in ("cpu", {"cuda:1": "cpu"}, callable_map):
        assert_same_tree(pthfmt.load(path, map_location=ml), expected)
        assert_same_tree(pthfmt.load(path), torch.load(path, map_location="cpu"))


def test_map_location_torch_style_callable(tmp_path):
    path = save({"t": torch.ones(1)}, tmp_path)
    with pthfmt.open(path, map_location=lambda storage, tag: storage) as ck:
        assert str(dict(ck.tensors())["t"].device) == "cpu"
    with pthfmt.open(path, map_location=lambda storage, tag: "cuda:1") as ck:
        assert str(dict(ck.tensors())["t"].device) == "cuda:1"


def test_map_location_callable_errors_are_not_file_errors(tmp_path):
    path = save({"t": torch.ones(1)}, tmp_path)

    def broken(tag):
        raise KeyError("user bug")

    with pytest.raises(KeyError, match="user bug") as exc:
        pthfmt.load(path, map_location=broken)
    assert not isinstance(exc.value, PthError)


def test_map_location_invalid_tag(tmp_path):
    path = save({"t": torch.ones(1)}, tmp_path)
    with pytest.raises(FormatError, match="bogus!"):
        pthfmt.open(path, map_location={"cpu": "bogus!"})


# -- DEFLATE, big-endian ----------------------------------------------------------------------


def test_deflate_records_mmap(tmp_path):
    obj = {
        "zeros": torch.zeros(64),
        "ints": torch.arange(100, dtype=torch.int64),
        "u16": torch.tensor([258, 1, 65535], dtype=torch.uint16),
        "view": None,
    }
    obj["view"] = obj["ints"][10:20:3]
    src = save(obj, tmp_path, "stored.pt")
    dst = tmp_path / "deflated.pt"
    rezip(src, dst, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(dst) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())

    # torch: correct without mmap, silently wrong with mmap
    assert_same_tree(torch_load(dst), obj)
    garbage = torch_load(dst, mmap=True)
    assert not torch.equal(garbage["zeros"], obj["zeros"])
    assert not torch.equal(garbage["ints"], obj["ints"])

    # ours: right in every mode
    for ours in (pthfmt.load(dst), pthfmt.load(dst, mmap=True)):
        assert_same_tree(ours, obj)
        assert np.shares_memory(ours["ints"], ours["view"])
    with pthfmt.open(dst) as ck:
        assert all(info.compressed and info.offset is None for info in ck.storages.values())
        assert_same_tree(ck.obj, obj, refs=True)


def test_lazy_open_reads_no_data(tmp_path):
    """open() decodes nothing: a corrupt deflate stream surfaces only when that tensor is read."""
    obj = {"good": torch.arange(50.0), "bad": torch.zeros(200), "later": torch.ones(3)}
    src = save(obj, tmp_path, "src.pt")
    dst = tmp_path / "lazy.pt"
    rezip(src, dst, compression=zipfile.ZIP_DEFLATED)
    raw = bytearray(dst.read_bytes())
    with zipfile.ZipFile(dst) as z:
        info = z.getinfo("src/data/1")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        raw[start : start + info.compress_size] = b"\xff" * info.compress_size
    dst.write_bytes(bytes(raw))

    with pthfmt.open(dst) as ck:  # no error: nothing was inflated
        refs = dict(ck.tensors())
        assert list(refs) == ["good", "bad", "later"]
        assert_ref_matches(refs["good"], obj["good"], where="good")
        assert refs["bad"].shape == (200,) and refs["bad"].nbytes == 800
        with pytest.raises(CorruptError) as exc:
            refs["bad"].numpy()
        assert exc.value.record == "src/data/1"
        assert "src/data/1" in str(exc.value)
        np.testing.assert_array_equal(refs["later"].numpy(), obj["later"].numpy())
    with pytest.raises(CorruptError, match="src/data/1"):
        pthfmt.load(dst)


def test_lazy_open_metadata_without_reading(tmp_path):
    obj = sample()
    path = save(obj, tmp_path)
    with pthfmt.open(path) as ck:
        storages = list(ck.storages.values())
        assert all(info.offset is not None and info.offset % 64 == 0 for info in storages)
        for key, ref in ck.tensors():
            if key in obj:
                assert ref.shape == tuple(obj[key].shape), key
        # reading one tensor twice gives views of one buffer
        a, b = ck.obj["base"].numpy(), ck.obj["t"].numpy()
        assert np.shares_memory(a, b) and not a.flags.writeable


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_name)
def test_big_endian(tmp_path, dtype):
    gen = torch.Generator().manual_seed(3)
    t = make_tensor(dtype, (2, 3), gen)
    obj = {"t": t, "t_t": t.t(), "row": t[1], "scalar": make_tensor(dtype, (), gen)}
    src = save(obj, tmp_path, "little.pt")
    dst = tmp_path / "big.pt"
    to_big_endian(src, dst)
    with pthfmt.open(dst) as ck:
        assert ck.byteorder == "big"
    theirs = torch_load(dst)
    if dtype in V3_DTYPES and t.element_size() > 1:
        # torch 2.13 does not swap _rebuild_tensor_v3 dtypes: its values are wrong
        assert torch_bytes(theirs["t"]) != torch_bytes(t)
    else:
        assert_same_tree(theirs, obj)
    # ours are the true values, in every mode
    check_all_modes(dst, obj)
    ours = pthfmt.load(dst, mmap=True)
    assert np.shares_memory(ours["t"], ours["t_t"])
    assert ours["t"].dtype.isnative


def test_big_endian_uint16_torch_is_wrong(tmp_path):
    obj = {
        "u16": torch.tensor([258, 1, 65535], dtype=torch.uint16),
        "c32": torch.tensor([1 + 2j], dtype=torch.complex32),
        "f32": torch.tensor([1.0, -2.5]),
        "c64": torch.tensor([1 - 2j]),
        "c64_conj": torch.tensor([1 - 2j]).conj(),
        "neg": torch._neg_view(torch.tensor([1.0, -2.5])),
    }
    src = save(obj, tmp_path, "little.pt")
    dst = tmp_path / "big.pt"
    to_big_endian(src, dst)
    theirs = torch_load(dst)
    assert theirs["u16"].tolist() == [513, 256, 65535]  # torch's wrong answer
    assert torch.equal(theirs["f32"], obj["f32"]) and torch.equal(theirs["c64"], obj["c64"])
    ours = pthfmt.load(dst)
    assert ours["u16"].tolist() == [258, 1, 65535]
    assert ours["c32"].tolist() == [1 + 2j]
    assert ours["f32"].tolist() == [1.0, -2.5]
    assert ours["c64"].tolist() == [1 - 2j]
    assert ours["c64_conj"].tolist() == [1 + 2j]
    assert ours["neg"].tolist() == [-1.0, 2.5]
    deflated = tmp_path / "big_deflated.pt"  # big-endian and compressed at once
    rezip(dst, deflated, compression=zipfile.ZIP_DEFLATED)
    for again in (pthfmt.load(deflated), pthfmt.load(deflated, mmap=True)):
        assert_same_tree(again, obj)


# -- the object graph ---------------------------------------------------------------------------


def test_shared_references_in_object_graph(tmp_path):
    shared = [1, 2, torch.arange(3.0)]
    cyclic = [5]
    cyclic.append(cyclic)
    d = {"x": torch.ones(2)}
    d["me"] = d
    t = torch.arange(4.0)
    obj = {
        "a": shared,
        "b": shared,
        "cyclic": cyclic,
        "d": d,
        "tup": (shared, shared),
        "t1": t,
        "t2": t,
    }
    path = save(obj, tmp_path)
    theirs = torch_load(path)
    assert theirs["a"] is theirs["b"] and theirs["cyclic"][1] is theirs["cyclic"]
    for ours in (pthfmt.load(path), pthfmt.load(path, mmap=True), pthfmt.open(path).obj):
        assert ours["a"] is ours["b"]
        assert ours["tup"][0] is ours["a"] and ours["tup"][1] is ours["a"]
        assert ours["cyclic"][0] == 5 and ours["cyclic"][1] is ours["cyclic"]
        assert ours["d"]["me"] is ours["d"]
        assert ours["t1"] is ours["t2"]  # one tensor object pickled once
        assert ours["a"][:2] == [1, 2]
    arrays = pthfmt.load(path)
    assert_array_matches(arrays["a"][2], theirs["a"][2])
    assert_array_matches(arrays["d"]["x"], theirs["d"]["x"])
    with pthfmt.open(path) as ck:
        assert [k for k, _ in ck.tensors()] == ["a.2", "d.x", "t1"]


def test_tensors_key_paths_in_file_order(tmp_path):
    t = torch.ones(1)
    obj = collections.OrderedDict(
        [
            ("z", torch.zeros(1)),
            ("layers", [{"w": torch.ones(2), "b": torch.ones(3)}, {"w": torch.ones(4)}]),
            ("a", (torch.ones(5), "x", {"deep": {"er": torch.ones(6)}})),
            ("same", t),
            ("again", t),
            ("empty", {}),
            ("m", torch.ones(7)),
        ]
    )
    path = save(obj, tmp_path)
    with pthfmt.open(path) as ck:
        got = [(k, r.shape) for k, r in ck.tensors()]
    assert got == [
        ("z", (1,)),
        ("layers.0.w", (2,)),
        ("layers.0.b", (3,)),
        ("layers.1.w", (4,)),
        ("a.0", (5,)),
        ("a.2.deep.er", (6,)),
        ("same", (1,)),
        ("m", (7,)),
    ]
    # the order of the records' first use in the pickle is torch's storage-key order
    assert [r.storage_key for _, r in pthfmt.open(path).tensors()] == [str(i) for i in range(8)]


def test_tensors_walk_is_linear(tmp_path):
    """40 levels of [x, x]: 2**40 paths, 41 distinct objects."""
    node = {"leaf": torch.arange(2.0)}
    for _ in range(40):
        node = [node, node]
    path = save({"deep": node, "after": torch.zeros(1)}, tmp_path)
    start = time.process_time()
    with pthfmt.open(path) as ck:
        got = list(ck.tensors())
    assert time.process_time() - start < 5
    assert [k for k, _ in got] == ["deep" + ".0" * 40 + ".leaf", "after"]
    ours = pthfmt.load(path)
    inner = ours["deep"]
    for _ in range(40):
        assert inner[0] is inner[1]
        inner = inner[0]
    np.testing.assert_array_equal(inner["leaf"], [0.0, 1.0])


def test_big_state_dict(tmp_path):
    """1100 entries: LONG_BINPUT memo keys, SETITEMS batches of 1000."""
    sd = collections.OrderedDict(
        (f"layer{i}.weight", torch.full((2,), float(i), dtype=torch.float16)) for i in range(1100)
    )
    path = save(sd, tmp_path)
    expected = torch_load(path)
    assert_same_tree(pthfmt.load(path), expected)
    with pthfmt.open(path) as ck:
        assert [k for k, _ in ck.tensors()] == list(sd)
        assert len(ck.storages) == 1100


def test_bare_storages(tmp_path):
    t = torch.arange(3.0)
    path = save({"untyped": torch.arange(3.0).untyped_storage(), "t": t}, tmp_path)
    ours = pthfmt.load(path)
    assert isinstance(ours["untyped"], pthfmt.StorageInfo)
    assert ours["untyped"].nbytes == 12
    np.testing.assert_array_equal(ours["t"], [0.0, 1.0, 2.0])


# -- errors ----------------------------------------------------------------------------------


def test_error_namedtuple_global(tmp_path):
    path = save({"weights": torch.ones(2), "meta": {"p": Point(1, 2)}}, tmp_path)
    err = both_raise(path, UnsafePickleError)
    assert f"{Point.__module__}.Point" in str(err)
    assert err.record == "ckpt/data.pkl"
    assert err.offset is not None
    assert err.key_path == "meta.p"


def test_error_tensor_subclass(tmp_path):
    path = save({"m": torch.arange(3.0).as_subclass(MyTensor)}, tmp_path)
    err = both_raise(path, UnsafePickleError)
    assert f"{MyTensor.__module__}.MyTensor" in str(err)
    assert err.key_path == "m"


@pytest.mark.parametrize("proto", [2, 4])
def test_error_os_system_reduce(tmp_path, proto):
    """A hand-made pickle: {'a': os.system('true')} -- must be refused, never run."""
    if proto == 2:
        body = (
            b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cos\nsystem\nq\x02X\x04\x00\x00\x00true"
            b"\x85R\x73."
        )
        offset = 13
    else:
        body = (
            b"\x80\x04}\x94\x8c\x01a\x94\x8c\x02os\x94\x8c\x06system\x94\x93\x94"
            b"\x8c\x04true\x85R\x73."
        )
        offset = 22
    assert pickletools_ok(body)
    path = tmp_path / "evil.pt"
    craft_checkpoint(path, body, {})
    with pytest.raises(pickle.UnpicklingError, match="os.system" if proto == 2 else "148"):
        torch.load(path)
    err = both_raise(path, UnsafePickleError)
    assert "os.system" in str(err)
    assert (err.record, err.offset, err.key_path) == ("archive/data.pkl", offset, "a")
    assert f"offset {offset}" in str(err) and "archive/data.pkl" in str(err)


def pickletools_ok(body: bytes) -> bool:
    import pickletools

    pickletools.dis(body, out=io.StringIO())
    return True


def test_error_numpy_object_array_names_key(tmp_path):
    path = save({"x": {"bad": np.array([1, "x"], dtype=object)}}, tmp_path)
    with pytest.raises(UnsafePickleError) as exc:
        pthfmt.load(path)
    assert exc.value.key_path == "x.bad"


def test_tensor_kinds_load(tmp_path):
    """Meta, sparse and quantized tensors load as pthfmt's kinds (tests/interop/test_kinds.py
    checks their values)."""
    cases = {
        "meta": (torch.empty(3, device="meta"), pthfmt.MetaArray),
        "sparse": (torch.eye(3).to_sparse(), pthfmt.SparseArray),
        "quantized": (
            torch.quantize_per_tensor(torch.arange(3.0), 0.1, 0, torch.qint8),
            pthfmt.QuantizedArray,
        ),
    }
    for name, (value, kind) in cases.items():
        path = save({"x": {name: value}}, tmp_path, f"{name}.pt")
        torch_load(path)  # torch itself reads them
        assert isinstance(pthfmt.load(path)["x"][name], kind), name


def test_error_missing_data_record(tmp_path):
    src = save({"a": torch.arange(3.0), "b": torch.arange(4)}, tmp_path, "m.pt")
    dst = tmp_path / "missing.pt"
    rezip(src, dst, transform=lambda name, data: None if name == "m/data/1" else data)
    with pytest.raises(RuntimeError, match="data/1"):
        torch.load(dst)
    err = both_raise(dst, FormatError)
    assert "m/data/1" in str(err) and "'1'" in str(err)
    assert err.key_path == "b"


def test_error_record_size_mismatch(tmp_path):
    src = save({"a": torch.arange(3.0), "b": torch.arange(4)}, tmp_path, "m.pt")
    dst = tmp_path / "size.pt"
    rezip(src, dst, transform=lambda n, d: d + b"\0" * 8 if n == "m/data/1" else d)
    with pytest.raises(RuntimeError, match="record size"):
        torch.load(dst)
    err = both_raise(dst, CorruptError)
    assert err.record == "m/data/1"
    assert "40" in str(err) and "32" in str(err)
    assert err.key_path == "b"


def test_error_record_size_offset_belongs_to_record(tmp_path):
    """Regression: the error once paired record 'm/data/1' with an offset into data.pkl."""
    src = save({"a": torch.arange(3.0), "b": torch.arange(4)}, tmp_path, "m.pt")
    dst = tmp_path / "size.pt"
    rezip(src, dst, transform=lambda n, d: d + b"\0" * 8 if n == "m/data/1" else d)
    with pytest.raises(CorruptError) as exc:
        pthfmt.load(dst)
    err = exc.value
    # an offset reported with record m/data/1 must lie inside that 40-byte record
    assert err.record == "m/data/1"
    assert err.offset is None or err.offset < 40


def test_error_view_outside_storage(tmp_path):
    st = FakeStorage("0", torch.FloatStorage, 4)
    good = craft_pickle({"w": {"x": FakeTensor(st, 0, (2, 2), (2, 1))}})
    bad = craft_pickle({"w": {"x": FakeTensor(st, 2, (3,), (1,))}})
    data = {"0": np.arange(4, dtype=np.float32).tobytes()}
    craft_checkpoint(tmp_path / "good.pt", good, data)
    craft_checkpoint(tmp_path / "bad.pt", bad, data)
    assert_same_tree(pthfmt.load(tmp_path / "good.pt"), torch.load(tmp_path / "good.pt"))
    with pytest.raises(RuntimeError, match="not resizable"):
        torch.load(tmp_path / "bad.pt")
    err = both_raise(tmp_path / "bad.pt", CorruptError)
    assert "storage '0'" in str(err) and "20 bytes" in str(err) and "16-byte" in str(err)
    assert err.key_path == "w.x"
    assert err.record == "archive/data.pkl"


def test_error_view_stride_outside_storage(tmp_path):
    st = FakeStorage("k", torch.LongStorage, 6)
    bad = craft_pickle([FakeTensor(st, 0, (2, 3), (3, 2))])  # last element at 0+3+4 = 7
    craft_checkpoint(tmp_path / "bad.pt", bad, {"k": bytes(48)})
    with pytest.raises(RuntimeError):
        torch.load(tmp_path / "bad.pt")
    err = both_raise(tmp_path / "bad.pt", CorruptError)
    assert "storage 'k'" in str(err) and err.key_path == "0"


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.05])
def test_error_truncated_zip(tmp_path, cut):
    src = save(sample(), tmp_path, "full.pt")
    raw = src.read_bytes()
    dst = tmp_path / "cut.pt"
    dst.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(RuntimeError):
        torch.load(dst)
    err = both_raise(dst, CorruptError)
    assert "truncated" in str(err)


def test_error_truncated_legacy(tmp_path):
    src = save(
        {"a": torch.arange(3.0), "b": torch.arange(4)},
        tmp_path,
        "full.pt",
        _use_new_zipfile_serialization=False,
    )
    raw = src.read_bytes()
    dst = tmp_path / "cut.pt"
    for cut, record in [
        (len(raw) - 4, "storage "),
        (200, "legacy object pickle"),
        (30, "legacy sys_info"),
    ]:
        dst.write_bytes(raw[:cut])
        err = both_raise(dst, CorruptError)
        assert err.record is not None and err.record.startswith(record), (cut, err)
        assert err.record in str(err)
