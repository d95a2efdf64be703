"""pthfmt.strategies: examples load in torch exactly as described; corruptions stay PthError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import pthfmt
from pthfmt import strategies as pst

torch = pytest.importorskip("torch")
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def raw(value) -> bytes:
    return np.ascontiguousarray(value).tobytes()


def torch_raw(t) -> bytes:
    fresh = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach()).reshape(-1)
    return fresh.view(torch.uint8).numpy().tobytes() if fresh.numel() else b""


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


@SETTINGS
@given(pst.checkpoints())
def test_examples_load_in_torch_as_described(example):
    loaded = torch.load(io.BytesIO(example.data), weights_only=True)
    found = {k: v for k, v in flatten(loaded) if isinstance(v, torch.Tensor)}
    assert set(found) == set(example.tensors)
    for key, expected in example.tensors.items():
        t = found[key]
        assert tuple(t.shape) == expected.shape
        assert t.element_size() == expected.dtype.itemsize
        assert torch_raw(t) == raw(expected), key


@SETTINGS
@given(pst.checkpoints())
def test_examples_load_in_pthfmt_as_described(example):
    with pthfmt.open(io.BytesIO(example.data)) as ck:
        found = dict(ck.tensors())
        assert ck.format == example.format
        for key, expected in example.tensors.items():
            assert raw(found[key].numpy()) == raw(expected), key


@SETTINGS
@given(pst.state_dicts())
def test_state_dicts_look_like_torch(sd):
    assert sd and all(isinstance(k, str) and k.split(".")[-1] for k in sd)


@SETTINGS
@given(pst.corrupted(pst.checkpoints()))
def test_corruptions_change_bytes_and_never_crash(bad):
    original = bad.original.data
    assert bad.data != original
    for read in (lambda: pthfmt.load(io.BytesIO(bad.data)),
                 lambda: [r.numpy() for _, r in pthfmt.open(io.BytesIO(bad.data)).tensors()]):
        try:
            read()
        except pthfmt.PthError:
            pass


def test_readme_example_runs():
    """The README's example, with pthfmt itself as 'my_loader'."""
    from hypothesis import given

    class MyLoaderError(Exception):
        pass

    def my_loader(f):
        try:
            return dict(flatten(pthfmt.load(f)))
        except pthfmt.PthError as exc:
            raise MyLoaderError(str(exc)) from exc

    @SETTINGS
    @given(pst.checkpoints())
    def test_my_loader_reads_checkpoints(example):
        weights = my_loader(io.BytesIO(example.data))
        for key, expected in example.tensors.items():
            assert raw(weights[key]) == raw(expected)

    @SETTINGS
    @given(pst.corrupted(pst.checkpoints()))
    def test_my_loader_fails_cleanly(bad):
        try:
            my_loader(io.BytesIO(bad.data))
        except MyLoaderError:
            pass

    test_my_loader_reads_checkpoints()
    test_my_loader_fails_cleanly()
