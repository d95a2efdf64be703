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
