"""Shared test fixtures.  Interop tests need real torch; in CI its absence is a failure."""

from __future__ import annotations

import os

import pytest

try:
    import torch
except ImportError:  # pragma: no cover - exercised only on machines without torch
    torch = None
    if os.environ.get("CI"):
        raise RuntimeError(
            "torch==2.13.0 must be installed in CI (pip install -e '.[test]')") from None


@pytest.fixture(scope="session")
def torch_mod():
    if torch is None:
        pytest.skip("torch is not installed")
    return torch
