"""What a reader of an untrusted file might do with it; only ``pthfmt.PthError`` may escape.

Shared by the coverage-guided harness (``fuzz_load.py``) and the mutation property tests.
"""

from __future__ import annotations

import io

import pthfmt
from pthfmt.model.modules import is_module


def exercise(data: bytes) -> None:
    """``load``, ``open`` (every tensor read, stubs allowed, the module tree walked) and
    ``validate`` (which must never raise on content)."""
    try:
        pthfmt.load(io.BytesIO(data))
    except pthfmt.PthError:
        pass
    try:
        with pthfmt.open(io.BytesIO(data), unknown="stub") as ck:
            for _, ref in ck.tensors():
                ref.numpy()
            if is_module(ck.obj):
                pthfmt.state_dict(ck.obj)
    except pthfmt.PthError:
        pass
    pthfmt.validate(io.BytesIO(data))
