"""pthfmt.strategies: examples read by pthfmt exactly as described; corruptions stay PthError;
the README's example runs.  (That torch loads every example as described is checked in
``tests/interop/test_strategies.py``.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import pthfmt
from pthfmt import strategies as pst
from tests.support.checks import flatten, raw

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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
    for read in (
        lambda: pthfmt.load(io.BytesIO(bad.data)),
        lambda: [r.numpy() for _, r in pthfmt.open(io.BytesIO(bad.data)).tensors()],
    ):
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


@SETTINGS
@given(pst.state_dicts(dtypes=["bfloat16", "torch.float8_e4m3fn"], parameters=False))
def test_state_dicts_of_chosen_dtypes(sd):
    allowed = {pthfmt.DTYPES["bfloat16"].numpy, pthfmt.DTYPES["float8_e4m3fn"].numpy}
    assert {np.asarray(v).dtype for v in sd.values()} <= allowed


def test_unknown_or_unsavable_dtype_names_are_refused():
    with pytest.raises(KeyError, match="unknown torch dtype 'float7'"):
        pst.dtypes(names=["float7"])
    with pytest.raises(ValueError, match="no savable dtypes among"):
        pst.dtypes(names=["qint8"])
