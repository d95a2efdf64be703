"""pthfmt.strategies against torch: every generated example loads in torch exactly as its
description says (pthfmt's side is in ``tests/unit/test_strategies.py``)."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings

import pthfmt.strategies as pst
from tests.support.checks import flatten, raw

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def torch_raw(t) -> bytes:
    fresh = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach()).reshape(-1)
    return fresh.view(torch.uint8).numpy().tobytes() if fresh.numel() else b""


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
