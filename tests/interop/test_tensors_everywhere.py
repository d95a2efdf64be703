"""``Checkpoint.tensors()`` yields every tensor object torch's loaded object graph holds, once,
wherever it lives (whole pickled models, TorchScript archives, Namespaces), and stubs can be
navigated as torch's modules are."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

import pthfmt
from tests.support import torch_models

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
nn = torch.nn

_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


def _children(obj: Any) -> list[tuple[Any, Any]]:
    """What a torch object holds, in the order pthfmt's walker documents."""
    if isinstance(obj, nn.Module):
        fields = vars(obj)
        return [
            *fields["_parameters"].items(),
            *fields["_buffers"].items(),
            *((k, v) for k, v in fields.items() if k not in _MODULE_DICTS),
            *fields["_modules"].items(),
        ]
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    if isinstance(obj, argparse.Namespace):
        return list(vars(obj).items())
    return []


def torch_tensors(root: Any) -> dict[str, Any]:
    """``key path -> tensor`` of every tensor object reachable in torch's loaded graph, each
    once (first path in depth-first order), as pthfmt names them."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out[path] = obj
            continue
        for key, value in reversed(_children(obj)):
            stack.append((f"{path}.{key}" if path else str(key), value))
    return out


def _check(path: Any, expected: dict[str, Any], **kw: Any) -> None:
    with pthfmt.open(path, **kw) as ck:
        got = list(ck.tensors())
    assert [k for k, _ in got] == list(expected)  # same paths, same order
    assert len({id(ref) for _, ref in got}) == len(got)  # each object once
    for key, ref in got:
        want = expected[key].detach()
        np.testing.assert_array_equal(ref.numpy(), want.numpy(), err_msg=key)


@pytest.mark.parametrize("name", list(torch_models.architectures()))
def test_whole_model_tensors_match_torchs_object_graph(tmp_path, name):
    model = torch_models.architectures()[name]
    path = tmp_path / "model.pt"
    torch.save({"model": model, "epoch": 3}, path)
    expected = torch_tensors(torch.load(path, weights_only=False))
    assert expected  # the test sees tensors at all
    _check(path, expected, unknown="stub")


def test_paths_are_state_dict_names(tmp_path):
    model = nn.DataParallel(torch_models.NestedSequential())
    path = tmp_path / "dp.pt"
    torch.save(model, path)
    with pthfmt.open(path, unknown="stub") as ck:
        keys = [k for k, _ in ck.tensors()]
    assert set(model.state_dict()) <= set(keys)
    assert keys[: len(model.state_dict())] == list(model.state_dict())


def test_torchscript_tensors_are_its_state_dict(tmp_path):
    torch.manual_seed(0)
    script = torch.jit.script(torch_models.Scriptable().eval())
    path = tmp_path / "ts.pt"
    script.save(path)
    with pthfmt.open(path) as ck:
        got = dict(ck.tensors())
    expected = script.state_dict()
    assert list(got) == list(expected)
    for key, ref in got.items():
        np.testing.assert_array_equal(ref.numpy(), expected[key].numpy(), err_msg=key)


def test_namespace_tensors_are_yielded_under_their_field_names(tmp_path):
    args = argparse.Namespace(lr=0.1, loss_weights=torch.arange(3.0), pos=torch.ones(2, 2))
    path = tmp_path / "ns.pt"
    obj = {"args": args, "model": {"w": torch.zeros(2)}}
    torch.save(obj, path)
    expected = torch_tensors(torch.load(path, weights_only=False))
    assert list(expected) == ["args.loss_weights", "args.pos", "model.w"]
    _check(path, expected)


def test_stubs_navigate_like_modules(tmp_path):
    torch.manual_seed(0)
    model = torch_models.NestedSequential()
    path = tmp_path / "m.pt"
    torch.save(model, path)
    stub = pthfmt.load(path, unknown="stub")
    for attr, value in vars(model).items():
        if not attr.startswith("_") and isinstance(value, (bool, int, float, str)):
            assert getattr(stub, attr) == value
    assert [n for n, _ in stub.named_modules()] == [n for n, _ in model.named_modules()]
    for ours, theirs in (
        (stub.named_parameters(), model.named_parameters()),
        (stub.named_buffers(), model.named_buffers()),
    ):
        ours, theirs = list(ours), list(theirs)
        assert [n for n, _ in ours] == [n for n, _ in theirs]
        for (name, a), (_, b) in zip(ours, theirs):
            np.testing.assert_array_equal(a, b.detach().numpy(), err_msg=name)
    first = next(iter(model.named_children()))[0]
    assert (
        getattr(stub, first).qualname
        == type(getattr(model, first)).__module__ + "." + type(getattr(model, first)).__name__
    )
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        stub.nope  # noqa: B018


def test_sequential_indexing_and_repr(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))
    path = tmp_path / "seq.pt"
    torch.save(model, path)
    stub = pthfmt.load(path, unknown="stub")
    np.testing.assert_array_equal(stub[0].weight, model[0].weight.detach().numpy())
    np.testing.assert_array_equal(stub[-1][0].bias, model[-1][0].bias.detach().numpy())
    with pytest.raises(IndexError):
        stub[3]
    linear = stub[0]
    assert repr(linear).startswith("Stub(torch.nn.modules.linear.Linear: training=True")
    assert linear.in_features == 2 and linear.out_features == 3
