"""Inputs the fuzzers once crashed on (``fuzz/regressions/``): each must raise PthError or load."""

from __future__ import annotations

import io

import pytest

import pthfmt
from tests.support import ROOT

CASES = sorted((ROOT / "fuzz" / "regressions").glob("*"))


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_regression(path):
    data = path.read_bytes()
    for read in (
        lambda: pthfmt.load(io.BytesIO(data)),
        lambda: [r.numpy() for _, r in pthfmt.open(io.BytesIO(data)).tensors()],
    ):
        try:
            read()
        except pthfmt.PthError:
            pass


def _targets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("exercise", ROOT / "fuzz" / "exercise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXERCISE = _targets()
SEEDS = sorted((ROOT / "fuzz" / "corpus").glob("*"))


@pytest.mark.parametrize("target", sorted(EXERCISE.TARGETS))
def test_every_fuzz_target_runs_on_the_seeds_and_on_garbage(target):
    """Each entry point of the harness (``FUZZ_TARGET``) takes real and broken inputs and
    lets only PthError through (it catches those itself)."""
    exercise = EXERCISE.TARGETS[target]
    index = b'{"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}'
    found = [*SEEDS, *CASES]  # the seeds, and every input a fuzzer once crashed on
    for data in [*(p.read_bytes() for p in found), EXERCISE._SHARD, index, b"", b"[" * 5000]:
        exercise(data)
