"""``convert --max-shard-size``: a sharded checkpoint out, as ``save_pretrained`` writes it,
and a folder in (its index or its single ``model.safetensors``/``pytorch_model.bin``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pthfmt
from pthfmt.engines.convert import UnknownFormatError, convert
from tests.support import ROOT
from tests.support.host import child_env

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=child_env(),
        cwd=ROOT,
    )


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "a": torch.randn(300, 300, generator=g),
        "b": torch.randn(200, 300, generator=g).half(),
        "c": torch.arange(10),
    }
    path = tmp_path / "m.pt"
    torch.save({**sd, "epoch": 3}, path)
    return path, sd


@pytest.mark.parametrize(
    ("fmt", "names"),
    [
        (
            "safetensors",
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
            ],
        ),
        (
            "pth",
            [
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
                "pytorch_model.bin.index.json",
            ],
        ),
    ],
)
def test_cli_writes_shards_torch_and_safetensors_read(model, tmp_path, fmt, names):
    src, sd = model
    out = tmp_path / "sharded"
    done = run("convert", "--max-shard-size", "400KB", "--format", fmt, src, out)
    assert done.returncode == 0, done.stderr
    assert f"({fmt}, 2 shards + index): 3 tensors" in done.stdout
    assert "left out 1 value: sharded checkpoints hold tensors only: epoch" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == names
    index = json.loads((out / names[-1]).read_text())
    got: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(index["weight_map"].values()):
        if fmt == "safetensors":
            from safetensors.torch import load_file

            got.update(load_file(str(out / shard)))
        else:
            got.update(torch.load(out / shard, weights_only=True))
    assert got.keys() == sd.keys()
    for k, t in sd.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in sd.values())
    back = pthfmt.load_sharded(out)  # and pthfmt reads the folder back
    for k, t in sd.items():
        np.testing.assert_array_equal(back[k], t.numpy())


def test_library_convert_defaults_to_safetensors_shards(model, tmp_path):
    src, _ = model
    warnings = convert(src, tmp_path / "o", max_shard_size=10**9)
    assert warnings == ["left out 1 value: sharded checkpoints hold tensors only: epoch"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.safetensors"]
    with pytest.raises(UnknownFormatError, match="written as 'pth' or 'safetensors', not 'npz'"):
        convert(src, tmp_path / "p", max_shard_size="1GB", format="npz")


def test_cli_refuses_a_bad_size(model, tmp_path):
    src, _ = model
    done = run("convert", "--max-shard-size", "4XB", src, tmp_path / "x")
    assert done.returncode == 2
    assert "the unit must be TB, GB, MB or KB" in done.stderr
    assert not (tmp_path / "x").exists()


def test_a_folder_in_is_what_it_holds(model, tmp_path):
    """A model folder with one ``pytorch_model.bin``: convert and inspect take the folder."""
    src, sd = model
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(src.read_bytes())
    done = run("convert", folder, tmp_path / "m.safetensors")
    assert done.returncode == 0, done.stderr
    from safetensors.numpy import load_file

    got = load_file(str(tmp_path / "m.safetensors"))
    for k, t in sd.items():
        np.testing.assert_array_equal(got[k], t.numpy())
    shown = run("inspect", folder)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{folder / 'pytorch_model.bin'}: ")


def test_diff_takes_a_sharded_folder(model, tmp_path):
    src, _ = model
    out = tmp_path / "sharded"
    assert run("convert", "--max-shard-size", "400KB", "--format", "pth", src, out).returncode == 0
    from pthfmt.engines.diff import diff

    result = diff(str(out), str(src))
    assert result.only_a == [] and result.only_b == ["epoch"] and result.different == []
    same = diff(str(out / "pytorch_model.bin.index.json"), str(out))
    assert same.identical
    done = run("diff", out, src)
    assert done.stdout.startswith(f"A: {out}: 3 tensors, 3 entries\n"), done.stdout


def test_inspect_of_safetensors_names_no_version(model, tmp_path):
    src, _ = model
    out = tmp_path / "m.safetensors"
    assert run("convert", src, out).returncode == 0
    first = run("inspect", out).stdout.splitlines()[0]
    assert first.startswith(f"{out}: safetensors checkpoint, little-endian, ")


def test_sharded_checkpoint_is_a_context_manager(model, tmp_path):
    src, sd = model
    out = tmp_path / "sharded"
    assert run("convert", "--max-shard-size", "400KB", src, out).returncode == 0
    with pthfmt.load_sharded(out) as weights:
        a = weights["a"]
        assert len(weights.shards) == 2
    np.testing.assert_array_equal(a, sd["a"].numpy())  # read arrays outlive close()
    assert all(shard.closed for shard in weights.shards.values())
