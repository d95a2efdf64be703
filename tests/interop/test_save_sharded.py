"""``pthfmt.save_sharded``: the shards and index ``huggingface_hub``'s ``save_torch_state_dict``
(the split ``transformers``' ``save_pretrained`` uses) writes for the same state dict, torch
loading every ``.bin`` shard and the ``safetensors`` package every ``.safetensors`` shard, bit
for bit (bf16 included), tied tensors, sizes, single shards, stale files and atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.safetensors]
torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
hub = pytest.importorskip("huggingface_hub")

import pthfmt  # noqa: E402
from pthfmt.errors import UnserializableError  # noqa: E402
from pthfmt.formats.sharding import parse_size, save_sharded  # noqa: E402
from tests.support.torch_helpers import torch_bytes  # noqa: E402


def model_state(seed: int = 0) -> dict[str, Any]:
    """A small model's state dict: mixed dtypes and sizes, a tied weight, a fused qkv buffer
    split into three views, an empty tensor and a scalar."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(50, 8, generator=gen).to(torch.bfloat16)
    qkv = torch.randn(3 * 16, 8, generator=gen)
    state: dict[str, Any] = {"embed.weight": emb}
    for i in range(4):
        state[f"layers.{i}.w"] = torch.randn(16 + 8 * i, 8, generator=gen)
        state[f"layers.{i}.b"] = torch.randn(16 + 8 * i, generator=gen).to(torch.float16)
        state[f"layers.{i}.steps"] = torch.tensor(i, dtype=torch.int64)
    state["attn.q"], state["attn.k"], state["attn.v"] = qkv[:16], qkv[16:32], qkv[32:]
    state["empty"] = torch.zeros(0, 4)
    state["lm_head.weight"] = emb  # tied
    return state


def as_numpy(state: dict[str, Any], tmp: Path) -> dict[str, np.ndarray]:
    """The state dict as pthfmt loads it (views of one buffer where torch shares storage)."""
    torch.save(state, tmp / "whole.pth")
    return pthfmt.load(tmp / "whole.pth")


def hub_save(state: dict[str, Any], folder: Path, max_size: Any, safe: bool) -> None:
    fresh = dict(state)  # huggingface_hub removes tied names from the dict it is given
    hub.save_torch_state_dict(fresh, folder, max_shard_size=max_size, safe_serialization=safe)


def index_name(safe: bool) -> str:
    return "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"


def shard_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        return sorted(st_torch.load_file(str(path)))
    return sorted(torch.load(path, weights_only=True))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("safe", [False, True], ids=["pth", "safetensors"])
@pytest.mark.parametrize("max_size", [200, 700, "1KB", 10**9])
def test_same_files_and_index_as_huggingface_hub(tmp_path: Path, safe: bool, max_size: Any) -> None:
    state = model_state()
    if safe:  # huggingface_hub refuses views that do not cover their storage for safetensors
        state = {k: v for k, v in state.items() if not k.startswith("attn.")}
    hub_dir, ours = tmp_path / "hub", tmp_path / "ours"
    hub_dir.mkdir()
    hub_save(state, hub_dir, max_size, safe)
    arrays = as_numpy(state, tmp_path)
    written = save_sharded(
        arrays, ours, max_shard_size=max_size, format="safetensors" if safe else "pth"
    )
    assert sorted(written) == sorted(os.listdir(hub_dir)) == sorted(os.listdir(ours))
    for name in written:
        if name.endswith(".index.json"):
            assert name == index_name(safe) and written[-1] == name
            hub_doc = json.loads((hub_dir / name).read_text())
            text = (ours / name).read_text()
            assert json.loads(text) == hub_doc
            assert text == json.dumps(hub_doc, indent=2, sort_keys=True) + "\n"
        else:
            assert shard_keys(ours / name) == shard_keys(hub_dir / name), name
    if max_size == 10**9:
        assert written == ["model.safetensors" if safe else "pytorch_model.bin"]


@pytest.mark.filterwarnings("ignore")
def test_split_matches_huggingface_hub_split(tmp_path: Path) -> None:
    state = model_state(3)
    arrays = as_numpy(state, tmp_path)
    for max_size in (1, 150, 333, 1000, 1500, 2000, "0.001MB"):
        split = hub.split_torch_state_dict_into_shards(
            state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_size
        )
        folder = tmp_path / f"s{max_size}"
        written = save_sharded(arrays, folder, max_shard_size=max_size)
        if split.is_sharded:
            doc = json.loads((folder / "pytorch_model.bin.index.json").read_text())
            assert doc["weight_map"] == split.tensor_to_filename
            assert doc["metadata"] == split.metadata
        assert written[: len(split.filename_to_tensors)] == list(split.filename_to_tensors)


@pytest.mark.filterwarnings("ignore")
def test_torch_loads_every_bin_shard_bit_for_bit(tmp_path: Path) -> None:
    state = model_state(1)
    arrays = as_numpy(state, tmp_path)
    written = save_sharded(arrays, tmp_path / "out", max_shard_size=500)
    doc = json.loads((tmp_path / "out" / "pytorch_model.bin.index.json").read_text())
    assert len(written) > 3 and set(doc["weight_map"]) == set(state)
    loaded: dict[str, Any] = {}
    for name in written[:-1]:
        shard = torch.load(tmp_path / "out" / name, weights_only=True)
        assert all(doc["weight_map"][k] == name for k in shard)
        loaded.update(shard)
    for key, t in state.items():
        assert loaded[key].dtype == t.dtype and loaded[key].shape == t.shape, key
        assert torch_bytes(loaded[key]) == torch_bytes(t), key
    # tied and fused tensors keep sharing their storage inside their shard
    tied = loaded["embed.weight"], loaded["lm_head.weight"]
    assert tied[0].untyped_storage().data_ptr() == tied[1].untyped_storage().data_ptr()
    qkv = [loaded[f"attn.{n}"].untyped_storage().data_ptr() for n in "qkv"]
    assert len(set(qkv)) == 1


@pytest.mark.filterwarnings("ignore")
def test_safetensors_loads_every_shard_bit_for_bit(tmp_path: Path) -> None:
    """(Including the three views of the fused qkv buffer, which huggingface_hub refuses
    although each is its own byte range.)"""
    state = model_state(2)
    arrays = as_numpy(state, tmp_path)
    written = save_sharded(arrays, tmp_path / "out", max_shard_size=500, format="safetensors")
    doc = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert doc["metadata"]["lm_head.weight"] == "embed.weight"  # dropped as huggingface_hub
    loaded: dict[str, Any] = {}
    for name in written[:-1]:
        loaded.update(st_torch.load_file(str(tmp_path / "out" / name)))
    assert set(loaded) == set(state) - {"lm_head.weight"}
    for key, t in loaded.items():
        assert t.dtype == state[key].dtype and torch_bytes(t) == torch_bytes(state[key]), key


@pytest.mark.filterwarnings("ignore")
def test_tensor_refs_and_tensor_wrappers_are_saved(tmp_path: Path) -> None:
    state = model_state(4)
    torch.save(state, tmp_path / "whole.pth")
    with pthfmt.open(tmp_path / "whole.pth") as ck:
        refs = dict(ck.obj)
        refs["wrapped"] = pthfmt.Tensor(np.arange(3.0), requires_grad=True, parameter=True)
        for fmt in ("pth", "safetensors"):
            save_sharded(refs, tmp_path / fmt, max_shard_size=300, format=fmt)
    merged = {}
    for name in sorted(os.listdir(tmp_path / "pth")):
        if name.endswith(".bin"):
            merged.update(torch.load(tmp_path / "pth" / name, weights_only=True))
    assert isinstance(merged["wrapped"], torch.nn.Parameter)
    for key, t in state.items():
        assert torch_bytes(merged[key]) == torch_bytes(t), key


def test_sizes_parse_as_huggingface_hub() -> None:
    from huggingface_hub.serialization._base import parse_size_to_int

    for text in ("5GB", "2GB", "10MB", "1.5kb", " 3 TB ", "0.5GB"):
        assert parse_size(text) == parse_size_to_int(text), text
    assert parse_size("5GB") == 5 * 10**9 and parse_size(123) == 123
    for bad in ("5GiB", "GB", "-1GB", "5", 0):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_a_tensor_larger_than_the_maximum_goes_alone_as_in_huggingface_hub(tmp_path: Path) -> None:
    arrays = {
        "small": np.zeros(10, np.float32),
        "big": np.zeros(1000, np.float32),
        "after": np.zeros(10, np.float32),
    }
    written = save_sharded(arrays, tmp_path, max_shard_size=100)
    doc = json.loads((tmp_path / written[-1]).read_text())
    assert doc == {
        "metadata": {"total_size": 4080},
        "weight_map": {
            "small": "pytorch_model-00002-of-00002.bin",
            "big": "pytorch_model-00001-of-00002.bin",
            "after": "pytorch_model-00002-of-00002.bin",
        },
    }  # (huggingface_hub closes the big one's shard at once, the current one at the end)
    split = hub.split_torch_state_dict_into_shards(
        {k: torch.from_numpy(v) for k, v in arrays.items()},
        filename_pattern="pytorch_model{suffix}.bin",
        max_shard_size=100,
    )
    assert split.tensor_to_filename == doc["weight_map"]


def test_stale_shards_and_index_are_removed(tmp_path: Path) -> None:
    arrays = {f"w{i}": np.full(100, i, np.float32) for i in range(5)}
    save_sharded(arrays, tmp_path, max_shard_size=500)
    assert len(os.listdir(tmp_path)) == 6
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "pytorch_model.bin.backup").write_text("kept")
    assert save_sharded(arrays, tmp_path) == ["pytorch_model.bin"]
    assert sorted(os.listdir(tmp_path)) == [
        "notes.txt",
        "pytorch_model.bin",
        "pytorch_model.bin.backup",
    ]
    back = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert [int(back[f"w{i}"][0]) for i in range(5)] == list(range(5))


def test_refusals_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnserializableError, match="safetensors has no complex128 dtype"):
        save_sharded(
            {"ok": np.zeros(3), "c": np.zeros(2, np.complex128)},
            tmp_path / "a",
            format="safetensors",
        )
    with pytest.raises(UnserializableError, match="takes tensors only: 'step' is 3"):
        save_sharded({"w": np.zeros(3), "step": 3}, tmp_path / "b")
    with pytest.raises(UnserializableError, match="none covers all of it"):
        base = np.arange(10.0)
        save_sharded({"x": base[:6], "y": base[4:]}, tmp_path / "c", format="safetensors")
    with pytest.raises(ValueError, match="nothing to save: the state dict is empty"):
        save_sharded({}, tmp_path / "e")
    with pytest.raises(ValueError, match="format must be"):
        save_sharded({}, tmp_path / "d", format="npz")
    assert not any((tmp_path / d).exists() and os.listdir(tmp_path / d) for d in "abcde")


def test_a_failing_shard_leaves_earlier_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = {f"w{i}": np.full(100, i, np.float32) for i in range(4)}
    save_sharded(arrays, tmp_path, max_shard_size=500)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    from pthfmt import writer

    calls = []
    real = writer.save

    def failing(obj: Any, f: Any, **kw: Any) -> None:
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(obj, f, **kw)

    monkeypatch.setattr(writer, "save", failing)
    with pytest.raises(KeyboardInterrupt):
        save_sharded({k: v + 10 for k, v in arrays.items()}, tmp_path, max_shard_size=500)
    assert sorted(os.listdir(tmp_path)) == sorted(before)  # no temporary file left
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert index == json.loads(before["pytorch_model.bin.index.json"])
