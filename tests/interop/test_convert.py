"""``pthfmt convert``: real round trips through torch, the ``safetensors`` package and numpy,
warnings for what a format cannot hold, and atomic output.  (The command line's exit codes are
in ``tests/cli/test_convert_cli.py``; that importing pthfmt loads neither torch nor safetensors
is in ``tests/unit/test_convert.py``.)"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from pthfmt.conversion import (  # noqa: E402
    META_PREFIX,
    NPZ_RAW_DTYPES,
    SAFETENSORS_DTYPES,
    SIDECAR,
    Conversion,
    UnknownFormatError,
    convert,
)
from pthfmt.errors import PthError  # noqa: E402
from tests.support.torch_helpers import (  # noqa: E402
    ALL_DTYPES,
    dtype_name,
    make_tensor,
    rezip,
    torch_bytes,
    training_checkpoint,
)

NOT_IN_SAFETENSORS = {"complex128", "complex32", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2"}


# The safetensors package, imported by the tests that use it (marked ``safetensors``): the
# others run with torch alone.
def safe_open(*args: Any, **kwargs: Any) -> Any:
    from safetensors import safe_open

    return safe_open(*args, **kwargs)


def load_file(*args: Any, **kwargs: Any) -> Any:
    from safetensors.torch import load_file

    return load_file(*args, **kwargs)


def save_file(*args: Any, **kwargs: Any) -> Any:
    from safetensors.torch import save_file

    return save_file(*args, **kwargs)


def same(a: torch.Tensor, b: torch.Tensor, where: str = "") -> None:
    assert a.dtype == b.dtype, where
    assert tuple(a.shape) == tuple(b.shape), where
    assert torch_bytes(a) == torch_bytes(b), where


def all_dtype_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """One contiguous and one transposed (non-contiguous) tensor of every dtype, a 0-d
    and an empty one of some."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for dtype in ALL_DTYPES:
        name = dtype_name(dtype)
        out[name] = make_tensor(dtype, (3, 4), gen)
        out[f"{name}_t"] = make_tensor(dtype, (4, 2), gen).t()
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 3, dtype=torch.int16)
    return out


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- torch -> safetensors ------------------------------------------------------------------------


@pytest.mark.safetensors
def test_pth_to_safetensors_loads_with_safe_open(tmp_path: Path) -> None:
    tensors = all_dtype_tensors()
    x = torch.arange(10.0)
    tensors.update({"shared.x": x, "shared.tail": x[2:]})
    torch.save(tensors, tmp_path / "all.pth")
    warnings = convert(tmp_path / "all.pth", tmp_path / "all.safetensors")
    text = "\n".join(warnings)
    for name in NOT_IN_SAFETENSORS:
        assert f"{name} ({name})" in text and f"{name}_t ({name})" in text
    assert "shared.x = shared.tail" in text and "separate copies" in text
    with safe_open(tmp_path / "all.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        for key, t in tensors.items():
            if dtype_name(t.dtype) in NOT_IN_SAFETENSORS:
                assert key not in keys
                continue
            same(f.get_tensor(key), t, key)
    # numpy framework: bfloat16 comes back as ml_dtypes.bfloat16
    with safe_open(tmp_path / "all.safetensors", framework="numpy") as f:
        for key in ("float32_t", "bfloat16", "int64", "bool", "complex64", "uint16", "empty"):
            arr = f.get_tensor(key)
            assert arr.dtype.name == dtype_name(tensors[key].dtype)
            assert np.ascontiguousarray(arr).tobytes() == torch_bytes(tensors[key])


def test_header_is_aligned_and_in_file_order(tmp_path: Path) -> None:
    torch.save(
        {
            "b": torch.ones(3, dtype=torch.int8),
            "a": torch.ones(2, dtype=torch.float64),
            "c": torch.ones(1, dtype=torch.float16),
        },
        tmp_path / "m.pt",
    )
    convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    assert list(header) == ["__metadata__", "b", "a", "c"]
    assert header["a"]["data_offsets"] == [0, 16]  # the widest dtype first: aligned
    assert header["b"]["data_offsets"][0] == 18
    assert len(data) == 8 + n + 21


@pytest.mark.safetensors
def test_nested_checkpoint_flattens_and_carries_metadata(tmp_path: Path) -> None:
    net, ckpt = training_checkpoint()
    torch.save(ckpt, tmp_path / "ckpt.pth")
    warnings = convert(tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors")
    assert len(warnings) == 1
    assert "device (pthfmt.model.device.Device)" in warnings[0] and "blob (bytes)" in warnings[0]
    with safe_open(tmp_path / "ckpt.safetensors", framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        same(f.get_tensor("model_state_dict.0.weight"), net.state_dict()["0.weight"])
        same(
            f.get_tensor("optimizer_state_dict.state.1.exp_avg"),
            ckpt["optimizer_state_dict"]["state"][1]["exp_avg"],
        )
    assert {f"model_state_dict.{k}" for k in net.state_dict()} <= keys
    assert "optimizer_state_dict.state.0.step" in keys
    assert meta["format"] == "pt"
    assert json.loads(meta[META_PREFIX + "epoch"]) == 5
    assert json.loads(meta[META_PREFIX + "loss"]) == 0.25
    assert json.loads(meta[META_PREFIX + "note"]) is None
    assert json.loads(meta[META_PREFIX + "optimizer_state_dict.param_groups.0.betas"]) == [
        0.9,
        0.999,
    ]
    assert json.loads(meta[META_PREFIX + "optimizer_state_dict.param_groups.0.params"]) == [
        0,
        1,
        2,
        3,
    ]
    # ... and back: a flat torch dict with the values restored
    assert convert(tmp_path / "ckpt.safetensors", tmp_path / "back.pth") == []
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back["epoch"] == 5 and back["loss"] == 0.25 and back["note"] is None
    same(back["model_state_dict.2.bias"], net.state_dict()["2.bias"])
    # torch -> torch keeps what safetensors cannot hold
    assert convert(tmp_path / "ckpt.pth", tmp_path / "flat.pt") == []
    flat = torch.load(tmp_path / "flat.pt", weights_only=True)
    assert flat["device"] == torch.device("cpu") and flat["blob"] == b"\x00raw"
    assert flat["optimizer_state_dict.param_groups.0.betas"] == (0.9, 0.999)


@pytest.mark.safetensors
def test_key_selects_a_state_dict(tmp_path: Path) -> None:
    net, ckpt = training_checkpoint()
    torch.save(ckpt, tmp_path / "ckpt.pth")
    job = Conversion(tmp_path / "ckpt.pth", tmp_path / "model.safetensors", key="model_state_dict")
    with job:
        job.write()
    assert (
        "left out 29 other entries: epoch, optimizer_state_dict (24 entries), loss, "
        "device, blob, note" in job.warnings[0]
    )
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    for k, v in net.state_dict().items():
        same(fresh.state_dict()[k], v, k)


@pytest.mark.safetensors
def test_whole_model_and_bare_tensor(tmp_path: Path) -> None:
    net, _ = training_checkpoint()
    torch.save(net, tmp_path / "model.pt")
    assert convert(tmp_path / "model.pt", tmp_path / "model.safetensors") == []
    loaded = load_file(tmp_path / "model.safetensors")
    assert set(loaded) == set(net.state_dict())
    torch.save(
        {"x": torch.ones(3), "y": torch.ones(2, 3).t()},
        tmp_path / "legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    assert convert(tmp_path / "legacy.pt", tmp_path / "legacy.safetensors") == []
    loaded = load_file(tmp_path / "legacy.safetensors")
    assert torch.equal(loaded["y"], torch.ones(3, 2)) and loaded["y"].is_contiguous()
    torch.save(torch.arange(4), tmp_path / "t.pt")
    warnings = convert(tmp_path / "t.pt", tmp_path / "t.safetensors")
    assert "'tensor'" in warnings[0]
    assert torch.equal(load_file(tmp_path / "t.safetensors")["tensor"], torch.arange(4))


# -- safetensors -> torch ------------------------------------------------------------------------


@pytest.mark.safetensors
def test_safetensors_package_output_to_pth(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    tensors = {
        dtype_name(d): make_tensor(d, (2, 6), gen)
        for d in ALL_DTYPES
        if dtype_name(d) in SAFETENSORS_DTYPES
    }
    tensors["scalar"] = torch.tensor(7, dtype=torch.int32)
    tensors["empty"] = torch.zeros(0, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "hf.safetensors", metadata={"format": "pt", "origin": "x"})
    warnings = convert(tmp_path / "hf.safetensors", tmp_path / "hf.pth")
    assert len(warnings) == 1 and "origin" in warnings[0] and "format" not in warnings[0]
    back = torch.load(tmp_path / "hf.pth", weights_only=True)
    assert set(back) == set(tensors)
    for key, t in tensors.items():
        same(back[key], t, key)
    # and to npz and back
    convert(tmp_path / "hf.safetensors", tmp_path / "hf.npz")
    convert(tmp_path / "hf.npz", tmp_path / "hf2.pth")
    back = torch.load(tmp_path / "hf2.pth", weights_only=True)
    for key, t in tensors.items():
        same(back[key], t, key)


@pytest.mark.safetensors
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:7], "too short"),
        (lambda d: struct.pack("<Q", 1 << 40) + d[8:], "at most"),
        (lambda d: struct.pack("<Q", len(d)) + d[8:], "runs past the end"),
        (lambda d: d[:-1], "run past"),
        (lambda d: d.replace(b'"data_offsets":[0,8]', b'"data_offsets":[0,4]'), "needs 8 bytes"),
        (lambda d: d.replace(b'"data_offsets":[8,16]', b'"data_offsets":[4,12]'), "overlap"),
        (lambda d: d.replace(b'"F32"', b'"F99"'), "unknown dtype"),
        (lambda d: d.replace(b'"shape":[2]', b'"shape":[-2]'), "bad shape"),
        (lambda d: d.replace(b'{"__', b"[1,2"), "not JSON"),
    ],
)
def test_hostile_safetensors_headers(tmp_path: Path, mutate, message: str) -> None:
    save_file(
        {"a": torch.ones(2, dtype=torch.float32), "b": torch.ones(2)},
        tmp_path / "ok.safetensors",
        metadata={"format": "pt"},
    )
    data = (tmp_path / "ok.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mutate(data))
    with pytest.raises(PthError, match=message):
        convert(bad, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists() and no_temp_files(tmp_path)


def test_safetensors_dtypes_torch_lacks(tmp_path: Path) -> None:
    header = {
        "f6": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]},
        "odd": {"dtype": "F4", "shape": [2, 3], "data_offsets": [3, 6]},
        "ok": {"dtype": "F4", "shape": [1, 4], "data_offsets": [6, 8]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(range(8)))
    warnings = convert(path, tmp_path / "odd.pth")
    assert len(warnings) == 1 and "f6 (F6_E2M3)" in warnings[0] and "odd (F4 shape" in warnings[0]
    back = torch.load(tmp_path / "odd.pth", weights_only=True)
    assert set(back) == {"ok"} and back["ok"].dtype == torch.float4_e2m1fn_x2
    assert back["ok"].shape == (1, 2) and torch_bytes(back["ok"]) == bytes([6, 7])


# -- npz -----------------------------------------------------------------------------------------


def test_pth_npz_pth_lossless_for_every_dtype(tmp_path: Path) -> None:
    tensors = all_dtype_tensors(seed=1)
    torch.save(tensors, tmp_path / "all.pth")
    warnings = convert(tmp_path / "all.pth", tmp_path / "all.npz")
    assert len(warnings) == 1 and "raw bits" in warnings[0]
    with np.load(tmp_path / "all.npz", allow_pickle=False) as npz:
        assert npz["bfloat16"].dtype == np.uint16 and npz["complex128"].dtype == np.complex128
        sidecar = json.loads(str(npz[SIDECAR][()]))
        assert sidecar["dtypes"]["float8_e4m3fn_t"] == "float8_e4m3fn"
        assert set(sidecar["dtypes"].values()) == set(NPZ_RAW_DTYPES)
    assert convert(tmp_path / "all.npz", tmp_path / "back.pth") == []
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(tensors)
    for key, t in tensors.items():
        same(back[key], t, key)


@pytest.mark.safetensors
def test_numpy_written_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "big": rng.standard_normal((3, 2)).astype(">f4"),
        "fortran": np.asfortranarray(rng.integers(0, 9, (3, 5))),
        "flags": rng.integers(0, 2, 7).astype(bool),
        "text": np.array(["a", "b"]),
    }
    for name, saver in (("plain.npz", np.savez), ("packed.npz", np.savez_compressed)):
        saver(tmp_path / name, **arrays)
        warnings = convert(tmp_path / name, tmp_path / f"{name}.pth")
        assert len(warnings) == 1 and "text (dtype <U1 has no torch equivalent)" in warnings[0]
        back = torch.load(tmp_path / f"{name}.pth", weights_only=True)
        assert set(back) == {"big", "fortran", "flags"}
        for key in back:
            assert np.array_equal(back[key].numpy(), arrays[key]), key
        convert(tmp_path / name, tmp_path / f"{name}.safetensors")
        with safe_open(tmp_path / f"{name}.safetensors", framework="numpy") as f:
            assert np.array_equal(f.get_tensor("big"), arrays["big"])
            assert np.array_equal(f.get_tensor("fortran"), arrays["fortran"])


def test_object_npz_is_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", ok=np.ones(2), evil=np.array([{"a": 1}], dtype=object))
    warnings = convert(tmp_path / "obj.npz", tmp_path / "obj.pth")
    assert "evil (object array: would need pickle)" in warnings[0]
    assert set(torch.load(tmp_path / "obj.pth", weights_only=True)) == {"ok"}


# -- sharded, compressed, progress ---------------------------------------------------------------


@pytest.mark.safetensors
def test_sharded_index_input(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    parts = [
        {"a.weight": torch.randn(3, 4, generator=gen), "a.bias": torch.randn(3)},
        {"b.weight": torch.randn(2, 3, generator=gen).to(torch.bfloat16)},
    ]
    folder = tmp_path / "model"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 70}, "weight_map": weight_map})
    )
    expected = {**parts[0], **parts[1]}
    assert convert(folder, tmp_path / "merged.safetensors") == []
    merged = load_file(tmp_path / "merged.safetensors")
    assert set(merged) == set(expected)
    for k, v in expected.items():
        same(merged[k], v, k)
    convert(folder / "pytorch_model.bin.index.json", tmp_path / "merged.npz")
    convert(tmp_path / "merged.npz", tmp_path / "merged.pth")
    back = torch.load(tmp_path / "merged.pth", weights_only=True)
    for k, v in expected.items():
        same(back[k], v, k)
    # a safetensors index works too
    st = tmp_path / "st"
    st.mkdir()
    for i, part in enumerate(parts, 1):
        save_file(part, st / f"model-{i}.safetensors", metadata={"format": "pt"})
    (st / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {k: f"model-{i}.safetensors" for i, p in enumerate(parts, 1) for k in p}}
        )
    )
    assert convert(st, tmp_path / "st.pth") == []
    back = torch.load(tmp_path / "st.pth", weights_only=True)
    for k, v in expected.items():
        same(back[k], v, k)


@pytest.mark.safetensors
def test_compressed_checkpoint_and_progress(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    tensors = {f"w{i}": torch.randn(64, 64, generator=gen) for i in range(4)}
    torch.save(tensors, tmp_path / "plain.pth")
    rezip(tmp_path / "plain.pth", tmp_path / "deflated.pth", compression=zipfile.ZIP_DEFLATED)
    calls: list[tuple[int, int]] = []
    convert(
        tmp_path / "deflated.pth",
        tmp_path / "out.safetensors",
        progress=lambda done, total: calls.append((done, total)),
    )
    loaded = load_file(tmp_path / "out.safetensors")
    for k, v in tensors.items():
        same(loaded[k], v, k)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and calls[-1][1] == 4 * 64 * 64 * 4
    assert dones[-1] == os.path.getsize(tmp_path / "out.safetensors")


# -- atomic output -------------------------------------------------------------------------------


def test_failed_conversion_leaves_nothing_and_keeps_old_output(tmp_path: Path) -> None:
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "in.pth")
    for out in ("out.safetensors", "out.npz", "out.pth"):
        target = tmp_path / out

        def boom(done: int, total: int) -> None:
            if done > 4096:
                raise RuntimeError("interrupted")

        with pytest.raises(RuntimeError):
            convert(tmp_path / "in.pth", target, progress=boom)
        assert not target.exists() and no_temp_files(tmp_path)
        target.write_bytes(b"precious")
        with pytest.raises(RuntimeError):
            convert(tmp_path / "in.pth", target, progress=boom)
        assert target.read_bytes() == b"precious" and no_temp_files(tmp_path)
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(PthError):
        convert(tmp_path / "bad.pth", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


@pytest.mark.safetensors
def test_unknown_formats(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "in.pth")
    with pytest.raises(UnknownFormatError, match=r"'\.txt'"):
        convert(tmp_path / "in.pth", tmp_path / "out.txt")
    convert(tmp_path / "in.pth", tmp_path / "out.weights", format="safetensors")
    assert torch.equal(load_file(tmp_path / "out.weights")["w"], torch.ones(1))
    # content decides for inputs: a safetensors file named .bin still converts
    os.replace(tmp_path / "out.weights", tmp_path / "odd.bin")
    convert(tmp_path / "odd.bin", tmp_path / "odd.pth")
    assert torch.equal(torch.load(tmp_path / "odd.pth", weights_only=True)["w"], torch.ones(1))
