"""Whole pickled modules (stubs), TorchScript archives and sharded checkpoints vs torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pthfmt
from pthfmt.errors import FormatError, UnsafePickleError

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from tests.support import torch_models  # noqa: E402
from tests.support.host import child_env  # noqa: E402
from tests.support.torch_helpers import write_shards  # noqa: E402


def same(ours, theirs) -> bool:
    t = theirs.detach()
    if isinstance(ours, pthfmt.TensorRef):
        ours = ours.numpy()
    if t.dtype == torch.bfloat16:
        return np.array_equal(ours.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
    return ours.shape == tuple(t.shape) and np.array_equal(ours, t.numpy())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, model in torch_models.architectures().items():
        path = folder / f"{name}.pt"
        torch.save(model, path)
        out[name] = (path, model.state_dict())
    return out


@pytest.mark.parametrize("name", list(torch_models.architectures()))
def test_state_dict_of_whole_model_matches_torch(saved, name):
    path, expected = saved[name]
    for tree in (pthfmt.load(path, unknown="stub"), pthfmt.open(path, unknown="stub").obj):
        ours = pthfmt.state_dict(tree)
        assert list(ours) == list(expected)
        for key, value in expected.items():
            assert same(ours[key], value), key


def test_default_refuses_whole_model_naming_the_class(saved):
    path, _ = saved["convbn"]
    with pytest.raises(UnsafePickleError, match=rf"{torch_models.__name__}\.ConvBN"):
        pthfmt.load(path)


def test_dataparallel_prefix_can_be_stripped(saved):
    path, expected = saved["dataparallel"]
    ours = pthfmt.state_dict(pthfmt.load(path, unknown="stub"), strip_prefix="module.")
    assert list(ours) == [k[len("module.") :] for k in expected]


def test_tied_weights_stay_shared(saved):
    path, _ = saved["tied"]
    ours = pthfmt.state_dict(pthfmt.load(path, unknown="stub"))
    assert np.shares_memory(ours["embed.weight"], ours["decoder.weight"])


def test_stub_records_without_acting(saved):
    path, _ = saved["custom"]
    root = pthfmt.load(path, unknown="stub")
    assert isinstance(root, pthfmt.Stub) and root.qualname == f"{torch_models.__name__}.Custom"
    assert root.state["notes"] == {"epochs": 3, "tags": ["a", "b"]}
    assert root.notes == {"epochs": 3, "tags": ["a", "b"]}  # reads what it recorded
    # protocols stay inert: no dunder is ever looked up in the recorded state
    for name in ("__setstate__", "__array__", "__fspath__", "__index__", "__call__"):
        assert not hasattr(root, name), name


CHECK_NOTHING_IMPORTED = """
import sys, pthfmt
before = set(sys.modules)
obj = pthfmt.load(sys.argv[1], unknown="stub")
assert isinstance(obj, pthfmt.Stub), obj
new = sorted(set(sys.modules) - before)
assert not new, new
assert "torch" not in sys.modules and sys.argv[2] not in sys.modules
print("ok", obj.qualname)
"""


def test_stub_load_imports_nothing_and_runs_nothing(saved, tmp_path):
    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {canary}",)

    path = tmp_path / "payload.pt"
    torch.save({"model": saved["convbn"][1], "hook": Payload()}, path)
    for target in (saved["convbn"][0], saved["attention"][0]):
        out = subprocess.run(
            [sys.executable, "-c", CHECK_NOTHING_IMPORTED, str(target), torch_models.__name__],
            capture_output=True,
            encoding="utf-8",
            cwd=tmp_path,
            env=child_env(),
        )
        assert out.returncode == 0, out.stderr
    loaded = pthfmt.load(path, unknown="stub")
    assert isinstance(loaded["hook"], pthfmt.Stub) and loaded["hook"].qualname.endswith("system")
    assert loaded["hook"].args[0].startswith("touch")
    assert not canary.exists()
    with pytest.raises(UnsafePickleError, match="system"):
        pthfmt.load(path)


# -- TorchScript ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ts")
    torch.manual_seed(0)
    model = torch_models.Scriptable().eval()
    paths = {}
    script = torch.jit.script(model)
    paths["scripted"] = (folder / "scripted.pt", script)
    script.save(paths["scripted"][0])
    traced = torch.jit.trace(model, torch.randn(4, 2))
    paths["traced"] = (folder / "traced.pt", traced)
    traced.save(paths["traced"][0])
    return paths


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_torchscript_state_dict_matches(scripted, kind):
    path, _module = scripted[kind]
    expected = torch.jit.load(path).state_dict()
    with pthfmt.open(path) as ck:
        assert ck.format == "torchscript"
        assert any(r.endswith(".py") for r in ck.records)
        ours = pthfmt.state_dict(ck.obj)
        assert list(ours) == list(expected)
        for key, value in expected.items():
            assert same(ours[key], value), key
    loaded = pthfmt.state_dict(pthfmt.load(path))
    assert all(same(loaded[k], v) for k, v in expected.items())


def test_torchscript_code_is_never_run(scripted):
    path, _ = scripted["scripted"]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pthfmt; pthfmt.load(sys.argv[1]);print('torch' in sys.modules)",
            str(path),
        ],
        capture_output=True,
        encoding="utf-8",
        env=child_env(),
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# -- sharded ------------------------------------------------------------------------------


def test_sharded_checkpoint_matches(tmp_path):
    state = torch_models.architectures()["convbn"].state_dict()
    keys = list(state)
    index = write_shards(tmp_path, state, [keys[:3], keys[3:]])
    for source in (index, tmp_path):
        for mmap in (False, True):
            merged = pthfmt.load_sharded(source, mmap=mmap)
            assert list(merged) == keys and len(merged.shards) == 2
            assert all(same(merged[k], v) for k, v in state.items())


def test_sharded_errors(tmp_path):
    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    index = write_shards(tmp_path, state, [["a"], ["b"]])
    doc = json.loads(index.read_text())
    os.rename(tmp_path / doc["weight_map"]["b"], tmp_path / "elsewhere.bin")
    with pytest.raises(FormatError, match="missing"):
        pthfmt.load_sharded(index)
    os.rename(tmp_path / "elsewhere.bin", tmp_path / doc["weight_map"]["b"])
    torch.save({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / doc["weight_map"]["b"])
    with pytest.raises(FormatError, match="'a'"):
        pthfmt.load_sharded(index)
    index.write_text('{"weight_map": {"a": "x.bin", "a": "y.bin"}}')
    with pytest.raises(FormatError, match="twice"):
        pthfmt.load_sharded(index)
