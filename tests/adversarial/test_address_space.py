"""Running out of address space: a genuine checkpoint bigger than the address space left is a
``LimitError``, never a raw ``OSError`` (ENOMEM) or ``MemoryError``, whichever way it is read.

Each read runs in a child whose ``RLIMIT_AS`` is what it has mapped after importing pthfmt,
numpy and ml_dtypes (its ``VmSize``) plus a fraction of the file's size, so the test means the
same on every host, whatever numpy and its BLAS map at import.
"""

from __future__ import annotations

import numpy as np
import pytest

import pthfmt
from tests.support.host import CAP_ADDRESS_SPACE, LINUX_PROC, require_free_disk, run_python

pytestmark = LINUX_PROC

CHILD = (
    CAP_ADDRESS_SPACE
    + r"""
import os, sys
import ml_dtypes, numpy, pthfmt
path, how, fraction = sys.argv[1], sys.argv[2], float(sys.argv[3])
cap_address_space(int(os.path.getsize(path) * fraction))
try:
    if how == "load":
        kept = pthfmt.load(path)
    elif how == "load-mmap":
        kept = pthfmt.load(path, mmap=True)
    else:
        with pthfmt.open(path) as ck:
            kept = [ref.numpy() for _, ref in ck.tensors()]      # all held at once
    print("loaded")
except pthfmt.PthError as exc:
    print(type(exc).__name__, exc)
except BaseException as exc:
    print("RAW", type(exc).__name__, exc)
"""
)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """256 MiB of tensors (64 of 4 MiB): more than any cap below leaves."""
    path = tmp_path_factory.mktemp("big") / "big.pt"
    require_free_disk(path.parent, 256 << 20)
    pthfmt.save({f"w{i}": np.ones(1 << 20, np.float32) for i in range(64)}, path)
    return str(path)


def outcome(path: str, how: str, fraction: float) -> str:
    out = run_python(CHILD, path, how, fraction, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("fraction", [0.5, 1.5], ids=["mapping", "copying"])
def test_running_out_of_memory_is_a_limit_error(big_checkpoint: str, fraction: float) -> None:
    """A copying load with half the file's size of address space left (the input cannot be
    mapped), and with one and a half (it can, but the copies do not fit)."""
    got = outcome(big_checkpoint, "load", fraction)
    assert got.startswith("LimitError "), got


@pytest.mark.parametrize("how", ["load-mmap", "open"])
def test_mapping_a_file_bigger_than_the_address_space_left_is_a_limit_error(
    big_checkpoint: str, how: str
) -> None:
    """``load(mmap=True)`` and ``open`` (every tensor read and held) with half the file's size
    of address space left."""
    got = outcome(big_checkpoint, how, 0.5)
    assert got.startswith("LimitError "), got
