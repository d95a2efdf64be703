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


def exercise_state_dict(data: bytes) -> None:
    """``state_dict`` of whatever module or mapping a file holds, with prefix stripping, and
    every stub's navigation (``named_parameters``, ``named_modules``)."""
    from collections.abc import Mapping

    from pthfmt.model.stub import Stub

    try:
        with pthfmt.open(io.BytesIO(data), unknown="stub") as ck:
            roots = [ck.obj]
            if isinstance(ck.obj, Mapping):
                roots += [v for v in ck.obj.values() if isinstance(v, (Mapping, Stub))]
            for root in roots:
                if is_module(root) or isinstance(root, Mapping):
                    pthfmt.state_dict(root, strip_prefix="module.")
                if isinstance(root, Stub) and is_module(root):
                    list(root.named_parameters())
                    list(root.named_modules())
    except pthfmt.PthError:
        pass


def _convert(data: bytes, suffix: str) -> None:
    import os
    import tempfile

    from pthfmt.engines.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in" + suffix)
        with open(src, "wb") as fh:
            fh.write(data)
        for out in ("out.pth", "out.safetensors", "out.npz"):
            try:
                convert(src, os.path.join(tmp, out))
            except pthfmt.PthError:
                pass


def exercise_convert_safetensors(data: bytes) -> None:
    """``convert`` of the bytes as a ``.safetensors`` input, to each output format."""
    _convert(data, ".safetensors")


def exercise_convert_npz(data: bytes) -> None:
    """``convert`` of the bytes as an ``.npz`` input, to each output format."""
    _convert(data, ".npz")


def _shard() -> bytes:
    """A valid one-tensor safetensors shard, for the index under test."""
    import json
    import struct

    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(8)


_SHARD = _shard()


def exercise_load_sharded(data: bytes) -> None:
    """``load_sharded`` and ``validate`` of the bytes as a ``model.safetensors.index.json``
    beside one valid shard (``model-00001-of-00001.safetensors``), every key read."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "model.safetensors.index.json"), "wb") as fh:
            fh.write(data)
        with open(os.path.join(tmp, "model-00001-of-00001.safetensors"), "wb") as fh:
            fh.write(_SHARD)
        try:
            weights = pthfmt.load_sharded(tmp)
            for key in weights:
                weights[key]
        except pthfmt.PthError:
            pass
        pthfmt.validate(os.path.join(tmp, "model.safetensors.index.json"))


#: ``fuzz_load.py --target NAME``: what each entry point fuzzes.
TARGETS = {
    "load": exercise,
    "state_dict": exercise_state_dict,
    "convert-safetensors": exercise_convert_safetensors,
    "convert-npz": exercise_convert_npz,
    "load-sharded": exercise_load_sharded,
}
